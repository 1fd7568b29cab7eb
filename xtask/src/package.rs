//! `cargo xtask package`: builds the agent in release mode and packages it as a .deb (cargo-deb)
//! and an .rpm (cargo-generate-rpm) into `target/packages/`.
//!
//! What goes into the packages is declared in `agent/Cargo.toml` (`[package.metadata.deb]`,
//! `[package.metadata.generate-rpm]`) and `packaging/` (systemd unit, maintainer scripts).
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::util;

/// A cargo subcommand the task needs, and the crate (and versions) that provide it.
struct Tool {
    subcommand: &'static str,
    krate: &'static str,
    version: &'static str,
}

/// Versions the packaging metadata was written and tested against.
const TOOLS: [Tool; 2] = [
    Tool {
        subcommand: "deb",
        krate: "cargo-deb",
        version: "^3.8",
    },
    Tool {
        subcommand: "generate-rpm",
        krate: "cargo-generate-rpm",
        version: "^0.21",
    },
];

/// The default configuration shipped as /etc/vfsdr/vfsdr.yaml.
const DEFAULT_CONFIG: &str = "config/vfsdr.yaml";

pub fn run() -> anyhow::Result<()> {
    let root = util::root();
    if !root.join(DEFAULT_CONFIG).is_file() {
        bail!(
            "{} is missing: it is packaged as /etc/vfsdr/vfsdr.yaml",
            root.join(DEFAULT_CONFIG).display()
        );
    }
    for tool in &TOOLS {
        ensure_tool(tool)?;
    }
    if std::env::var_os("AYA_BUILD_SKIP")
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    {
        eprintln!(
            "warning: AYA_BUILD_SKIP is set: the packaged agent will not be able to load its eBPF probes"
        );
    }

    util::run(util::cargo().args(["build", "--release", "-p", "vfsdr"]))?;
    let binary = target_dir()?.join("release").join("vfsdr");
    // cargo-deb strips its copy itself; cargo-generate-rpm packages the file as it is.
    util::run(Command::new("strip").arg("--strip-all").arg(&binary))?;

    let out = root.join("target").join("packages");
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    remove_old_packages(&out)?;
    util::run(
        util::cargo()
            .args(["deb", "-p", "vfsdr", "--no-build", "--output"])
            .arg(&out),
    )?;
    util::run(
        util::cargo()
            .args(["generate-rpm", "-p", "agent", "--output"])
            .arg(&out),
    )?;

    let built = packages_in(&out)?;
    if built.is_empty() {
        bail!("no package was written to {}", out.display());
    }
    println!("packages:");
    for p in built {
        println!("  {}", p.display());
    }
    Ok(())
}

/// Installs a cargo subcommand unless `cargo <subcommand> --version` already works.
fn ensure_tool(tool: &Tool) -> anyhow::Result<()> {
    let present = util::cargo()
        .args([tool.subcommand, "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        eprintln!("{} is installed", tool.krate);
        return Ok(());
    }
    eprintln!(
        "{} is not installed; installing it from crates.io",
        tool.krate
    );
    util::run(util::cargo().args(["install", "--locked", tool.krate, "--version", tool.version]))
}

/// The target directory cargo uses for this workspace (honours CARGO_TARGET_DIR and config).
fn target_dir() -> anyhow::Result<PathBuf> {
    let mut cmd = util::cargo();
    cmd.args(["metadata", "--format-version", "1", "--no-deps"]);
    let output = cmd
        .output()
        .with_context(|| format!("failed to start {}", util::show(&cmd)))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            util::show(&cmd),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata printed invalid JSON")?;
    let dir = meta["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// Packages of the agent from earlier runs, so that `target/packages/` holds one of each kind.
fn remove_old_packages(dir: &Path) -> anyhow::Result<()> {
    for p in packages_in(dir)? {
        eprintln!("removing old {}", p.display());
        fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
    }
    Ok(())
}

/// The agent's .deb and .rpm files in `dir`.
fn packages_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = (name.starts_with("vfsdr_") && name.ends_with(".deb"))
            || (name.starts_with("vfsdr-") && name.ends_with(".rpm"));
        if ours {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}
