//! The helo-filter daemon run inside a lab's MX namespace, with its log lines collected
//! (and optionally echoed) so that callers can wait for and inspect them.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    corpus::IDENTITY_ARGS,
    lab::{DNS_SERVER, Lab},
    netns::in_netns,
    paths::daemon_binary,
    process::{output, wait_until},
};

/// Where the daemon's metrics listen inside the MX namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9725";

pub struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Collects `lines` from the daemon's stderr until it closes.
    reader: thread::JoinHandle<()>,
    filter_ns: String,
}

impl Daemon {
    /// Starts `helo-filter run` on the lab's filter interface, with the lab's identity
    /// (`helo-policy.md`'s) and DNS server and `extra` arguments, and waits until it reports
    /// being ready (every interface attached). Without a `--config` in `extra`, the lab's
    /// empty configuration file is passed ([`Lab::empty_config`]).
    pub fn start(lab: &Lab, extra: &[&str], echo: bool) -> anyhow::Result<Daemon> {
        Daemon::start_with_env(lab, extra, &[], echo)
    }

    /// [`Daemon::start`] with variables added to the daemon's environment (a test's
    /// `HELO_FILTER_FAULT`, for one).
    pub fn start_with_env(
        lab: &Lab,
        extra: &[&str],
        env: &[(&str, &str)],
        echo: bool,
    ) -> anyhow::Result<Daemon> {
        Daemon::run(lab, extra, env, echo, None)
    }

    /// [`Daemon::start`] reading the configuration where an installed daemon does, from
    /// /etc/helo-filter (here `etc`'s directory): no `--config` and no identity flags are
    /// passed, so the file's identity is the one judged against.
    pub fn start_reading_etc(
        lab: &Lab,
        etc: &EtcOverlay,
        extra: &[&str],
        echo: bool,
    ) -> anyhow::Result<Daemon> {
        Daemon::run(lab, extra, &[], echo, Some(etc))
    }

    /// `helo-filter run` on the lab's filter interface, with the lab's paths.
    fn run(
        lab: &Lab,
        extra: &[&str],
        env: &[(&str, &str)],
        echo: bool,
        etc: Option<&EtcOverlay>,
    ) -> anyhow::Result<Daemon> {
        let (state, socket, pins) = (lab.state_dir(), lab.control_socket(), lab.bpffs_dir()?);
        let run = [
            "run",
            "--iface",
            &lab.filter_iface,
            "--state-dir",
            &state.to_string_lossy(),
            "--control-socket",
            &socket.to_string_lossy(),
            "--bpffs-dir",
            &pins.to_string_lossy(),
        ];
        Daemon::spawn(lab, &run, extra, env, "ready: capturing", echo, etc)
    }

    /// Starts `helo-filter policy` (the Postfix policy service alone, no XDP program) in the
    /// MX namespace, listening on `listen`, with the lab's identity and DNS server and `extra`
    /// arguments, and waits until it listens.
    pub fn start_policy_service(
        lab: &Lab,
        listen: &str,
        extra: &[&str],
        echo: bool,
    ) -> anyhow::Result<Daemon> {
        let policy = ["policy", "--listen", listen];
        Daemon::spawn(
            lab,
            &policy,
            extra,
            &[],
            "policy service listening",
            echo,
            None,
        )
    }

    fn spawn(
        lab: &Lab,
        command: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
        ready_line: &str,
        echo: bool,
        etc: Option<&EtcOverlay>,
    ) -> anyhow::Result<Daemon> {
        let binary = daemon_binary();
        if !binary.exists() {
            bail!(
                "{} is missing: build it first (cargo build -p helo-filter; cargo xtask test does)",
                binary.display()
            );
        }
        // The configuration is explicit, so that nothing under /etc changes what the lab
        // sees: the caller's `--config`, or the lab's empty one (the built-in defaults) — unless
        // the test gives /etc/helo-filter a directory of its own (`etc`). `--config` cannot be
        // given twice.
        let lab_config = match etc.is_some() || config_given(extra) {
            true => None,
            false => Some(lab.empty_config()?),
        };
        let binary = binary.to_string_lossy();
        let mut launch = match etc {
            Some(etc) => etc.command(Some(&lab.filter_ns), &binary),
            None => lab.command_in(&lab.filter_ns, &binary),
        };
        let identity: &[&str] = if etc.is_some() { &[] } else { &IDENTITY_ARGS };
        let mut child = launch
            .args(command)
            .args(
                lab_config
                    .iter()
                    .flat_map(|c| [std::ffi::OsStr::new("--config"), c.as_os_str()]),
            )
            .args(["--metrics-addr", METRICS_ADDR])
            .args(["--dns-server", DNS_SERVER])
            .args(identity)
            .args(extra)
            .env("RUST_LOG", "info")
            .env("RUST_LOG_STYLE", "never")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting helo-filter")?;
        let stderr = child.stderr.take().context("daemon stderr")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    println!("  daemon | {line}");
                }
                sink.lock().expect("log lines").push(line);
            }
        });
        let mut daemon = Daemon {
            child,
            lines,
            reader,
            filter_ns: lab.filter_ns.clone(),
        };
        let ready = daemon.wait_for(Duration::from_secs(30), |l| l.contains(ready_line));
        if let Err(e) = ready {
            let status = daemon.child.try_wait()?;
            if status.is_some() {
                daemon.read_to_the_end();
            }
            bail!(
                "helo-filter did not become ready ({e}); exit: {status:?}; log:\n{}",
                daemon.lines().join("\n")
            );
        }
        Ok(daemon)
    }

    /// The daemon's process id (`ip netns exec` execs it: the child is the daemon itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the daemon still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("log lines").clone()
    }

    /// Waits for a log line matching `pred` and returns it.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let mut found = None;
        wait_until(timeout, || {
            found = self.lines().into_iter().find(|l| pred(l));
            found.is_some() || self.child.try_wait().ok().flatten().is_some()
        })?;
        found.context("the daemon exited")
    }

    /// Fetches the metrics page from inside the daemon's namespace.
    pub fn scrape(&self) -> anyhow::Result<String> {
        in_netns(&self.filter_ns, || {
            crate::http::get_ok(METRICS_ADDR.parse()?, "/metrics")
        })
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, …) to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) takes two integers and touches no memory of this process. The
        // pid is our child's: std reaps it only through `self.child` (`try_wait`, `wait`),
        // and until then the kernel keeps the pid for it even after it exits.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the daemon to exit by itself, at most `timeout`; its log is then complete.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        wait_until(timeout, || self.child.try_wait().ok().flatten().is_some())?;
        let status = self.child.wait()?;
        self.read_to_the_end();
        Ok(status)
    }

    /// After the daemon's exit, waits (at most 5 s) until its last lines, the error that
    /// ended it above all, are read from the pipe: on a loaded machine the reader thread may
    /// not have had them yet when the exit is seen.
    fn read_to_the_end(&self) {
        let _ = wait_until(Duration::from_secs(5), || self.reader.is_finished());
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.signal(libc::SIGTERM);
        wait_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten().is_some()
        })?;
        Ok(self.child.wait()?)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's resident memory (`VmRSS` in /proc/PID/status), in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// Whether `args` name a configuration file (`--config FILE` or `--config=FILE`).
pub fn config_given(args: &[&str]) -> bool {
    args.iter()
        .any(|a| *a == "--config" || *a == "-c" || a.starts_with("--config="))
}

/// Where `helo-filter` reads its configuration when told nothing.
const ETC_DIR: &str = "/etc/helo-filter";

/// A directory that commands started through it see as /etc/helo-filter: a bind mount in a
/// private mount namespace of each command's own, so the host's /etc is left as it is (but
/// for the empty mount point, created when absent and removed again when this is dropped).
pub struct EtcOverlay {
    dir: std::path::PathBuf,
    created_mount_point: bool,
}

impl EtcOverlay {
    pub fn new(dir: &std::path::Path) -> anyhow::Result<EtcOverlay> {
        let created_mount_point = !std::path::Path::new(ETC_DIR).exists();
        if created_mount_point {
            std::fs::create_dir(ETC_DIR).with_context(|| format!("creating {ETC_DIR}"))?;
        }
        Ok(EtcOverlay {
            dir: dir.to_owned(),
            created_mount_point,
        })
    }

    /// `program` in network namespace `ns` (none: the host's), seeing the directory as
    /// /etc/helo-filter; the caller adds the arguments.
    pub fn command(&self, ns: Option<&str>, program: &str) -> std::process::Command {
        let mut command = match ns {
            Some(ns) => crate::netns::command_in(ns, "unshare"),
            None => std::process::Command::new("unshare"),
        };
        command
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("mount --bind \"$0\" {ETC_DIR} && exec \"$@\""))
            .arg(&self.dir)
            .arg(program);
        command
    }
}

impl Drop for EtcOverlay {
    fn drop(&mut self) {
        if self.created_mount_point {
            let _ = std::fs::remove_dir(ETC_DIR);
        }
    }
}

/// Runs an operator subcommand of `helo-filter` against the lab's daemon (its control
/// socket), e.g. `["deny", "add", "203.0.113.14"]`.
pub fn cli(lab: &Lab, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let socket = lab.control_socket();
    std::process::Command::new(daemon_binary())
        .args(args)
        .arg("--control-socket")
        .arg(socket)
        .stdin(Stdio::null())
        .output()
        .context("running the helo-filter CLI")
}

/// The value of one series (`name{labels}` exactly as rendered) in a metrics page.
pub fn metric_value(page: &str, series: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The sum of every labelled series of the family `name` on a metrics page.
pub fn family_sum(page: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{");
    page.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Entries in a pinned map: bpftool's plain dump ends with `Found N elements`.
pub fn map_entries(pin: &std::path::Path) -> anyhow::Result<usize> {
    let dump = output(
        Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(pin),
    )
    .context("bpftool (Debian package bpftool)")?;
    dump.lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("Found ")?
                .strip_suffix(" elements")?
                .parse()
                .ok()
        })
        .context("bpftool's dump has no `Found N elements` line")
}

#[cfg(test)]
mod tests {
    use super::config_given;

    #[test]
    fn a_config_in_the_extra_arguments_is_seen() {
        assert!(config_given(&["--deny-ttl", "5", "--config", "x.toml"]));
        assert!(config_given(&["--config=x.toml"]));
        assert!(!config_given(&["--deny-ttl", "5"]));
        assert!(!config_given(&["--configs"]));
    }
}
