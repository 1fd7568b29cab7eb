//! Root test of group consistency: a writer appends an ordered sequence round-robin across the
//! three volumes of one VFS while replication cycles run; every snapshot the DR site commits holds
//! a prefix of the sequence, so no volume is ever ahead of another.
//!
//! Record `n` is the 13-byte line `{n:012}\n` appended to `seq` on volume `n % 3`, and fsynced
//! before record `n + 1` is written. A point-in-time image of the three volumes therefore holds
//! records `0..total` exactly when the freeze captured them together. If the volumes were frozen,
//! cloned and thawed one after another (no group freeze), the writer would go on between two
//! clones: the later volumes would hold records the earlier one misses (`vol1` holds `3k+4` while
//! `vol0` misses `3k+3`), and this test would fail. The test proves that its check catches exactly
//! that, by taking such sequential clones itself and requiring the check to reject them.
use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use vfsdr_lab::{
    MIB,
    check::sh,
    pair::{Pair, PairOptions},
    require_root,
};

const VOLUMES: [&str; 3] = ["vol0", "vol1", "vol2"];
const RECORD: usize = 13;
const CYCLES: usize = 6;

/// Checks that the `seq` files of the three volumes (index = volume) hold a prefix `0..total` of
/// the sequence, and returns `total`; else says which volume is ahead of which.
fn check_prefix(files: &[Vec<u8>; 3]) -> anyhow::Result<u64> {
    let mut counts = [0u64; 3];
    for (v, data) in files.iter().enumerate() {
        ensure!(
            data.len() % RECORD == 0,
            "vol{v}: a torn record at the end ({} bytes is not a multiple of {RECORD})",
            data.len()
        );
        for (k, rec) in data.chunks(RECORD).enumerate() {
            let text = std::str::from_utf8(rec).ok().filter(|t| t.ends_with('\n'));
            let n: u64 = text
                .and_then(|t| t.trim_end().parse().ok())
                .with_context(|| format!("vol{v}: record #{k} is not a number line: {rec:?}"))?;
            let want = v as u64 + 3 * k as u64;
            ensure!(n == want, "vol{v}: record #{k} is {n}, expected {want}");
        }
        counts[v] = (data.len() / RECORD) as u64;
    }
    // Volume v holds records v, v+3, ..., v+3(count-1): the next it misses is v + 3*count.
    let missing = |v: usize| v as u64 + 3 * counts[v];
    let total: u64 = counts.iter().sum();
    for (v, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let last = v as u64 + 3 * (c - 1);
        for w in 0..3 {
            if missing(w) < last {
                bail!(
                    "vol{v} is ahead of vol{w}: vol{v} holds record {last} while vol{w} misses record {} (counts {counts:?})",
                    missing(w)
                );
            }
        }
    }
    Ok(total)
}

/// Reads `seq` of each volume image (mounted read-only in turn); a missing file is empty.
fn read_images(pair: &Pair, images: &[PathBuf]) -> anyhow::Result<[Vec<u8>; 3]> {
    let mut out: [Vec<u8>; 3] = Default::default();
    for (i, image) in images.iter().enumerate() {
        out[i] = pair.with_image_mounted(image, |dir| {
            let p = dir.join("seq");
            Ok(if p.exists() {
                std::fs::read(&p)?
            } else {
                Vec::new()
            })
        })?;
    }
    Ok(out)
}

/// Appends the sequence round-robin, each record fsynced, until `stop`; `written` is the number
/// of records durable so far.
fn writer(
    mounts: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut files: Vec<File> = mounts
        .iter()
        .map(|m| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(m.join("seq"))
                .with_context(|| format!("cannot open {}/seq", m.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let f = &mut files[(n % 3) as usize];
        f.write_all(format!("{n:012}\n").as_bytes())?;
        f.sync_all()?;
        n += 1;
        written.store(n, Ordering::Relaxed);
    }
    Ok(())
}

fn wait_progress(written: &AtomicU64, more: u64) -> anyhow::Result<()> {
    let start = written.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while written.load(Ordering::Relaxed) < start + more {
        ensure!(Instant::now() < deadline, "the writer makes no progress");
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn an_ordered_writer_across_three_volumes_never_leaves_one_ahead() -> anyhow::Result<()> {
    require_root()?;
    let vols: Vec<(&str, u64)> = VOLUMES.iter().map(|v| (*v, 320 * MIB)).collect();
    let pair = Pair::start(PairOptions::new("consistency", "fs1", &vols))?;
    let mounts: Vec<_> = pair
        .volumes
        .iter()
        .map(|v| v.mount_point().to_path_buf())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let handle = {
        let (m, s, w) = (mounts.clone(), stop.clone(), written.clone());
        thread::spawn(move || writer(m, s, w))
    };
    let run = || -> anyhow::Result<Vec<u64>> {
        wait_progress(&written, 30)?;
        let mut reports = Vec::new();
        for _ in 0..CYCLES {
            let r = pair.replicate_now()?;
            eprintln!(
                "cycle {} snapshot {} freeze {} ms, {} records written so far",
                r["cycle"],
                r["snapshot"],
                r["freeze_window_ms"],
                written.load(Ordering::Relaxed)
            );
            reports.push(r["snapshot"].as_u64().context("no snapshot id")?);
            wait_progress(&written, 20)?;
        }
        // The check rejects volumes cloned one after another with the writer going on between.
        let control = pair.a.pool().mount_point().join("control");
        std::fs::create_dir_all(&control)?;
        let mut images = Vec::new();
        for (vol, name) in pair.volumes.iter().zip(VOLUMES) {
            let dst = control.join(format!("{name}.img"));
            let m = vol.mount_point().display();
            sh(&format!(
                "fsfreeze -f '{m}'; cp --reflink=always '{}' '{}'; fsfreeze -u '{m}'",
                vol.image().display(),
                dst.display()
            ))?;
            images.push(dst);
            wait_progress(&written, 7)?;
        }
        let files = read_images(&pair, &images)?;
        match check_prefix(&files) {
            Ok(total) => bail!(
                "the check accepted volumes cloned one after another ({total} records): it cannot fail"
            ),
            Err(e) => eprintln!("sequential clones rejected as they must be: {e:#}"),
        }
        Ok(reports)
    };
    let result = run();
    stop.store(true, Ordering::Relaxed);
    handle.join().expect("writer thread panicked")?;
    let reports = result?;

    let ids = pair.snapshots()?;
    ensure!(
        ids.len() >= CYCLES,
        "{} snapshots committed for {CYCLES} cycles: {ids:?}",
        ids.len()
    );
    ensure!(
        reports.iter().all(|r| ids.contains(r)),
        "reported snapshots {reports:?} not all listed in {ids:?}"
    );
    let mut totals = Vec::new();
    for id in &ids {
        let images: Vec<_> = VOLUMES
            .iter()
            .map(|v| pair.snapshot_image(*id, v))
            .collect();
        let files = read_images(&pair, &images)?;
        let total = check_prefix(&files).with_context(|| format!("snapshot {id}"))?;
        eprintln!("snapshot {id}: records 0..{total}, a prefix");
        totals.push(total);
    }
    // The snapshots were taken while the sequence grew: they must show it growing.
    ensure!(
        totals.windows(2).all(|w| w[0] <= w[1]),
        "snapshots go back in time: {totals:?}"
    );
    let distinct = {
        let mut t = totals.clone();
        t.dedup();
        t.len()
    };
    ensure!(
        distinct >= CYCLES - 1 && totals.last().is_some_and(|t| *t > 0),
        "the snapshots did not catch the writer at work: {totals:?}"
    );
    Ok(())
}

#[test]
fn the_prefix_check_accepts_prefixes_and_rejects_a_volume_ahead() {
    let rec = |ns: &[u64]| -> Vec<u8> {
        ns.iter()
            .flat_map(|n| format!("{n:012}\n").into_bytes())
            .collect()
    };
    assert_eq!(check_prefix(&[vec![], vec![], vec![]]).unwrap(), 0);
    assert_eq!(
        check_prefix(&[rec(&[0, 3]), rec(&[1, 4]), rec(&[2])]).unwrap(),
        5
    );
    let e = check_prefix(&[rec(&[0]), rec(&[1, 4]), rec(&[2])]).unwrap_err();
    assert!(format!("{e}").contains("vol1 is ahead of vol0"), "{e}");
    assert!(check_prefix(&[rec(&[0, 6]), vec![], vec![]]).is_err());
    assert!(check_prefix(&[b"0000".to_vec(), vec![], vec![]]).is_err());
}
