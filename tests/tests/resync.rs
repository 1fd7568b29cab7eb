//! Root test of a resync between two lab sites: the operator deletes the DR site's latest
//! snapshot (`vfsdr snapshot delete --force`, after the refusals that delete nothing); the next
//! delta finds its base gone, and the active site records a resync and starts a full copy at once
//! by itself, after which the DR site's latest snapshot holds what the active volume holds and
//! `vfsdr verify` finds them equal; the older snapshot is kept throughout.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, ensure};
use serde_json::Value;
use vfsdr_lab::{
    MIB,
    check::{sh, wait_for, write_phases},
    pair::{Pair, PairOptions},
    require_root,
};

/// `vfsdr snapshot delete fs ARGS` at the DR site: exit code, stdout, stderr.
fn delete(pair: &Pair, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let mut all = vec!["snapshot", "delete", pair.vfs()];
    all.extend_from_slice(args);
    pair.agent_b.cli_status(&all)
}

/// Fails unless `a` and `b` hold the same tree.
fn same_tree(a: &Path, b: &Path) -> anyhow::Result<()> {
    sh(&format!(
        "diff -r --no-dereference '{}' '{}'",
        a.display(),
        b.display()
    ))
    .map(drop)
    .with_context(|| format!("{} and {} differ", a.display(), b.display()))
}

/// The last cycle of the VFS in the active site's `vfsdr status --json`, if any.
fn last_cycle(pair: &Pair) -> anyhow::Result<Option<Value>> {
    let status = pair.status_a()?;
    let cycles = status["replication"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(cycles.into_iter().find(|c| c["vfs"] == pair.vfs()))
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_deleted_latest_snapshot_is_replaced_by_a_full_copy_at_once() -> anyhow::Result<()> {
    require_root()?;
    let pair = Pair::start(PairOptions::new("resync", "fs", &[("data", 512 * MIB)]))?;
    let mount = pair.volumes[0].mount_point().to_owned();
    // The shared write workload: its first phase goes in a full copy, its second in a delta.
    let mut reports = Vec::new();
    for (phase, steps) in write_phases(&mount) {
        for step in &steps {
            sh(step).with_context(|| format!("write phase {phase}"))?;
        }
        sh("sync")?;
        reports.push(pair.replicate_now()?);
    }
    let [r1, r2] = &reports[..] else {
        anyhow::bail!("two cycles expected: {reports:?}");
    };
    ensure!(r1["full"] == true && r2["full"] == false, "{r1} then {r2}");
    let (s1, s2) = (
        r1["snapshot"].as_u64().context("snapshot")?,
        r2["snapshot"].as_u64().context("snapshot")?,
    );
    ensure!(pair.snapshots()? == [s1, s2], "{:?}", pair.snapshots()?);
    // Written after the last cycle: only a later cycle brings it to the DR site.
    sh(&format!(
        "dd if=/dev/urandom of='{}' bs=64k count=16 status=none; sync",
        mount.join("after").display()
    ))?;
    let (s1_text, s2_text) = (s1.to_string(), s2.to_string());

    // Refusals delete nothing: the latest without --force, an unknown id, a mounted snapshot.
    let (code, _, err) = delete(&pair, &[&s2_text])?;
    ensure!(
        code != 0
            && err.contains(&format!("snapshot {s2} is the latest"))
            && err.contains("full resync")
            && err.contains("--force"),
        "exit {code}: {err}"
    );
    let (code, _, err) = delete(&pair, &[&s1_text, "999"])?;
    ensure!(
        code != 0 && err.contains("VFS fs") && err.contains("snapshot 999 does not exist"),
        "exit {code}: {err}"
    );
    let (code, err) = pair.with_image_mounted(&pair.snapshot_image(s1, "data"), |_| {
        let (code, _, err) = delete(&pair, &[&s1_text])?;
        Ok((code, err))
    })?;
    ensure!(
        code != 0
            && err.contains(&format!(
                "snapshot {s1}: the image of volume data is attached to /dev/loop"
            )),
        "exit {code}: {err}"
    );
    ensure!(pair.snapshots()? == [s1, s2], "{:?}", pair.snapshots()?);
    ensure!(pair.snapshot_image(s1, "data").exists() && pair.snapshot_image(s2, "data").exists());

    let out = pair
        .agent_b
        .cli(["snapshot", "delete", "fs", &s2_text, "--force", "--json"])?;
    let deleted: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    ensure!(
        deleted["ids"] == serde_json::json!([s2]) && deleted["latest_deleted"] == true,
        "{deleted}"
    );
    ensure!(pair.snapshots()? == [s1], "{:?}", pair.snapshots()?);
    ensure!(!pair.snapshot_image(s2, "data").exists());
    let log_b = pair.agent_b.log_text();
    ensure!(
        log_b.contains("snapshots_deleted") && log_b.contains("force=true"),
        "{log_b}"
    );

    // The next delta is refused: its base is gone. The active site resyncs by itself.
    let (code, _, err) = pair.agent_a.cli_status(&["replicate", "fs", "--now"])?;
    ensure!(
        code != 0
            && err.contains(&format!(
                "it is a delta on snapshot {s2}, the DR site's latest is {s1}"
            )),
        "exit {code}: {err}"
    );
    wait_for("resync_needed at site-a", Duration::from_secs(30), || {
        Ok(pair.agent_a.log_text().contains("resync_needed"))
    })?;
    let r2_cycle = r2["cycle"].as_u64().context("cycle")?;
    wait_for(
        "a full cycle committed at site-a",
        Duration::from_secs(180),
        || {
            Ok(last_cycle(&pair)?.is_some_and(|c| {
                c["full"] == true && c["cycle"].as_u64().is_some_and(|n| n > r2_cycle)
            }))
        },
    )?;
    let r3 = last_cycle(&pair)?.context("the full cycle")?;
    let s3 = r3["snapshot"].as_u64().context("snapshot")?;
    println!(
        "deleted snapshot {s2}; the full copy (cycle {}, {} bytes changed) took {} ms",
        r3["cycle"], r3["changed_bytes"], r3["duration_ms"]
    );
    let log_a = pair.agent_a.log_text();
    ensure!(
        log_a.contains("cycle_done") && log_a.contains("full=true"),
        "{log_a}"
    );
    // The older snapshot stays; the full copy's snapshot holds everything, the new file too.
    ensure!(pair.snapshots()? == [s1, s3], "{:?}", pair.snapshots()?);
    pair.with_image_mounted(&pair.snapshot_image(s3, "data"), |dir| {
        ensure!(
            std::fs::read(dir.join("after"))? == std::fs::read(mount.join("after"))?,
            "the new file differs at the DR site"
        );
        same_tree(&mount, dir)
    })?;
    let (code, out, err) = pair.agent_a.cli_status(&["verify", "fs", "--json"])?;
    let report: Value =
        serde_json::from_str(&out).with_context(|| format!("verify exited {code}: {out}{err}"))?;
    ensure!(
        code == 0
            && report["snapshot"].as_u64() == Some(s3)
            && report["volumes"][0]["verdict"]["result"] == "match",
        "{report}"
    );
    Ok(())
}
