//! Builds the eBPF programs of `agent-ebpf/` for the bpf target with aya-build (nightly
//! toolchain, bpf-linker) and leaves them in OUT_DIR for `include_bytes_aligned!`.
//!
//! With `AYA_BUILD_SKIP=1` nothing is built and an empty object is left instead: the unit
//! tests then build without nightly or bpf-linker, and the binary refuses to load probes.
use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

const OBJECT: &str = "vfsdr-probes";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("agent/ has a parent")?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let ebpf_dir = root.join("agent-ebpf");
    let common_dir = root.join("agent-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());

    // `cargo xtask setup` installs bpf-linker into the workspace's .tools/bin.
    let tools = root.join(".tools").join("bin");
    if tools.is_dir() {
        let path = env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![tools];
        dirs.extend(env::split_paths(&path));
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PATH", env::join_paths(dirs)?) };
    }

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(out_dir.join(OBJECT), [])?;
        return Ok(());
    }
    let ebpf_dir = ebpf_dir.to_str().context("agent-ebpf path is UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "vfsdr-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src, bpf-linker) or build with AYA_BUILD_SKIP=1 for unit tests")
}
