//! `cargo xtask bench replication`: one change set, shipped to the DR site by (a) a vfsdr cycle,
//! (b) `rsync --inplace` of the image, (c) `btrfs send -p | btrfs receive` between btrfs pools,
//! (d) a raw copy of exactly the changed bytes (the physical floor), all over the same lab link;
//! then (e) the freeze window and (f) the RPO lag with a writer at a sustained rate
//! ([`super::lag`]). Results go to `bench/results/replication.md` ([`super::report`]).
//!
//! The same change for every tool: the base state `P` is the vfsdr point-in-time clone of the
//! initial sync, and the new state `N` the clone of the measured cycle (reflinked out of the
//! agent's clone directory before it drops them). The DR copies rsync and the raw copy write into
//! are reflinks of the DR snapshot of `P`; the btrfs subvolume holds a copy of `P` and takes the
//! ranges where `N` differs from `P`. Page caches are dropped before each tool.
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use serde_json::Value;
use vfsdr_lab::{
    GIB,
    pair::{Pair, PairOptions},
};

use super::{btrfs, changeset, drop_caches, lag, link, parse_size, report};

#[derive(clap::Args)]
pub struct Options {
    /// replication: size of the volume of the change set.
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    volume_size: u64,
    /// replication: base data written before the initial sync.
    #[arg(long, default_value = "1536MiB", value_parser = parse_size)]
    base: u64,
    /// replication: bytes changed after the initial sync (random writes + new files).
    #[arg(long, default_value = "320MiB", value_parser = parse_size)]
    changed: u64,
    /// replication: share of the change written as new files, in percent.
    #[arg(long, default_value_t = 25)]
    new_files_percent: u64,
    /// replication: seed of the data and of the write positions.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// replication: the VFS's `replication.compression` (zstd, lz4, none).
    #[arg(long, default_value = "zstd")]
    compression: String,
    /// replication: size of each of the 3 volumes of the freeze-window and RPO-lag run.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    lag_volume_size: u64,
    /// replication: the writer's rate during the RPO-lag run (bytes per second).
    #[arg(long, default_value = "50MB", value_parser = parse_size)]
    writer_rate: u64,
    /// replication: how long the RPO-lag run lasts, in seconds.
    #[arg(long, default_value_t = 60)]
    lag_seconds: u64,
    /// replication: at least this many cycles in the freeze-window run.
    #[arg(long, default_value_t = 20)]
    min_cycles: usize,
    /// replication: which parts to run: `compare`, `lag`, or both.
    #[arg(long, value_delimiter = ',', default_value = "compare,lag")]
    parts: Vec<String>,
    /// Use this vfsdr binary instead of building target/release/vfsdr.
    #[arg(long)]
    pub(super) bin: Option<PathBuf>,
    /// Where to write the results (default bench/results/<which>.md).
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
    /// replication, snapshots: a sentence for the results file (e.g. that the machine was
    /// shared).
    #[arg(long)]
    pub(super) note: Option<String>,
}

/// One tool's run on the change set.
pub struct ToolRun {
    pub name: &'static str,
    pub what: String,
    pub time: Duration,
    /// Bytes the tool itself reports it moved (stream, frames, payload).
    pub tool_bytes: u64,
    /// Bytes the active site's eth0 carried (both directions, with TCP/IP overhead).
    pub wire_bytes: u64,
}

/// The change set and what each tool did with it.
pub struct Compare {
    pub initial: Value,
    pub cycle: Value,
    pub applied: changeset::Applied,
    pub differing: u64,
    pub ranges: usize,
    pub tools: Vec<ToolRun>,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    for p in &o.parts {
        ensure!(
            p == "compare" || p == "lag",
            "--parts: unknown part {p:?}; known: compare, lag"
        );
    }
    ensure!(
        o.base + o.changed * (o.new_files_percent.min(100)) / 100 < o.volume_size * 9 / 10,
        "--base plus the new files do not fit in --volume-size"
    );
    super::prepare_with(o.bin.clone())?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let compare = if o.parts.iter().any(|p| p == "compare") {
        Some(compare(&o)?)
    } else {
        None
    };
    let lag = if o.parts.iter().any(|p| p == "lag") {
        Some(lag::run(&lag::LagOptions {
            volume_size: o.lag_volume_size,
            rate: o.writer_rate,
            seconds: o.lag_seconds,
            min_cycles: o.min_cycles,
            seed: o.seed,
            compression: o.compression.clone(),
        })?)
    } else {
        None
    };
    let text = report::render(&report::Inputs {
        volume_size: o.volume_size,
        base: o.base,
        changed: o.changed,
        new_files_percent: o.new_files_percent,
        seed: o.seed,
        compression: &o.compression,
        lag_volume_size: o.lag_volume_size,
        writer_rate: o.writer_rate,
        load_before,
        note: o.note.as_deref(),
        compare: compare.as_ref(),
        lag: lag.as_ref(),
    })?;
    let out = o
        .out
        .unwrap_or_else(|| crate::util::root().join("bench/results/replication.md"));
    std::fs::create_dir_all(out.parent().context("results dir")?)?;
    std::fs::write(&out, &text)?;
    print!("{text}");
    eprintln!("written to {}", out.display());
    Ok(())
}

fn reflink(src: &std::path::Path, dst: &std::path::Path) -> anyhow::Result<()> {
    if let Some(d) = dst.parent() {
        std::fs::create_dir_all(d)?;
    }
    link::run(Command::new("cp").arg("--reflink=always").arg(src).arg(dst)).map(drop)
}

fn compare(o: &Options) -> anyhow::Result<Compare> {
    let mut po = PairOptions::new("bench-repl", "bench", &[("data", o.volume_size)]);
    po.replication
        .push(format!("compression: {}", o.compression));
    po.pool_size = (2 * o.volume_size + 4 * GIB).max(8 * GIB);
    let pair = Pair::start(po)?;
    let (a, b) = (&pair.a, &pair.b);
    let mount = pair.volumes[0].mount_point().to_path_buf();
    let mut rng = changeset::Rng::new(o.seed);
    eprintln!("compare: writing the base data set ({} MiB)", o.base >> 20);
    let base = changeset::fill_base(&mount, o.base, &mut rng)?;
    let initial = pair.replicate_now()?;
    eprintln!("compare: initial sync {initial}");
    let c1 = initial["cycle"].as_u64().context("cycle")?;
    let s1 = initial["snapshot"].as_u64().context("snapshot")?;
    let work_a = a.pool().mount_point().join("bench");
    let work_b = b.pool().mount_point().join("bench");
    let prev = work_a.join("prev.img");
    reflink(&pair.clone_image(c1, "data"), &prev)?;

    eprintln!("compare: applying the change set ({} MiB)", o.changed >> 20);
    let applied =
        changeset::apply_changes(&mount, &base, o.changed, o.new_files_percent, &mut rng)?;
    let mut tools = Vec::new();

    // (a) vfsdr.
    drop_caches()?;
    let before = link::eth0_bytes(a)?;
    let start = Instant::now();
    let cycle = pair.replicate_now()?;
    let took = start.elapsed();
    let wire = link::eth0_bytes(a)? - before;
    ensure!(
        cycle["full"] == false,
        "the measured cycle was a full copy: {cycle}"
    );
    eprintln!("compare: vfsdr cycle {cycle}");
    tools.push(ToolRun {
        name: "vfsdr",
        what: format!(
            "`vfsdr replicate bench --now`: group freeze + reflink, FIEMAP diff (4 KiB blocks), {} over TLS, DR pwrite + fsync + snapshot commit (agent's own duration {} ms)",
            o.compression, cycle["duration_ms"]
        ),
        time: took,
        tool_bytes: cycle["wire_bytes"].as_u64().unwrap_or(0),
        wire_bytes: wire,
    });
    let new = work_a.join("new.img");
    reflink(
        &pair.clone_image(cycle["cycle"].as_u64().context("cycle")?, "data"),
        &new,
    )?;
    let snap1 = pair.snapshot_image(s1, "data");
    let ranges = changeset::differing_ranges(&prev, &new)?;
    let differing = changeset::total(&ranges);
    eprintln!(
        "compare: {} MiB differ in {} ranges",
        differing >> 20,
        ranges.len()
    );

    // (d) the raw floor.
    let raw_dst = work_b.join("raw.img");
    reflink(&snap1, &raw_dst)?;
    drop_caches()?;
    let before = link::eth0_bytes(a)?;
    let (took, payload) = link::raw_copy(
        a.netns().path(),
        b.netns().path(),
        b.address(),
        &new,
        ranges.clone(),
        &raw_dst,
    )?;
    tools.push(ToolRun {
        name: "raw floor",
        what:
            "exactly the differing 4 KiB blocks, plain TCP, no compression, receiver pwrite + fsync"
                .into(),
        time: took,
        tool_bytes: payload,
        wire_bytes: link::eth0_bytes(a)? - before,
    });

    // (b) rsync.
    let rsync_dir = work_b.join("rsync");
    reflink(&snap1, &rsync_dir.join("data.img"))?;
    let daemon = link::RsyncDaemon::start(b, &rsync_dir)?;
    let before = link::eth0_bytes(a)?;
    let (took, bytes) = daemon.push(a, &new, "data.img")?;
    let wire = link::eth0_bytes(a)? - before;
    drop(daemon);
    tools.push(ToolRun {
        name: "rsync --inplace",
        what: "`rsync --inplace --no-whole-file` of the new image onto the base image at the DR site; client at the active site, rsync daemon at the DR site (both read their whole image)".into(),
        time: took,
        tool_bytes: bytes,
        wire_bytes: wire,
    });

    // (c) btrfs send/receive.
    let pa = btrfs::BtrfsPool::create(a.dir(), o.volume_size * 2 + 2 * GIB)?;
    let pb = btrfs::BtrfsPool::create(b.dir(), o.volume_size * 2 + 2 * GIB)?;
    btrfs::prepare(a, b, &pa, &pb, &prev, &new, &ranges)?;
    drop_caches()?;
    let before = link::eth0_bytes(a)?;
    let (took, bytes, received) = btrfs::incremental(a, b, &pa, &pb)?;
    let wire = link::eth0_bytes(a)? - before;
    tools.push(ToolRun {
        name: "btrfs send/receive",
        what: "read-only snapshot + `btrfs send -p` piped over TCP into `btrfs receive` + syncfs"
            .into(),
        time: took,
        tool_bytes: bytes,
        wire_bytes: wire,
    });

    // Every DR copy now equals N.
    eprintln!("compare: checking every DR copy against the new state");
    let s2 = pair.snapshot_image(cycle["snapshot"].as_u64().context("snapshot")?, "data");
    for dst in [&s2, &raw_dst, &rsync_dir.join("data.img"), &received] {
        ensure!(
            changeset::differing_ranges(&new, dst)?.is_empty(),
            "{} differs from the new state",
            dst.display()
        );
    }
    drop((pa, pb));
    Ok(Compare {
        initial,
        cycle,
        applied,
        differing,
        ranges: ranges.len(),
        tools,
    })
}
