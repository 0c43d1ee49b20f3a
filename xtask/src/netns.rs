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
