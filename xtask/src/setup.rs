//! `cargo xtask setup`: installs what building and testing need, idempotently.
//!
//! Each item is checked first and installed only when missing, so a second run does nothing (and runs
//! no `apt-get update`). Items: Debian packages, the `nightly` toolchain with `rust-src`, bpf-linker
//! built against the nightly rustc's own libLLVM (into `.tools/`), and tracefs at /sys/kernel/tracing.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::util::{self, is_root, tools_dir};

/// Debian packages the build, the lab and the tests use.
const PACKAGES: &[&str] = &[
    "xfsprogs",
    "samba",
    "smbclient",
    "samba-testsuite",
    "bpftool",
    "libclang-dev",
    "iproute2",
    "rpm",
    "btrfs-progs",
    "util-linux",
    "kmod",
    // systemd-analyze (unit checks) and a standalone journald for the logging tests.
    "systemd",
    // ping, used by the lab tests to prove reachability inside the lab.
    "iputils-ping",
    // The replication benchmark's comparison (rsync --inplace of the image).
    "rsync",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const TRACEFS: &str = "/sys/kernel/tracing";

/// A setup item: checks, installs if missing, and says what it found or did.
type Item = fn() -> anyhow::Result<(Outcome, String)>;

/// What an item needed: nothing, or an installation that was done now.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Present,
    Installed,
}

pub fn run() -> anyhow::Result<()> {
    let items: [(&str, Item); 4] = [
        ("Debian packages", debian_packages),
        ("nightly toolchain", nightly),
        ("bpf-linker", bpf_linker),
        ("tracefs", tracefs),
    ];
    let mut summary = Vec::new();
    let mut failed = Vec::new();
    for (name, item) in items {
        match item() {
            Ok((outcome, detail)) => summary.push((name, Ok((outcome, detail)))),
            Err(e) => {
                failed.push(name);
                summary.push((name, Err(format!("{e:#}"))));
            }
        }
    }
    println!("setup summary:");
    for (name, result) in &summary {
        match result {
            Ok((Outcome::Present, detail)) => println!("  ok        {name}: {detail}"),
            Ok((Outcome::Installed, detail)) => println!("  installed {name}: {detail}"),
            Err(e) => println!("  FAILED    {name}: {e}"),
        }
    }
    if !failed.is_empty() {
        bail!("setup incomplete: {}", failed.join(", "));
    }
    Ok(())
}

// ---- Debian packages --------------------------------------------------------------------------

fn debian_packages() -> anyhow::Result<(Outcome, String)> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        println!("ok: Debian packages present ({})", PACKAGES.join(" "));
        return Ok((
            Outcome::Present,
            format!("{} packages installed", PACKAGES.len()),
        ));
    }
    if !is_root() {
        bail!(
            "Debian packages missing: {}; installing them needs root (run `cargo xtask setup` as root)",
            missing.join(" ")
        );
    }
    println!("installing Debian packages {} ...", missing.join(" "));
    util::run(Command::new("apt-get").arg("update"))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still = missing_packages()?;
    ensure!(
        still.is_empty(),
        "apt-get install ran, but still missing: {}",
        still.join(" ")
    );
    Ok((
        Outcome::Installed,
        format!("installed {}", missing.join(" ")),
    ))
}

/// Packages from [`PACKAGES`] that dpkg does not report as "install ok installed".
fn missing_packages() -> anyhow::Result<Vec<String>> {
    // One dpkg-query for all; it exits 1 when some package is unknown, so read stdout regardless.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(PACKAGES)
        .output()
        .context("failed to run dpkg-query (is this a Debian system?)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| *status == "install ok installed")
        .map(|(pkg, _)| pkg.split(':').next().unwrap_or(pkg))
        .collect();
    Ok(PACKAGES
        .iter()
        .filter(|p| !installed.contains(p))
        .map(|p| p.to_string())
        .collect())
}

// ---- nightly toolchain with rust-src ----------------------------------------------------------

fn nightly() -> anyhow::Result<(Outcome, String)> {
    let toolchains = capture(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the nightly toolchain")?;
    let has_nightly = toolchains
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|t| t == "nightly" || t.starts_with("nightly-"));
    if !has_nightly {
        println!("installing Rust toolchain nightly with rust-src ...");
        let mut cmd = Command::new("rustup");
        cmd.args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]);
        util::run(&mut cmd).context(
            "could not install the Rust nightly toolchain, which the eBPF build needs; rustup must \
             reach static.rust-lang.org (or install nightly with rust-src by hand and rerun)",
        )?;
        ensure!(
            has_rust_src()?,
            "nightly was installed but rust-src is not listed as installed"
        );
        return Ok((
            Outcome::Installed,
            format!("installed {}", nightly_version()?),
        ));
    }
    if !has_rust_src()? {
        println!("installing rust-src for nightly ...");
        util::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
        .context("could not add rust-src to the nightly toolchain (the eBPF build needs it)")?;
        ensure!(
            has_rust_src()?,
            "rustup component add ran, but rust-src is still not installed"
        );
        return Ok((
            Outcome::Installed,
            format!("{} + rust-src added", nightly_version()?),
        ));
    }
    let version = nightly_version()?;
    println!("ok: Rust nightly toolchain with rust-src present ({version})");
    Ok((Outcome::Present, format!("{version} with rust-src")))
}

fn has_rust_src() -> anyhow::Result<bool> {
    let list = capture(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    Ok(list
        .lines()
        .any(|l| l.trim() == "rust-src" || l.trim().starts_with("rust-src-")))
}

fn nightly_version() -> anyhow::Result<String> {
    capture(Command::new("rustc").args(["+nightly", "--version"])).map(|s| s.trim().to_string())
}

// ---- bpf-linker -------------------------------------------------------------------------------

/// The nightly rustc's libLLVM: the file, and the LLVM major version from its name.
struct NightlyLlvm {
    lib: PathBuf,
    file_name: String,
    major: u32,
}

fn nightly_llvm() -> anyhow::Result<NightlyLlvm> {
    let sysroot = PathBuf::from(
        capture(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let libdir = sysroot.join("lib");
    let mut found: Vec<String> = fs::read_dir(&libdir)
        .with_context(|| format!("cannot read {}", libdir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("libLLVM.so.") && n.ends_with("-nightly"))
        .collect();
    found.sort();
    let file_name = match found.as_slice() {
        [one] => one.clone(),
        [] => bail!(
            "no libLLVM.so.*-nightly in {} (is the nightly toolchain complete?)",
            libdir.display()
        ),
        many => bail!(
            "several libLLVM.so.*-nightly in {}: {}",
            libdir.display(),
            many.join(", ")
        ),
    };
    // libLLVM.so.22.1-rust-1.97.0-nightly -> 22
    let major = file_name["libLLVM.so.".len()..]
        .split(['.', '-'])
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM major version from {file_name}"))?;
    Ok(NightlyLlvm {
        lib: libdir.join(&file_name),
        file_name,
        major,
    })
}

fn bpf_linker() -> anyhow::Result<(Outcome, String)> {
    let llvm = nightly_llvm()?;
    let tools = tools_dir();
    let bin = tools.join("bin/bpf-linker");
    let stamp_path = tools.join("bpf-linker.stamp");
    let stamp = format!(
        "bpf-linker {BPF_LINKER_VERSION}\nfeatures llvm-{}\nlibLLVM {}\n",
        llvm.major,
        llvm.lib.display()
    );
    link_llvm_prefix(&tools.join("llvm/lib"), &llvm)?;
    let detail = format!("{BPF_LINKER_VERSION} against {}", llvm.file_name);

    if bin.exists() {
        match fs::read_to_string(&stamp_path).ok() {
            Some(s) if s == stamp => match linker_version_ok(&bin) {
                Ok(()) => {
                    println!("ok: bpf-linker {detail} present");
                    return Ok((Outcome::Present, detail));
                }
                Err(e) => println!("bpf-linker does not work ({e:#}); rebuilding"),
            },
            Some(_) => {
                println!("bpf-linker was built against another libLLVM (stamp differs); rebuilding")
            }
            None => {
                // Built by hand without a stamp: trust it only if it runs, is the right version and
                // needs exactly this libLLVM.
                match linker_version_ok(&bin).and_then(|()| needs_lib(&bin, &llvm.file_name)) {
                    Ok(()) => {
                        write_stamp(&stamp_path, &stamp)?;
                        println!("ok: bpf-linker {detail} present (verified; stamp written)");
                        return Ok((Outcome::Present, detail));
                    }
                    Err(e) => println!("existing bpf-linker not usable ({e:#}); rebuilding"),
                }
            }
        }
    }

    println!("installing bpf-linker {detail} (takes about 4 minutes) ...");
    let mut cmd = util::cargo();
    cmd.env("LLVM_PREFIX", tools.join("llvm"))
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{}", llvm.major)])
        .arg("--root")
        .arg(&tools);
    util::run(&mut cmd).context("building bpf-linker failed")?;
    linker_version_ok(&bin)?;
    write_stamp(&stamp_path, &stamp)?;
    Ok((Outcome::Installed, detail))
}

/// `<prefix>/lib/libLLVM.so` and `<prefix>/lib/<file_name>` -> the nightly library; the second link
/// lets bpf-linker start outside `rustup run` (its RUNPATH is the prefix). Stale links to other
/// nightly libraries are removed.
fn link_llvm_prefix(dir: &Path, llvm: &NightlyLlvm) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM.so.")
            && name != llvm.file_name
            && entry.file_type()?.is_symlink()
        {
            println!("removing stale link {}", entry.path().display());
            fs::remove_file(entry.path())?;
        }
    }
    for name in ["libLLVM.so", llvm.file_name.as_str()] {
        let link = dir.join(name);
        if fs::read_link(&link).ok().as_deref() == Some(llvm.lib.as_path()) {
            continue;
        }
        println!("linking {} -> {}", link.display(), llvm.lib.display());
        let _ = fs::remove_file(&link);
        symlink(&llvm.lib, &link)
            .with_context(|| format!("cannot create symlink {}", link.display()))?;
    }
    Ok(())
}

fn linker_version_ok(bin: &Path) -> anyhow::Result<()> {
    let out = capture(Command::new(bin).arg("--version"))?;
    let expected = format!("bpf-linker {BPF_LINKER_VERSION}");
    ensure!(
        out.trim() == expected,
        "{} --version says {:?}, expected {expected:?}",
        bin.display(),
        out.trim()
    );
    Ok(())
}

/// Whether the binary names `lib` (its DT_NEEDED soname lives in the dynamic string table).
fn needs_lib(bin: &Path, lib: &str) -> anyhow::Result<()> {
    let bytes = fs::read(bin).with_context(|| format!("cannot read {}", bin.display()))?;
    let mut needle = lib.as_bytes().to_vec();
    needle.push(0);
    ensure!(
        bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
        "{} is not linked against {lib}",
        bin.display()
    );
    Ok(())
}

fn write_stamp(path: &Path, stamp: &str) -> anyhow::Result<()> {
    fs::write(path, stamp).with_context(|| format!("cannot write {}", path.display()))
}

// ---- tracefs ----------------------------------------------------------------------------------

fn tracefs() -> anyhow::Result<(Outcome, String)> {
    if tracefs_mounted()? {
        println!("ok: tracefs present at {TRACEFS}");
        return Ok((Outcome::Present, format!("mounted at {TRACEFS}")));
    }
    ensure!(
        is_root(),
        "tracefs is not mounted at {TRACEFS}; mounting it needs root"
    );
    println!("installing tracefs mount at {TRACEFS} ...");
    util::run(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))?;
    ensure!(
        tracefs_mounted()?,
        "mount ran, but {TRACEFS} is still not a tracefs mount"
    );
    Ok((Outcome::Installed, format!("mounted at {TRACEFS}")))
}

fn tracefs_mounted() -> anyhow::Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == TRACEFS && f[2] == "tracefs"
    }))
}

// ---- helpers ----------------------------------------------------------------------------------

/// Runs a command quietly and returns its stdout; the error names the command and carries stderr.
fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to start {}", util::show(cmd)))?;
    ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        util::show(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
