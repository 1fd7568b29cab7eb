//! Root tests of block-level replication between two lab sites: the active site's agent creates
//! and mounts its VFS's volumes, clones them in a group freeze and ships the changed blocks over
//! the peer link; the DR site commits a snapshot whose file systems hold exactly what the active
//! ones held, and its reserved mount point (under its own mount root) follows the latest one.
use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::Value;
use vfsdr_lab::{
    MIB,
    agent::Agent,
    check::{same_tree, sh, wait_for},
    pair::{Pair, PairOptions, Side},
    require_root,
};

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The per-VFS replication status after cycle `last` (from `vfsdr replicate --now --json`),
/// asked between `asked` and `answered` (ms since the Unix epoch): its point and RPO lag, the
/// cycle's ratio, throughput and phases, the next cycle.
fn per_vfs_status(s: &Value, last: &Value, asked: u64, answered: u64) -> anyhow::Result<()> {
    ensure!(s["vfs"] == "fs1" && s["state"] == "idle", "{s}");
    ensure!(s["last_point"]["cycle"] == last["cycle"], "{s}");
    let point = last["point_unix_ms"].as_u64().context("point_unix_ms")?;
    ensure!(
        s["last_point"]["point_unix_ms"].as_u64() == Some(point),
        "{s}"
    );
    ensure!(
        last["point_unix_s"].as_u64() == Some(point / 1000),
        "{last}"
    );
    // The agent measured the lag while answering: between the two reads of the clock.
    let lag = s["rpo_lag_ms"].as_u64().context("rpo_lag_ms")?;
    ensure!(
        asked - point <= lag && lag <= answered - point,
        "lag {lag} ms, asked {} ms and answered {} ms after the point",
        asked - point,
        answered - point
    );
    let c = &s["last_cycle"];
    ensure!(c["cycle"] == last["cycle"], "{s}");
    let (changed, wire) = (
        c["changed_bytes"].as_f64().context("changed")?,
        c["wire_bytes"].as_f64().context("wire")?,
    );
    let ratio = c["compression_ratio"].as_f64().context("ratio")?;
    ensure!((ratio - changed / wire).abs() < 1e-9 && ratio > 0.0, "{c}");
    let ms = |k: &str| c["phases"][k].as_f64().unwrap_or(-1.0);
    let duration = c["duration_ms"].as_f64().context("duration")?;
    let phases = ms("point_ms") + ms("diff_ms") + ms("ship_commit_ms") + ms("ack_ms");
    ensure!(
        ms("point_ms") >= c["freeze_window_ms"].as_f64().unwrap_or(f64::MAX)
            && ms("diff_ms") >= 0.0
            && ms("ship_commit_ms") > 0.0
            && ms("ack_ms") >= 0.0
            && phases <= duration + 1.0,
        "{c}"
    );
    let rate = c["changed_bytes_per_s"].as_f64().unwrap_or(0.0);
    ensure!(
        (rate - changed * 1000.0 / duration).abs() < 1.0
            && c["wire_bytes_per_s"].as_f64() > Some(0.0),
        "{c}"
    );
    // `interval: 1h`, counted from the cycle's start.
    let next = &s["next_cycle"];
    ensure!(
        next["why"] == "interval" && next["in_ms"].as_u64().is_some_and(|ms| ms <= 3_600_000),
        "{s}"
    );
    ensure!(s["at_risk_bytes"].as_u64().is_some(), "{s}");
    Ok(())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn files_written_at_the_active_site_appear_in_the_dr_snapshots() -> anyhow::Result<()> {
    require_root()?;
    // Each site mounts VFS volumes under its own mount root: the volume of fs1 (mount left
    // out: `fs1/data`) at the active site, which the agent creates, formats and mounts itself
    // (the pair checks it is ready), its reserved read-only mount at the DR site.
    let mut options = PairOptions::new("repl-files", "fs1", &[("data", 512 * MIB)]);
    options.agent_volumes = true;
    options.dr_resources = vec!["links: [{name: eth0, networks: [lan]}]".to_string()];
    let mut p = Pair::start(options)?;
    let (mount, dr_mount) = (p.mount("data"), p.dr_mount("data")?);

    let m = mount.display().to_string();
    sh(&format!(
        "mkdir -p '{m}/dir'; dd if=/dev/urandom of='{m}/big' bs=1M count=20 status=none; \
         for i in $(seq 1 200); do echo file $i > '{m}/dir/f'$i; done; sync"
    ))?;
    let replicate = |p: &Pair, expect_full: bool| -> anyhow::Result<Value> {
        let r = p.replicate_now()?;
        ensure!(r["full"] == expect_full, "{r}");
        Ok(r)
    };
    let r1 = replicate(&p, true)?;
    p.snapshot_holds(&r1, "data", &mount)?;
    // The DR site reserves its resources: its mount point holds the latest snapshot.
    p.agent_a.cli(["reserve", "fs1"])?;
    same_tree(&mount, &dr_mount)?;

    // Changes: overwrite in place, new files, a delete; only they travel.
    sh(&format!(
        "dd if=/dev/urandom of='{m}/big' bs=4k count=10 seek=100 conv=notrunc status=none; \
         echo new > '{m}/dir/new'; rm '{m}/dir/f7'; sync"
    ))?;
    // What was written since the last cycle is the data at risk, tracked by eBPF.
    let at_risk = |agent: &Agent| -> anyhow::Result<u64> {
        let status: Value = serde_json::from_str(&agent.cli(["status", "--json"])?)?;
        let vols = status["tracking"]["volumes"]
            .as_array()
            .context("volumes")?
            .clone();
        let v = vols
            .iter()
            .find(|v| v["name"] == "fs1/data")
            .context("fs1/data is not tracked")?;
        Ok(v["changed_bytes"].as_u64().unwrap_or(0))
    };
    ensure!(
        at_risk(&p.agent_a)? >= 40 * 1024,
        "the overwrite is not at risk"
    );
    let r2 = replicate(&p, false)?;
    ensure!(
        at_risk(&p.agent_a)? < MIB,
        "the cycle did not take the mark"
    );
    ensure!(
        r2["cycle"].as_u64() == r1["cycle"].as_u64().map(|c| c + 1),
        "{r1} then {r2}"
    );
    ensure!(
        r2["changed_bytes"].as_u64().unwrap_or(u64::MAX) < 8 * MIB,
        "an incremental cycle shipped too much: {r2}"
    );
    p.snapshot_holds(&r2, "data", &mount)?;
    // After the cycle the DR reserved mount switched to the new snapshot: the new file is there.
    wait_for(
        "the DR mount to show the second snapshot",
        Duration::from_secs(10),
        || Ok(dr_mount.join("dir/new").exists() && !dr_mount.join("dir/f7").exists()),
    )?;
    same_tree(&mount, &dr_mount)?;
    // The first snapshot still holds the first state; `vfsdr snapshot mount` shows it.
    let id = r1["snapshot"].to_string();
    let browse = p.lab.dir().join("browse");
    p.agent_b.cli([
        "snapshot",
        "mount",
        "fs1",
        &id,
        browse.to_str().context("path")?,
    ])?;
    let found = browse.join("dir/f7").exists() && !browse.join("dir/new").exists();
    sh(&format!(
        "{} snapshot umount '{}'",
        vfsdr_lab::agent::vfsdr_bin()?.display(),
        browse.display()
    ))?;
    ensure!(found, "snapshot 1 does not hold the first state");
    let asked = unix_ms();
    let status: Value = serde_json::from_str(&p.agent_a.cli(["status", "--json"])?)?;
    let answered = unix_ms();
    ensure!(status["replication"][0]["cycle"] == r2["cycle"], "{status}");
    per_vfs_status(&status["replication_status"][0], &r2, asked, answered)?;
    let human = p.agent_a.cli(["status"])?;
    ensure!(
        human.contains("replication of fs1 to site-b: idle") && human.contains("RPO lag "),
        "{human}"
    );
    let log = p.agent_a.log_text();
    ensure!(
        [
            "cycle_done",
            "rpo_lag_ms=",
            "compression_ratio=",
            "ship_commit_ms=",
            "next_cycle_in_ms="
        ]
        .iter()
        .all(|f| log.contains(f)),
        "the cycle_done event lacks fields: {log}"
    );
    ensure!(
        p.agent_b.log_text().contains("cycle_committed"),
        "{}",
        p.agent_b.log_text()
    );
    let ids = p.snapshots()?;
    ensure!(
        ids == [
            r1["snapshot"].as_u64().unwrap_or(0),
            r2["snapshot"].as_u64().unwrap_or(0)
        ],
        "{ids:?}"
    );
    // Nothing changed: an empty cycle still commits a snapshot.
    let r3 = replicate(&p, false)?;
    ensure!(
        r3["changed_bytes"].as_u64().unwrap_or(u64::MAX) < MIB,
        "{r3}"
    );
    // After a restart the status still has the point, from the store, to the millisecond.
    p.stop_agent(Side::Active)?;
    p.start_agent(Side::Active)?;
    let s = &p.status_a()?["replication_status"][0];
    ensure!(
        s["state"] == "idle"
            && s["last_point"]["cycle"] == r3["cycle"]
            && s["last_point"]["point_unix_ms"] == r3["point_unix_ms"]
            && s["rpo_lag_ms"].as_u64().is_some()
            && s["last_cycle"].is_null()
            && s["next_cycle"]["why"] == "first_after_start",
        "{s}"
    );
    Ok(())
}
