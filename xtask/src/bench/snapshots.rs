//! `cargo xtask bench snapshots`: what a long series of DR snapshots costs as it grows. One
//! small VFS replicates `--count` delta cycles, each after a small rewrite ([`Churn`]), with a
//! grid that keeps every snapshot; at checkpoints the bench times `vfsdr snapshots V --json`,
//! reads the DR pool's used space and the replica image's extent count. Then a tighter grid
//! (one per minute) prunes almost all of them in one commit. Per cycle it records the CLI's wall
//! time, the active site's cycle `duration_ms`, and the DR site's receive-and-commit
//! `duration_ms` (its `cycle_committed` log event, which includes the pruning after the
//! commit). Results go to `bench/results/snapshots.md`.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use vfsdr_lab::{
    MIB,
    check::{sh, wait_for},
    churn::{Churn, Cycle, listed, pool_used, run_cycles},
    pair::{Pair, PairOptions},
};

use super::{parse_size, quantile};

#[derive(clap::Args)]
#[group(id = "snapshot_options")]
pub struct Options {
    /// snapshots: delta cycles (snapshots after the initial one).
    #[arg(long, default_value_t = 1024)]
    count: u64,
    /// snapshots: bytes rewritten before each cycle.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    change: u64,
    /// snapshots: size of the VFS's one volume (XFS needs at least 300 MB).
    #[arg(long, default_value = "320MiB", value_parser = parse_size)]
    snapshot_volume: u64,
    /// snapshots: a checkpoint (listing time, pool space, extents) every this many cycles.
    #[arg(long, default_value_t = 128)]
    every: u64,
}

/// The churned file has this many slots of `change` bytes.
const SLOTS: u64 = 8;
/// Cycles measured after the pruning.
const AFTER: u64 = 64;

struct Checkpoint {
    n: u64,
    listed: usize,
    listing: Duration,
    used: u64,
    extents: u64,
    /// A reflink of the replica image (what a commit does per volume), p50 of 3.
    reflink: Duration,
}

struct Sample {
    cycle: Cycle,
    /// The DR site's `duration_ms` for the cycle (receive, apply, commit; pruning follows the answer).
    dr_ms: u64,
}

/// The DR site's `duration_ms` per snapshot id, from its `cycle_committed` log events.
fn dr_durations(log: &str) -> std::collections::HashMap<u64, u64> {
    let num = |line: &str, key: &str| -> Option<u64> {
        let at = line.find(key)? + key.len();
        line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    };
    log.lines()
        .filter(|l| l.contains("cycle_committed"))
        .filter_map(|l| Some((num(l, " snapshot=")?, num(l, " duration_ms=")?)))
        .collect()
}

/// Extents of `image` (`filefrag`: `N extents found`).
fn extents(image: &Path) -> anyhow::Result<u64> {
    let out = sh(&format!("filefrag '{}'", image.display()))?;
    out.rsplit(": ")
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .with_context(|| format!("cannot read filefrag: {out}"))
}

fn checkpoint(pair: &Pair, n: u64, pool: &Path, replica: &Path) -> anyhow::Result<Checkpoint> {
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..5 {
        let (list, took) = listed(pair)?;
        count = list.len();
        times.push(took.as_secs_f64());
    }
    let scratch = pool.join("bench-reflink.img");
    let mut clones = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        sh(&format!(
            "cp --reflink=always '{}' '{}'",
            replica.display(),
            scratch.display()
        ))?;
        clones.push(start.elapsed().as_secs_f64());
        std::fs::remove_file(&scratch)?;
    }
    Ok(Checkpoint {
        reflink: Duration::from_secs_f64(quantile(&clones, 0.5)),
        n,
        listed: count,
        listing: Duration::from_secs_f64(quantile(&times, 0.5)),
        used: pool_used(pool)?,
        extents: extents(replica)?,
    })
}

pub fn run(
    o: Options,
    bin: Option<PathBuf>,
    out: Option<PathBuf>,
    note: Option<&str>,
) -> anyhow::Result<()> {
    ensure!(
        o.count >= 1 && o.every >= 1,
        "--count and --every must be at least 1"
    );
    ensure!(
        o.change >= 4096 && o.change * SLOTS < o.snapshot_volume / 2,
        "--change must be at least 4KiB and 8 of it fit in half the volume"
    );
    super::prepare_with(bin)?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut po = PairOptions::new("bench-snaps", "bench", &[("data", o.snapshot_volume)]);
    po.snapshots = vec!["retention: [{every: all, for: 1d}]".into()];
    po.pool_size = 4 * o.snapshot_volume + 2 * (1 << 30);
    let pair = Pair::start(po)?;
    let mount = pair.volumes[0].mount_point().to_owned();
    let pool = pair.b.pool().mount_point().to_owned();
    let replica = pool.join("replicas/bench/data.img");
    let churn = Churn::create(&mount, o.change, SLOTS)?;
    let initial = run_cycles(&pair, &churn, 0..=0, |_| Ok(()))?;
    let mut points = vec![checkpoint(&pair, 0, &pool, &replica)?];
    let mut cycles = Vec::new();
    let started = Instant::now();
    let mut from = 1;
    while from <= o.count {
        let to = (from + o.every - 1).min(o.count);
        cycles.extend(run_cycles(&pair, &churn, from..=to, |_| Ok(()))?);
        points.push(checkpoint(&pair, to, &pool, &replica)?);
        eprintln!("snapshots: {to} cycles, {:?}", started.elapsed());
        from = to + 1;
    }
    let total = started.elapsed();
    let dr = dr_durations(&pair.agent_b.log_text());
    let samples: Vec<Sample> = cycles
        .into_iter()
        .map(|c| Sample {
            dr_ms: dr.get(&c.snapshot).copied().unwrap_or(0),
            cycle: c,
        })
        .collect();

    // The tighter grid, then one cycle that prunes.
    pair.reconfigure_active("{every: all, for: 1d}", "{every: 1m, for: 1d}")?;
    let before_prune = pool_used(&pool)?;
    let pruned_logs = || pair.agent_b.log_text().matches("snapshots_pruned").count();
    let pruned_before = pruned_logs();
    let prune_start = Instant::now();
    let prune = run_cycles(&pair, &churn, o.count + 1..=o.count + 1, |_| Ok(()))?;
    // The DR site prunes after it answered the commit.
    wait_for(
        "the prune after the commit",
        Duration::from_secs(300),
        || Ok(pruned_logs() > pruned_before),
    )?;
    let pruned_after = prune_start.elapsed();
    let prune_dr = dr_durations(&pair.agent_b.log_text())
        .get(&prune[0].snapshot)
        .copied()
        .unwrap_or(0);
    let (left, _) = listed(&pair)?;
    let after_prune = pool_used(&pool)?;
    // The same fragmented images with few snapshots: what the series' length costs apart from
    // the fragmentation.
    let next = o.count + 2;
    let few_cycles = run_cycles(&pair, &churn, next..=next + AFTER - 1, |_| Ok(()))?;
    let dr = dr_durations(&pair.agent_b.log_text());
    let after: Vec<Sample> = few_cycles
        .into_iter()
        .map(|c| Sample {
            dr_ms: dr.get(&c.snapshot).copied().unwrap_or(0),
            cycle: c,
        })
        .collect();
    let after_point = checkpoint(&pair, next + AFTER - 1, &pool, &replica)?;

    let text = render(&Rendered {
        o: &o,
        load_before,
        note,
        initial: &initial[0],
        samples: &samples,
        points: &points,
        total,
        prune: &prune[0],
        prune_dr,
        pruned_after,
        kept: left.len(),
        before_prune,
        after_prune,
        after: &after,
        after_point: &after_point,
    })?;
    let out = out.unwrap_or_else(|| crate::util::root().join("bench/results/snapshots.md"));
    std::fs::create_dir_all(out.parent().context("results dir")?)?;
    std::fs::write(&out, &text)?;
    print!("{text}");
    eprintln!("written to {}", out.display());
    Ok(())
}

struct Rendered<'a> {
    o: &'a Options,
    load_before: String,
    note: Option<&'a str>,
    initial: &'a Cycle,
    samples: &'a [Sample],
    points: &'a [Checkpoint],
    total: Duration,
    prune: &'a Cycle,
    prune_dr: u64,
    /// From the start of the cycle until the DR site logged the prune.
    pruned_after: Duration,
    kept: usize,
    before_prune: u64,
    after_prune: u64,
    /// Cycles after the pruning, and a checkpoint after them.
    after: &'a [Sample],
    after_point: &'a Checkpoint,
}

fn kib(b: f64) -> String {
    format!("{:.1} KiB", b / 1024.0)
}

/// p50 and p99 (ms) of `f` over `s`.
fn stats(s: &[Sample], f: impl Fn(&Sample) -> f64) -> String {
    let v: Vec<f64> = s.iter().map(f).collect();
    format!("{:.1} / {:.1}", quantile(&v, 0.5), quantile(&v, 0.99))
}

fn render(r: &Rendered) -> anyhow::Result<String> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = |s: &str| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let n = r.samples.len();
    let mut o = String::new();
    writeln!(o, "# Snapshot series (`cargo xtask bench snapshots`)\n")?;
    writeln!(
        o,
        "Kernel {}, {cpus} CPUs; load average (1/5/15 min) at the start {}, at the end {}.",
        kernel.trim(),
        load(&r.load_before),
        load(&load_after)
    )?;
    if let Some(note) = r.note {
        writeln!(o, "\n{note}")?;
    }
    writeln!(
        o,
        "\nOne VFS with one {} MiB XFS volume, two lab sites with loop-backed XFS pools \
         (reflink=1). Before each cycle {} of a file on the volume is rewritten (one of {SLOTS} \
         slots in turn, plus a small marker file), then `vfsdr replicate V --now` runs the \
         cycle; the DR site commits a snapshot (a reflink of the replica image). Retention keeps \
         every snapshot for a day. {n} delta cycles after the initial sync, in {:.1} s \
         ({:.1} ms per cycle, CLI included).\n",
        r.o.snapshot_volume / MIB,
        kib(r.o.change as f64),
        r.total.as_secs_f64(),
        r.total.as_secs_f64() * 1e3 / n.max(1) as f64
    )?;
    let window = 64.min(n / 2).max(1);
    let (head, tail) = (&r.samples[..window], &r.samples[n - window..]);
    writeln!(o, "## Cycle time as the series grows (p50 / p99, ms)\n")?;
    writeln!(
        o,
        "| cycles | CLI wall | active site `duration_ms` | DR site receive + commit |"
    )?;
    writeln!(o, "|---|---|---|---|")?;
    let after = format!(
        "{} after pruning to {} (replica still fragmented)",
        r.after.len(),
        r.kept
    );
    for (name, s) in [
        (format!("first {window}"), head),
        (format!("last {window}"), tail),
        (after, r.after),
    ] {
        writeln!(
            o,
            "| {name} | {} | {} | {} |",
            stats(s, |x| x.cycle.wall.as_secs_f64() * 1e3),
            stats(s, |x| x.cycle.duration_ms as f64),
            stats(s, |x| x.dr_ms as f64)
        )?;
    }
    let changed: Vec<f64> = r
        .samples
        .iter()
        .map(|s| s.cycle.changed_bytes as f64)
        .collect();
    writeln!(
        o,
        "\nBlocks changed per cycle (FIEMAP, the churned slot, the marker and the volume's XFS \
         log and metadata): p50 {}. The initial sync: {} changed, {} ms.\n",
        kib(quantile(&changed, 0.5)),
        kib(r.initial.changed_bytes as f64),
        r.initial.duration_ms
    )?;
    writeln!(o, "## Listing, space and fragmentation at checkpoints\n")?;
    writeln!(
        o,
        "| snapshots | `vfsdr snapshots V --json` (p50 of 5) | DR pool used | pool per snapshot since the first | replica extents | `cp --reflink` of the replica (p50 of 3) |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|")?;
    let base = r.points[0].used;
    for p in r.points.iter().chain([r.after_point]) {
        let per = match p.n {
            0 => "-".to_string(),
            _ if std::ptr::eq(p, r.after_point) => "(after pruning)".to_string(),
            k => kib(p.used.saturating_sub(base) as f64 / k as f64),
        };
        writeln!(
            o,
            "| {} | {:.1} ms | {:.1} MiB | {per} | {} | {:.1} ms |",
            p.listed,
            p.listing.as_secs_f64() * 1e3,
            p.used as f64 / MIB as f64,
            p.extents,
            p.reflink.as_secs_f64() * 1e3
        )?;
    }
    writeln!(o, "\n## Pruning\n")?;
    writeln!(
        o,
        "The grid changed to one snapshot per minute (SIGHUP at the active site; the DR site \
         gets the definition). The next cycle committed snapshot {} and pruned {} snapshots, \
         keeping {}: CLI wall {:.0} ms, DR site receive + commit {} ms; the DR site prunes \
         after it answered the commit, and logged the prune {:.0} ms after the cycle started. \
         The DR pool went from {:.1} MiB to {:.1} MiB.",
        r.prune.snapshot,
        (n + 2).saturating_sub(r.kept),
        r.kept,
        r.prune.wall.as_secs_f64() * 1e3,
        r.prune_dr,
        r.pruned_after.as_secs_f64() * 1e3,
        r.before_prune as f64 / MIB as f64,
        r.after_prune as f64 / MIB as f64
    )?;
    Ok(o)
}
