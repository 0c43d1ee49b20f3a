//! End to end, faults injected into the daemon's own surroundings (the DNS, SIGSTOP and
//! ring-buffer faults are `faults_e2e`'s): a read-only and a full state directory, `kill -9`
//! in the middle of list changes, and abusive clients of the control and policy sockets.
//! Each test prints its figures (run with `--nocapture` to see them).

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use helo_filter::operator::state::{ReputationSnapshot, StateDir};
use helo_filter_tests::{e2e::*, policy_client::rcpt_request};
use serde_json::Value;
use xtask::{
    daemon::{Daemon, cli, metric_value, rss_kib},
    lab::Lab,
    process,
    sessions::{self, Greeting},
};

/// A tmpfs mounted at `path` in the host's mount namespace (the daemon's namespace, which
/// `ip netns exec` copies from it, shares its superblock: a remount or a full file system
/// is seen there too), unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("the mount point");
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
            &path.to_string_lossy(),
        ]);
        Tmpfs {
            path: path.to_owned(),
        }
    }

    /// `ro` or `rw`.
    fn remount(&self, mode: &str) {
        mount(&[
            "-o",
            &format!("remount,{mode}"),
            &self.path.to_string_lossy(),
        ]);
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Writes a file until the file system is full (ENOSPC); the bytes written.
    fn fill(&self) -> u64 {
        let mut file = std::fs::File::create(self.filler()).expect("the filler file");
        let mut written = 0;
        // Large writes first, then byte by byte into the last page.
        for chunk in [64 * 1024, 1] {
            let block = vec![0u8; chunk];
            loop {
                match file.write(&block) {
                    Ok(n) if n > 0 => written += n as u64,
                    Ok(_) => break,
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling: {e}");
                        break;
                    }
                }
            }
        }
        written
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("removing the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a process still inside cannot keep the lab's directory from going.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn mount(args: &[&str]) {
    process::run_cmd(Command::new("mount").args(args)).expect("mount (util-linux)");
}

/// The failed writes of state file `file` (`lists`, `reputation`) counted so far.
fn write_failures(daemon: &Daemon, file: &str) -> f64 {
    let page = daemon.scrape().expect("scraping");
    let series = format!("helo_filter_state_write_failures_total{{file=\"{file}\"}}");
    metric_value(&page, &series).unwrap_or_else(|| panic!("no {series}:\n{page}"))
}

/// The operator's deny entries as the daemon's memory holds them (`deny list --json`).
fn operator_denials(lab: &Lab) -> BTreeSet<String> {
    let text = cli_ok(lab, &["deny", "list", "--json"]);
    let list: Value = serde_json::from_str(text.trim()).expect("deny list --json");
    list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["source"] == "operator")
        .map(|e| e["net"].as_str().expect("net").to_owned())
        .collect()
}

/// The operator's deny entries in the state file, read as the daemon reads it at its start
/// (which also checks that it parses and has the right version).
fn file_denials(lab: &Lab) -> BTreeSet<String> {
    let state = StateDir::open(&lab.state_dir()).expect("the state directory");
    let lists = state
        .load_lists()
        .unwrap_or_else(|e| panic!("lists.json: {e:#}"));
    lists.deny.iter().map(|e| e.net.to_string()).collect()
}

fn reputation_file(lab: &Lab) -> ReputationSnapshot {
    StateDir::open(&lab.state_dir())
        .expect("the state directory")
        .load_reputation()
        .unwrap_or_else(|e| panic!("reputation.json: {e:#}"))
}

/// Asserts that the operator command `args` is refused for want of its state write.
fn assert_refused_by_the_state_write(lab: &Lab, args: &[&str]) {
    let out = cli(lab, args).expect("the CLI runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} acknowledged: {stderr}"
    );
    assert!(
        stderr.contains("writing the state file") && stderr.contains("lists.json"),
        "{args:?}: {stderr}"
    );
}

/// The daemon's log lines from the `from`th on that report failing writes of `file`.
fn failure_lines(daemon: &Daemon, from: usize, file: &str) -> Vec<String> {
    daemon.lines()[from..]
        .iter()
        .filter(|l| l.contains("writing the state file") && l.contains(file))
        .cloned()
        .collect()
}

/// Whether the daemon logs a line containing `needle` from its `from`th line on (waits up
/// to 10 s: the log is read from the daemon's pipe by another thread).
fn logs_since(daemon: &Daemon, from: usize, needle: &str) -> bool {
    process::wait_until(Duration::from_secs(10), || {
        daemon.lines()[from..].iter().any(|l| l.contains(needle))
    })
    .is_ok()
}

/// A read-only state directory, then a full one (a 1 MiB tmpfs): list changes are refused
/// with kernel and memory left as they were, enforcement goes on (good mail flows, bogus
/// sessions are reset, a repeat offender is denied by reputation), every failed write is
/// counted but each file logs one line per fault, and once the space is back the reputation
/// snapshot is written by the next retry, the refused changes go through, and a `kill -9`
/// loses nothing.
#[test]
fn a_read_only_or_full_state_directory_refuses_changes_and_keeps_enforcing() {
    let lab = lab("sfro");
    let state = Tmpfs::mount(&lab.state_dir(), "1m");
    let config = lab.daemon_dir().join("snapshots.toml");
    std::fs::write(&config, "[state]\nsnapshot_interval_secs = 2\n").expect("the config");
    let config = config.to_string_lossy().into_owned();
    // Rejects at full weight: two bogus sessions deny their source.
    let args = [
        "--config",
        &config,
        "--action",
        "rst",
        "--reputation-threshold",
        "3.5",
        "--deny-ttl",
        "600",
    ];
    let mut daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    let (kept, refused) = ("203.0.113.13/32", "203.0.113.14/32");
    cli_ok(&lab, &["deny", "add", kept]);
    assert_eq!(file_denials(&lab), BTreeSet::from([kept.to_owned()]));

    type Fault = (&'static str, fn(&Tmpfs), fn(&Tmpfs));
    let faults: [Fault; 2] = [
        ("read-only", |s| s.remount("ro"), |s| s.remount("rw")),
        (
            "full",
            |s| {
                let filled = s.fill();
                println!("full: the filler took {filled} bytes");
            },
            Tmpfs::free,
        ),
    ];
    for (i, (name, break_it, mend)) in faults.into_iter().enumerate() {
        let offender = v4(1 + i, 0);
        let from = daemon.lines().len();
        let before = (
            write_failures(&daemon, "lists"),
            write_failures(&daemon, "reputation"),
        );
        let started = Instant::now();
        break_it(&state);

        assert_refused_by_the_state_write(&lab, &["deny", "add", refused]);
        assert_refused_by_the_state_write(&lab, &["deny", "del", kept]);
        assert_eq!(
            operator_denials(&lab),
            BTreeSet::from([kept.to_owned()]),
            "{name}: a refused change reached the daemon's memory"
        );
        assert!(
            connects(&lab, v4(4, 0)),
            "{name}: the refused deny add reached the kernel"
        );
        assert!(
            !connects(&lab, v4(3, 0)),
            "{name}: the refused deny del reached the kernel"
        );

        sessions::swaks(&lab, v4(0, 0), Greeting::Ehlo, "mail.example.net")
            .unwrap_or_else(|e| panic!("{name}: a good session: {e:#}"));
        for helo in ["localhost", "mon-serveur"] {
            let (completed, transcript) =
                sessions::swaks_transcript(&lab, offender, Greeting::Helo, helo).expect("swaks");
            assert!(!completed, "{name}: {helo} was not reset:\n{transcript}");
        }
        let denied = format!("denied {}/32", offender.ip());
        daemon
            .wait_for(Duration::from_secs(10), |l| l.contains(&denied))
            .unwrap_or_else(|e| panic!("{name}: the offender is not denied: {e}"));
        assert!(
            !connects(&lab, offender),
            "{name}: a denied source connected"
        );

        // The snapshot at the denial and those every 2 s fail, counted one by one.
        let reputation = "helo_filter_state_write_failures_total{file=\"reputation\"}";
        let page = wait_for_metric(&daemon, reputation, |v| v >= before.1 + 4.0);
        let lists = "helo_filter_state_write_failures_total{file=\"lists\"}";
        assert_metric(&page, lists, before.0 + 2.0);
        for file in ["lists.json", "reputation.json"] {
            let lines = failure_lines(&daemon, from, file);
            assert_eq!(lines.len(), 1, "{name}: {file}: {lines:#?}");
        }
        let failed = metric_value(&page, reputation).unwrap_or_default() - before.1;
        println!(
            "{name}: {:.1} s, 2 list changes refused, {failed} reputation snapshots failed, \
             one log line for each file",
            started.elapsed().as_secs_f64()
        );

        mend(&state);
        let mended = Instant::now();
        assert!(
            logs_since(&daemon, from, "reputation.json written again"),
            "{name}: the snapshot was not retried"
        );
        let source = format!("{}/32", offender.ip());
        let snapshot = reputation_file(&lab);
        assert!(
            snapshot
                .sources
                .iter()
                .any(|s| s.source.to_string() == source && s.denied_until.is_some()),
            "{name}: the denial of {source} is not in the snapshot: {snapshot:?}"
        );
        println!(
            "{name}: the snapshot written {:.1} s after the space came back",
            mended.elapsed().as_secs_f64()
        );
        assert_eq!(file_denials(&lab), BTreeSet::from([kept.to_owned()]));
        cli_ok(&lab, &["deny", "add", refused]);
        assert_eq!(
            file_denials(&lab),
            BTreeSet::from([kept.to_owned(), refused.to_owned()])
        );
        assert!(
            logs_since(
                &daemon,
                from,
                "lists.json written again, after 2 failed writes"
            ),
            "{name}: no line says the lists are written again"
        );
        cli_ok(&lab, &["deny", "del", refused]);
    }

    // Nothing acknowledged was lost: a daemon killed and started again has it all.
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(Duration::from_secs(10)).expect("killed");
    drop(daemon);
    let _daemon = Daemon::start(&lab, &args, false).expect("restarting the daemon");
    assert_eq!(operator_denials(&lab), BTreeSet::from([kept.to_owned()]));
    for i in 0..2 {
        assert!(
            !connects(&lab, v4(1 + i, 0)),
            "a reputation denial was lost across the restart"
        );
    }
}

/// One deny change sent straight to the control socket; `kill_after`: the daemon is sent
/// SIGKILL that long after the request. Whether it was acknowledged.
fn deny_change(
    lab: &Lab,
    daemon: &Daemon,
    add: bool,
    net: &str,
    kill_after: Option<Duration>,
) -> bool {
    let command = if add { "deny_add" } else { "deny_del" };
    let mut stream = UnixStream::connect(lab.control_socket()).expect("the control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    writeln!(
        stream,
        "{{\"version\":1,\"command\":\"{command}\",\"net\":\"{net}\"}}"
    )
    .expect("the request");
    if let Some(delay) = kill_after {
        std::thread::sleep(delay);
        daemon.signal(libc::SIGKILL);
    }
    let mut answer = String::new();
    match BufReader::new(&stream).read_line(&mut answer) {
        Ok(0) | Err(_) => false,
        Ok(_) => {
            let response: Value = serde_json::from_str(&answer).expect("a JSON answer");
            assert_eq!(response["ok"], true, "{command} {net}: {answer}");
            true
        }
    }
}

/// 1,000 `deny add`/`deny del` operations, with 20 `kill -9`s among them, each that many
/// microseconds after a request that it lands at every stage of the change (before, while
/// and after the file is written): after each, `lists.json` parses and holds exactly the
/// acknowledged entries (the change in flight, unacknowledged, may be in or out); the
/// daemon started again holds the same.
#[test]
fn kill_9_amid_deny_changes_never_loses_an_acknowledged_entry() {
    const OPERATIONS: usize = 1000;
    const KILLS: usize = 20;
    let lab = lab("sfkl");
    let mut daemon = Daemon::start(&lab, &NO_REPUTATION, false).expect("starting the daemon");
    let nets: Vec<String> = (1..=40).map(|i| format!("192.0.2.{i}/32")).collect();
    let mut acknowledged = BTreeSet::new();
    let (mut cut, mut temporary_found, mut restarts) = (0, 0, Vec::new());
    let started = Instant::now();
    for op in 0..OPERATIONS {
        let net = &nets[op * 7 % nets.len()];
        let add = !acknowledged.contains(net);
        let kill = (op + 1) % (OPERATIONS / KILLS) == 0;
        let kill_index = (op + 1) / (OPERATIONS / KILLS);
        let delay = kill.then(|| Duration::from_micros((kill_index as u64 * 997) % 20_000));
        let acked = deny_change(&lab, &daemon, add, net, delay);
        if acked {
            if add {
                acknowledged.insert(net.clone());
            } else {
                acknowledged.remove(net);
            }
        } else {
            assert!(kill, "operation {op} not acknowledged without a kill");
            cut += 1;
        }
        if !kill {
            continue;
        }
        daemon.wait_exit(Duration::from_secs(10)).expect("killed");
        temporary_found += usize::from(lab.state_dir().join(".lists.json.tmp").exists());
        let on_disk = file_denials(&lab);
        if acked {
            assert_eq!(on_disk, acknowledged, "after kill {kill_index} (op {op})");
        } else {
            // The change in flight may have been written: either state is right.
            let mut changed = acknowledged.clone();
            if add {
                changed.insert(net.clone());
            } else {
                changed.remove(net);
            }
            assert!(
                on_disk == acknowledged || on_disk == changed,
                "after kill {kill_index} (op {op}, cut): {on_disk:?}, acknowledged \
                 {acknowledged:?}"
            );
            acknowledged = on_disk;
        }
        drop(daemon);
        let restart = Instant::now();
        daemon = Daemon::start(&lab, &NO_REPUTATION, false).expect("restarting the daemon");
        restarts.push(restart.elapsed());
        assert_eq!(
            operator_denials(&lab),
            acknowledged,
            "the daemon started after kill {kill_index} holds other entries"
        );
    }
    println!(
        "{OPERATIONS} operations, {KILLS} kills ({cut} cut an operation short, {temporary_found} \
         left a temporary file), {} entries at the end, {:.1} s in all, restart median {:.2} s",
        acknowledged.len(),
        started.elapsed().as_secs_f64(),
        median(restarts).as_secs_f64()
    );
}

/// Sends one policy request on `stream` (instance `i`) and reads its reply within
/// `timeout`: whether an action came back.
fn policy_answers(stream: &UnixStream, i: usize, timeout: Duration) -> bool {
    send_policy_request(stream, i);
    policy_reply(stream, timeout)
}

fn send_policy_request(mut stream: &UnixStream, i: usize) {
    let request = rcpt_request(
        &format!("192.0.2.{}", i % 250 + 1),
        "localhost",
        &i.to_string(),
    );
    stream
        .write_all(request.as_bytes())
        .expect("a policy request");
}

/// Whether a whole reply (`action=…` and its empty line) comes within `timeout`.
fn policy_reply(stream: &UnixStream, timeout: Duration) -> bool {
    stream.set_read_timeout(Some(timeout)).expect("a timeout");
    let mut reader = BufReader::new(stream);
    let (mut action, mut end) = (String::new(), String::new());
    matches!(reader.read_line(&mut action), Ok(n) if n > 0)
        && action.starts_with("action=")
        && matches!(reader.read_line(&mut end), Ok(1))
}

/// Sends `bytes` one a second until the daemon closes the connection (a write fails) or
/// 20 s have passed; how long after the first byte it was closed.
fn dribble(socket: &Path, bytes: &[u8]) -> Option<Duration> {
    let mut stream = UnixStream::connect(socket).expect("connecting");
    let first = Instant::now();
    for byte in bytes.iter().cycle() {
        if stream.write_all(&[*byte]).is_err() {
            return Some(first.elapsed());
        }
        if first.elapsed() > Duration::from_secs(20) {
            return None;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    unreachable!("the bytes cycle")
}

/// Sends `half` and then nothing: how long until the daemon closed the connection (20 s
/// at most).
fn half_sent(socket: &Path, half: &[u8]) -> Option<Duration> {
    let mut stream = UnixStream::connect(socket).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a timeout");
    stream.write_all(half).expect("half a request");
    let sent = Instant::now();
    let mut rest = Vec::new();
    match std::io::Read::read_to_end(&mut stream, &mut rest) {
        Ok(_) => Some(sent.elapsed()),
        Err(_) => None,
    }
}

/// Streams a line that never ends, 256 KiB every 100 ms, until the daemon closes the
/// connection (20 s at most): how long that took and the bytes sent.
fn endless_line(socket: &Path) -> (Option<Duration>, usize) {
    let mut stream = UnixStream::connect(socket).expect("connecting");
    let block = vec![b'a'; 256 * 1024];
    let (first, mut sent) = (Instant::now(), 0);
    while first.elapsed() < Duration::from_secs(20) {
        if stream.write_all(&block).is_err() {
            return (Some(first.elapsed()), sent);
        }
        sent += block.len();
        std::thread::sleep(Duration::from_millis(100));
    }
    (None, sent)
}

/// A control request on a fresh connection, its answer as JSON.
fn control_answer(stream: &mut UnixStream, request: &[u8]) -> Value {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a timeout");
    let _ = stream.write_all(request);
    let mut answer = String::new();
    BufReader::new(&*stream)
        .read_line(&mut answer)
        .expect("an answer");
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

const STATUS: &[u8] = b"{\"version\":1,\"command\":\"status\"}\n";

/// The control and policy sockets under abuse: 1,000 and more connections at once (policy:
/// 1,024 served, more wait for a slot; control: 64 served, more answered `busy`), a client
/// sending a byte a second and one leaving its request half-sent (dropped 10 s after their
/// first byte), oversized lines (answered, the connection kept) and a line that never
/// ends (dropped); other clients are served meanwhile and the daemon's memory stays bounded.
#[test]
fn the_control_and_policy_sockets_cap_and_time_out_abusive_clients() {
    const POLICY_CAP: usize = 1024;
    const CONTROL_CAP: usize = 64;
    const CONCURRENT: usize = 1000;
    let lab = lab("sfsk");
    let policy = lab.daemon_dir().join("policy.sock");
    let listen = format!("unix:{}", policy.display());
    let args = [NO_REPUTATION.as_slice(), &["--policy-listen", &listen]].concat();
    let daemon = Daemon::start(&lab, &args, false).expect("starting the daemon");
    let control = lab.control_socket();
    let rss = || rss_kib(daemon.pid()).expect("the daemon's RSS");
    let rss_before = rss();
    let mut rss_peak = rss_before;

    // Policy: 1,000 at once, all served, and one more client besides.
    let mut held: Vec<UnixStream> = (0..CONCURRENT)
        .map(|_| UnixStream::connect(&policy).expect("a policy connection"))
        .collect();
    let answered = held
        .iter()
        .enumerate()
        .filter(|(i, s)| policy_answers(s, *i, Duration::from_secs(10)))
        .count();
    assert_eq!(answered, CONCURRENT, "policy connections answered");
    let other = UnixStream::connect(&policy).expect("one more");
    assert!(
        policy_answers(&other, CONCURRENT, Duration::from_secs(2)),
        "another client is not served while {CONCURRENT} connections are held"
    );
    held.push(other);
    // 100 more: only the slots left up to the cap are served, the others wait.
    let extra: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&policy).expect("a policy connection past the cap"))
        .collect();
    for (i, stream) in extra.iter().enumerate() {
        send_policy_request(stream, i);
    }
    std::thread::sleep(Duration::from_secs(2));
    let waiting: Vec<&UnixStream> = extra
        .iter()
        .filter(|s| !policy_reply(s, Duration::from_millis(10)))
        .collect();
    let served = held.len() + extra.len() - waiting.len();
    rss_peak = rss_peak.max(rss());
    println!(
        "policy: {} connections at once, {served} served, {} waiting for a slot",
        held.len() + extra.len(),
        waiting.len()
    );
    assert_eq!(served, POLICY_CAP, "policy connections served at once");
    // Slots freed: the waiting connections are served, in the order they came.
    held.truncate(held.len() - waiting.len());
    for stream in &waiting {
        assert!(
            policy_reply(stream, Duration::from_secs(10)),
            "a waiting connection was not served once slots were freed"
        );
    }
    drop((held, extra));

    // Control: 1,000 at once: 64 served, the others told `busy` at once, the CLI too.
    let mut connections: Vec<UnixStream> = (0..CONCURRENT)
        .map(|_| UnixStream::connect(&control).expect("a control connection"))
        .collect();
    let answers: Vec<Value> = connections
        .iter_mut()
        .map(|s| control_answer(s, STATUS))
        .collect();
    let ok = answers.iter().filter(|a| a["ok"] == true).count();
    let busy = answers.iter().filter(|a| a["kind"] == "busy").count();
    rss_peak = rss_peak.max(rss());
    println!("control: {CONCURRENT} connections at once, {ok} served, {busy} refused busy");
    assert_eq!((ok, busy), (CONTROL_CAP, CONCURRENT - CONTROL_CAP));
    let out = cli(&lab, &["status"]).expect("the CLI runs");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already serves 64 control connections"),
        "the CLI was not told busy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(connections);
    let freed = process::wait_until(Duration::from_secs(5), || {
        cli(&lab, &["status"]).is_ok_and(|o| o.status.success())
    });
    assert!(freed.is_ok(), "the control slots were not freed");

    // Oversized requests are answered and the connection kept.
    let policy_stream = UnixStream::connect(&policy).expect("connecting");
    let mut oversized = vec![b'a'; 8 * 1024 * 1024];
    oversized.extend_from_slice(b"\n\n");
    (&policy_stream).write_all(&oversized).expect("8 MiB");
    assert!(
        policy_reply(&policy_stream, Duration::from_secs(10)),
        "an 8 MiB policy line was not answered"
    );
    assert!(
        policy_answers(&policy_stream, 0, Duration::from_secs(5)),
        "the connection is not usable after an oversized line"
    );
    let mut control_stream = UnixStream::connect(&control).expect("connecting");
    let mut oversized = vec![b'a'; 1024 * 1024];
    oversized.push(b'\n');
    let answer = control_answer(&mut control_stream, &oversized);
    assert_eq!(answer["kind"], "bad_request", "{answer}");
    assert_eq!(control_answer(&mut control_stream, STATUS)["ok"], true);
    drop((policy_stream, control_stream));

    // Slow and endless clients, at once, while others are served.
    let policy_request = rcpt_request("192.0.2.1", "localhost", "slow");
    let slow = std::thread::scope(|scope| {
        let clients = [
            scope.spawn(|| {
                (
                    "policy, a byte a second",
                    dribble(&policy, policy_request.as_bytes()),
                )
            }),
            scope.spawn(|| ("control, a byte a second", dribble(&control, STATUS))),
            scope.spawn(|| {
                (
                    "policy, half-sent",
                    half_sent(
                        &policy,
                        b"request=smtpd_access_policy\nprotocol_state=RCPT\n",
                    ),
                )
            }),
            scope.spawn(|| {
                (
                    "control, half-sent",
                    half_sent(&control, b"{\"version\":1,"),
                )
            }),
            scope.spawn(|| {
                let (closed, sent) = endless_line(&policy);
                println!("policy, endless line: {sent} bytes sent before the close");
                ("policy, endless line", closed)
            }),
            scope.spawn(|| {
                let (closed, sent) = endless_line(&control);
                println!("control, endless line: {sent} bytes sent before the close");
                ("control, endless line", closed)
            }),
        ];
        // Others are served meanwhile, every second.
        let (mut others, until) = (0, Instant::now() + Duration::from_secs(12));
        while Instant::now() < until {
            let stream = UnixStream::connect(&policy).expect("connecting");
            assert!(
                policy_answers(&stream, others, Duration::from_secs(2)),
                "a policy client was not served during the abuse"
            );
            let status = cli(&lab, &["status"]).expect("the CLI runs");
            assert!(
                status.status.success(),
                "the CLI was not served during the abuse"
            );
            others += 1;
            std::thread::sleep(Duration::from_secs(1));
        }
        println!("{others} policy requests and CLI commands served during the slow clients");
        clients.map(|c| c.join().expect("a slow client"))
    });
    for (client, closed) in slow {
        let closed = closed.unwrap_or_else(|| panic!("{client}: never closed"));
        println!("{client}: closed after {:.1} s", closed.as_secs_f64());
        assert!(
            (Duration::from_secs(9)..Duration::from_secs(13)).contains(&closed),
            "{client}: closed after {closed:?}, not 10 s after its first byte"
        );
    }
    let rss_after = rss();
    rss_peak = rss_peak.max(rss_after);
    println!(
        "daemon RSS: {rss_before} KiB before, {rss_peak} KiB at the peak, {rss_after} KiB after"
    );
    assert!(
        rss_peak < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_peak} KiB"
    );
}
