//! A fleet lab: several ordinary labs, each MX one appliance of a fleet, whose MX namespaces
//! are joined by a link of their own to one redis-server, where they share their denials.
//!
//! ```text
//!  <name>0-cl ═ <name>0-mx  <name>0-f ═══ <name>0-h ┐  <name>0-gw (the hub)
//!               2001:db8:f1ee::10/64                ├─ bridge "fleet" 2001:db8:f1ee::1/64
//!  <name>1-cl ═ <name>1-mx  <name>1-f ═══ <name>1-h ┘  redis-server [2001:db8:f1ee::1]:6379
//!               2001:db8:f1ee::11/64
//! ```
//!
//! Every member is an ordinary [`Lab`] with the usual addresses, so a client address
//! (203.0.113.10 in each member's client namespace) stands for one Internet source reaching
//! every MX. Loopback is per namespace, hence the link: IPv6 only, on interfaces of its own,
//! with no route beyond 2001:db8:f1ee::/64, so the MXes' SMTP interfaces, where the XDP
//! program attaches, never carry its traffic. A member's daemon finds Redis through its
//! `[fleet]` settings: `redis` = [`RedisServer::url`], `password_file` =
//! [`RedisServer::password_file`].

use std::{
    fs::{self, DirBuilder, OpenOptions},
    io::{Read as _, Write as _},
    net::Ipv6Addr,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    lab::Lab,
    netns::{self, ip, ip_in},
    process::{output, wait_until},
};

/// The Redis host's address on the fleet link (the hub's bridge).
pub const REDIS_ADDR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf1ee, 0, 0, 0, 0, 1);
pub const REDIS_PORT: u16 = 6379;
/// The bridge in the hub namespace; the namespace is the fleet's own, so the name is free.
const BRIDGE: &str = "fleet";

pub struct FleetLab {
    // Dropped in this order: Redis, then the hub namespace it ran in (and with it every leg
    // of the link), then the members, which clean up after themselves.
    redis: RedisServer,
    /// Held for its drop.
    _link: FleetLink,
    pub members: Vec<Lab>,
}

impl FleetLab {
    /// Creates `members` labs named `<name>0`, `<name>1`, … (a lab name has at most 11
    /// characters, so `name` at most 10 for up to 10 members), each with smtp-sink and the
    /// fixture DNS started, joins their MX namespaces with the fleet link and starts Redis on
    /// it.
    pub fn create(name: &str, members: usize) -> anyhow::Result<FleetLab> {
        if members == 0 {
            bail!("fleet lab {name}: a fleet has at least one member");
        }
        let names: Vec<String> = (0..members).map(|i| member_name(name, i)).collect();
        let labs = names
            .iter()
            .map(|member| {
                Lab::create_serving(member)
                    .with_context(|| format!("creating fleet member {member}"))
            })
            .collect::<anyhow::Result<Vec<Lab>>>()?;
        let link = FleetLink::create(hub_ns(name), &names, &labs)
            .with_context(|| format!("creating the link of fleet lab {name}"))?;
        let redis = RedisServer::start_in(&link.hub_ns, labs[0].daemon_dir().join("redis"))
            .with_context(|| format!("starting the Redis of fleet lab {name}"))?;
        Ok(FleetLab {
            redis,
            _link: link,
            members: labs,
        })
    }

    pub fn redis(&self) -> &RedisServer {
        &self.redis
    }

    /// For stopping and restarting Redis.
    pub fn redis_mut(&mut self) -> &mut RedisServer {
        &mut self.redis
    }

    /// Writes member `i`'s configuration file: `extra` (TOML sections of the test's), then
    /// its `[fleet]` (this lab's Redis and password file, prefix `lab`, name `mx1`, `mx2`, …);
    /// its path.
    pub fn member_config(&self, i: usize, extra: &str) -> anyhow::Result<PathBuf> {
        let lab = &self.members[i];
        std::fs::create_dir_all(lab.daemon_dir())?;
        let path = lab.daemon_dir().join("fleet.toml");
        let text = format!(
            "{extra}\n[fleet]\nredis = \"{}\"\npassword_file = \"{}\"\nname = \"mx{}\"\n\
             prefix = \"lab\"\n",
            self.redis.url(),
            self.redis.password_file().display(),
            i + 1
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Member `i`'s MX address on the fleet link, the source of its connections to Redis.
    pub fn member_fleet_addr(&self, i: usize) -> Ipv6Addr {
        assert!(
            i < self.members.len(),
            "the fleet lab has {} members",
            self.members.len()
        );
        fleet_addr(i)
    }
}

/// Member `i`'s lab name: the fleet's name and the index.
fn member_name(fleet: &str, i: usize) -> String {
    format!("{fleet}{i}")
}

/// Member `i`'s address on the fleet link: 2001:db8:f1ee::10, ::11, …
fn fleet_addr(i: usize) -> Ipv6Addr {
    let host = u16::try_from(0x10 + i).expect("a fleet of a few members");
    Ipv6Addr::new(0x2001, 0xdb8, 0xf1ee, 0, 0, 0, 0, host)
}

/// The hub's namespace: the gateway namespace of member 0 (`<name>0-gw`), which an ordinary
/// lab leaves unused. `lab::remove` deletes it with member 0, so a run killed before its
/// drop leaves no redis-server running: `remove_stale_labs` kills it with the namespace,
/// which takes every leg of the link along.
fn hub_ns(fleet: &str) -> String {
    format!("{}-gw", member_name(fleet, 0))
}

/// The two ends of a member's leg of the link: in its MX namespace and on the hub's bridge.
fn leg_names(member: &str) -> (String, String) {
    (format!("{member}-f"), format!("{member}-h"))
}

/// The hub namespace: a bridge holding the Redis address, one veth leg to each member's MX.
struct FleetLink {
    hub_ns: String,
}

impl FleetLink {
    fn create(hub_ns: String, names: &[String], members: &[Lab]) -> anyhow::Result<FleetLink> {
        // Built once it exists: dropped on an error half-way, it removes what was made.
        let link = FleetLink { hub_ns };
        link.build(names, members)?;
        Ok(link)
    }

    fn build(&self, names: &[String], members: &[Lab]) -> anyhow::Result<()> {
        let hub = self.hub_ns.as_str();
        ip(&["netns", "add", hub])?;
        ip_in(hub, &["link", "set", "lo", "up"])?;
        ip_in(hub, &["link", "add", BRIDGE, "type", "bridge"])?;
        ip_in(hub, &["link", "set", BRIDGE, "up"])?;
        // nodad: usable at once, so Redis can bind it as soon as it starts.
        let redis_addr = format!("{REDIS_ADDR}/64");
        ip_in(
            hub,
            &["-6", "addr", "add", &redis_addr, "dev", BRIDGE, "nodad"],
        )?;
        for (i, (name, member)) in names.iter().zip(members).enumerate() {
            let mx = member.mx_ns.as_str();
            let (mx_leg, hub_leg) = leg_names(name);
            ip(&[
                "link", "add", &mx_leg, "netns", mx, "type", "veth", "peer", "name", &hub_leg,
                "netns", hub,
            ])?;
            ip_in(hub, &["link", "set", &hub_leg, "master", BRIDGE, "up"])?;
            ip_in(mx, &["link", "set", &mx_leg, "up"])?;
            let addr = format!("{}/64", fleet_addr(i));
            ip_in(mx, &["-6", "addr", "add", &addr, "dev", &mx_leg, "nodad"])?;
        }
        Ok(())
    }
}

impl Drop for FleetLink {
    fn drop(&mut self) {
        netns::remove_namespaces(&[&self.hub_ns]);
    }
}

/// A redis-server of the lab's own in namespace `ns`: listening on [`REDIS_ADDR`] only,
/// password required, nothing kept on disk (each start begins empty). Its configuration,
/// password file and log are in a directory of its own, removed on drop.
pub struct RedisServer {
    ns: String,
    dir: PathBuf,
    password: String,
    /// In `dir`; a field of its own because [`RedisServer::password_file`] lends it.
    password_file: PathBuf,
    process: Option<Child>,
}

impl RedisServer {
    /// Creates `dir` (which must not exist), writes the configuration and a new password
    /// there and starts Redis in namespace `ns`. A fleet lab's is `redis/` in member 0's
    /// [`Lab::daemon_dir`]: removed with member 0 even after a run killed before its drop.
    fn start_in(ns: &str, dir: PathBuf) -> anyhow::Result<RedisServer> {
        // Only the directory of its own is private: the parent is the lab's, made as usual.
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut redis = RedisServer {
            ns: ns.to_owned(),
            password: random_password()?,
            password_file: dir.join("password"),
            dir,
            process: None,
        };
        write_private(redis.password_file(), &format!("{}\n", redis.password))?;
        let config = format!(
            "bind {REDIS_ADDR}\n\
             port {REDIS_PORT}\n\
             requirepass {}\n\
             save \"\"\n\
             appendonly no\n\
             daemonize no\n\
             dir {}\n\
             logfile {}\n",
            redis.password,
            redis.dir.display(),
            redis.log_file().display(),
        );
        write_private(&redis.config_file(), &config)?;
        redis.start()?;
        Ok(redis)
    }

    /// The URL a member's daemon is given: no password, no database (the default, 0).
    pub fn url(&self) -> String {
        format!("redis://[{REDIS_ADDR}]:{REDIS_PORT}")
    }

    /// The password on the file's one line (mode 0600), for the daemon's `password_file`.
    pub fn password_file(&self) -> &Path {
        &self.password_file
    }

    fn config_file(&self) -> PathBuf {
        self.dir.join("redis.conf")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Kills Redis (SIGKILL, as a crash would) and waits for its exit; nothing if it is not
    /// running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Redis (stopping it first if it runs) on the same address with the same
    /// password, empty, and waits until it answers PING.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.stop();
        let child = netns::command_in(&self.ns, "redis-server")
            .arg(self.config_file())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (Debian package redis-server)")?;
        let (ns, password) = (&self.ns, &self.password);
        let child = self.process.insert(child);
        let mut exit = None;
        let answered = wait_until(Duration::from_secs(10), || {
            exit = child.try_wait().ok().flatten();
            exit.is_some() || redis_cli(ns, password, &["PING"]).is_ok_and(|r| r == "PONG")
        });
        if answered.is_err() || exit.is_some() {
            self.stop();
            let log = fs::read_to_string(self.log_file()).unwrap_or_default();
            bail!(
                "redis-server did not answer PING (exit: {exit:?}); its log:\n{}",
                log.trim_end()
            );
        }
        Ok(())
    }

    /// `redis-cli ARGS` against this Redis, authenticated, from its namespace; the reply
    /// without its last newline. A Redis error reply is an error.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        redis_cli(&self.ns, &self.password, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli ARGS` in namespace `ns` against [`REDIS_ADDR`] with `password`.
fn redis_cli(ns: &str, password: &str, args: &[&str]) -> anyhow::Result<String> {
    let reply = output(
        netns::command_in(ns, "redis-cli")
            // -e: an error reply fails the command instead of being printed as a reply.
            .args([
                "-e",
                "-h",
                &REDIS_ADDR.to_string(),
                "-p",
                &REDIS_PORT.to_string(),
            ])
            .args(args)
            // Rather than -a: no warning, and the password is not on a command line.
            .env("REDISCLI_AUTH", password)
            .stdin(Stdio::null()),
    )
    .with_context(|| format!("redis-cli {}", args.join(" ")))?;
    Ok(reply.strip_suffix('\n').unwrap_or(&reply).to_owned())
}

/// A password of 32 hexadecimal digits (128 random bits).
fn random_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a new file `path` readable by its owner only (it holds the password).
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_fleet_name_makes_lab_and_interface_names_that_fit() {
        let fleet = "hf12345fle";
        let member = member_name(fleet, 9);
        assert_eq!(member, "hf12345fle9");
        // Lab::create's limit.
        assert!(member.len() <= 11);
        let (mx_leg, hub_leg) = leg_names(&member);
        for iface in [mx_leg, hub_leg] {
            // IFNAMSIZ, its NUL included.
            assert!(iface.len() < 16, "{iface}");
        }
        assert_eq!(hub_ns(fleet), "hf12345fle0-gw");
    }

    #[test]
    fn members_and_redis_have_distinct_addresses_on_the_link() {
        assert_eq!(fleet_addr(0).to_string(), "2001:db8:f1ee::10");
        assert_eq!(fleet_addr(1).to_string(), "2001:db8:f1ee::11");
        for i in 0..10 {
            let member = fleet_addr(i);
            // On the link's /64, where the MX's on-link route reaches Redis.
            assert_eq!(
                member.segments()[..4],
                REDIS_ADDR.segments()[..4],
                "{member}"
            );
            assert_ne!(member, REDIS_ADDR);
        }
    }

    #[test]
    fn passwords_are_fresh_hex() {
        let (a, b) = (random_password().unwrap(), random_password().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }
}
