//! `bench/results/replication.md`: the machine, the method, every raw figure, ratios, and
//! whether each target of issue 4 is met.
use std::fmt::Write as _;

use serde_json::Value;

use super::{lag::LagResult, quantile, replication::Compare};

pub struct Inputs<'a> {
    pub volume_size: u64,
    pub base: u64,
    pub changed: u64,
    pub new_files_percent: u64,
    pub seed: u64,
    pub compression: &'a str,
    pub lag_volume_size: u64,
    pub writer_rate: u64,
    pub load_before: String,
    pub note: Option<&'a str>,
    pub compare: Option<&'a Compare>,
    pub lag: Option<&'a LagResult>,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**NOT met**" }
}

pub fn render(i: &Inputs) -> anyhow::Result<String> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut o = String::new();
    writeln!(o, "# Replication (`cargo xtask bench replication`)\n")?;
    writeln!(
        o,
        "Kernel {}, {cpus} CPUs: a **2-core VM**; every figure below comes from it, in one run. Load \
         average (1/5/15 min) at the start: {}; at the end: {}.",
        kernel.trim(),
        i.load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        load_after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )?;
    if let Some(n) = i.note {
        writeln!(o, "\n{n}")?;
    }
    writeln!(
        o,
        "\nEverything runs in the lab: two sites (network namespaces on one bridge, veth, no \
         bandwidth shaping), each with its own loop-backed XFS pool (reflink=1); every byte \
         between the sites crosses the active site's `eth0`, whose counters (both directions, \
         with TCP/IP and Ethernet headers) give the *wire* column.\n"
    )?;
    if let Some(c) = i.compare {
        compare(&mut o, i, c)?;
    }
    if let Some(l) = i.lag {
        lag(&mut o, i, l)?;
    }
    Ok(o)
}

fn compare(o: &mut String, i: &Inputs, c: &Compare) -> anyhow::Result<()> {
    let a = &c.applied;
    writeln!(o, "## One change set, four ways\n")?;
    writeln!(
        o,
        "The change set: a VFS with one {} XFS volume (image on the active site's pool), filled \
         with {} of base data (16 MiB files; each 4 KiB block half random, half repeated text, \
         so zstd gets ~2:1), replicated once (initial sync: {} changed, {} on the wire, {} ms); \
         then a change of {} ({}% as new files): {} random writes of 4-64 KiB (4 KiB aligned) into the base files ({}) and {} new \
         files of 64 KiB-4 MiB ({}), seed {}, all fsynced. The two image states differ in **{}** \
         ({} ranges of whole 4 KiB blocks): that is the change every tool ships.\n",
        mib(i.volume_size),
        mib(i.base),
        mib(c.initial["changed_bytes"].as_u64().unwrap_or(0)),
        mib(c.initial["wire_bytes"].as_u64().unwrap_or(0)),
        c.initial["duration_ms"],
        mib(i.changed),
        i.new_files_percent,
        a.writes,
        mib(a.written_bytes),
        a.new_files,
        mib(a.new_bytes),
        i.seed,
        mib(c.differing),
        c.ranges,
    )?;
    writeln!(
        o,
        "Fairness: the base and new states are the vfsdr point-in-time clones of the initial \
         sync and of the measured cycle (reflinked out before the agent drops them), so every \
         tool ships exactly the change vfsdr shipped. rsync and the raw copy write into reflinks \
         of the DR snapshot of the base state; btrfs gets a subvolume holding a copy of the base \
         image, snapshotted and received at the DR site beforehand, then the differing ranges \
         written into it and fsynced (the same block-level change; btrfs then tracks it itself). \
         The page cache is dropped (`sync; echo 3 > drop_caches`) before each tool (the bench \
         reads both image states after the vfsdr cycle to find the differing ranges, so warm \
         caches would favour the tools that run after it). Each tool runs once on the change \
         set (a second vfsdr cycle would find nothing left to ship). The timed part of each tool: vfsdr — the whole `replicate --now` call (freeze, clone, diff, ship, \
         DR write, fsync, snapshot commit, acknowledgement); rsync — the client run (it reads \
         the whole image at both ends); btrfs — the read-only snapshot, send | TCP | receive, \
         and a syncfs of the DR pool; raw — connect to the receiver's acknowledgement after its \
         fsync. Afterwards each DR copy (vfsdr's snapshot, rsync's and the raw copy's image, \
         btrfs's received image) was compared with the new state block by block: identical.\n"
    )?;
    writeln!(
        o,
        "| tool | what | time | bytes (tool's own count) | wire (eth0) | time / vfsdr time |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|")?;
    let vfsdr = c
        .tools
        .iter()
        .find(|t| t.name == "vfsdr")
        .map(|t| t.time.as_secs_f64());
    for t in &c.tools {
        writeln!(
            o,
            "| {} | {} | {:.3} s | {} | {} | {} |",
            t.name,
            t.what,
            t.time.as_secs_f64(),
            mib(t.tool_bytes),
            mib(t.wire_bytes),
            vfsdr.map_or("-".into(), |v| format!("{:.2}", t.time.as_secs_f64() / v))
        )?;
    }
    let time = |n: &str| {
        c.tools
            .iter()
            .find(|t| t.name == n)
            .map(|t| t.time.as_secs_f64())
    };
    writeln!(o, "\n| target (issue 4) | measured | |\n|---|---|---|")?;
    if let (Some(v), Some(r), Some(b), Some(f)) = (
        vfsdr,
        time("rsync --inplace"),
        time("btrfs send/receive"),
        time("raw floor"),
    ) {
        writeln!(
            o,
            "| vfsdr at least 10x faster than rsync --inplace | {:.1}x | {} |",
            r / v,
            met(r / v >= 10.0)
        )?;
        writeln!(
            o,
            "| vfsdr at least 3x faster than btrfs send/receive | {:.2}x | {} |",
            b / v,
            met(b / v >= 3.0)
        )?;
        writeln!(
            o,
            "| vfsdr at least 0.8x the raw floor's speed | {:.2}x | {} |",
            f / v,
            met(f / v >= 0.8)
        )?;
        writeln!(
            o,
            "\nThe raw floor itself is {:.1}x faster than rsync and {:.2}x btrfs send/receive in \
             this run: a tool that reads the changed bytes at one site and writes them at the \
             other, as all four do, is bound by the same disk here (both sites share it, and the \
             lab link is not the bottleneck, so vfsdr's compression saves wire bytes, not time). \
             The 10x and 3x targets lie beyond what the floor reaches on this machine.",
            r / f,
            b / f
        )?;
    }
    writeln!(
        o,
        "\nvfsdr's FIEMAP comparison found {} changed for the {} that differ. The vfsdr cycle \
         report: `{}`. Codec: {}.\n",
        mib(c.cycle["changed_bytes"].as_u64().unwrap_or(0)),
        mib(c.differing),
        c.cycle,
        i.compression
    )?;
    Ok(())
}

fn lag(o: &mut String, i: &Inputs, l: &LagResult) -> anyhow::Result<()> {
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(0.0);
    let freeze: Vec<f64> = l.cycles.iter().map(|r| f(r, "freeze_window_ms")).collect();
    let part = |k: &str| -> Vec<f64> { l.cycles.iter().map(|r| f(&r["phases"], k)).collect() };
    let (preclones, freeze_calls, clones) =
        (part("preclone_ms"), part("freeze_ms"), part("clone_ms"));
    let lags: Vec<f64> = l.lag.iter().map(|s| s.1).collect();
    let rate = l.written as f64 / l.writer_time.as_secs_f64() / 1e6;
    writeln!(o, "## Freeze window and RPO lag under a writer\n")?;
    writeln!(
        o,
        "A VFS with three {} XFS volumes; a writer overwrites 1 MiB chunks at random offsets of a \
         {} file on each volume in turn (buffered, no fsync), paced at {:.0} MB/s; it \
         achieved **{rate:.1} MB/s** ({} over {:.1} s). While it writes, cycles run back to back \
         (`vfsdr replicate lag --now`, {}; {} cycles), and, from the end of the first of them, \
         `vfsdr status --json` is sampled every second: the RPO lag is the agent's own `rpo_lag_ms` \
         (the time of the status answer minus the last consistent point, in milliseconds).\n",
        mib(i.lag_volume_size),
        mib(l.load_file),
        i.writer_rate as f64 / 1e6,
        mib(l.written),
        l.writer_time.as_secs_f64(),
        i.compression,
        l.cycles.len()
    )?;
    writeln!(
        o,
        "| figure | p50 | p99 | max | target | |\n|---|---|---|---|---|---|"
    )?;
    writeln!(
        o,
        "| freeze window ({} cycles) | {:.1} ms | {:.1} ms | {:.1} ms | p99 <= 60 ms | {} |",
        freeze.len(),
        quantile(&freeze, 0.5),
        quantile(&freeze, 0.99),
        quantile(&freeze, 1.0),
        met(freeze.len() >= 20 && quantile(&freeze, 0.99) <= 60.0)
    )?;
    for (what, v) in [
        ("in it: the FIFREEZE calls", &freeze_calls),
        ("in it: catching the clones up (FICLONERANGE)", &clones),
        ("before it: cloning the live images (FICLONE)", &preclones),
    ] {
        writeln!(
            o,
            "| {what} | {:.1} ms | {:.1} ms | {:.1} ms | | |",
            quantile(v, 0.5),
            quantile(v, 0.99),
            quantile(v, 1.0)
        )?;
    }
    writeln!(
        o,
        "| RPO lag ({} samples) | {:.1} s | {:.1} s | {:.1} s | <= 10 s | {} |",
        lags.len(),
        quantile(&lags, 0.5),
        quantile(&lags, 0.99),
        quantile(&lags, 1.0),
        met(!lags.is_empty() && quantile(&lags, 1.0) <= 10.0)
    )?;
    writeln!(
        o,
        "\nEvery cycle (cycle: changed MiB, wire MiB, freeze window ms (FIFREEZE + catch-up ms), \
         duration ms):\n"
    )?;
    let rows: Vec<String> = l
        .cycles
        .iter()
        .map(|r| {
            format!(
                "{}: {:.1}, {:.1}, {:.1} ({:.1} + {:.1}), {}",
                r["cycle"],
                f(r, "changed_bytes") / (1 << 20) as f64,
                f(r, "wire_bytes") / (1 << 20) as f64,
                f(r, "freeze_window_ms"),
                f(&r["phases"], "freeze_ms"),
                f(&r["phases"], "clone_ms"),
                r["duration_ms"]
            )
        })
        .collect();
    writeln!(o, "{}\n", rows.join("; "))?;
    let samples: Vec<String> = l
        .lag
        .iter()
        .map(|(t, v)| format!("{t:.0}s:{v:.1}"))
        .collect();
    writeln!(
        o,
        "RPO lag samples (time since start: lag s): {}",
        samples.join(" ")
    )?;
    Ok(())
}
