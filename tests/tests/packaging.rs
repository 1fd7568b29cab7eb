//! Root tests of the packages built by `cargo xtask package`: the .deb installs the agent, its
//! conffile and its enabled, valid systemd unit, and `dpkg -P` leaves nothing behind; the .rpm
//! carries the same files, with the configuration marked as such.
//!
//! Packages come from `target/packages/` (or `VFSDR_PACKAGES`). Run with
//! `cargo test -p vfsdr-lab --test packaging -- --ignored --test-threads=1`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

const PACKAGE: &str = "vfsdr";
const BINARY: &str = "/usr/bin/vfsdr";
const CONFIG: &str = "/etc/vfsdr/vfsdr.yaml";
const UNIT: &str = "vfsdr.service";
const UNIT_DIRS: [&str; 2] = ["/usr/lib/systemd/system", "/lib/systemd/system"];
const SYSTEMD_ETC: &str = "/etc/systemd/system";
/// What the package and the agent create outside the package's file list; purge removes them.
const CREATED_DIRS: [&str; 2] = ["/etc/vfsdr", "/var/lib/vfsdr"];

#[test]
#[ignore = "root: installs the vfsdr .deb with dpkg, then purges it"]
fn deb_installs_an_enabled_valid_unit_and_purges_without_leftovers() -> anyhow::Result<()> {
    require_root()?;
    let deb = find_package("deb")?;
    if is_installed()? {
        bail!(
            "the package {PACKAGE} is already installed on this machine; this test installs and purges \
             it and will not touch an existing installation (remove it with `dpkg -P {PACKAGE}` first)"
        );
    }
    for dir in CREATED_DIRS {
        ensure!(
            !Path::new(dir).exists(),
            "{dir} exists although {PACKAGE} is not installed; purging would delete it, so this test \
             refuses to run (move it away first)"
        );
    }
    let _purge = PurgeOnDrop;

    run(Command::new("dpkg").arg("-i").arg(&deb))?;

    // Files, conffile, unit and its enable symlink.
    let files = installed_files()?;
    for path in [BINARY, CONFIG] {
        ensure!(
            files.iter().any(|f| f == Path::new(path)),
            "dpkg -L {PACKAGE} does not list {path}: {files:?}"
        );
        ensure!(Path::new(path).is_file(), "{path} is not installed");
    }
    let meta = fs::metadata(BINARY)?;
    ensure!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0,
        "{BINARY} is not executable"
    );
    let conffiles = output(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]))?;
    ensure!(
        conffiles
            .lines()
            .any(|l| l.split_whitespace().next() == Some(CONFIG)),
        "{CONFIG} is not a conffile of {PACKAGE}; dpkg-query shows: {conffiles:?}"
    );
    let unit = UNIT_DIRS
        .iter()
        .map(|d| Path::new(d).join(UNIT))
        .find(|p| p.is_file())
        .with_context(|| format!("{UNIT} is in none of {UNIT_DIRS:?}"))?;
    let links = enable_links()?;
    ensure!(
        !links.is_empty(),
        "{UNIT} is not enabled: no {SYSTEMD_ETC}/*.wants/{UNIT}"
    );
    ensure!(
        links.iter().any(|l| l
            .parent()
            .is_some_and(|p| p.ends_with("multi-user.target.wants"))),
        "{UNIT} is enabled, but not for multi-user.target: {links:?}"
    );
    for link in &links {
        let target = fs::read_link(link)?;
        ensure!(
            target.file_name() == Some(UNIT.as_ref()),
            "{} points to {}",
            link.display(),
            target.display()
        );
    }

    // The unit as installed passes systemd's own check (its ExecStart binaries exist now).
    run(Command::new("systemd-analyze").arg("verify").arg(&unit))?;
    // The shipped configuration is valid: the unit's ExecStartPre would accept it.
    run(Command::new(BINARY).args(["config", "check", CONFIG]))?;

    // State the agent would leave, and a file an operator would add: purge removes them too.
    fs::create_dir_all("/var/lib/vfsdr")?;
    fs::write("/var/lib/vfsdr/test-state", b"state")?;
    fs::write("/etc/vfsdr/operator-added.pem", b"key")?;

    run(Command::new("dpkg").args(["-P", PACKAGE]))?;
    ensure!(
        !is_installed()?,
        "{PACKAGE} is still known to dpkg after dpkg -P"
    );
    let mut left = Vec::new();
    for path in &files {
        if fs::symlink_metadata(path).is_err() {
            continue;
        }
        // Shared directories (/usr/bin, /usr/lib/systemd/system, ...) belong to other packages too.
        if path.is_dir() && owned_by_some_package(path)? {
            continue;
        }
        left.push(path.clone());
    }
    for dir in CREATED_DIRS {
        if Path::new(dir).exists() {
            left.push(dir.into());
        }
    }
    left.extend(enable_links()?);
    let mask = Path::new(SYSTEMD_ETC).join(UNIT);
    if fs::symlink_metadata(&mask).is_ok() {
        left.push(mask);
    }
    left.extend(find_named(
        "/var/lib/systemd/deb-systemd-helper-enabled",
        UNIT,
    )?);
    left.extend(find_named(
        "/var/lib/systemd/deb-systemd-helper-masked",
        UNIT,
    )?);
    ensure!(left.is_empty(), "dpkg -P {PACKAGE} left behind: {left:?}");
    Ok(())
}

#[test]
#[ignore = "root: runs with the root tests, after cargo xtask package (only reads the .rpm)"]
fn rpm_carries_binary_unit_and_config() -> anyhow::Result<()> {
    let rpm = find_package("rpm")?;
    let files = output(Command::new("rpm").arg("-qlp").arg(&rpm))?;
    let unit = format!("/usr/lib/systemd/system/{UNIT}");
    for path in [BINARY, CONFIG, unit.as_str()] {
        ensure!(
            files.lines().any(|l| l == path),
            "rpm -qlp does not list {path}:\n{files}"
        );
    }
    let configs = output(Command::new("rpm").arg("-qcp").arg(&rpm))?;
    ensure!(
        configs.lines().any(|l| l == CONFIG),
        "{CONFIG} is not a config file of the rpm:\n{configs}"
    );
    // %config(noreplace): `c` and `n` among the file's flags.
    let flags = output(
        Command::new("rpm")
            .args(["-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]"])
            .arg(&rpm),
    )?;
    let config_flags = flags
        .lines()
        .find_map(|l| l.strip_prefix(CONFIG).map(str::trim))
        .with_context(|| format!("no file flags for {CONFIG}:\n{flags}"))?;
    ensure!(
        config_flags.contains('c') && config_flags.contains('n'),
        "{CONFIG} is not %config(noreplace): flags {config_flags:?}"
    );
    let scripts = output(Command::new("rpm").args(["-qp", "--scripts"]).arg(&rpm))?;
    for needle in [
        "systemctl --no-reload preset vfsdr.service",
        "disable --now vfsdr.service",
        "try-restart vfsdr.service",
    ] {
        ensure!(
            scripts.contains(needle),
            "the rpm scriptlets do not run `{needle}`:\n{scripts}"
        );
    }
    let requires = output(Command::new("rpm").args(["-qp", "--requires"]).arg(&rpm))?;
    for dep in ["xfsprogs", "util-linux"] {
        ensure!(
            requires.lines().any(|l| l.trim() == dep),
            "the rpm does not require {dep}:\n{requires}"
        );
    }
    Ok(())
}

/// Purges the package when the test ends, also when it failed half-way.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        if is_installed().unwrap_or(true) {
            match Command::new("dpkg").args(["-P", PACKAGE]).status() {
                Ok(s) if s.success() => {}
                other => eprintln!("cleanup: dpkg -P {PACKAGE} failed: {other:?}"),
            }
        }
    }
}

fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "this test must run as root"
    );
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The newest `vfsdr` package with extension `ext` in `VFSDR_PACKAGES` or `target/packages/`.
fn find_package(ext: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("VFSDR_PACKAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("packages"));
    let hint = "build the packages with `cargo xtask package` (or set VFSDR_PACKAGES)";
    let entries =
        fs::read_dir(&dir).with_context(|| format!("cannot read {}: {hint}", dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(PACKAGE) && name.ends_with(&format!(".{ext}")) {
            found.push((entry.metadata()?.modified()?, entry.path()));
        }
    }
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .with_context(|| format!("no {PACKAGE} .{ext} in {}: {hint}", dir.display()))
}

fn is_installed() -> anyhow::Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", PACKAGE])
        .output()
        .context("cannot run dpkg-query")?;
    // Unknown packages make dpkg-query fail; "config-files" means removed but not purged.
    Ok(out.status.success() && {
        let status = String::from_utf8_lossy(&out.stdout);
        !status.trim().is_empty() && status.trim() != "not-installed"
    })
}

fn installed_files() -> anyhow::Result<Vec<PathBuf>> {
    let list = output(Command::new("dpkg").args(["-L", PACKAGE]))?;
    Ok(list
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/') && *l != "/.")
        .map(PathBuf::from)
        .collect())
}

fn owned_by_some_package(path: &Path) -> anyhow::Result<bool> {
    let status = Command::new("dpkg-query")
        .arg("-S")
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("cannot run dpkg-query")?;
    Ok(status.success())
}

/// `/etc/systemd/system/*.wants/vfsdr.service`.
fn enable_links() -> anyhow::Result<Vec<PathBuf>> {
    let mut links = Vec::new();
    for entry in fs::read_dir(SYSTEMD_ETC).with_context(|| format!("cannot read {SYSTEMD_ETC}"))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(".wants") {
            let link = entry.path().join(UNIT);
            if fs::symlink_metadata(&link).is_ok() {
                links.push(link);
            }
        }
    }
    Ok(links)
}

/// Files named `name` anywhere under `dir` (which may not exist).
fn find_named(dir: &str, name: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::from(dir)];
    while let Some(d) = pending.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else if entry.file_name().to_string_lossy().starts_with(name) {
                found.push(entry.path());
            }
        }
    }
    Ok(found)
}

/// Runs a command, echoing it; fails with its status and output.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    output(cmd).map(|out| eprint!("{out}"))
}

/// Runs a command and returns its stdout; fails with its status and stderr.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    eprintln!("+ {shown}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{shown} failed ({}):\n{stdout}{stderr}", out.status);
    }
    if !stderr.trim().is_empty() {
        eprint!("{stderr}");
    }
    Ok(stdout)
}
