//! `cargo xtask bench writes`: the cost of write tracking on the writers.
//!
//! On a loop-backed XFS volume in the lab, two write loops run with the probes detached (no
//! agent) and attached (the agent running, watching the volume), alternating, several rounds;
//! the medians are compared. Results go to `bench/results/writes.md`.
use std::{
    fmt::Write as _,
    fs::{File, OpenOptions},
    os::unix::fs::FileExt as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use vfsdr_lab::{
    GIB, Lab,
    agent::{Agent, write_config},
};

use crate::util;

const FILE_BYTES: u64 = 256 << 20;
const PASSES_4K: u64 = 4;
const SMALL_WRITES: u64 = 400_000;
const SMALL_SIZE: usize = 128;

/// 4 KiB buffered writes over a 256 MiB file, several passes, then fsync.
fn loop_4k(dir: &Path) -> anyhow::Result<Duration> {
    let path = dir.join("bench-4k");
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let buf = vec![0x5au8; 4096];
    let start = Instant::now();
    for pass in 0..PASSES_4K {
        let mut off = 0;
        while off < FILE_BYTES {
            let mut b = buf.clone();
            b[0] = pass as u8;
            f.write_all_at(&b, off)?;
            off += 4096;
        }
    }
    f.sync_all()?;
    let t = start.elapsed();
    drop(f);
    std::fs::remove_file(path)?;
    Ok(t)
}

/// Many small appending writes (128 bytes), then fsync.
fn loop_small(dir: &Path) -> anyhow::Result<Duration> {
    use std::io::Write as _;
    let path = dir.join("bench-small");
    let mut f = File::create(&path)?;
    let buf = [0xa5u8; SMALL_SIZE];
    let start = Instant::now();
    for _ in 0..SMALL_WRITES {
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    let t = start.elapsed();
    drop(f);
    std::fs::remove_file(path)?;
    Ok(t)
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

struct Row {
    name: &'static str,
    what: String,
    detached: Vec<Duration>,
    attached: Vec<Duration>,
}

pub fn run(rounds: usize) -> anyhow::Result<()> {
    if rounds < 3 {
        bail!("--rounds must be at least 3, got {rounds}");
    }
    super::prepare()?;

    let lab = Lab::new("bench-writes")?;
    let site = lab.add_site("bench")?;
    let vol = site.pool().create_volume("data", 2 * GIB)?;
    let config = write_config(
        &site,
        &format!(
            "volumes:\n  - name: data\n    image: {}\n",
            vol.image().display()
        ),
    )?;
    let dir = vol.mount_point();
    type Workload = fn(&Path) -> anyhow::Result<Duration>;
    let workloads: [(&str, String, Workload); 2] = [
        (
            "4k-buffered",
            format!(
                "{} x 4 KiB pwrite over a 256 MiB file, then fsync",
                PASSES_4K * FILE_BYTES / 4096
            ),
            loop_4k,
        ),
        (
            "small-writes",
            format!("{SMALL_WRITES} x {SMALL_SIZE} B appending write, then fsync"),
            loop_small,
        ),
    ];
    let mut rows: Vec<Row> = workloads
        .iter()
        .map(|(n, w, _)| Row {
            name: n,
            what: w.clone(),
            detached: vec![],
            attached: vec![],
        })
        .collect();
    // Warm up the volume (allocations, page cache) once per workload.
    for (_, _, f) in &workloads {
        f(dir)?;
    }
    for round in 0..rounds {
        for (i, (name, _, f)) in workloads.iter().enumerate() {
            let d = f(dir)?;
            let agent = Agent::start(&site, &config)?;
            let a = f(dir)?;
            let status = agent.status()?;
            agent.stop()?;
            let bios = status["tracking"]["probes"]["bios"].as_u64().unwrap_or(0);
            if bios == 0 {
                bail!("the agent saw no block writes during {name}: the probes are not attached");
            }
            eprintln!("round {round} {name}: detached {d:?}, attached {a:?}");
            rows[i].detached.push(d);
            rows[i].attached.push(a);
        }
    }
    let report = render(&rows, rounds)?;
    let out = util::root().join("bench/results/writes.md");
    std::fs::create_dir_all(out.parent().context("results dir")?)?;
    std::fs::write(&out, &report)?;
    print!("{report}");
    eprintln!("written to {}", out.display());
    Ok(())
}

fn render(rows: &[Row], rounds: usize) -> anyhow::Result<String> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut o = String::new();
    writeln!(
        o,
        "# Write-tracking overhead (`cargo xtask bench writes`)\n"
    )?;
    writeln!(
        o,
        "Kernel {}, {cpus} CPUs. A loop-backed XFS volume (2 GiB image on the lab's XFS pool); each workload \
         runs with the probes detached (no agent) and attached (agent watching the volume: block \
         tracepoint + 5 write-syscall tracepoints), alternating, {rounds} rounds; medians.\n",
        kernel.trim()
    )?;
    writeln!(
        o,
        "| workload | what | detached (median) | attached (median) | attached / detached | overhead |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|")?;
    for r in rows.iter() {
        let d = median(&r.detached);
        let a = median(&r.attached);
        let ratio = a.as_secs_f64() / d.as_secs_f64();
        writeln!(
            o,
            "| {} | {} | {:.3} s | {:.3} s | {:.3} | {:+.1}% |",
            r.name,
            r.what,
            d.as_secs_f64(),
            a.as_secs_f64(),
            ratio,
            (ratio - 1.0) * 100.0
        )?;
    }
    writeln!(o, "\nAll runs (seconds, detached / attached):\n")?;
    for r in rows.iter() {
        let pairs: Vec<String> = r
            .detached
            .iter()
            .zip(&r.attached)
            .map(|(d, a)| format!("{:.3}/{:.3}", d.as_secs_f64(), a.as_secs_f64()))
            .collect();
        writeln!(o, "- {}: {}", r.name, pairs.join(", "))?;
    }
    writeln!(o, "\nTarget: at most 5% overhead on the 4 KiB loop.")?;
    Ok(o)
}
