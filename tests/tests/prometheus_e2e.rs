//! The Prometheus side of the deployment against the real tools: promtool checks the alert
//! rules and runs their unit tests; the daemon's and the policy service's pages describe
//! every series and name the build; a real Prometheus scrapes a running daemon and
//! evaluates the rules.

use std::{
    fs,
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use helo_filter_tests::e2e::*;
use serde_json::Value;
use xtask::{
    daemon::{Daemon, METRICS_ADDR},
    http,
    lab::Lab,
    netns, paths, process,
    sessions::{self, Greeting},
};

const RULES: &str = "deploy/prometheus/helo-filter.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/helo-filter.rules.test.yml";
/// The rules file's one group.
const RULE_GROUP: &str = "helo-filter";
/// The scrape job of the test's Prometheus, named as the rules expect (`helo-filter…`).
const JOB: &str = "helo-filter";
/// Where the test's Prometheus listens: inside the lab's namespace, so that neither this
/// port nor a Prometheus service of the host (Debian's package starts one on :9090) gets in
/// the way of the other.
const PROMETHEUS_ADDR: &str = "127.0.0.1:9090";

/// promtool accepts the rules, counting every alert and recording rule of the file; the
/// unit tests pass, with a firing and a quiet case for each alert; and they catch a broken
/// rule: with `HeloFilterDown` turned upside down, promtool fails and names that alert and
/// its test.
#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let root = paths::workspace_root();
    let rules = fs::read_to_string(root.join(RULES)).expect("the rules file");
    let rule_count = rule_names(&rules, "- record:").len() + rule_names(&rules, "- alert:").len();
    let alerts = rule_names(&rules, "- alert:");
    assert!(alerts.len() >= 6, "only {alerts:?} in {RULES}");

    let (ok, said) = promtool(&root, &["check", "rules", RULES]);
    assert!(ok, "promtool check rules:\n{said}");
    assert!(
        said.contains(&format!("SUCCESS: {rule_count} rules found")),
        "promtool did not find the {rule_count} rules of {RULES}:\n{said}"
    );

    let tests = fs::read_to_string(root.join(RULE_TESTS)).expect("the rules' unit tests");
    for alert in &alerts {
        let cases = tests.matches(&format!("alertname: {alert}")).count();
        assert!(
            cases >= 2,
            "{alert} has {cases} case(s) in {RULE_TESTS}: it needs one where it fires and one \
             where it does not"
        );
    }
    let (ok, said) = promtool(&root, &["test", "rules", RULE_TESTS]);
    assert!(ok, "promtool test rules:\n{said}");
    assert!(
        said.contains("Unit Testing:") && said.contains("helo-filter.rules.test.yml"),
        "promtool did not run {RULE_TESTS}:\n{said}"
    );
    assert!(said.contains("SUCCESS"), "{said}");

    // The same tests against a copy of the rules in which the daemon being down is fine.
    let dir = temp_dir("promtool");
    let down = "expr: up{job=~\"helo-filter.*\"} == 0";
    assert!(rules.contains(down), "{RULES} no longer has {down:?}");
    fs::write(
        dir.path.join("helo-filter.rules.yml"),
        rules.replace(down, "expr: up{job=~\"helo-filter.*\"} == 1"),
    )
    .expect("the broken rules");
    fs::write(dir.path.join("helo-filter.rules.test.yml"), &tests).expect("the tests' copy");
    let (ok, said) = promtool(&dir.path, &["test", "rules", "helo-filter.rules.test.yml"]);
    assert!(
        !ok,
        "the unit tests passed a broken HeloFilterDown:\n{said}"
    );
    assert!(
        said.contains("FAILED")
            && said.contains("alertname: HeloFilterDown")
            && said.contains("the daemon goes down"),
        "promtool failed, but not on HeloFilterDown's test:\n{said}"
    );
}

/// The daemon's page and `helo-filter policy`'s each have a `# HELP` line for every
/// `helo_filter_*` series, and `helo_filter_build_info{version,commit}` at 1, naming the
/// package version and the workspace's commit; every series the alert rules read is on one
/// of the two pages.
#[test]
fn every_series_is_described_and_the_build_named() {
    let build_info = build_info_series();
    let lab = lab("ph");
    let daemon = Daemon::start(&lab, &[], false).expect("starting the daemon");
    let daemon_page = daemon.scrape().expect("the daemon's metrics");
    let page = daemon_page.as_str();
    let families = assert_every_series_described(page);
    // The daemon exports some 25 families: a page that lost most of them is no pass.
    assert!(
        families.len() >= 20 && families.contains(&"helo_filter_xdp_attached"),
        "only {families:?} on the daemon's page"
    );
    assert_metric(page, &build_info, 1.0);
    // Registered at zero at install, so that a rate over it exists before the first flow
    // is abandoned (the soak reads it to account for every session).
    for cause in ["timeout", "table_full"] {
        let series = format!("helo_filter_flows_abandoned_total{{cause=\"{cause}\"}}");
        assert_metric(page, &series, 0.0);
    }
    let mut exported = families;

    let dir = temp_dir("policy");
    let config = dir.path.join("helo-filter.toml");
    fs::write(&config, "# The built-in defaults.\n").expect("the service's configuration");
    let socket = dir.path.join("policy.sock");
    let (mut command, metrics) = policy_service_command(&config, &socket);
    let _service = Running::spawn(command.stderr(Stdio::null()), "helo-filter policy");
    let listening = process::wait_until(Duration::from_secs(10), || {
        UnixStream::connect(&socket).is_ok()
    });
    assert!(listening.is_ok(), "helo-filter policy never listened");
    let page = http::get_ok(metrics, "/metrics").expect("the policy service's metrics");
    let families = assert_every_series_described(&page);
    assert!(
        families.contains(&"helo_filter_policy_requests_total"),
        "only {families:?} on the policy service's page"
    );
    assert_metric(&page, &build_info, 1.0);

    exported.extend(families);
    let rules = fs::read_to_string(paths::workspace_root().join(RULES)).expect("the rules file");
    // The words of the file that name series: a recording rule's `helo_filter:…` splits
    // into words that do not start with `helo_filter_`.
    let unknown: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("helo_filter_") && !exported.contains(word))
        .collect();
    assert!(
        unknown.is_empty(),
        "the rules read series no page has: {unknown:?}"
    );
}

/// A real Prometheus scrapes a daemon in the lab and evaluates the rules file every second:
/// the target is up and its build known; the rules evaluate without error, and with the XDP
/// program attached no alert is pending or firing (`HeloFilterXdpNotAttached` inactive);
/// after an accepted session the fail-open recording rule is 0; once the daemon is stopped,
/// `HeloFilterDown` is pending for its target.
#[test]
fn prometheus_scrapes_the_daemon_and_evaluates_the_rules() {
    let lab = lab("pr");
    let daemon = Daemon::start(&lab, &[], false).expect("starting the daemon");
    let prometheus = Prometheus::start(&lab);
    let target = format!("{{job=\"{JOB}\",instance=\"{METRICS_ADDR}\"}}");

    prometheus.wait_for_sample(&format!("up{target}"), |v| v == 1.0);
    let version = package_version();
    prometheus.wait_for_sample(
        &format!("helo_filter_build_info{{version=\"{version}\"}}"),
        |v| v == 1.0,
    );
    // The recording rule has a sample (NaN: nothing judged yet) once its group was
    // evaluated over two scrapes. `HeloFilterAbsent` may have been pending before the first
    // scrape: the group's next evaluations must clear it, and set off nothing else.
    let recorded = format!("helo_filter:fail_open_per_verdict:rate5m{target}");
    prometheus.wait_for_sample(&recorded, |_| true);
    let mut alerts = Value::Null;
    let quiet = process::wait_until(Duration::from_secs(10), || {
        alerts = prometheus.api("/api/v1/alerts");
        alerts["alerts"].as_array().is_some_and(Vec::is_empty)
    });
    assert!(quiet.is_ok(), "a healthy daemon set off alerts: {alerts}");
    let rules = prometheus.api("/api/v1/rules");
    let group = rules["groups"]
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["name"] == RULE_GROUP))
        .unwrap_or_else(|| panic!("no rule group {RULE_GROUP}: {rules}"));
    let group_rules = group["rules"].as_array().expect("the group's rules");
    let file = fs::read_to_string(paths::workspace_root().join(RULES)).expect("the rules file");
    for name in rule_names(&file, "- alert:")
        .into_iter()
        .chain(rule_names(&file, "- record:"))
    {
        let rule = group_rules.iter().find(|r| r["name"] == name);
        assert!(
            rule.is_some_and(|r| r["health"] == "ok"),
            "{name} not evaluated without error: {group}"
        );
    }
    let not_attached = group_rules
        .iter()
        .find(|r| r["name"] == "HeloFilterXdpNotAttached")
        .unwrap_or_else(|| panic!("no HeloFilterXdpNotAttached: {group}"));
    assert_eq!(not_attached["state"], "inactive", "{not_attached}");

    sessions::swaks(&lab, v4(1, 56_001), Greeting::Ehlo, "mail.example.net")
        .expect("an accepted session");
    wait_for_metric(
        &daemon,
        "helo_filter_verdicts_total{verdict=\"accept\",reason=\"none\"}",
        |v| v >= 1.0,
    );
    prometheus.wait_for_sample(&recorded, |v| v == 0.0);

    daemon.stop().expect("stopping the daemon");
    let pending = process::wait_until(Duration::from_secs(30), || {
        alerts = prometheus.api("/api/v1/alerts");
        alerts["alerts"].as_array().is_some_and(|alerts| {
            alerts.iter().any(|a| {
                a["labels"]["alertname"] == "HeloFilterDown"
                    && a["labels"]["job"] == JOB
                    && a["labels"]["instance"] == METRICS_ADDR
                    && a["state"] == "pending"
            })
        })
    });
    assert!(
        pending.is_ok(),
        "HeloFilterDown never pending for the stopped daemon: {alerts}\n{}",
        prometheus.log()
    );
}

/// The names of the rules file's rules of one kind (`- alert:` or `- record:`).
fn rule_names<'a>(rules: &'a str, kind: &str) -> Vec<&'a str> {
    rules
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix(kind))
        .map(str::trim)
        .collect()
}

/// Asserts that every `helo_filter_*` family of `page` has a `# HELP` line with a text and
/// that every sample belongs to a family; returns the families.
fn assert_every_series_described(page: &str) -> Vec<&str> {
    let families: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("helo_filter_"))
        .collect();
    let described = |family: &str| {
        page.lines().any(|l| {
            l.strip_prefix("# HELP ")
                .and_then(|help| help.strip_prefix(family))
                .and_then(|help| help.strip_prefix(' '))
                .is_some_and(|text| !text.trim().is_empty())
        })
    };
    let undescribed: Vec<&&str> = families.iter().filter(|f| !described(f)).collect();
    assert!(
        undescribed.is_empty(),
        "no # HELP for {undescribed:?}:\n{page}"
    );
    // A histogram's samples are its family's name with a suffix.
    let family_of = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .chain([name])
            .any(|family| families.contains(&family))
    };
    let orphans: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("helo_filter_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|name| !family_of(name))
        .collect();
    assert!(orphans.is_empty(), "samples of no family: {orphans:?}");
    families
}

/// `helo_filter_build_info` as the built daemon must render it: the package version, the
/// workspace's commit as `git rev-parse --short=12 HEAD` names it (`unknown` without git).
fn build_info_series() -> String {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(paths::workspace_root())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |out| String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        );
    format!(
        "helo_filter_build_info{{version=\"{}\",commit=\"{commit}\"}}",
        package_version()
    )
}

/// The daemon package's version, from its manifest.
fn package_version() -> String {
    let manifest = fs::read_to_string(paths::workspace_root().join("helo-filter/Cargo.toml"))
        .expect("helo-filter/Cargo.toml");
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("a version in helo-filter/Cargo.toml")
        .to_owned()
}

/// Runs promtool (Debian's `prometheus`) in `dir`: whether it succeeded, and what it said
/// on stdout and stderr.
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("running promtool (Debian package prometheus: cargo xtask setup): {e}")
        });
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

/// A directory of this test process's own under the temporary directory, removed on drop.
struct TempDir {
    path: PathBuf,
}

fn temp_dir(what: &str) -> TempDir {
    let path = std::env::temp_dir().join(format!("hf-prom-{what}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&path);
    fs::create_dir_all(&path).expect("a temporary directory");
    TempDir { path }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A process the test started, killed on drop (a failed assertion included).
struct Running {
    child: Child,
}

impl Running {
    fn spawn(command: &mut Command, what: &str) -> Running {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        Running { child }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus run by the test inside the lab's filter namespace, where the daemon's
/// metrics listen: scraping the daemon every second and evaluating the rules file every
/// second, its configuration, data and log in a directory of its own.
struct Prometheus {
    // Declared first, dropped first: the process is gone before its directory.
    server: Running,
    dir: TempDir,
    ns: String,
}

impl Prometheus {
    fn start(lab: &Lab) -> Prometheus {
        let found = Command::new("prometheus").arg("--version").output();
        assert!(
            found.is_ok_and(|out| out.status.success()),
            "no prometheus binary (Debian package prometheus: cargo xtask setup installs it)"
        );
        let dir = temp_dir("prometheus");
        let rules = paths::workspace_root().join(RULES);
        let config = dir.path.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      \
                 - targets: ['{METRICS_ADDR}']\n",
                rules.display()
            ),
        )
        .expect("Prometheus's configuration");
        let log = fs::File::create(dir.path.join("prometheus.log")).expect("Prometheus's log");
        let server = Running::spawn(
            lab.command_in(&lab.filter_ns, "prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path.join("data").display()
                ))
                .arg(format!("--web.listen-address={PROMETHEUS_ADDR}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
            "prometheus",
        );
        let mut prometheus = Prometheus {
            server,
            dir,
            ns: lab.filter_ns.clone(),
        };
        let ready = process::wait_until(Duration::from_secs(30), || {
            prometheus.exited()
                || prometheus
                    .get("/-/ready")
                    .is_ok_and(|(status, _)| status == 200)
        });
        assert!(
            ready.is_ok() && !prometheus.exited(),
            "Prometheus never got ready:\n{}",
            prometheus.log()
        );
        prometheus
    }

    fn exited(&mut self) -> bool {
        self.server.child.try_wait().ok().flatten().is_some()
    }

    /// GETs `target` from Prometheus (inside the lab's namespace).
    fn get(&self, target: &str) -> anyhow::Result<(u16, String)> {
        let addr: SocketAddr = PROMETHEUS_ADDR.parse()?;
        let target = target.to_owned();
        netns::in_netns(&self.ns, move || http::get(addr, &target))
    }

    /// The `data` of a successful answer of the HTTP API at `target`.
    fn api(&self, target: &str) -> Value {
        let (status, body) = self
            .get(target)
            .unwrap_or_else(|e| panic!("GET {target}: {e:#}\n{}", self.log()));
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {target}: {status} {e}: {body}"));
        assert!(
            status == 200 && answer["status"] == "success",
            "GET {target}: {status} {body}"
        );
        answer["data"].clone()
    }

    /// Queries `expr` until a sample's value satisfies `holds` (a NaN is a value too); fails
    /// with the last answer after 30 s.
    fn wait_for_sample(&self, expr: &str, holds: impl Fn(f64) -> bool) {
        let target = format!("/api/v1/query?query={}", url_encoded(expr));
        let mut data = Value::Null;
        let reached = process::wait_until(Duration::from_secs(30), || {
            data = self.api(&target);
            data["result"].as_array().is_some_and(|samples| {
                samples.iter().any(|sample| {
                    sample["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(&holds)
                })
            })
        });
        assert!(
            reached.is_ok(),
            "{expr} never got there: {data}\n{}",
            self.log()
        );
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path.join("prometheus.log")).unwrap_or_default()
    }
}

/// `text` percent-encoded for a URL's query string.
fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
