//! DNS for the policy checks: hickory-resolver behind our own cache.
//!
//! - Names are queried fully qualified (a trailing dot is added; the search list is never used).
//! - NXDOMAIN and NODATA are told apart from SERVFAIL, REFUSED and timeouts by the response code:
//!   the first two are answers ([`DnsAnswer::NoRecords`]), the rest are [`DnsAnswer::TempFail`].
//! - Answers are cached for their TTL (the smallest TTL of the records), negative answers for the
//!   SOA's negative TTL or, without an SOA, the configured default (60 s); temporary failures are
//!   never cached. The cache has a cap on entries.
//! - Every lookup has a deadline; the number of queries in flight is bounded (waiting for a slot
//!   counts against the deadline); concurrent lookups of one name and type share one query,
//!   which runs in its own task so that a caller giving up does not cancel it for the others.
//!
//! hickory's own cache is disabled (size 0) so that TTL handling and counting happen here.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_resolver::{
    Resolver, TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{DnsError, NetError, runtime::TokioRuntimeProvider},
    proto::{
        op::ResponseCode,
        rr::{Name, RData, RecordType},
    },
};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, watch};

use crate::addr;

mod answer;
mod cache;
/// Also for the end-to-end fault tests (`fault-injection` builds), which put it where the
/// lab's DNS server was.
#[cfg(any(test, feature = "fault-injection"))]
pub mod test_server;
#[cfg(test)]
mod tests;

pub use answer::Answer;
pub use cache::TtlCache;

/// The record types the checks ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
    /// Mail exchangers.
    Mx,
    /// Reverse names.
    Ptr,
}

impl RecordKind {
    /// Every kind, for metric label sets.
    pub const ALL: [RecordKind; 4] = [
        RecordKind::A,
        RecordKind::Aaaa,
        RecordKind::Mx,
        RecordKind::Ptr,
    ];

    /// The metric label: `a`, `aaaa`, `mx`, `ptr`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RecordKind::A => "a",
            RecordKind::Aaaa => "aaaa",
            RecordKind::Mx => "mx",
            RecordKind::Ptr => "ptr",
        }
    }

    fn record_type(self) -> RecordType {
        match self {
            RecordKind::A => RecordType::A,
            RecordKind::Aaaa => RecordType::AAAA,
            RecordKind::Mx => RecordType::MX,
            RecordKind::Ptr => RecordType::PTR,
        }
    }
}

/// One record's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordData {
    /// An A or AAAA address.
    Addr(IpAddr),
    /// An MX exchange or a PTR name, lower-cased, without the trailing dot.
    Name(String),
}

/// Why a lookup gave no usable answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TempFailKind {
    /// No answer before the deadline.
    Timeout,
    /// The server answered with an error code (SERVFAIL, REFUSED, …).
    ResponseCode(ResponseCode),
    /// No query slot became free before the deadline.
    Busy,
    /// The answer could not be decoded, or did not fit the question.
    Malformed(String),
    /// A network or local error (connection refused, no connection left, a lookup task that
    /// ended without an answer).
    Io(String),
}

impl TempFailKind {
    /// The coarse kind that `dns_error=SERVER:KIND` names.
    pub fn error_kind(&self) -> DnsErrorKind {
        match self {
            TempFailKind::Timeout | TempFailKind::Busy => DnsErrorKind::Timeout,
            TempFailKind::ResponseCode(ResponseCode::ServFail) => DnsErrorKind::Servfail,
            TempFailKind::ResponseCode(ResponseCode::FormErr) => DnsErrorKind::Malformed,
            // REFUSED, NOTIMP and the rarer codes: the server declines to answer.
            TempFailKind::ResponseCode(_) => DnsErrorKind::Refused,
            TempFailKind::Malformed(_) => DnsErrorKind::Malformed,
            TempFailKind::Io(_) => DnsErrorKind::Io,
        }
    }

    /// Classifies one of hickory's errors (other than "no records", which is an answer).
    fn from_net_error(e: &NetError) -> TempFailKind {
        match e {
            NetError::Timeout => TempFailKind::Timeout,
            NetError::Dns(DnsError::ResponseCode(code)) => TempFailKind::ResponseCode(*code),
            NetError::Io(_) | NetError::NoConnections | NetError::Busy => {
                TempFailKind::Io(e.to_string())
            }
            NetError::Msg(_) | NetError::Message(_) if is_io_text(&e.to_string()) => {
                TempFailKind::Io(e.to_string())
            }
            _ => TempFailKind::Malformed(e.to_string()),
        }
    }
}

/// Whether a free-text hickory error is about the network rather than the message.
fn is_io_text(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "connection",
        "socket",
        "bytes of message sent",
        "io error",
        "refused",
        "reset",
    ]
    .iter()
    .any(|w| t.contains(w))
}

impl fmt::Display for TempFailKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TempFailKind::Timeout => f.write_str("timeout"),
            TempFailKind::ResponseCode(c) => write!(f, "response code {c}"),
            TempFailKind::Busy => f.write_str("too many lookups in flight"),
            TempFailKind::Malformed(m) | TempFailKind::Io(m) => f.write_str(m),
        }
    }
}

/// The kind of a temporary DNS failure, as logs and `check` name it (`dns_error=SERVER:KIND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DnsErrorKind {
    /// No answer before the deadline (or no query slot before it).
    Timeout,
    /// The server answered SERVFAIL.
    Servfail,
    /// The server answered REFUSED (or another error code that declines the query).
    Refused,
    /// The answer could not be decoded or did not fit the question (or FORMERR).
    Malformed,
    /// A network error: connection refused or reset, no usable connection.
    Io,
}

impl DnsErrorKind {
    /// `timeout`, `servfail`, `refused`, `malformed` or `io`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DnsErrorKind::Timeout => "timeout",
            DnsErrorKind::Servfail => "servfail",
            DnsErrorKind::Refused => "refused",
            DnsErrorKind::Malformed => "malformed",
            DnsErrorKind::Io => "io",
        }
    }
}

impl fmt::Display for DnsErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which server failed and how: `SERVER:KIND` (`SERVER` is `address:port`, or `system` when it
/// is not known which of several servers failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsFailure {
    /// `address:port` (IPv6 in brackets) or `system`.
    pub server: String,
    /// What went wrong.
    pub kind: DnsErrorKind,
}

impl fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.server, self.kind)
    }
}

/// Why a name cannot be sent as a DNS question.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} cannot be encoded as a DNS question: {why}")]
pub struct Unqueryable {
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub why: String,
}

/// The question name for `name` (made fully qualified, case kept as given): every label is
/// 1–63 octets of letters, digits, `-` or `_` (underscores are common in real host names and
/// DNS carries any octet), and the whole name fits the 255-octet wire limit. Built label by
/// label from the raw octets: hickory's text parsers run IDNA, which refuses `_` inside a
/// label.
pub fn query_name(name: &str) -> Result<Name, Unqueryable> {
    let fail = |why: String| Unqueryable {
        name: name.to_string(),
        why,
    };
    let trimmed = name.trim();
    let bare = trimmed.strip_suffix('.').unwrap_or(trimmed);
    if bare.is_empty() {
        return Err(fail("the name is empty".into()));
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return Err(fail("an empty label".into()));
        }
        if label.len() > 63 {
            return Err(fail(format!(
                "label of {} octets (at most 63)",
                label.len()
            )));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(fail(format!("character {c:?} in label {label:?}")));
        }
    }
    Name::from_labels(bare.split('.').map(str::as_bytes)).map_err(|e| fail(e.to_string()))
}

/// The outcome of one lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsAnswer {
    /// At least one record of the asked type.
    Records(Arc<[RecordData]>),
    /// NXDOMAIN (`nxdomain`) or an empty answer (NODATA).
    NoRecords {
        /// Whether the name does not exist at all.
        nxdomain: bool,
    },
    /// Not evidence either way.
    TempFail(TempFailKind),
    /// The name cannot be sent as a DNS question (see [`query_name`]); nothing was sent.
    Unqueryable(Unqueryable),
}

impl DnsAnswer {
    /// The addresses, as the checks see them.
    pub fn addresses(&self) -> Answer<IpAddr> {
        self.map(|d| match d {
            RecordData::Addr(ip) => Some(*ip),
            RecordData::Name(_) => None,
        })
    }

    /// The names, as the checks see them.
    pub fn names(&self) -> Answer<String> {
        self.map(|d| match d {
            RecordData::Name(n) => Some(n.clone()),
            RecordData::Addr(_) => None,
        })
    }

    fn map<T>(&self, f: impl Fn(&RecordData) -> Option<T>) -> Answer<T> {
        match self {
            DnsAnswer::Records(r) => {
                let v: Vec<T> = r.iter().filter_map(f).collect();
                if v.is_empty() {
                    Answer::NoRecords
                } else {
                    Answer::Records(v)
                }
            }
            DnsAnswer::NoRecords { .. } => Answer::NoRecords,
            DnsAnswer::TempFail(_) => Answer::TempFail,
            DnsAnswer::Unqueryable(_) => Answer::NotAsked,
        }
    }

    /// Whether this is a temporary failure.
    pub fn is_tempfail(&self) -> bool {
        matches!(self, DnsAnswer::TempFail(_))
    }

    /// The temporary failure, if this is one.
    pub fn tempfail(&self) -> Option<&TempFailKind> {
        match self {
            DnsAnswer::TempFail(k) => Some(k),
            _ => None,
        }
    }
}

/// DNS settings (the `[dns]` section resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    /// Servers to ask; empty means the system configuration (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// Deadline of one lookup, waiting for a query slot included.
    pub deadline: Duration,
    /// Cap on cached answers.
    pub cache_entries: usize,
    /// TTL of a negative answer that came without an SOA.
    pub negative_ttl: Duration,
    /// Upper bound on any cached TTL.
    pub max_ttl: Duration,
    /// Bound on queries in flight.
    pub max_in_flight: usize,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            servers: Vec::new(),
            deadline: Duration::from_secs(2),
            cache_entries: 10_000,
            negative_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(86_400),
            max_in_flight: 256,
        }
    }
}

/// Hooks for metrics: the daemon implements this to feed its series.
pub trait DnsObserver: Send + Sync + 'static {
    /// One lookup answered from the cache (`hit`) or not.
    fn cache_lookup(&self, _hit: bool) {}
    /// One query sent on the wire finished.
    fn wire_lookup(&self, _kind: RecordKind, _elapsed: Duration, _answer: &DnsAnswer) {}
}

/// Counters since the client was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Lookups answered from the cache.
    pub cache_hits: u64,
    /// Lookups not answered from the cache.
    pub cache_misses: u64,
    /// Queries sent (one per shared lookup).
    pub wire_queries: u64,
    /// Lookups that joined a query already in flight.
    pub shared: u64,
    /// Lookups that ended in a temporary failure.
    pub tempfails: u64,
}

#[derive(Default)]
struct Counters {
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    wire_queries: AtomicU64,
    shared: AtomicU64,
    tempfails: AtomicU64,
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DnsBuildError {
    /// The system resolver configuration could not be read.
    #[error("cannot read the system resolver configuration: {0}")]
    SystemConfig(String),
    /// The system configuration names no server.
    #[error("no DNS server configured (system configuration has none; set [dns] servers)")]
    NoServers,
    /// hickory refused the configuration.
    #[error("cannot build the DNS resolver: {0}")]
    Build(String),
}

type Key = (RecordKind, String);

struct Inner {
    resolver: TokioResolver,
    settings: DnsSettings,
    /// `address:port` of the only server, or `system` when there are several.
    server_label: String,
    cache: Mutex<TtlCache<Key, DnsAnswer>>,
    inflight: Mutex<HashMap<Key, watch::Receiver<Option<DnsAnswer>>>>,
    slots: Semaphore,
    counters: Counters,
    observer: Option<Arc<dyn DnsObserver>>,
}

/// A caching, de-duplicating DNS client. Clones share one cache.
#[derive(Clone)]
pub struct DnsClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for DnsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsClient")
            .field("settings", &self.inner.settings)
            .finish()
    }
}

/// The reverse-lookup name of an address (`d.c.b.a.in-addr.arpa.` or the `ip6.arpa.` nibbles);
/// an IPv4-mapped address is reversed as IPv4.
pub fn reverse_name(ip: IpAddr) -> String {
    match addr::canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(73);
            for byte in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            s.push_str("ip6.arpa.");
            s
        }
    }
}

fn normalize(name: &str) -> String {
    let mut n = name.trim().to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

impl DnsClient {
    /// A client with the given settings, without an observer.
    pub fn new(settings: DnsSettings) -> Result<DnsClient, DnsBuildError> {
        DnsClient::with_observer(settings, None)
    }

    /// A client that reports cache and wire events to `observer`.
    pub fn with_observer(
        settings: DnsSettings,
        observer: Option<Arc<dyn DnsObserver>>,
    ) -> Result<DnsClient, DnsBuildError> {
        let (config, mut opts, server_label) = if settings.servers.is_empty() {
            let (system, opts) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| DnsBuildError::SystemConfig(e.to_string()))?;
            if system.name_servers().is_empty() {
                return Err(DnsBuildError::NoServers);
            }
            // Keep the servers only: no domain, no search list.
            let config =
                ResolverConfig::from_parts(None, Vec::new(), system.name_servers().to_vec());
            let label = server_label(system.name_servers().iter().flat_map(|ns| {
                ns.connections
                    .iter()
                    .map(move |c| SocketAddr::new(ns.ip, c.port))
            }));
            (config, opts, label)
        } else {
            let servers = settings
                .servers
                .iter()
                .map(|sa| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = sa.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = sa.port();
                    NameServerConfig::new(sa.ip(), true, vec![udp, tcp])
                })
                .collect();
            (
                ResolverConfig::from_name_servers(servers),
                ResolverOpts::default(),
                server_label(settings.servers.iter().copied()),
            )
        };
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
        opts.timeout = settings.deadline;
        opts.attempts = 1;
        let resolver: TokioResolver =
            Resolver::builder_with_config(config, TokioRuntimeProvider::default())
                .with_options(opts)
                .build()
                .map_err(|e| DnsBuildError::Build(e.to_string()))?;
        Ok(DnsClient {
            inner: Arc::new(Inner {
                resolver,
                cache: Mutex::new(TtlCache::new(settings.cache_entries)),
                inflight: Mutex::new(HashMap::new()),
                slots: Semaphore::new(settings.max_in_flight.max(1)),
                counters: Counters::default(),
                observer,
                settings,
                server_label,
            }),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &DnsSettings {
        &self.inner.settings
    }

    /// The `SERVER` part of `dns_error=SERVER:KIND`: the only server's `address:port`, or
    /// `system` when several are configured (hickory does not say which one failed).
    pub fn server_label(&self) -> &str {
        &self.inner.server_label
    }

    /// The `dns_error` of a temporary failure seen by this client.
    pub fn failure(&self, kind: &TempFailKind) -> DnsFailure {
        DnsFailure {
            server: self.inner.server_label.clone(),
            kind: kind.error_kind(),
        }
    }

    /// Counters since the client was built.
    pub fn stats(&self) -> DnsStats {
        let c = &self.inner.counters;
        DnsStats {
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            cache_misses: c.cache_misses.load(Ordering::Relaxed),
            wire_queries: c.wire_queries.load(Ordering::Relaxed),
            shared: c.shared.load(Ordering::Relaxed),
            tempfails: c.tempfails.load(Ordering::Relaxed),
        }
    }

    /// Queries on the wire now (at most `max_in_flight`).
    pub fn in_flight(&self) -> usize {
        self.inner.settings.max_in_flight.max(1) - self.inner.slots.available_permits()
    }

    /// Number of cached answers.
    pub fn cache_len(&self) -> usize {
        self.inner.cache.lock().len()
    }

    /// Looks up one name (made fully qualified) and type: from the cache, by joining a query in
    /// flight, or with a new query.
    ///
    /// A name that cannot be sent as a question ([`query_name`]) gives
    /// [`DnsAnswer::Unqueryable`] at once, never a temporary failure. The caller waits at most
    /// the deadline plus a small grace for the query task, whatever happens to that task.
    pub async fn lookup(&self, kind: RecordKind, name: &str) -> DnsAnswer {
        if let Err(e) = query_name(name) {
            return DnsAnswer::Unqueryable(e);
        }
        let key: Key = (kind, normalize(name));
        if let Some(hit) = self.cached(&key) {
            return self.hit(hit);
        }
        let rx = {
            let mut inflight = self.inner.inflight.lock();
            // The query may have finished between the two looks.
            if let Some(hit) = self.cached(&key) {
                drop(inflight);
                return self.hit(hit);
            }
            // A query task that died (it cannot, short of a panic) leaves a closed channel:
            // start afresh rather than fail forever.
            match inflight.get(&key).filter(|rx| rx.has_changed().is_ok()) {
                Some(rx) => {
                    self.inner.counters.shared.fetch_add(1, Ordering::Relaxed);
                    rx.clone()
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key.clone(), rx.clone());
                    let me = self.clone();
                    tokio::spawn(async move { me.run_query(key, tx).await });
                    rx
                }
            }
        };
        self.inner
            .counters
            .cache_misses
            .fetch_add(1, Ordering::Relaxed);
        if let Some(o) = &self.inner.observer {
            o.cache_lookup(false);
        }
        // The query task ends by its own deadline; this bound only guards against a task that
        // cannot run (a worker thread blocked elsewhere) so that no caller ever hangs.
        let answer = tokio::time::timeout(self.inner.settings.deadline + WAIT_GRACE, wait(rx))
            .await
            .unwrap_or(DnsAnswer::TempFail(TempFailKind::Timeout));
        if answer.is_tempfail() {
            self.inner
                .counters
                .tempfails
                .fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    fn cached(&self, key: &Key) -> Option<DnsAnswer> {
        self.inner.cache.lock().get(key, Instant::now())
    }

    fn hit(&self, answer: DnsAnswer) -> DnsAnswer {
        self.inner
            .counters
            .cache_hits
            .fetch_add(1, Ordering::Relaxed);
        if let Some(o) = &self.inner.observer {
            o.cache_lookup(true);
        }
        answer
    }

    async fn run_query(self, key: Key, tx: watch::Sender<Option<DnsAnswer>>) {
        let inner = &self.inner;
        let started = Instant::now();
        let (answer, ttl) =
            match tokio::time::timeout(inner.settings.deadline, self.query(&key)).await {
                Ok(r) => r,
                Err(_) => (DnsAnswer::TempFail(TempFailKind::Timeout), None),
            };
        if !matches!(answer, DnsAnswer::TempFail(TempFailKind::Busy))
            && let Some(o) = &inner.observer
        {
            o.wire_lookup(key.0, started.elapsed(), &answer);
        }
        if let Some(ttl) = ttl {
            let now = Instant::now();
            let ttl = ttl.min(inner.settings.max_ttl);
            inner
                .cache
                .lock()
                .insert(key.clone(), answer.clone(), now + ttl, now);
        }
        inner.inflight.lock().remove(&key);
        let _ = tx.send(Some(answer));
    }

    /// One query on the wire, after taking a slot. Returns the answer and how long it may be
    /// cached (`None`: not at all).
    async fn query(&self, key: &Key) -> (DnsAnswer, Option<Duration>) {
        let inner = &self.inner;
        let Ok(_slot) = inner.slots.acquire().await else {
            return (DnsAnswer::TempFail(TempFailKind::Busy), None);
        };
        inner.counters.wire_queries.fetch_add(1, Ordering::Relaxed);
        let (kind, name) = key;
        let qname = match query_name(name) {
            Ok(q) => q,
            Err(e) => return (DnsAnswer::Unqueryable(e), None),
        };
        match inner.resolver.lookup(qname, kind.record_type()).await {
            Ok(lookup) => {
                let mut ttl = u32::MAX;
                let mut records = Vec::new();
                for r in lookup.answers() {
                    let data = match (&r.data, kind) {
                        (RData::A(a), RecordKind::A) => RecordData::Addr(IpAddr::V4(a.0)),
                        (RData::AAAA(a), RecordKind::Aaaa) => RecordData::Addr(IpAddr::V6(a.0)),
                        (RData::MX(mx), RecordKind::Mx) => {
                            RecordData::Name(name_text(&mx.exchange))
                        }
                        (RData::PTR(p), RecordKind::Ptr) => RecordData::Name(name_text(&p.0)),
                        _ => continue,
                    };
                    ttl = ttl.min(r.ttl);
                    records.push(data);
                }
                if records.is_empty() {
                    let neg = inner.settings.negative_ttl;
                    (DnsAnswer::NoRecords { nxdomain: false }, Some(neg))
                } else {
                    (
                        DnsAnswer::Records(records.into()),
                        Some(Duration::from_secs(u64::from(ttl))),
                    )
                }
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => {
                let ttl = nr
                    .negative_ttl
                    .map(|s| Duration::from_secs(u64::from(s)))
                    .unwrap_or(inner.settings.negative_ttl);
                (
                    DnsAnswer::NoRecords {
                        nxdomain: nr.response_code == ResponseCode::NXDomain,
                    },
                    Some(ttl),
                )
            }
            Err(e) => (DnsAnswer::TempFail(TempFailKind::from_net_error(&e)), None),
        }
    }
}

/// How long past the deadline a caller waits for a query task that did not report.
const WAIT_GRACE: Duration = Duration::from_millis(200);

/// `address:port` when every address is one and the same, `system` otherwise.
fn server_label(addrs: impl IntoIterator<Item = SocketAddr>) -> String {
    let mut addrs = addrs.into_iter();
    match addrs.next() {
        Some(first) if addrs.all(|a| a == first) => first.to_string(),
        _ => "system".to_string(),
    }
}

fn name_text(n: &hickory_resolver::proto::rr::Name) -> String {
    n.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

async fn wait(mut rx: watch::Receiver<Option<DnsAnswer>>) -> DnsAnswer {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or(DnsAnswer::TempFail(TempFailKind::Io(
            "lookup ended without an answer".into(),
        ))),
        Err(_) => DnsAnswer::TempFail(TempFailKind::Io("lookup task ended".into())),
    }
}
