//! The crash tests' lab and the steps they share: a [`Pair`] whose cycles of 160 MiB last about
//! 8 s, files to ship, a cycle well under way in the background, waiting for it to fail.
use std::{
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure};
use serde_json::Value;
use vfsdr_lab::{
    MIB,
    check::sh,
    pair::{Pair, PairOptions},
};

/// Bytes of random data a long cycle ships.
pub const BIG_MIB: u64 = 160;

/// VFS fs1 with one 512 MiB volume `data`, replicated uncompressed at 20 MiB/s.
pub fn pair(name: &str) -> anyhow::Result<Pair> {
    let mut options = PairOptions::new(name, "fs1", &[("data", 512 * MIB)]);
    options.replication = vec![
        "compression: none".to_string(),
        "bandwidth_limit: 20MiB/s".to_string(),
    ];
    Pair::start(options)
}

/// Writes `mib` MiB of random data into a new file `name` of `data`, and a few small files.
pub fn write(p: &Pair, name: &str, mib: u64) -> anyhow::Result<()> {
    let m = p.mount("data").display().to_string();
    sh(&format!(
        "mkdir -p '{m}/dir'; dd if=/dev/urandom of='{m}/{name}' bs=1M count={mib} status=none; \
         for i in $(seq 1 50); do echo {name} $i > '{m}/dir/{name}-'$i; done; sync"
    ))?;
    Ok(())
}

/// A first cycle of a few files; returns its report and a copy (in the lab directory) of the
/// tree it holds.
pub fn first_cycle(p: &Pair) -> anyhow::Result<(Value, PathBuf)> {
    write(p, "first", 4)?;
    let r1 = p.replicate_now()?;
    let before = p.lab.dir().join("before");
    sh(&format!(
        "cp -a '{}' '{}'",
        p.mount("data").display(),
        before.display()
    ))?;
    Ok((r1, before))
}

/// A cycle of [`BIG_MIB`] in the background, waited for until it shipped 50 MiB.
pub fn big_cycle_under_way(p: &Pair) -> anyhow::Result<Child> {
    write(p, "big", BIG_MIB)?;
    let cli = p.replicate_in_background()?;
    p.wait_shipped(50 * MIB)?;
    Ok(cli)
}

/// The background `replicate` ended, with an error, within `limit`; returns its stderr.
pub fn wait_failed(mut child: Child, limit: Duration) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            ensure!(
                !out.status.success(),
                "the interrupted cycle succeeded: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            return Ok(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the interrupted cycle did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The DR site's only snapshot is the first one.
pub fn only_the_first_snapshot(p: &Pair) -> anyhow::Result<()> {
    let ids = p.snapshots()?;
    ensure!(ids == [1], "{ids:?}");
    Ok(())
}

/// The DR snapshot of cycle report `r` equals its clone, block for block, and holds the tree
/// `data` holds now.
pub fn check_latest(p: &Pair, r: &Value) -> anyhow::Result<()> {
    p.check_snapshot(r)?;
    p.snapshot_holds(r, "data", &p.mount("data"))
}
