//! The freeze window and the RPO lag under load: a 3-volume VFS, a writer paced at a fixed rate
//! spread over the three volumes, replication cycles back to back (`vfsdr replicate --now`), and
//! `vfsdr status --json` sampled every second.
use std::{
    fs::OpenOptions,
    os::unix::fs::FileExt as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;
use vfsdr_lab::pair::{Pair, PairOptions};

use super::changeset::Rng;

/// Size of the file the writer overwrites on each volume, at most.
const LOAD_FILE_MAX: u64 = 256 << 20;
const CHUNK: usize = 1 << 20;

pub struct LagOptions {
    pub volume_size: u64,
    pub rate: u64,
    pub seconds: u64,
    pub min_cycles: usize,
    pub seed: u64,
    pub compression: String,
}

/// What the run measured.
pub struct LagResult {
    /// Cycle reports, in order.
    pub cycles: Vec<Value>,
    /// (seconds since the start, lag in seconds) samples.
    pub lag: Vec<(f64, f64)>,
    /// Bytes the writer wrote, and over how long.
    pub written: u64,
    pub writer_time: Duration,
    /// Size of the file overwritten on each volume.
    pub load_file: u64,
}

pub fn run(o: &LagOptions) -> anyhow::Result<LagResult> {
    let names = ["v0", "v1", "v2"];
    let mut po = PairOptions::new("bench-lag", "lag", &names.map(|n| (n, o.volume_size)));
    po.replication
        .push(format!("compression: {}", o.compression));
    let pair = Pair::start(po)?;
    let files: Vec<_> = pair
        .volumes
        .iter()
        .map(|v| v.mount_point().join("load"))
        .collect();
    // The files the writer overwrites, and the initial sync (not measured).
    let load_file = (o.volume_size / 2 / CHUNK as u64 * CHUNK as u64).min(LOAD_FILE_MAX);
    let mut rng = Rng::new(o.seed ^ 0x1a6);
    let mut data = vec![0u8; 64 * CHUNK];
    rng.fill(&mut data);
    for f in &files {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(f)?;
        for i in 0..(load_file as usize / CHUNK) {
            let c = i % 64;
            file.write_all_at(&data[c * CHUNK..(c + 1) * CHUNK], (i * CHUNK) as u64)?;
        }
        file.sync_all()?;
    }
    let initial = pair.replicate_now()?;
    eprintln!("lag: initial sync {initial}");

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, rate) = (stop.clone(), written.clone(), o.rate);
        let mut rng = Rng::new(o.seed ^ 0x3717);
        thread::spawn(move || -> anyhow::Result<Duration> {
            let handles: Vec<_> = files
                .iter()
                .map(|f| OpenOptions::new().write(true).open(f))
                .collect::<Result<_, _>>()?;
            let start = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let c = rng.below(64) as usize;
                let off = rng.below(load_file / CHUNK as u64) * CHUNK as u64;
                handles[(n % 3) as usize].write_all_at(&data[c * CHUNK..(c + 1) * CHUNK], off)?;
                n += 1;
                let total = n * CHUNK as u64;
                written.store(total, Ordering::Relaxed);
                let due = Duration::from_secs_f64(total as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    thread::sleep(wait);
                }
            }
            Ok(start.elapsed())
        })
    };
    // Sampling starts once the first cycle under load has committed: the lag before it is the
    // initial sync's, not the steady state's. 0 = not yet, 1 = sampling, 2 = done.
    let phase = Arc::new(AtomicU64::new(0));
    let sampler = {
        let phase = phase.clone();
        let socket = pair.agent_a.socket().to_path_buf();
        thread::spawn(move || -> anyhow::Result<Vec<(f64, f64)>> {
            let bin = vfsdr_lab::agent::vfsdr_bin()?;
            let mut out = Vec::new();
            while phase.load(Ordering::Relaxed) == 0 {
                thread::sleep(Duration::from_millis(20));
            }
            let t0 = Instant::now();
            let mut next = t0;
            while phase.load(Ordering::Relaxed) == 1 {
                let o = std::process::Command::new(&bin)
                    .args(["status", "--json", "--socket"])
                    .arg(&socket)
                    .output()?;
                let s: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
                // The agent's own figure: now minus the last consistent point, in ms.
                let lag_ms = s["replication_status"]
                    .as_array()
                    .and_then(|a| a.iter().find(|r| r["vfs"] == "lag"))
                    .and_then(|r| r["rpo_lag_ms"].as_u64());
                if let Some(ms) = lag_ms {
                    out.push((t0.elapsed().as_secs_f64(), ms as f64 / 1000.0));
                }
                next += Duration::from_secs(1);
                if let Some(w) = next.checked_duration_since(Instant::now()) {
                    thread::sleep(w);
                }
            }
            Ok(out)
        })
    };
    let mut cycles = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        thread::sleep(Duration::from_secs(2));
        let mut t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(o.seconds) || cycles.len() < o.min_cycles {
            let r = pair.replicate_now()?;
            eprintln!(
                "lag: cycle {} changed {} MiB freeze {:.1} ms took {} ms",
                r["cycle"],
                r["changed_bytes"].as_u64().unwrap_or(0) >> 20,
                r["freeze_window_ms"].as_f64().unwrap_or(0.0),
                r["duration_ms"]
            );
            cycles.push(r);
            if phase.swap(1, Ordering::Relaxed) == 0 {
                t0 = Instant::now();
            }
        }
        Ok(())
    })();
    phase.store(2, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let writer_time = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))?
        .context("the writer failed")?;
    let lag = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))??;
    result?;
    Ok(LagResult {
        cycles,
        lag,
        written: written.load(Ordering::Relaxed),
        writer_time,
        load_file,
    })
}
