//! `cargo xtask test`: the whole test suite, as CI runs it.
//!
//! 1. setup (packages, nightly rust-src, bpf-linker);
//! 2. unit tests of every crate with `AYA_BUILD_SKIP=1` (no nightly, bpf-linker or root needed;
//!    a separate target dir so the real build is not invalidated);
//! 3. the real build (eBPF included) and the .deb/.rpm packages;
//! 4. the root integration tests in `tests/` (lab namespaces, loop devices, journald, dpkg),
//!    one at a time.
use anyhow::bail;

use crate::{package, setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// Run only the unit tests (no root needed).
    #[arg(long)]
    unit: bool,
    /// Only root tests whose name contains this.
    #[arg(long, value_name = "FILTER")]
    only: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    setup::run()?;
    let root = util::root();

    eprintln!("== unit tests (AYA_BUILD_SKIP=1)");
    util::run(
        util::cargo()
            .args(["test", "--workspace", "--exclude", "vfsdr-ebpf"])
            .env("AYA_BUILD_SKIP", "1")
            .env("CARGO_TARGET_DIR", root.join("target/skip")),
    )?;
    if args.unit {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "the root integration tests need root (network namespaces, loop devices, mounts); run as root, or pass --unit"
        );
    }

    eprintln!("== build with eBPF, and packages");
    util::run(util::cargo().args(["build", "-p", "vfsdr"]))?;
    package::run()?;

    eprintln!("== root integration tests");
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "-p",
        "vfsdr-lab",
        "--tests",
        "--",
        "--ignored",
        "--test-threads=1",
    ])
    .env("VFSDR_BIN", root.join("target/debug/vfsdr"))
    .env("VFSDR_PACKAGES", root.join("target/packages"));
    if let Some(f) = &args.only {
        cmd.arg(f);
    }
    util::run(&mut cmd)?;
    Ok(())
}
