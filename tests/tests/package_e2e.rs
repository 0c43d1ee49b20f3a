//! The Debian package that `cargo xtask deb` builds, installed with `dpkg --root` into a
//! throwaway root: the binary runs, systemd accepts both units where Debian 12 keeps them,
//! the configuration is a registered conffile that validates and starts in monitor mode, every
//! command has a man page, the completions are where bash, zsh and fish look, the package
//! depends on libc alone, and nothing is enabled or started.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use helo_filter_tests::require_root;
use xtask::{paths, process};

/// `cargo xtask deb`, once for this file's tests: the package of the tree as it is (a no-op
/// rebuild under `cargo xtask test`, which builds it before the tests).
fn package() -> &'static Path {
    static PACKAGE: OnceLock<PathBuf> = OnceLock::new();
    PACKAGE.get_or_init(|| {
        require_root();
        let out = process::cargo()
            .args(["xtask", "deb"])
            .output()
            .expect("running cargo xtask deb");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cargo xtask deb failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let package = stdout
            .lines()
            .find_map(|l| l.strip_prefix("package: "))
            .unwrap_or_else(|| panic!("cargo xtask deb named no package:\n{stdout}"));
        PathBuf::from(package)
    })
}

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hf-deb-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `command`, which must succeed; returns its output.
fn run(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg acting on the root's own database and files.
fn dpkg(root: &Path) -> Command {
    let mut command = Command::new("dpkg");
    command.arg(format!("--root={}", root.display()));
    command
}

/// The package installed by dpkg into a root of its own: an empty database, libc6 absent
/// (hence --force-depends), and every path included, so that a host whose dpkg excludes man
/// pages and docs (slim images) still installs them here.
fn install(root: &Path, package: &Path) {
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).expect("dpkg's database");
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).expect("dpkg's database");
    std::fs::write(root.join("var/lib/dpkg/status"), "").expect("dpkg's status file");
    run(dpkg(root)
        .args(["--force-depends", "--path-include=/*", "--install"])
        .arg(package));
}

#[test]
fn installed_into_a_throwaway_root() {
    let package = package();
    let root = TempDir::new("root");
    let root = root.0.as_path();
    install(root, package);
    let binary = root.join("usr/bin/helo-filter");

    let version = stdout(&run(Command::new(&binary).arg("--version")));
    assert!(
        version.starts_with("helo-filter "),
        "--version said {version:?}"
    );

    // Registered as a conffile: dpkg keeps the operator's edits across upgrades.
    let status = stdout(&run(dpkg(root).args(["--status", "helo-filter"])));
    let depends = field(&status, "Depends");
    assert!(
        depends.starts_with("libc6") && !depends.contains(','),
        "Depends: {depends}"
    );
    assert!(!depends.contains("postfix"), "Depends: {depends}");
    assert!(
        status.contains("\n /etc/helo-filter/helo-filter.toml "),
        "the configuration is not a conffile:\n{status}"
    );
    check_configuration(root, &binary);
    check_units(root);
    check_man_pages(root, &binary);
    check_completions(root);
    for doc in ["README.md", "operations.md", "packaging.md"] {
        let path = root.join("usr/share/doc/helo-filter").join(doc);
        assert!(path.is_file(), "{} missing", path.display());
    }

    // Purged, nothing of it is left, the configuration included.
    run(dpkg(root).args(["--purge", "helo-filter"]));
    for gone in [
        "usr/bin/helo-filter",
        "etc/helo-filter",
        "usr/share/man/man1/helo-filter.1.gz",
    ] {
        assert!(!root.join(gone).exists(), "{gone} left after the purge");
    }
}

/// The value of a `Name: value` field of dpkg's status output.
fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {name} field:\n{status}"))
}

/// The identities to be set, not set; monitor mode; valid; otherwise what the example says.
fn check_configuration(root: &Path, binary: &Path) {
    let file = root.join("etc/helo-filter/helo-filter.toml");
    run(Command::new(binary).args(["config", "check"]).arg(&file));
    let packaged = std::fs::read_to_string(&file).expect("the packaged configuration");
    let example =
        std::fs::read_to_string(paths::workspace_root().join("docs/helo-filter.example.toml"))
            .expect("the example configuration");
    let identities = [
        "interfaces =",
        "our_names =",
        "our_domains =",
        "our_addrs =",
    ];
    // The example's settings, the identities commented out and monitor mode on: nothing
    // else may differ (its comments may).
    let expected: Vec<String> = settings(&example)
        .filter(|l| !identities.iter().any(|key| l.starts_with(key)))
        .map(|l| match l {
            "monitor = false" => "monitor = true".to_owned(),
            other => other.to_owned(),
        })
        .collect();
    let actual: Vec<String> = settings(&packaged).map(str::to_owned).collect();
    let only_in = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|l| !b.contains(l)).cloned().collect()
    };
    assert!(
        actual == expected,
        "deploy/debian/helo-filter.toml no longer follows docs/helo-filter.example.toml (the \
         same settings but the identity, commented out, and monitor = true, in the same order): \
         only the example sets {:?}, only the packaged file {:?}",
        only_in(&expected, &actual),
        only_in(&actual, &expected)
    );
    assert!(actual.iter().any(|l| l == "monitor = true"));
}

/// The lines of a TOML file or a unit that set something (section headers included),
/// comments left out.
fn settings(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Both units in Debian 12's unit directory, naming the packaged binary, accepted by
/// `systemd-analyze verify` in the root (which checks that every command exists there and
/// every unit named resolves); neither enabled.
fn check_units(root: &Path) {
    let units = ["helo-filter.service", "helo-filter-policy.service"];
    for unit in units {
        let text = std::fs::read_to_string(root.join("lib/systemd/system").join(unit))
            .unwrap_or_else(|e| panic!("{unit}: {e}"));
        assert!(
            text.lines()
                .any(|l| l.starts_with("ExecStart=/usr/bin/helo-filter ")),
            "{unit} does not start /usr/bin/helo-filter"
        );
    }
    let policy =
        std::fs::read_to_string(root.join("lib/systemd/system/helo-filter-policy.service"))
            .expect("the policy unit");
    let policy_settings: Vec<&str> = settings(&policy).collect();
    assert!(
        policy_settings.contains(&"CapabilityBoundingSet=")
            && !policy_settings.iter().any(|l| l.contains("CAP_")),
        "the policy service needs no capability: {policy_settings:?}"
    );
    // The rest of a system, which the package does not ship: systemd's own units (the
    // targets the units are ordered after) and the ExecReload's kill.
    std::fs::create_dir_all(root.join("usr/lib/systemd")).expect("usr/lib/systemd");
    run(Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(root.join("usr/lib/systemd/system")));
    std::fs::create_dir_all(root.join("bin")).expect("bin");
    std::fs::copy("/bin/kill", root.join("bin/kill")).expect("/bin/kill");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("helo-filter"),
        "systemd-analyze verify: {said}"
    );
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    assert!(
        !wants.exists(),
        "the package enabled a unit: {}",
        wants.display()
    );
}

/// A page for the program and for each of its subcommands, however deep (found in `--help`),
/// each with its NAME section; none for the hidden `generate-assets`.
fn check_man_pages(root: &Path, binary: &Path) {
    let man1 = root.join("usr/share/man/man1");
    let mut commands = vec![vec![]];
    let mut pages = 0;
    while let Some(path) = commands.pop() {
        let name = std::iter::once("helo-filter".to_owned())
            .chain(path.iter().cloned())
            .collect::<Vec<_>>()
            .join("-");
        let page = man1.join(format!("{name}.1.gz"));
        let text = stdout(&run(Command::new("zcat").arg(&page)));
        let escaped = name.replace('-', "\\-");
        assert!(
            text.contains(&format!(".SH NAME\n{escaped} \\- ")),
            "{}: no NAME section naming {name}:\n{text}",
            page.display()
        );
        pages += 1;
        for subcommand in subcommands(binary, &path) {
            let mut deeper = path.clone();
            deeper.push(subcommand);
            commands.push(deeper);
        }
    }
    assert!(pages >= 10, "only {pages} man pages");
    assert!(!man1.join("helo-filter-generate-assets.1.gz").exists());
}

/// The subcommands `helo-filter PATH --help` lists (its `help` left out).
fn subcommands(binary: &Path, path: &[String]) -> Vec<String> {
    let help = stdout(&run(Command::new(binary).args(path).arg("--help")));
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// Where bash-completion, zsh (Debian's vendor directory) and fish look; the hidden
/// subcommand left out.
fn check_completions(root: &Path) {
    for (file, wanted) in [
        (
            "usr/share/bash-completion/completions/helo-filter",
            "helo-filter",
        ),
        (
            "usr/share/zsh/vendor-completions/_helo-filter",
            "#compdef helo-filter",
        ),
        (
            "usr/share/fish/vendor_completions.d/helo-filter.fish",
            "complete -c helo-filter",
        ),
    ] {
        let text =
            std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(text.contains(wanted), "{file} lacks {wanted:?}");
        assert!(
            !text.contains("generate-assets"),
            "{file} offers the hidden generate-assets"
        );
    }
}

/// No maintainer script enables or starts a service: the operator sets the identity first.
#[test]
fn nothing_is_enabled_or_started() {
    let package = package();
    let control = TempDir::new("control");
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(package)
        .arg(&control.0));
    let conffiles =
        std::fs::read_to_string(control.0.join("conffiles")).expect("the package's conffiles");
    assert_eq!(conffiles.trim(), "/etc/helo-filter/helo-filter.toml");
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        let Ok(text) = std::fs::read_to_string(control.0.join(script)) else {
            continue;
        };
        for starts in [
            "systemctl enable",
            "systemctl start",
            "systemctl restart",
            "deb-systemd-helper enable",
            "deb-systemd-invoke start",
            "deb-systemd-invoke restart",
        ] {
            assert!(!text.contains(starts), "{script} runs {starts}:\n{text}");
        }
    }
}
