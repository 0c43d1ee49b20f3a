//! Network-namespace plumbing shared by the lab, the daemon, the fixture DNS server, the
//! sessions and the benchmarks: running code or commands inside a namespace, `ip` calls,
//! tearing namespaces down. Depends only on `process`.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    thread,
};

use crate::process::output;

/// Runs `f` on a thread that has entered the network namespace `ns`: sockets it opens
/// live in that namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: setns(2) reads no memory of ours: it takes a descriptor, valid for the
        // call because `file` is open until the end of this closure, and a flag. It moves
        // only the calling thread, a thread spawned for `f` alone, into the namespace, so
        // no other thread's sockets change namespace under it.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            panic!("setns {path}: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// `program` to be run inside the namespace `ns` (through `ip netns exec`).
pub fn command_in(ns: &str, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, program]);
    command
}

/// `ip ARGS` in the current namespace; an error carries ip's message.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    output(Command::new("ip").args(args)).map(drop)
}

/// `ip -n NS ARGS`; an error carries ip's message.
pub fn ip_in(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    output(Command::new("ip").args(["-n", ns]).args(args)).map(drop)
}

/// Kills whatever runs in each namespace and deletes it (which deletes its interfaces);
/// a namespace that does not exist is skipped.
pub fn remove_namespaces(namespaces: &[&str]) {
    for ns in namespaces {
        // Processes still inside would keep the namespace's interfaces alive.
        if let Ok(pids) = output(Command::new("ip").args(["netns", "pids", ns])) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .filter(|&pid| pid > 0)
            {
                // SAFETY: kill(2) takes two integers and touches no memory of this
                // process, so it cannot break memory safety; the pid is one the kernel
                // has just listed as running in the lab's namespace, and it is positive, so
                // never a process group or every process (0, -1).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
}

/// `struct ethtool_value` of `<linux/ethtool.h>`: a command and its 32-bit argument.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_SFLAGS: u32 = 0x26;
/// `ETH_FLAG_TXVLAN` and `ETH_FLAG_RXVLAN`: the "tx-vlan-offload" and "rx-vlan-offload" of
/// `ethtool -k` (NETIF_F_HW_VLAN_CTAG_TX and _RX).
const ETH_FLAG_TXVLAN: u32 = 1 << 7;
const ETH_FLAG_RXVLAN: u32 = 1 << 8;

/// One SIOCETHTOOL request on `iface` in the calling thread's namespace; the value the kernel
/// left in `value.data`.
fn ethtool_value(iface: &str, cmd: u32, data: u32) -> std::io::Result<u32> {
    use std::os::fd::{FromRawFd as _, OwnedFd};

    // SAFETY: socket(2) takes three integers and touches no memory of ours.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = iface.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::other(format!(
            "interface name {iface:?} too long"
        )));
    }
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: ifreq is plain data (a name and a union of integers and a pointer), for which
    // all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
        *slot = *byte as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: SIOCETHTOOL reads the ifreq, whose name is NUL-terminated (zeroed beyond the
    // name, shorter than IFNAMSIZ), and reads and writes the ethtool_value its data field
    // points to; both live on this stack frame until the call returns, and the socket is
    // open.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SIOCETHTOOL,
            &raw mut request,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value.data)
}

/// Turns the 802.1Q (C-tag) VLAN offloads of `iface` in namespace `ns` on or off: receive
/// (`rxvlan`) and transmit (`txvlan`), as `ethtool -K IFACE rxvlan off txvlan off` does,
/// without needing ethtool. With transmit offload off, a VLAN sub-interface's frames leave
/// with their tag written into the frame instead of the packet's metadata.
pub fn set_vlan_offload(ns: &str, iface: &str, on: bool) -> anyhow::Result<()> {
    let iface = iface.to_owned();
    in_netns(ns, move || -> anyhow::Result<()> {
        let flags = ethtool_value(&iface, ETHTOOL_GFLAGS, 0)
            .map_err(|e| anyhow::anyhow!("{iface}: reading its offload flags: {e}"))?;
        let vlan = ETH_FLAG_TXVLAN | ETH_FLAG_RXVLAN;
        let wanted = if on { flags | vlan } else { flags & !vlan };
        ethtool_value(&iface, ETHTOOL_SFLAGS, wanted)
            .map_err(|e| anyhow::anyhow!("{iface}: setting its VLAN offloads: {e}"))?;
        let now = ethtool_value(&iface, ETHTOOL_GFLAGS, 0)
            .map_err(|e| anyhow::anyhow!("{iface}: reading its offload flags: {e}"))?;
        anyhow::ensure!(
            now & vlan == wanted & vlan,
            "{iface}: VLAN offload flags {:#x} after asking for {:#x}",
            now & vlan,
            wanted & vlan
        );
        Ok(())
    })
}

/// `struct bpf_insn`: one eBPF instruction.
#[repr(C)]
#[derive(Clone, Copy)]
struct BpfInsn {
    code: u8,
    /// Destination register in the low nibble, source register in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

/// `dst = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
const fn mov64_imm(dst: u8, imm: i32) -> BpfInsn {
    BpfInsn {
        code: 0xb7,
        regs: dst,
        off: 0,
        imm,
    }
}

/// A call to the helper numbered `helper` (BPF_JMP | BPF_CALL), its arguments in r1-r5.
const fn call(helper: i32) -> BpfInsn {
    BpfInsn {
        code: 0x85,
        regs: 0,
        off: 0,
        imm: helper,
    }
}

const EXIT: BpfInsn = BpfInsn {
    code: 0x95,
    regs: 0,
    off: 0,
    imm: 0,
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_FUNC_SKB_VLAN_PUSH: i32 = 18;
const BPF_FUNC_SKB_VLAN_POP: i32 = 19;
/// TCX_NEXT: the packet goes on to the next TC program, or on its way if there is none.
const TCX_NEXT: i32 = -1;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// The `BPF_LINK_CREATE` part of `union bpf_attr`, for a TCX link.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

/// bpf(2) returning a new descriptor.
///
/// # Safety
/// `attr` must be the attribute struct of `cmd`, and every address in it valid for the
/// call.
unsafe fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;

    // SAFETY: the caller vouches for `attr`; the size passed is its own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor bpf(2) has just returned, owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Loads a TC program of `insns`.
fn load_tc_program(name: &str, insns: &[BpfInsn]) -> anyhow::Result<std::os::fd::OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut prog_name = [0u8; 16];
    for (slot, byte) in prog_name.iter_mut().take(15).zip(name.bytes()) {
        *slot = byte;
    }
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
    };
    // SAFETY: a BPF_PROG_LOAD attribute whose instructions, license and log buffer all live
    // until the call returns.
    unsafe { bpf_fd(BPF_PROG_LOAD, &mut attr) }.map_err(|e| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        anyhow::anyhow!(
            "loading the TC program {name}: {e}; verifier log:\n{}",
            String::from_utf8_lossy(&log[..end])
        )
    })
}

/// Attaches the TC program `prog` to `iface` of the calling thread's namespace (TCX,
/// appended after any program already there); the link, attached while it is open.
fn attach_tcx(
    prog: &std::os::fd::OwnedFd,
    iface: &str,
    attach_type: u32,
) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd as _;

    let name = std::ffi::CString::new(iface)?;
    // SAFETY: if_nametoindex(3) reads the NUL-terminated name, alive for the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        anyhow::bail!("{iface}: {}", std::io::Error::last_os_error());
    }
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type,
        flags: 0,
        relative_fd: 0,
        _pad: 0,
        expected_revision: 0,
    };
    // SAFETY: a BPF_LINK_CREATE attribute holding no address.
    unsafe { bpf_fd(BPF_LINK_CREATE, &mut attr) }
        .map_err(|e| anyhow::anyhow!("attaching a TC program to {iface}: {e}"))
}

/// Tags every frame `iface` (in namespace `ns`) sends with the 802.1Q VLAN `id`, and takes
/// the tag off every frame it receives (after XDP, which sees it): two tiny TC programs, for
/// a kernel without the 802.1Q driver. Returns their links: dropping them ends the tagging.
/// The tag is pushed into the packet's metadata; unless the interface's transmit VLAN
/// offload is off ([`set_vlan_offload`]), it stays there and is never written into the frame.
pub fn tag_vlan(ns: &str, iface: &str, id: u16) -> anyhow::Result<Vec<std::os::fd::OwnedFd>> {
    if id == 0 || id >= 4095 {
        anyhow::bail!("VLAN id {id} is not in 1..=4094");
    }
    let iface = iface.to_owned();
    in_netns(ns, move || {
        // bpf_skb_vlan_push(skb, htons(ETH_P_8021Q), id): r1 is still the context.
        let push = [
            mov64_imm(2, i32::from(0x8100u16.to_be())),
            mov64_imm(3, i32::from(id)),
            call(BPF_FUNC_SKB_VLAN_PUSH),
            mov64_imm(0, TCX_NEXT),
            EXIT,
        ];
        // bpf_skb_vlan_pop(skb): a no-op on an untagged frame.
        let pop = [call(BPF_FUNC_SKB_VLAN_POP), mov64_imm(0, TCX_NEXT), EXIT];
        let push = load_tc_program("lab_vlan_push", &push)?;
        let pop = load_tc_program("lab_vlan_pop", &pop)?;
        Ok(vec![
            attach_tcx(&push, &iface, BPF_TCX_EGRESS)?,
            attach_tcx(&pop, &iface, BPF_TCX_INGRESS)?,
        ])
    })
}
