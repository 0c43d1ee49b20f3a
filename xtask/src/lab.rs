//! A throwaway lab: an MX namespace and a client namespace joined by a veth pair, with
//! documentation-range addresses, smtp-sink on port 25 (IPv4 and IPv6) in the MX.
//!
//! ```text
//!  <name>-cl                                   <name>-mx
//!  203.0.113.10-14/24      <name>-c ═══ <name>-m   198.51.100.25/24
//!  2001:db8:1::10-14/64                           2001:db8:25::25/64  smtp-sink :25
//! ```
//!
//! The addresses are the local identity of `helo-policy.md`. Both sides reach the other
//! subnet through an on-link route, so no router is needed. dnsmasq serves the DNS fixture
//! on 127.0.0.1:53 inside the MX namespace, where the daemon resolves.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    dns_fixture::Dnsmasq,
    netns::{self, in_netns, ip, ip_in},
    process::{output, wait_until},
};

pub const MX_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 25);
pub const MX_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x25, 0, 0, 0, 0, 0x25);
pub const SMTP_PORT: u16 = 25;
/// Where the fixture DNS server listens inside the MX namespace.
pub const DNS_SERVER: &str = "127.0.0.1:53";
/// Answers are cached by the daemon for this long (dnsmasq's default TTL is 0).
const DNS_TTL: u32 = 60;
/// Client addresses per family.
pub const CLIENTS: usize = 5;

/// The `i`-th client IPv4 address: 203.0.113.10 … .14 (`i` < CLIENTS).
pub fn client_v4(i: usize) -> Ipv4Addr {
    assert!(i < CLIENTS, "the lab has {CLIENTS} clients");
    Ipv4Addr::new(203, 0, 113, 10 + i as u8)
}

/// The `i`-th client IPv6 address: 2001:db8:1::10 … ::14 (`i` < CLIENTS).
pub fn client_v6(i: usize) -> Ipv6Addr {
    assert!(i < CLIENTS, "the lab has {CLIENTS} clients");
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + i as u16)
}

pub struct Lab {
    pub mx_ns: String,
    pub client_ns: String,
    /// The MX side of the veth pair.
    pub mx_iface: String,
    pub client_iface: String,
    /// Where the filter runs and the interface it attaches to: the MX side, or in a
    /// gateway lab the gateway's client-facing side.
    pub filter_ns: String,
    pub filter_iface: String,
    /// The gateway namespace of a gateway lab.
    gateway_ns: Option<String>,
    processes: Vec<Child>,
    dns: Option<Dnsmasq>,
    postfix: Option<PostfixInstance>,
    /// The TC links of [`Lab::use_vlan`]'s taggers (closing them detaches them).
    vlan_links: Vec<std::os::fd::OwnedFd>,
}

/// A Postfix instance of the lab's own (its own configuration, queue and log directories;
/// nothing under /etc/postfix is used or changed), listening on the MX's port 25.
pub struct PostfixInstance {
    pub dir: PathBuf,
    config: PathBuf,
    ns: String,
}

impl PostfixInstance {
    /// Postfix's log (`maillog_file`).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for PostfixInstance {
    fn drop(&mut self) {
        // Bounded: `postfix stop` waits on the master's lock, which a master still starting
        // on a loaded machine can hold (a test once hung here).
        let _ = Command::new("timeout")
            .args(["30", "ip", "netns", "exec", &self.ns, "postfix", "-c"])
            .arg(&self.config)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir_all(format!("/etc/netns/{}", self.ns));
    }
}

impl Lab {
    /// Creates the lab `name` (at most 11 characters), first removing what a crashed
    /// run may have left under the same name.
    pub fn create(name: &str) -> anyhow::Result<Lab> {
        if name.len() > 11 {
            bail!("lab name {name:?} is longer than 11 characters");
        }
        let lab = Lab::named(name, false)?;
        lab.build()
            .with_context(|| format!("creating lab {name}"))?;
        Ok(lab)
    }

    /// [`Lab::create`] with smtp-sink on the MX's port 25 and the fixture DNS where the
    /// filter runs: the lab most end-to-end tests use.
    pub fn create_serving(name: &str) -> anyhow::Result<Lab> {
        let mut lab = Lab::create(name)?;
        lab.start_smtp_sink()?;
        lab.start_dns()?;
        Ok(lab)
    }

    /// A gateway lab: client ─ gateway (routes between the two subnets; the filter runs
    /// here, on the client-facing side) ─ MX.
    ///
    /// ```text
    ///  <name>-cl                 <name>-gw                         <name>-mx
    ///  203.0.113.10-14  <name>-c ═ <name>-gc  203.0.113.1
    ///  2001:db8:1::10-14           2001:db8:1::1
    ///                              <name>-gm  198.51.100.1 ═ <name>-m  198.51.100.25
    ///                              2001:db8:25::1                    2001:db8:25::25
    /// ```
    pub fn create_with_gateway(name: &str) -> anyhow::Result<Lab> {
        let lab = Lab::named(name, true)?;
        lab.build_gateway()
            .with_context(|| format!("creating gateway lab {name}"))?;
        Ok(lab)
    }

    fn named(name: &str, gateway: bool) -> anyhow::Result<Lab> {
        if name.len() > 11 {
            bail!("lab name {name:?} is longer than 11 characters");
        }
        let mx_ns = format!("{name}-mx");
        let mx_iface = format!("{name}-m");
        let gateway_ns = gateway.then(|| format!("{name}-gw"));
        let (filter_ns, filter_iface) = match &gateway_ns {
            Some(gw) => (gw.clone(), format!("{name}-gc")),
            None => (mx_ns.clone(), mx_iface.clone()),
        };
        let lab = Lab {
            mx_ns,
            client_ns: format!("{name}-cl"),
            mx_iface,
            client_iface: format!("{name}-c"),
            filter_ns,
            filter_iface,
            gateway_ns,
            processes: Vec::new(),
            dns: None,
            postfix: None,
            vlan_links: Vec::new(),
        };
        remove_stale_labs();
        remove(name);
        mark_owner(name)?;
        Ok(lab)
    }

    /// The client namespace's documentation-range addresses.
    fn add_client_addresses(&self) -> anyhow::Result<()> {
        let (cl, iface) = (&self.client_ns, &self.client_iface);
        for i in 0..CLIENTS {
            let v4 = format!("{}/24", client_v4(i));
            let v6 = format!("{}/64", client_v6(i));
            ip_in(cl, &["addr", "add", &v4, "dev", iface])?;
            ip_in(cl, &["-6", "addr", "add", &v6, "dev", iface, "nodad"])?;
        }
        Ok(())
    }

    fn build_gateway(&self) -> anyhow::Result<()> {
        let gw = self.gateway_ns.as_deref().context("not a gateway lab")?;
        let (mx, cl) = (&self.mx_ns, &self.client_ns);
        let gw_mx_iface = self.filter_iface.replace("-gc", "-gm");
        for ns in [mx, cl, gw] {
            ip(&["netns", "add", ns])?;
            ip_in(ns, &["link", "set", "lo", "up"])?;
        }
        let pairs = [
            (cl.as_str(), &self.client_iface, gw, &self.filter_iface),
            (gw, &gw_mx_iface, mx.as_str(), &self.mx_iface),
        ];
        for (a_ns, a, b_ns, b) in pairs {
            ip(&[
                "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
            ])?;
            ip_in(a_ns, &["link", "set", a, "up"])?;
            ip_in(b_ns, &["link", "set", b, "up"])?;
        }
        let addresses = [
            (gw, &self.filter_iface, "203.0.113.1/24", "2001:db8:1::1/64"),
            (gw, &gw_mx_iface, "198.51.100.1/24", "2001:db8:25::1/64"),
            (
                mx.as_str(),
                &self.mx_iface,
                "198.51.100.25/24",
                "2001:db8:25::25/64",
            ),
        ];
        for (ns, iface, v4, v6) in addresses {
            ip_in(ns, &["addr", "add", v4, "dev", iface])?;
            ip_in(ns, &["-6", "addr", "add", v6, "dev", iface, "nodad"])?;
        }
        self.add_client_addresses()?;
        ip_in(cl, &["route", "add", "default", "via", "203.0.113.1"])?;
        ip_in(
            cl,
            &["-6", "route", "add", "default", "via", "2001:db8:1::1"],
        )?;
        ip_in(mx, &["route", "add", "default", "via", "198.51.100.1"])?;
        ip_in(
            mx,
            &["-6", "route", "add", "default", "via", "2001:db8:25::1"],
        )?;
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            run(self.command_in(gw, "sysctl").args(["-q", "-w", key]))?;
        }
        Ok(())
    }

    fn build(&self) -> anyhow::Result<()> {
        let (mx, cl) = (&self.mx_ns, &self.client_ns);
        ip(&["netns", "add", mx])?;
        ip(&["netns", "add", cl])?;
        ip(&[
            "link",
            "add",
            &self.mx_iface,
            "netns",
            mx,
            "type",
            "veth",
            "peer",
            "name",
            &self.client_iface,
            "netns",
            cl,
        ])?;
        for (ns, iface) in [(mx, &self.mx_iface), (cl, &self.client_iface)] {
            ip_in(ns, &["link", "set", "lo", "up"])?;
            ip_in(ns, &["link", "set", iface, "up"])?;
        }
        ip_in(
            mx,
            &["addr", "add", &format!("{MX_V4}/24"), "dev", &self.mx_iface],
        )?;
        ip_in(
            mx,
            &[
                "-6",
                "addr",
                "add",
                &format!("{MX_V6}/64"),
                "dev",
                &self.mx_iface,
                "nodad",
            ],
        )?;
        ip_in(
            mx,
            &["route", "add", "203.0.113.0/24", "dev", &self.mx_iface],
        )?;
        ip_in(
            mx,
            &[
                "-6",
                "route",
                "add",
                "2001:db8:1::/64",
                "dev",
                &self.mx_iface,
            ],
        )?;
        self.add_client_addresses()?;
        ip_in(
            cl,
            &["route", "add", "198.51.100.0/24", "dev", &self.client_iface],
        )?;
        ip_in(
            cl,
            &[
                "-6",
                "route",
                "add",
                "2001:db8:25::/64",
                "dev",
                &self.client_iface,
            ],
        )?;
        Ok(())
    }

    /// Starts smtp-sink on the MX's port 25 over IPv4 and IPv6 and waits until both
    /// accept connections.
    pub fn start_smtp_sink(&mut self) -> anyhow::Result<()> {
        self.start_smtp_sink_with(&[])
    }

    /// [`Lab::start_smtp_sink`] with more smtp-sink options (`-W ehlo:3`: a slow answer).
    pub fn start_smtp_sink_with(&mut self, options: &[&str]) -> anyhow::Result<()> {
        for listen in [
            format!("{MX_V4}:{SMTP_PORT}"),
            format!("[{MX_V6}]:{SMTP_PORT}"),
        ] {
            let child = self
                .command_in(&self.mx_ns, "smtp-sink")
                .args(["-u", "nobody", "-c"])
                .args(options)
                .args([&listen, "256"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting smtp-sink (Debian package postfix)")?;
            self.processes.push(child);
        }
        self.wait_for_mta("smtp-sink", Duration::from_secs(10))?;
        Ok(())
    }

    /// Starts dnsmasq with the DNS fixture on `DNS_SERVER` where the filter runs.
    pub fn start_dns(&mut self) -> anyhow::Result<()> {
        let port = DNS_SERVER
            .rsplit_once(':')
            .map_or(53, |(_, p)| p.parse().unwrap_or(53));
        let dns = Dnsmasq::start_in_netns(&self.filter_ns, port, Some(DNS_TTL))
            .map_err(|e| anyhow::anyhow!("starting the fixture DNS server: {e}"))?;
        self.dns = Some(dns);
        Ok(())
    }

    /// Starts a real Postfix on the MX's port 25 (instead of smtp-sink), resolving through the
    /// fixture DNS (start that first). `main_cf_extra` is added to its `main.cf` (HELO
    /// restrictions, a policy service); without it Postfix checks no HELO at all. Mail for
    /// example.org is accepted and handed to Postfix's discard transport, which logs
    /// `status=sent`.
    pub fn start_postfix(&mut self, main_cf_extra: &str) -> anyhow::Result<&PostfixInstance> {
        let dir = std::env::temp_dir().join(format!("helo-filter-postfix-{}", self.mx_ns));
        let config = postfix_directories(
            &dir,
            &format!(
                "inet_interfaces = {MX_V4}, {MX_V6}\n\
                 inet_protocols = all\n\
                 myhostname = mx.example.org\n\
                 mydestination = example.org\n\
                 mynetworks = 127.0.0.0/8\n\
                 smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
                 smtpd_tls_security_level = none\n\
                 smtpd_client_connection_rate_limit = 0\n\
                 local_recipient_maps =\n\
                 local_transport = discard:lab\n\
                 default_transport = discard:lab\n\
                 {main_cf_extra}\n"
            ),
        )?;
        let netns_etc = format!("/etc/netns/{}", self.mx_ns);
        fs::create_dir_all(&netns_etc)?;
        // One short try: a test that makes DNS time out must not stall Postfix's own
        // client-name lookups past the SMTP clients' timeouts.
        fs::write(
            format!("{netns_etc}/resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )?;
        let instance = PostfixInstance {
            dir,
            config: config.clone(),
            ns: self.mx_ns.clone(),
        };
        run(self
            .command_in(&self.mx_ns, "postfix")
            .arg("-c")
            .arg(&config)
            .arg("start"))
        .context("starting Postfix")?;
        self.wait_for_mta("Postfix", Duration::from_secs(20))?;
        Ok(self.postfix.insert(instance))
    }

    /// Waits until the MTA accepts connections from the client side on both MX addresses.
    fn wait_for_mta(&self, mta: &str, timeout: Duration) -> anyhow::Result<()> {
        for addr in [IpAddr::V4(MX_V4), IpAddr::V6(MX_V6)] {
            let target = SocketAddr::new(addr, SMTP_PORT);
            wait_until(timeout, || {
                in_netns(&self.client_ns, move || {
                    TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()
                })
            })
            .with_context(|| format!("{mta} did not start listening on {target}"))?;
        }
        Ok(())
    }

    /// The Postfix instance, once started.
    pub fn postfix(&self) -> Option<&PostfixInstance> {
        self.postfix.as_ref()
    }

    /// Stops the fixture DNS server (lookups then fail).
    pub fn stop_dns(&mut self) {
        self.dns.take();
    }

    /// `program` to be run inside the namespace `ns`.
    pub fn command_in(&self, ns: &str, program: &str) -> Command {
        netns::command_in(ns, program)
    }

    /// Keeps a process started in the lab so that it is stopped with the lab.
    pub fn adopt(&mut self, child: Child) {
        self.processes.push(child);
    }

    fn remove_namespaces(&self) {
        let mut namespaces = vec![self.mx_ns.as_str(), self.client_ns.as_str()];
        namespaces.extend(self.gateway_ns.as_deref());
        netns::remove_namespaces(&namespaces);
        remove_daemon_files(&self.filter_ns);
    }

    /// The daemon's own directory for this lab: its state directory and control socket.
    pub fn daemon_dir(&self) -> PathBuf {
        daemon_dir(&self.filter_ns)
    }

    /// The lab's configuration file, written empty (every setting at its built-in default)
    /// in the daemon's directory: the lab's daemons get it when their caller passes no
    /// `--config`, so that no file under /etc changes what a lab sees.
    pub fn empty_config(&self) -> anyhow::Result<PathBuf> {
        let path = self.daemon_dir().join("lab.toml");
        fs::create_dir_all(self.daemon_dir())?;
        fs::write(
            &path,
            "# The lab's configuration: empty, every setting at its built-in default.\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.daemon_dir().join("state")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.daemon_dir().join("control.sock")
    }

    /// Where this lab's daemon pins the kernel side: on a BPF file system of the host's
    /// mount namespace (`ip netns exec` gives each command a fresh /sys, so the usual
    /// /sys/fs/bpf would not outlive the daemon), mounted on first use.
    pub fn bpffs_dir(&self) -> anyhow::Result<PathBuf> {
        // Tests run in parallel: one check-and-mount at a time (two mounts would stack, the
        // second hiding the first's pins).
        static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = MOUNTING.lock().unwrap_or_else(|e| e.into_inner());
        let root = PathBuf::from(LAB_BPFFS);
        fs::create_dir_all(&root)?;
        let mounted = fs::read_to_string("/proc/self/mounts")?
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(LAB_BPFFS) && l.contains(" bpf "));
        if !mounted {
            run(Command::new("mount").args(["-t", "bpf", "bpf", LAB_BPFFS]))
                .context("mounting a BPF file system for the lab")?;
        }
        Ok(root.join(&self.filter_ns))
    }
}

impl Lab {
    /// Makes the veth pair an 802.1Q trunk for VLAN `id`: every frame either end sends
    /// (SMTP, ARP, neighbour discovery) is tagged on egress, and the tag is taken off on
    /// ingress, after the XDP program (the lab's addresses stay where they are). The filter on
    /// the MX side thus sees every client frame tagged.
    ///
    /// The kernels this runs on have neither the 802.1Q driver (`ip link add … type vlan`:
    /// "Unknown device type") nor TC's `vlan` action, so a small TC program on each end does
    /// the tagging ([`netns::tag_vlan`]). Both veths' VLAN offloads are turned off first: with
    /// transmit offload on (the veth default) a pushed tag stays in the packet's metadata,
    /// veth hands it over as such, and the XDP program on the other end sees an untagged
    /// frame; off, the tag is written into the frame and XDP has to parse it.
    ///
    /// Call it before starting the MTA and the filter. Not for a gateway lab.
    pub fn use_vlan(&mut self, id: u16) -> anyhow::Result<()> {
        if self.gateway_ns.is_some() {
            bail!("use_vlan: a gateway lab has no direct client-MX link");
        }
        for (ns, iface) in [
            (self.mx_ns.clone(), self.mx_iface.clone()),
            (self.client_ns.clone(), self.client_iface.clone()),
        ] {
            netns::set_vlan_offload(&ns, &iface, false)?;
            let links = netns::tag_vlan(&ns, &iface, id)
                .with_context(|| format!("tagging {iface}'s frames with VLAN {id}"))?;
            self.vlan_links.extend(links);
        }
        Ok(())
    }
}

/// The uid and gid the sending Postfix delivers its local mail (bounces) as: Debian's
/// `nobody` and `nogroup`.
const LOCAL_MAIL_OWNER: u32 = 65534;

impl Lab {
    /// Starts a real Postfix as the *sending* MTA in the client namespace: it relays
    /// everything to the MX (`relayhost = [198.51.100.25]`), greets with `helo_name`
    /// (`smtp_helo_name`) from the client address `bind` (`smtp_bind_address`) with TLS at
    /// `tls_level` (`smtp_tls_security_level`: `none`, or Debian's `may`), and listens on
    /// nothing (every inet service disabled). Its own configuration, queue, log and mail
    /// directories are under the temp dir, named after the client namespace and `bind`, so
    /// that several can run side by side. Mail for example.net (the bounces to a sender
    /// there) is delivered locally, into one Maildir ([`PostfixInstance::mailbox`]). Submit
    /// with [`PostfixInstance::sendmail`]; the instance stops when dropped (drop it before
    /// the lab).
    pub fn start_sending_postfix(
        &self,
        helo_name: &str,
        bind: Ipv4Addr,
        tls_level: &str,
    ) -> anyhow::Result<PostfixInstance> {
        let dir =
            std::env::temp_dir().join(format!("helo-filter-postfix-{}-{bind}", self.client_ns));
        let d = dir.display();
        let config = postfix_directories(
            &dir,
            &format!(
                "inet_interfaces = loopback-only\n\
                 inet_protocols = ipv4\n\
                 master_service_disable = inet\n\
                 myhostname = sender.example.net\n\
                 mydestination =\n\
                 relayhost = [{MX_V4}]\n\
                 smtp_helo_name = {helo_name}\n\
                 smtp_bind_address = {bind}\n\
                 smtp_dns_support_level = disabled\n\
                 smtp_tls_security_level = {tls_level}\n\
                 virtual_mailbox_domains = example.net\n\
                 virtual_mailbox_base = {d}/mail\n\
                 virtual_mailbox_maps = inline:{{ @example.net=example.net/ }}\n\
                 virtual_uid_maps = static:{LOCAL_MAIL_OWNER}\n\
                 virtual_gid_maps = static:{LOCAL_MAIL_OWNER}\n"
            ),
        )?;
        fs::create_dir_all(dir.join("mail"))?;
        let owner = format!("{LOCAL_MAIL_OWNER}:{LOCAL_MAIL_OWNER}");
        run(Command::new("chown").arg(&owner).arg(dir.join("mail")))?;
        let instance = PostfixInstance {
            dir,
            config: config.clone(),
            ns: self.client_ns.clone(),
        };
        run(self
            .command_in(&self.client_ns, "postfix")
            .arg("-c")
            .arg(&config)
            .arg("start"))
        .context("starting the sending Postfix")?;
        // Nothing listens: ready once the queue manager and pickup run (master starts them).
        let spool = instance.dir.join("spool");
        wait_until(Duration::from_secs(20), || {
            ["public/qmgr", "public/pickup"]
                .iter()
                .all(|fifo| spool.join(fifo).exists())
                && spool.join("pid/master.pid").exists()
        })
        .context("the sending Postfix did not start")?;
        Ok(instance)
    }
}

impl PostfixInstance {
    /// Submits a message from `from` to `to` with `body` (a few lines, no headers needed)
    /// through this instance's `sendmail`, in its namespace.
    pub fn sendmail(&self, from: &str, to: &str, body: &str) -> anyhow::Result<()> {
        use std::io::Write as _;

        // Bounded: sendmail waits on the queue's pickup service.
        let mut child = netns::command_in(&self.ns, "timeout")
            .args(["30", "sendmail"])
            .arg("-C")
            .arg(&self.config)
            .args(["-f", from, to])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running sendmail")?;
        let message = format!("From: <{from}>\nTo: <{to}>\nSubject: lab\n\n{body}\n");
        child
            .stdin
            .take()
            .context("sendmail's stdin")?
            .write_all(message.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "sendmail failed: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The messages delivered locally so far (the Maildirs under `mail/`, each message
    /// whole), oldest first by file name; empty for an instance that delivers nothing
    /// locally.
    pub fn mailbox(&self) -> Vec<String> {
        let mut files = Vec::new();
        let Ok(boxes) = fs::read_dir(self.dir.join("mail")) else {
            return Vec::new();
        };
        for mailbox in boxes.flatten() {
            for sub in ["new", "cur"] {
                if let Ok(entries) = fs::read_dir(mailbox.path().join(sub)) {
                    files.extend(entries.flatten().map(|e| e.path()));
                }
            }
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        files
            .iter()
            .filter_map(|f| fs::read_to_string(f).ok())
            .collect()
    }
}

/// The BPF file system the labs' daemons pin under.
const LAB_BPFFS: &str = "/run/helo-filter-lab/bpffs";

fn daemon_dir(filter_ns: &str) -> PathBuf {
    std::env::temp_dir().join(format!("helo-filter-lab-{filter_ns}"))
}

/// Removes a lab daemon's state, control socket and pins (the kernel side it left).
fn remove_daemon_files(filter_ns: &str) {
    let _ = fs::remove_dir_all(daemon_dir(filter_ns));
    let pins = PathBuf::from(LAB_BPFFS).join(filter_ns);
    for sub in ["links", "maps"] {
        if let Ok(entries) = fs::read_dir(pins.join(sub)) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        let _ = fs::remove_dir(pins.join(sub));
    }
    let _ = fs::remove_dir(&pins);
}

/// Removes the lab `name` whatever state it is in: kills what runs in its namespaces and
/// deletes them (which deletes the veth pairs).
pub fn remove(name: &str) {
    let namespaces = ["mx", "cl", "gw"].map(|role| format!("{name}-{role}"));
    netns::remove_namespaces(&namespaces.each_ref().map(String::as_str));
    for ns in &namespaces {
        remove_daemon_files(ns);
    }
    let _ = fs::remove_file(owner_file(name));
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.postfix.take();
        self.dns.take();
        for child in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.remove_namespaces();
        if let Some(name) = self.mx_ns.strip_suffix("-mx") {
            let _ = fs::remove_file(owner_file(name));
        }
    }
}

/// Where each lab's owner is recorded: one file per lab, named after it, holding the pid
/// and start time of the process that created it.
const LAB_OWNERS: &str = "/run/helo-filter-lab/owners";

fn owner_file(name: &str) -> PathBuf {
    PathBuf::from(LAB_OWNERS).join(name)
}

/// A process's start time (clock ticks after boot, field 22 of `/proc/PID/stat`): with the
/// pid, it names one process even after the pid is reused. None when no such process runs.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The owner record of a lab created by `pid` started at `started`.
fn owner_record(pid: u32, started: u64) -> String {
    format!("{pid} {started}\n")
}

/// Whether the owner record `record` names a process that still runs (an unreadable
/// record counts as alive: nothing is removed on a guess).
fn owner_alive(record: &str) -> bool {
    let mut fields = record.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(started))) = (fields.next(), fields.next()) else {
        return true;
    };
    u32::try_from(pid).map_or(true, |pid| start_time(pid) == Some(started))
}

/// Records this process as the owner of lab `name`.
fn mark_owner(name: &str) -> anyhow::Result<()> {
    let pid = std::process::id();
    let started = start_time(pid).context("reading this process's start time")?;
    fs::create_dir_all(LAB_OWNERS)?;
    fs::write(owner_file(name), owner_record(pid, started))
        .with_context(|| format!("recording the owner of lab {name}"))
}

/// Removes every lab whose creating process no longer runs (a run killed before its labs
/// were dropped): its namespaces (and so its veth pairs), the daemon's files and pins, and
/// a Postfix instance's directories. Labs of live processes, and namespaces with no owner
/// record (made by another version), are never touched.
pub fn remove_stale_labs() {
    let Ok(entries) = fs::read_dir(LAB_OWNERS) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let record = fs::read_to_string(entry.path()).unwrap_or_default();
        if owner_alive(&record) {
            continue;
        }
        eprintln!(
            "removing lab {name}, left by a run that is gone ({})",
            record.trim()
        );
        remove(&name);
        let mx = format!("{name}-mx");
        let _ = fs::remove_dir_all(std::env::temp_dir().join(format!("helo-filter-postfix-{mx}")));
        let _ = fs::remove_dir_all(format!("/etc/netns/{mx}"));
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    output(command).map(drop)
}

/// A private Postfix instance's directories under `dir` (made afresh): its configuration
/// (returned: `main.cf` with `main_cf` and the instance's own paths, the package's pristine
/// `master.cf` and `dynamicmaps.cf`, no chroot), queue, data directory and log. Nothing
/// under /etc/postfix is read or changed.
fn postfix_directories(dir: &Path, main_cf: &str) -> anyhow::Result<PathBuf> {
    let _ = fs::remove_dir_all(dir);
    let config = dir.join("etc");
    for sub in ["etc", "spool", "lib"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    run(Command::new("chown")
        .args(["postfix:postfix"])
        .arg(dir.join("lib")))?;
    let d = dir.display();
    let main_cf = format!(
        "compatibility_level = 3.6\n\
         {main_cf}\
         queue_directory = {d}/spool\n\
         data_directory = {d}/lib\n\
         maillog_file = {d}/maillog\n\
         maillog_file_prefixes = {d}\n\
         alias_maps =\n\
         alias_database =\n"
    );
    fs::write(config.join("main.cf"), main_cf)?;
    // The package's pristine copies: on a machine where Postfix was installed with "No
    // configuration" they are all there is.
    fs::copy(
        "/usr/share/postfix/master.cf.dist",
        config.join("master.cf"),
    )
    .context("/usr/share/postfix/master.cf.dist (Debian package postfix)")?;
    fs::copy(
        "/usr/share/postfix/dynamicmaps.cf",
        config.join("dynamicmaps.cf"),
    )?;
    fs::create_dir_all(config.join("dynamicmaps.cf.d"))?;
    // No chroot: smtpd then reads the namespace's resolv.conf, which `ip netns exec` mounts
    // over /etc/resolv.conf.
    run(Command::new("postconf")
        .arg("-c")
        .arg(&config)
        .args(["-F", "*/*/chroot = n"]))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::{owner_alive, owner_record, start_time};

    #[test]
    fn a_lab_owner_is_alive_only_while_its_process_runs() {
        let me = std::process::id();
        let started = start_time(me).expect("our own start time");
        assert!(owner_alive(&owner_record(me, started)));
        // The same pid started at another time: a reused pid, not the owner.
        assert!(!owner_alive(&owner_record(me, started + 1)));
        // A pid above any pid_max (2^22) never runs.
        assert!(!owner_alive(&owner_record(u32::MAX, started)));
        // A record that cannot be read leaves the lab alone.
        assert!(owner_alive("garbage"));
    }
}
