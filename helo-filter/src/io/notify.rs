//! The service manager's readiness protocol (`sd_notify(3)`), without libsystemd: each
//! state change is one datagram of `KEY=VALUE` lines sent to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for a socket in the abstract namespace). Without
//! `NOTIFY_SOCKET` (not started by systemd as `Type=notify`) every call does nothing.
//!
//! Failures to send are logged once at debug level and otherwise ignored: readiness is a
//! courtesy to the service manager, never a reason for the daemon to stop.

use std::{
    ffi::OsString,
    os::unix::{
        ffi::OsStrExt as _,
        net::{SocketAddr, UnixDatagram},
    },
    time::Duration,
};

use log::debug;

/// Where notifications go; `None` when the service manager asked for none.
#[derive(Debug)]
pub struct Notifier {
    target: Option<SocketAddr>,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` describes.
    pub fn from_env() -> Notifier {
        Notifier::new(std::env::var_os("NOTIFY_SOCKET"))
    }

    /// A notifier for `socket` (`$NOTIFY_SOCKET`'s value): a path, or `@name` (abstract).
    pub fn new(socket: Option<OsString>) -> Notifier {
        let target = socket.filter(|s| !s.is_empty()).and_then(|s| {
            let bytes = s.as_bytes();
            let addr = match bytes.strip_prefix(b"@") {
                Some(name) => abstract_addr(name),
                None => SocketAddr::from_pathname(std::path::Path::new(&s)),
            };
            addr.map_err(|e| debug!("NOTIFY_SOCKET {s:?} unusable: {e}"))
                .ok()
        });
        Notifier { target }
    }

    /// Whether notifications are sent at all.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Every interface attached and the pipeline running.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A reload begins (answered by [`Notifier::ready`] when it ends).
    pub fn reloading(&self) {
        self.send("RELOADING=1");
    }

    /// The daemon is shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// Feeds the watchdog.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// A free-form status line for `systemctl status`.
    pub fn status(&self, text: &str) {
        // One line: a newline would start another KEY=VALUE.
        self.send(&format!("STATUS={}", text.replace('\n', " ")));
    }

    /// Sends `state` (newline-separated assignments) as one datagram.
    pub fn send(&self, state: &str) {
        let Some(target) = &self.target else {
            return;
        };
        let sent = UnixDatagram::unbound()
            .and_then(|socket| socket.send_to_addr(state.as_bytes(), target));
        if let Err(e) = sent {
            debug!("notifying the service manager ({state:?}): {e}");
        }
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt as _;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_name: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract Unix sockets are Linux-only",
    ))
}

/// How often the watchdog must be fed, from `$WATCHDOG_USEC` (and `$WATCHDOG_PID`, when
/// set, naming this process); `None` when the service manager runs no watchdog for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn watchdog_from(usec: Option<&str>, pid: Option<&str>, own: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own)
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn without_a_socket_nothing_is_sent() {
        let notifier = Notifier::new(None);
        assert!(!notifier.enabled());
        notifier.ready();
        assert!(!Notifier::new(Some(OsString::new())).enabled());
    }

    #[test]
    fn a_path_socket_receives_each_state() {
        let dir = std::env::temp_dir().join(format!("hf-notify-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let notifier = Notifier::new(Some(path.clone().into_os_string()));
        notifier.ready();
        notifier.watchdog();
        notifier.status("two\nlines");
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = receiver.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(got, ["READY=1", "WATCHDOG=1", "STATUS=two lines"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_abstract_socket_receives_too() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("hf-notify-unit-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        Notifier::new(Some(format!("@{name}").into())).stopping();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn the_watchdog_interval_is_ours_only() {
        let own = 4242;
        assert_eq!(
            watchdog_from(Some("1500000"), None, own),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            watchdog_from(Some("30000000"), Some("4242"), own),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_from(Some("30000000"), Some("1"), own), None);
        assert_eq!(watchdog_from(Some("0"), None, own), None);
        assert_eq!(watchdog_from(Some("soon"), None, own), None);
        assert_eq!(watchdog_from(None, None, own), None);
    }
}
