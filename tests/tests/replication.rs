//! Root tests of block-level replication between two lab sites: the active site's agent creates
//! and mounts its VFS's volumes, clones them in a group freeze and ships the changed blocks over
//! the peer link; the DR site commits a snapshot whose file systems hold exactly what the active
//! ones held, and its reserved mount point (under its own mount root) follows the latest one.
use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use serde_json::Value;
use vfsdr_lab::{
    Lab,
    agent::{Agent, make_certs, mount_root, resources, write_config_with_peers},
    check::{sh, wait_for},
    require_root,
};

const MIB: u64 = 1 << 20;

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

/// Mounts a snapshot image read-only (a clone of a frozen XFS: `nouuid,norecovery`), runs `f`
/// on the mount point, unmounts.
fn with_snapshot<T>(
    image: &Path,
    at: &Path,
    f: impl FnOnce(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    std::fs::create_dir_all(at)?;
    sh(&format!(
        "mount -o ro,nouuid,norecovery,loop '{}' '{}'",
        image.display(),
        at.display()
    ))?;
    let r = f(at);
    sh(&format!("umount '{}'", at.display()))?;
    r
}

fn same_tree(a: &Path, b: &Path) -> anyhow::Result<()> {
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()?;
    ensure!(
        out.status.success(),
        "trees differ:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn files_written_at_the_active_site_appear_in_the_dr_snapshots() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("repl-files")?;
    let a = lab.add_site("site-a")?;
    let b = lab.add_site("site-b")?;
    let certs = lab.dir().join("certs");
    std::fs::create_dir_all(&certs)?;
    make_certs(&certs, &["site-a", "site-b"])?;
    // Each site mounts VFS volumes under its own mount root: the volume of fs1 (mount left
    // out: `fs1/data`) at the active site, its reserved read-only mount at the DR site.
    let (a_root, b_root) = (mount_root(&a)?, mount_root(&b)?);
    let mount = a_root.path().join("fs1/data");
    let dr_mount = b_root.path().join("fs1/data");

    let vfs = format!(
        "{}vfs:\n  - name: fs1\n    volumes:\n      - {{name: data, size: 512MiB}}\n    \
         interfaces:\n      - {{name: smb0, address: 198.18.0.100/24, network: lan}}\n    smb:\n      netbios_name: FS1\n    \
         replication:\n      peer: site-b\n      interval: 1h\n",
        resources(&a, a_root.path(), "")
    );
    let a_config = write_config_with_peers(&a, &certs, &[&b], &vfs)?;
    let b_config = write_config_with_peers(
        &b,
        &certs,
        &[&a],
        &resources(
            &b,
            b_root.path(),
            "  links:\n    - {name: eth0, networks: [lan]}\n",
        ),
    )?;
    let agent_b = Agent::start(&b, &b_config)?;
    // The active site's agent creates, formats and mounts the volume itself.
    let agent_a = Agent::start(&a, &a_config)?;
    ensure!(
        agent_a.status()?["vfs_volumes"][0]["ready"] == true,
        "{}",
        agent_a.log_text()
    );
    wait_for("the definition at site-b", Duration::from_secs(30), || {
        Ok(agent_b.cli(["vfs"])?.contains("fs1"))
    })?;

    let m = mount.display().to_string();
    sh(&format!(
        "mkdir -p '{m}/dir'; dd if=/dev/urandom of='{m}/big' bs=1M count=20 status=none; \
         for i in $(seq 1 200); do echo file $i > '{m}/dir/f'$i; done; sync"
    ))?;
    let replicate = |expect_full: bool| -> anyhow::Result<Value> {
        let out = agent_a.cli(["replicate", "fs1", "--now", "--json"])?;
        let r: Value = serde_json::from_str(&out)?;
        ensure!(r["full"] == expect_full, "{r}");
        Ok(r)
    };
    let r1 = replicate(true)?;
    let snap = |id: &Value| {
        b.pool()
            .mount_point()
            .join(format!("snapshots/fs1/{id}/data.img"))
    };
    let check_at = lab.dir().join("check");
    with_snapshot(&snap(&r1["snapshot"]), &check_at, |at| {
        same_tree(&mount, at)
    })?;
    // The DR site reserves its resources: its mount point holds the latest snapshot.
    agent_a.cli(["reserve", "fs1"])?;
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
        at_risk(&agent_a)? >= 40 * 1024,
        "the overwrite is not at risk"
    );
    let r2 = replicate(false)?;
    ensure!(at_risk(&agent_a)? < MIB, "the cycle did not take the mark");
    ensure!(
        r2["cycle"].as_u64() == r1["cycle"].as_u64().map(|c| c + 1),
        "{r1} then {r2}"
    );
    ensure!(
        r2["changed_bytes"].as_u64().unwrap_or(u64::MAX) < 8 * MIB,
        "an incremental cycle shipped too much: {r2}"
    );
    with_snapshot(&snap(&r2["snapshot"]), &check_at, |at| {
        same_tree(&mount, at)
    })?;
    // After the cycle the DR reserved mount switched to the new snapshot: the new file is there.
    wait_for(
        "the DR mount to show the second snapshot",
        Duration::from_secs(10),
        || Ok(dr_mount.join("dir/new").exists() && !dr_mount.join("dir/f7").exists()),
    )?;
    same_tree(&mount, &dr_mount)?;
    // The first snapshot still holds the first state; `vfsdr snapshot mount` shows it.
    let id = r1["snapshot"].to_string();
    let browse = lab.dir().join("browse");
    agent_b.cli([
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
    let status: Value = serde_json::from_str(&agent_a.cli(["status", "--json"])?)?;
    let answered = unix_ms();
    ensure!(status["replication"][0]["cycle"] == r2["cycle"], "{status}");
    per_vfs_status(&status["replication_status"][0], &r2, asked, answered)?;
    let human = agent_a.cli(["status"])?;
    ensure!(
        human.contains("replication of fs1 to site-b: idle") && human.contains("RPO lag "),
        "{human}"
    );
    let log = agent_a.log_text();
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
        agent_b.log_text().contains("cycle_committed"),
        "{}",
        agent_b.log_text()
    );
    let listed: Value = serde_json::from_str(&agent_b.cli(["snapshots", "fs1", "--json"])?)?;
    let ids: Vec<u64> = listed
        .as_array()
        .context("list")?
        .iter()
        .filter_map(|s| s["id"].as_u64())
        .collect();
    ensure!(
        ids == [
            r1["snapshot"].as_u64().unwrap_or(0),
            r2["snapshot"].as_u64().unwrap_or(0)
        ],
        "{listed}"
    );
    // Nothing changed: an empty cycle still commits a snapshot.
    let r3 = replicate(false)?;
    ensure!(
        r3["changed_bytes"].as_u64().unwrap_or(u64::MAX) < MIB,
        "{r3}"
    );
    // After a restart the status still has the point, from the store, to the millisecond.
    agent_a.stop()?;
    let agent_a = Agent::start(&a, &a_config)?;
    let s = &agent_a.status()?["replication_status"][0];
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
