//! The kernel side as user space sees it: the embedded objects, loading, attaching and
//! reading the kernel's counters.

use std::{os::fd::AsRawFd, path::Path};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink},
        xdp::XdpLink,
    },
};
use helo_filter_common::{Counter, KernelConfig, maps, programs};
use log::warn;
use tokio::io::{Interest, unix::AsyncFd};

pub mod lists;
pub mod pass_through;
pub mod pins;

use pins::{PERSISTENT_MAPS, PinDir};

use crate::clock::boot_time_ns;

/// The helo-filter XDP object, built by build.rs.
pub static CAPTURE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/helo-filter"));
/// An XDP program that only returns XDP_PASS: the baseline for per-packet figures, and the
/// program through which held segments are re-injected (see [`pass_through`]).
pub static BASELINE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baseline-pass"));

/// How the operator asked for the program to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeChoice {
    /// Native (driver) mode, falling back to generic with a warning.
    Auto,
    /// Native (driver) mode only: the start fails where the driver lacks it.
    Native,
    /// Generic (skb) mode: works on any interface, at a higher cost per packet.
    Generic,
}

impl XdpModeChoice {
    /// Whether a link in `mode` satisfies this choice.
    fn allows(self, mode: AttachedMode) -> bool {
        matches!(
            (self, mode),
            (XdpModeChoice::Auto, _)
                | (XdpModeChoice::Native, AttachedMode::Native)
                | (XdpModeChoice::Generic, AttachedMode::Generic)
        )
    }
}

/// The mode an attachment really runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
}

impl AttachedMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        }
    }
}

fn check_object(bytes: &[u8]) -> anyhow::Result<()> {
    if bytes.is_empty() {
        bail!("this binary was built with AYA_BUILD_SKIP: it carries no eBPF object");
    }
    Ok(())
}

/// Loads the capture program into the kernel (not yet attached) and writes its config, its
/// `EVENTS` ring buffer `ringbuf_bytes` long. With `pins`, the persistent maps are the ones
/// pinned there (created and pinned if absent): a restarted daemon keeps its predecessor's
/// entries.
pub fn load(
    config: &KernelConfig,
    ringbuf_bytes: u32,
    pins: Option<&PinDir>,
) -> anyhow::Result<Ebpf> {
    check_object(CAPTURE_OBJECT)?;
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(maps::EVENTS, ringbuf_bytes);
    if let Some(pins) = pins {
        pins.check_layouts(CAPTURE_OBJECT, ringbuf_bytes)?;
        for name in PERSISTENT_MAPS {
            loader.map_pin_path(name, pins.map(name));
        }
    }
    let mut ebpf = loader
        .load(CAPTURE_OBJECT)
        .context("loading the eBPF object")?;
    write_config(&mut ebpf, config)?;
    let program: &mut Xdp = capture_program(&mut ebpf)?;
    program
        .load()
        .context("the kernel verifier refused the XDP program")?;
    Ok(ebpf)
}

/// Loads the baseline programs, XDP and TC (for benchmarks).
pub fn load_baseline() -> anyhow::Result<Ebpf> {
    check_object(BASELINE_OBJECT)?;
    let mut ebpf = Ebpf::load(BASELINE_OBJECT).context("loading the baseline object")?;
    baseline_program(&mut ebpf)?.load()?;
    baseline_classifier(&mut ebpf)?.load()?;
    Ok(ebpf)
}

pub fn capture_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    xdp_program(ebpf, programs::CAPTURE)
}

pub fn baseline_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    xdp_program(ebpf, programs::BASELINE_PASS)
}

pub fn baseline_classifier(ebpf: &mut Ebpf) -> anyhow::Result<&mut SchedClassifier> {
    Ok(ebpf
        .program_mut(programs::BASELINE_TC_OK)
        .context("the TC baseline program is missing from the object")?
        .try_into()?)
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?
        .try_into()?)
}

pub fn write_config(ebpf: &mut Ebpf, config: &KernelConfig) -> anyhow::Result<()> {
    let mut array: Array<_, KernelConfig> =
        Array::try_from(ebpf.map_mut(maps::CONFIG).context("CONFIG map missing")?)?;
    array
        .set(0, config, 0)
        .context("writing the kernel config")?;
    Ok(())
}

/// How an interface came to run the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub mode: AttachedMode,
    /// The link was pinned by an earlier daemon; this one's program replaced its program.
    pub adopted: bool,
}

/// Attaches the loaded capture program to `iface`. With `pins`: a link pinned there by an
/// earlier daemon is adopted (the new program replaces the old one in it atomically, in
/// the mode it was attached in); otherwise the new link is pinned there.
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    mode: XdpModeChoice,
    pins: Option<&PinDir>,
) -> anyhow::Result<Attachment> {
    let program = capture_program(ebpf)?;
    if let Some(pins) = pins
        && let Some((_, pinned)) = pins.xdp_links().into_iter().find(|(i, _)| i == iface)
    {
        let path = pins.xdp_link(iface, pinned);
        let link = XdpLink::try_from(open_pinned_link(&path)?)?;
        program
            .attach_to_link(link)
            .with_context(|| format!("{iface}: replacing the program in the pinned XDP link"))?;
        if !mode.allows(pinned) {
            warn!(
                "{iface}: keeps running in {} mode, as pinned (detach to change the mode)",
                pinned.as_str()
            );
        }
        return Ok(Attachment {
            mode: pinned,
            adopted: true,
        });
    }
    let attach = |program: &mut Xdp, mode: XdpMode| {
        program
            .attach(iface, mode)
            .with_context(|| format!("attaching XDP to {iface} in {mode:?} mode"))
    };
    let (mode, id) = match mode {
        XdpModeChoice::Native => (AttachedMode::Native, attach(program, XdpMode::Driver)?),
        XdpModeChoice::Generic => (AttachedMode::Generic, attach(program, XdpMode::Skb)?),
        XdpModeChoice::Auto => match attach(program, XdpMode::Driver) {
            Ok(id) => (AttachedMode::Native, id),
            Err(native_error) => {
                let id = attach(program, XdpMode::Skb)?;
                warn!(
                    "{iface}: native XDP unavailable ({native_error:#}); running in generic mode"
                );
                (AttachedMode::Generic, id)
            }
        },
    };
    if let Some(pins) = pins {
        let link = FdLink::try_from(program.take_link(id)?)
            .context("this kernel attaches XDP without a BPF link, which cannot be pinned")?;
        pin_link(link, &pins.xdp_link(iface, mode))?;
    }
    Ok(Attachment {
        mode,
        adopted: false,
    })
}

/// Attaches the TC egress program (action `drop`) to `iface`, adopting or pinning its link
/// like [`attach`].
pub fn attach_egress(ebpf: &mut Ebpf, iface: &str, pins: Option<&PinDir>) -> anyhow::Result<()> {
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        // Already there (another tool's, or ours from an earlier run), or not needed (TCX).
        log::debug!("{iface}: clsact qdisc: {e}");
    }
    let program: &mut SchedClassifier = ebpf
        .program_mut(programs::EGRESS)
        .context("egress program missing from the object")?
        .try_into()?;
    if program.fd().is_err() {
        program
            .load()
            .context("the kernel verifier refused the egress program")?;
    }
    let pinned = pins.map(|pins| pins.egress_link(iface));
    if let Some(path) = pinned.as_ref().filter(|p| p.exists()) {
        program
            .attach_to_link(SchedClassifierLink::try_from(open_pinned_link(path)?)?)
            .with_context(|| format!("{iface}: replacing the program in the pinned TC link"))?;
        return Ok(());
    }
    let id = program
        .attach(iface, TcAttachType::Egress)
        .with_context(|| format!("attaching the TC egress program to {iface}"))?;
    if let Some(path) = pinned {
        let link = FdLink::try_from(program.take_link(id)?)
            .context("this kernel attaches TC programs without a BPF link (TCX needs 6.6)")?;
        pin_link(link, &path)?;
    }
    Ok(())
}

/// A link an earlier daemon pinned at `path` (the pin stays).
fn open_pinned_link(path: &Path) -> anyhow::Result<FdLink> {
    let link = PinnedLink::from_pin(path)
        .with_context(|| format!("opening the pinned link {}", path.display()))?;
    Ok(FdLink::from(link))
}

/// Pins `link` at `path`: it then outlives this process (the returned handle is dropped, the
/// pin holds the link).
fn pin_link(link: FdLink, path: &Path) -> anyhow::Result<()> {
    link.pin(path)
        .with_context(|| format!("pinning {}", path.display()))?;
    Ok(())
}

/// Unpins the links of interfaces no longer configured, and the egress links when action
/// `drop` is no longer in force: what the configuration no longer asks for ends.
pub fn release_unwanted(pins: &PinDir, ifaces: &[String], egress: bool) {
    let wanted = |iface: &String| ifaces.contains(iface);
    let stale_xdp = pins
        .xdp_links()
        .into_iter()
        .filter(|(iface, _)| !wanted(iface))
        .map(|(iface, mode)| (pins.xdp_link(&iface, mode), iface));
    let stale_egress = pins
        .egress_links()
        .into_iter()
        .filter(|iface| !egress || !wanted(iface))
        .map(|iface| (pins.egress_link(&iface), iface));
    for (path, iface) in stale_xdp.chain(stale_egress) {
        match std::fs::remove_file(&path) {
            Ok(()) => log::info!("{iface}: no longer configured: unpinned {}", path.display()),
            Err(e) => warn!("{iface}: unpinning {}: {e}", path.display()),
        }
    }
}

/// The kernel's per-CPU counters, summed over CPUs, indexed like `Counter::ALL`.
pub struct CounterReader {
    array: PerCpuArray<aya::maps::MapData, u64>,
}

impl CounterReader {
    pub fn new(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(maps::COUNTERS)
            .context("COUNTERS map missing")?;
        Ok(CounterReader {
            array: PerCpuArray::try_from(map)?,
        })
    }

    pub fn read(&self, counter: Counter) -> anyhow::Result<u64> {
        let values = self.array.get(&(counter as u32), 0)?;
        Ok(values.iter().sum())
    }
}

/// Registers a kernel object (ring buffer, logger) with tokio to await readability.
pub fn readable_fd<T: AsRawFd>(inner: T) -> anyhow::Result<AsyncFd<T>> {
    // SAFETY: aya's ring buffer and logger own their map fd and close it only when
    // dropped, which happens after the AsyncFd has deregistered it.
    unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }
        .map_err(|e| anyhow!("registering a kernel map with the reactor: {e}"))
}

/// Writes the daemon's heartbeat; while it is fresh the kernel's gate holds flows awaiting
/// their verdict, and once it is stale the gate lets everything through.
pub struct Heartbeat {
    array: Array<aya::maps::MapData, u64>,
}

impl Heartbeat {
    pub fn new(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map(maps::HEARTBEAT)
            .context("HEARTBEAT map missing")?;
        Ok(Heartbeat {
            array: Array::try_from(map)?,
        })
    }

    pub fn beat(&mut self) -> anyhow::Result<()> {
        self.beat_at(boot_time_ns())
    }

    /// Writes a heartbeat of the given boot-clock time (tests use an old one).
    pub fn beat_at(&mut self, boot_ns: u64) -> anyhow::Result<()> {
        self.array.set(0, boot_ns, 0)?;
        Ok(())
    }
}
