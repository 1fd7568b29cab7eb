//! `cargo xtask bench <which>`: benchmarks in the lab; results go to `bench/results/`.
//!
//! - `writes` ([`writes`]): the cost of eBPF write tracking on write loops.
//! - `replication` ([`replication`]): one change set shipped by a vfsdr cycle, `rsync --inplace`,
//!   `btrfs send -p | btrfs receive` and a raw copy of the changed bytes; the freeze window and
//!   the RPO lag under a sustained writer.
//! - `snapshots` ([`snapshots`]): a series of 1,024 DR snapshots: cycle time, listing time, pool
//!   space and pruning as the series grows.
mod btrfs;
mod changeset;
mod lag;
mod link;
mod replication;
mod report;
mod snapshots;
mod writes;

use std::path::PathBuf;

use anyhow::bail;
use vfsdr_lab::require_root;

use crate::{setup, util};

#[derive(clap::Args)]
pub struct Args {
    /// Which benchmark: `writes` (tracking overhead on write loops), `replication` (vfsdr
    /// against rsync, btrfs send/receive and the raw floor; freeze window; RPO lag) or
    /// `snapshots` (a series of DR snapshots: cycle and listing time, space, pruning).
    which: String,
    /// writes: rounds of (detached, attached) runs per workload.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    #[command(flatten)]
    replication: replication::Options,
    #[command(flatten)]
    snapshots: snapshots::Options,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.which.as_str() {
        "writes" => writes::run(args.rounds),
        "replication" => replication::run(args.replication),
        "snapshots" => {
            let r = args.replication;
            snapshots::run(args.snapshots, r.bin, r.out, r.note.as_deref())
        }
        other => bail!("unknown benchmark {other:?}; known: writes, replication, snapshots"),
    }
}

/// Root, setup, and the vfsdr binary: `bin` if given, else a fresh release build.
fn prepare_with(bin: Option<PathBuf>) -> anyhow::Result<()> {
    require_root()?;
    setup::run()?;
    let bin = match bin {
        Some(b) => b,
        None => {
            util::run(util::cargo().args(["build", "--release", "-p", "vfsdr"]))?;
            util::root().join("target/release/vfsdr")
        }
    };
    if !bin.is_file() {
        bail!("the vfsdr binary {} does not exist", bin.display());
    }
    // SAFETY: setting an env var before any thread of ours reads it.
    unsafe { std::env::set_var("VFSDR_BIN", bin) };
    Ok(())
}

/// Root, setup, and a fresh release build of vfsdr.
fn prepare() -> anyhow::Result<()> {
    prepare_with(None)
}

/// A size: bytes, or a number with KiB, MiB, GiB (powers of 1024) or KB, MB, GB (of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 2GiB, 300MiB, 50MB)"))?;
    let mult = match unit.trim() {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        u => {
            return Err(format!(
                "unknown unit {u:?} in {s:?} (use KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    Ok((n * mult).round() as u64)
}

/// The `q` quantile (0..=1) of `v` by nearest rank; 0 for an empty slice.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Writes dirty pages back and drops the page cache, dentries and inodes, so every tool starts
/// from cold caches.
pub fn drop_caches() -> anyhow::Result<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("300MiB"), Ok(300 << 20));
        assert_eq!(parse_size("50MB"), Ok(50_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert!(parse_size("2 parsecs").is_err());
        assert!(parse_size("GiB").is_err());
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v[..20], 0.99), 20.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
