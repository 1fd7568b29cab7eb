//! `cargo xtask bench writes`: the cost of write tracking on the writers.
//!
//! On a loop-backed XFS volume in the lab, two write loops and a loop of a non-write syscall
//! run in three modes, alternating, several rounds: no agent; the agent watching the volume with
//! block tracking only (`tracking.writers: false`, the default); and with the per-process
//! write-syscall probe too (`tracking.writers: true`). The medians are compared. Results go to
//! `bench/results/writes.md`.
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
const OTHER_SYSCALLS: u64 = 2_000_000;

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

/// A syscall that writes nothing (`getppid`), many times: what the `sys_enter` probe costs
/// every other syscall of the host.
fn loop_other(_dir: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for _ in 0..OTHER_SYSCALLS {
        // SAFETY: getppid has no arguments and cannot fail.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    Ok(start.elapsed())
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// How the workloads run: without the agent, or with it and some of its probes.
#[derive(Clone, Copy)]
enum Mode {
    Detached,
    BlockOnly,
    Full,
}

const MODES: [Mode; 3] = [Mode::Detached, Mode::BlockOnly, Mode::Full];

struct Row {
    name: &'static str,
    what: String,
    /// Per mode (in [`MODES`] order), the time of each round.
    runs: [Vec<Duration>; 3],
}

pub fn run(rounds: usize) -> anyhow::Result<()> {
    if rounds < 3 {
        bail!("--rounds must be at least 3, got {rounds}");
    }
    super::prepare()?;

    let lab = Lab::new("bench-writes")?;
    let site = lab.add_site("bench")?;
    let vol = site.pool().create_volume("data", 2 * GIB)?;
    // The bodies continue the `tracking:` section the helper writes.
    let config = |writers: bool| {
        write_config(
            &site,
            &format!(
                "  writers: {writers}\nvolumes:\n  - name: data\n    image: {}\n",
                vol.image().display()
            ),
        )
    };
    let dir = vol.mount_point();
    type Workload = fn(&Path) -> anyhow::Result<Duration>;
    let workloads: [(&str, String, Workload); 3] = [
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
        (
            "other-syscalls",
            format!("{OTHER_SYSCALLS} x getppid (no write)"),
            loop_other,
        ),
    ];
    let mut rows: Vec<Row> = workloads
        .iter()
        .map(|(n, w, _)| Row {
            name: n,
            what: w.clone(),
            runs: Default::default(),
        })
        .collect();
    // Warm up the volume (allocations, page cache) once per workload.
    for (_, _, f) in &workloads {
        f(dir)?;
    }
    for round in 0..rounds {
        for (i, (name, _, f)) in workloads.iter().enumerate() {
            for (m, mode) in MODES.iter().enumerate() {
                let t = match mode {
                    Mode::Detached => f(dir)?,
                    Mode::BlockOnly | Mode::Full => {
                        let agent = Agent::start(&site, &config(matches!(mode, Mode::Full))?)?;
                        let t = f(dir)?;
                        let status = agent.status()?;
                        agent.stop()?;
                        let bios = status["tracking"]["probes"]["bios"].as_u64().unwrap_or(0);
                        if bios == 0 && *name != "other-syscalls" {
                            bail!(
                                "the agent saw no block writes during {name}: the probes are not attached"
                            );
                        }
                        t
                    }
                };
                rows[i].runs[m].push(t);
            }
            let [d, b, a] = &rows[i].runs;
            eprintln!(
                "round {round} {name}: no agent {:?}, block only {:?}, block + writers {:?}",
                d[round], b[round], a[round]
            );
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

fn overhead(base: Duration, with: Duration) -> String {
    let ratio = with.as_secs_f64() / base.as_secs_f64();
    format!("{ratio:.3} ({:+.1}%)", (ratio - 1.0) * 100.0)
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
        "Kernel {}, {cpus} CPUs. A loop-backed XFS volume (2 GiB image on the lab's XFS pool). Each \
         workload runs in three modes, alternating, {rounds} rounds; medians: **no agent**; \
         **block only**: the agent watching the volume with `tracking.writers: false`, the \
         default (the `block_bio_queue` tracepoint, which replication needs); **block + \
         writers**: `tracking.writers: true`, with the per-process write-syscall probe too (a BTF \
         tracepoint on `sys_enter`, which runs at every syscall entry of the host).\n",
        kernel.trim()
    )?;
    writeln!(
        o,
        "| workload | what | no agent | block only | block + writers | block only / no agent | block + writers / no agent |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|---|")?;
    for r in rows {
        let [d, b, a] = [median(&r.runs[0]), median(&r.runs[1]), median(&r.runs[2])];
        writeln!(
            o,
            "| {} | {} | {:.3} s | {:.3} s | {:.3} s | {} | {} |",
            r.name,
            r.what,
            d.as_secs_f64(),
            b.as_secs_f64(),
            a.as_secs_f64(),
            overhead(d, b),
            overhead(d, a)
        )?;
    }
    writeln!(
        o,
        "\nAll runs (seconds, no agent / block only / block + writers):\n"
    )?;
    for r in rows {
        let runs: Vec<String> = (0..r.runs[0].len())
            .map(|i| {
                format!(
                    "{:.3}/{:.3}/{:.3}",
                    r.runs[0][i].as_secs_f64(),
                    r.runs[1][i].as_secs_f64(),
                    r.runs[2][i].as_secs_f64()
                )
            })
            .collect();
        writeln!(o, "- {}: {}", r.name, runs.join(", "))?;
    }
    writeln!(o, "\nTarget: at most 5% overhead on the 4 KiB loop.")?;
    Ok(o)
}
