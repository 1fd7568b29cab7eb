//! Root test of a long snapshot series at the DR site: 1,024 replication cycles of a small VFS,
//! each after a small change, commit 1,025 snapshots (the initial sync and 1,024 deltas) that
//! are all listed, cost the DR pool little more than the blocks they changed, can be mounted,
//! and go when a tighter retention grid no longer keeps them.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use serde_json::Value;
use vfsdr_lab::{
    MIB,
    agent::vfsdr_bin,
    check::wait_for,
    churn::{Churn, listed, pool_used, run_cycles},
    pair::{Pair, PairOptions},
    require_root,
};

/// Delta cycles after the initial sync (`VFSDR_TEST_SNAPSHOTS` overrides it while developing).
const DELTAS: u64 = 1024;
/// Bytes rewritten per cycle, in one of `SLOTS` slots of a file.
const CHANGE: u64 = 64 << 10;
const SLOTS: u64 = 8;
/// The volume: XFS takes no less than 300 MB.
const VOLUME: u64 = 320 * MIB;
/// Pool space a snapshot may take beyond the blocks its cycle changed: its image's inode, the
/// directory `snapshots/<vfs>/<id>/` and its entry, and the image's extent map (copy on write
/// splits the replica's extents, a few per cycle, 16-byte records in 4 KiB blocks) and
/// reference-count records. A few blocks each; 64 KiB is a wide margin, and 1,024 of them
/// (64 MiB) are a fifth of the 320 MiB volume.
const METADATA_PER_SNAPSHOT: u64 = 64 << 10;

fn deltas() -> u64 {
    std::env::var("VFSDR_TEST_SNAPSHOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DELTAS)
}

/// `(id, created_unix)` of each listed snapshot, checking the fields every snapshot must have.
fn ids_and_times(list: &[Value]) -> anyhow::Result<Vec<(u64, u64)>> {
    list.iter()
        .map(|s| {
            let n = |k: &str| s[k].as_u64().with_context(|| format!("no {k} in {s}"));
            ensure!(n("id")? == n("cycle")?, "id and cycle differ: {s}");
            ensure!(s["state"] == "committed", "not committed: {s}");
            Ok((n("id")?, n("created_unix")?))
        })
        .collect()
}

/// What `every: <every_s>, for: 1d` keeps when every snapshot is younger than a day: the newest
/// of each period, and the latest.
fn newest_per_period(snapshots: &[(u64, u64)], every_s: u64) -> BTreeSet<u64> {
    let mut newest: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for &(id, created) in snapshots {
        let best = newest.entry(created / every_s).or_insert((created, id));
        *best = (*best).max((created, id));
    }
    let mut kept: BTreeSet<u64> = newest.into_values().map(|(_, id)| id).collect();
    kept.extend(snapshots.iter().map(|&(id, _)| id).max());
    kept
}

/// Mounts snapshot `id` with `vfsdr snapshot mount`, checks it holds `state`, unmounts it.
fn check_mounted(pair: &Pair, churn: &Churn, id: u64, state: u64) -> anyhow::Result<()> {
    let dir = pair.lab.dir().join(format!("browse-{id}"));
    let id_text = id.to_string();
    let dir_text = dir.to_str().context("lab path")?;
    pair.agent_b
        .cli(["snapshot", "mount", pair.vfs(), &id_text, dir_text])?;
    let checked = churn.check(&dir, state);
    let readonly = std::fs::write(dir.join("new"), b"x").is_err();
    // `snapshot umount` talks to no agent: it takes no --socket.
    let out = std::process::Command::new(vfsdr_bin()?)
        .args(["snapshot", "umount", dir_text])
        .output()?;
    ensure!(
        out.status.success(),
        "vfsdr snapshot umount {dir_text}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    checked.with_context(|| format!("snapshot {id}"))?;
    ensure!(readonly, "snapshot {id} was mounted writable");
    Ok(())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_thousand_snapshots_are_kept_cheaply_mounted_and_pruned() -> anyhow::Result<()> {
    require_root()?;
    let started = Instant::now();
    let mut options = PairOptions::new("snap-many", "fs1", &[("data", VOLUME)]);
    options.snapshots = vec!["retention: [{every: all, for: 1d}]".into()];
    options.pool_size = 2 << 30;
    let pair = Pair::start(options)?;
    let mount = pair.volumes[0].mount_point().to_owned();
    let churn = Churn::create(&mount, CHANGE, SLOTS)?;
    let pool = pair.b.pool().mount_point().to_owned();

    // The initial sync (state 0), then the deltas.
    let first = run_cycles(&pair, &churn, 0..=0, |_| Ok(()))?;
    let used_first = pool_used(&pool)?;
    let n = deltas();
    let cycles_start = Instant::now();
    let cycles = run_cycles(&pair, &churn, 1..=n, |c| {
        ensure!(
            c.snapshot == c.cycle,
            "snapshot {} of cycle {}",
            c.snapshot,
            c.cycle
        );
        Ok(())
    })?;
    let per_cycle = cycles_start.elapsed() / n as u32;
    let used_all = pool_used(&pool)?;

    // All listed, in order, with the ids the cycles reported.
    let (list, listing) = listed(&pair)?;
    let snapshots = ids_and_times(&list)?;
    let reported: Vec<u64> = first.iter().chain(&cycles).map(|c| c.snapshot).collect();
    let ids: Vec<u64> = snapshots.iter().map(|&(id, _)| id).collect();
    ensure!(
        ids == reported,
        "listed {} snapshots, expected the {} the cycles reported",
        ids.len(),
        reported.len()
    );
    ensure!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "not in increasing order"
    );
    ensure!(
        snapshots.windows(2).all(|w| w[0].1 <= w[1].1),
        "times not in order"
    );

    // Space: each snapshot costs the blocks its cycle changed plus a little metadata.
    let changed: u64 = cycles.iter().map(|c| c.changed_bytes).sum();
    let growth = used_all.saturating_sub(used_first);
    let bound = changed + n * METADATA_PER_SNAPSHOT;
    eprintln!(
        "{n} deltas in {:?} ({per_cycle:?} per cycle); listing {} took {listing:?}; pool grew \
         {growth} bytes ({} per snapshot) for {changed} changed bytes ({} per cycle); bound {bound}",
        cycles_start.elapsed(),
        ids.len(),
        growth / n,
        changed / n
    );
    ensure!(
        growth <= bound,
        "the pool grew {growth} bytes for {n} snapshots, more than the {changed} bytes changed \
         plus {METADATA_PER_SNAPSHOT} per snapshot ({bound})"
    );

    // The oldest and the newest hold their states.
    check_mounted(&pair, &churn, ids[0], 0)?;
    check_mounted(&pair, &churn, *ids.last().unwrap(), n)?;

    // A tighter grid: one snapshot per minute. The DR site gets the new definition, and the
    // next commit prunes to exactly what the grid keeps.
    pair.reconfigure_active("{every: all, for: 1d}", "{every: 1m, for: 1d}")?;
    let prune_start = Instant::now();
    let last = run_cycles(&pair, &churn, n + 1..=n + 1, |_| Ok(()))?;
    let prune_cycle = prune_start.elapsed();
    // The DR site answers the commit first and prunes after it.
    let mut all = snapshots.clone();
    let mut kept = BTreeSet::new();
    let mut expected = BTreeSet::new();
    wait_for(
        "the snapshots outside the grid pruned",
        Duration::from_secs(120),
        || {
            let (after, _) = listed(&pair)?;
            let after = ids_and_times(&after)?;
            if expected.is_empty() {
                all.extend(after.iter().filter(|&&(id, _)| id == last[0].snapshot));
                expected = newest_per_period(&all, 60);
            }
            kept = after.iter().map(|&(id, _)| id).collect();
            ensure!(
                kept.is_superset(&expected),
                "a snapshot the grid keeps is gone: kept {kept:?}, the grid keeps {expected:?}"
            );
            // Listed once marked; removed (files, then the catalog) after.
            let files_gone = snapshots.iter().all(|&(id, _)| {
                kept.contains(&id) || !pool.join(format!("snapshots/fs1/{id}")).exists()
            });
            Ok(kept == expected && files_gone)
        },
    )?;
    let pruned_after = prune_start.elapsed();
    for &(id, _) in &snapshots {
        let dir = pool.join(format!("snapshots/fs1/{id}"));
        ensure!(
            dir.exists() == kept.contains(&id),
            "snapshot {id}: directory {} while {}",
            if dir.exists() { "present" } else { "gone" },
            if kept.contains(&id) { "kept" } else { "pruned" }
        );
    }
    // The space goes with them. The version of a slot written at state i is in the snapshots
    // of states i..i+SLOTS (then the slot is written again); when none of those is kept, its
    // CHANGE bytes are free. The new cycle may take its changed bytes and metadata.
    let kept_states: BTreeSet<u64> = first
        .iter()
        .chain(&cycles)
        .chain(&last)
        .filter(|c| kept.contains(&c.snapshot))
        .map(|c| c.state)
        .collect();
    let freed_versions = (1..=n)
        .filter(|i| kept_states.range(i..&(i + SLOTS)).next().is_none())
        .count() as u64;
    let at_most = (used_all + last[0].changed_bytes + METADATA_PER_SNAPSHOT)
        .saturating_sub(freed_versions * CHANGE);
    // Unlinked inodes may be inactivated in the background: give it a moment.
    let mut used_pruned = 0;
    wait_for(
        "the pruned space to be free",
        Duration::from_secs(20),
        || {
            used_pruned = pool_used(&pool)?;
            Ok(used_pruned <= at_most)
        },
    )
    .with_context(|| {
        format!("the pool holds {used_pruned} bytes after pruning, expected at most {at_most}")
    })?;
    eprintln!(
        "pruned to {} snapshots {pruned_after:?} after the start of a cycle of {prune_cycle:?}: \
         pool {used_all} -> {used_pruned} bytes (at most {at_most}: {freed_versions} slot \
         versions freed); test took {:?}",
        kept.len(),
        started.elapsed()
    );
    check_mounted(&pair, &churn, last[0].snapshot, n + 1)?;
    Ok(())
}
