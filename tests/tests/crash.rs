//! Root tests of "nothing lost on a crash": kill -9 of either agent in the middle of a cycle,
//! or a cut link, leaves the DR site at its last consistent snapshot; the interrupted cycle is
//! redone (an interrupted full copy resumes where the DR site had synced it) and its snapshot
//! equals, byte for byte, the active site's clone of that cycle.
//!
//! A bandwidth limit makes a cycle of 160 MiB last about 8 s, so the interruption lands in the
//! middle of it.
#[path = "crash/support.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::Value;
use support::*;
use vfsdr_lab::{
    agent::Agent,
    check::{sh, wait_for},
    require_root,
};

/// A full copy interrupted by kill -9 of the active agent (`kill_active`) or of the DR agent,
/// both restarted: the next attempt resumes after what the DR site had synced, from the same
/// point, and its snapshot equals that point's clone.
fn full_copy_interrupted(name: &str, kill_active: bool) -> anyhow::Result<()> {
    require_root()?;
    let p = pair(name)?;
    let (agent_a, agent_b) = start_pair(&p)?;
    p.write("big", BIG_MIB)?;
    let cli = replicate_in_background(&agent_a)?;
    let progress = wait_shipped(&agent_a, 110 * MIB)?;
    ensure!(progress["full"] == true, "{progress}");
    let text = agent_a.cli(["status"])?;
    ensure!(
        text.contains("running cycles") && text.contains("fs1 cycle 1 full ["),
        "{text}"
    );
    let (agent_a, agent_b) = if kill_active {
        kill_9(agent_a)?;
        wait_failed(cli, Duration::from_secs(30))?;
        (Agent::start(&p.a, &p.a_config)?, agent_b)
    } else {
        kill_9(agent_b)?;
        wait_failed(cli, Duration::from_secs(30))?;
        (agent_a, Agent::start(&p.b, &p.b_config)?)
    };
    ensure!(
        snapshot_ids(&agent_b)?.is_empty(),
        "a snapshot of half a copy"
    );

    let r = if kill_active {
        // On a terminal, `replicate --now` draws the progress line.
        let out = on_a_terminal(&agent_a, "replicate fs1 --now")?;
        ensure!(
            out.contains("fs1 cycle 1 full [") && out.contains("% ") && out.contains("/s, "),
            "no progress line on the terminal:\n{out}"
        );
        ensure!(out.contains("the interrupted copy resumed"), "{out}");
        let lines: Vec<&str> = out
            .split(['\r', '\n'])
            .filter(|l| l.contains('%'))
            .collect();
        eprintln!("on the terminal, last progress line: {:?}", lines.last());
        let status = agent_a.status()?;
        let last = status["replication"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["vfs"] == "fs1"));
        last.context("no cycle in the status")?.clone()
    } else {
        replicate(&agent_a)?
    };
    ensure!(r["full"] == true && r["cycle"] == 1, "{r}");
    let resumed = r["resumed_bytes"].as_u64().unwrap_or(0);
    ensure!(
        resumed >= 64 * MIB,
        "the copy started over instead of resuming: {r}"
    );
    let (log_a, log_b) = (agent_a.log_text(), agent_b.log_text());
    ensure!(
        log_a.contains("pending_point_reused"),
        "the active site took a new point:\n{log_a}"
    );
    ensure!(
        log_a.contains("sync_progress"),
        "no progress events:\n{log_a}"
    );
    ensure!(log_b.contains("full_copy_resumed"), "{log_b}");
    p.check_snapshot(&r)?;
    // And the next cycle is an ordinary delta on it.
    p.write("after", 4)?;
    let r2 = replicate(&agent_a)?;
    ensure!(r2["full"] == false && r2["cycle"] == 2, "{r2}");
    p.check_snapshot(&r2)?;
    eprintln!("resumed after {} MiB of {BIG_MIB} MiB", resumed / MIB);
    Ok(())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_full_copy_interrupted_by_kill_9_of_the_active_agent_resumes() -> anyhow::Result<()> {
    full_copy_interrupted("crash-src", true)
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_full_copy_interrupted_by_kill_9_of_the_dr_agent_resumes() -> anyhow::Result<()> {
    full_copy_interrupted("crash-dst", false)
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_cycle_interrupted_by_kill_9_of_the_dr_agent_leaves_the_last_snapshot() -> anyhow::Result<()> {
    require_root()?;
    let p = pair("crash-dr")?;
    let (agent_a, agent_b) = start_pair(&p)?;
    p.write("first", 4)?;
    let r1 = replicate(&agent_a)?;
    p.check_snapshot(&r1)?;
    let before = p.lab.dir().join("before");
    sh(&format!("cp -a '{}' '{}'", p.mount(), before.display()))?;

    p.write("big", BIG_MIB)?;
    let cli = replicate_in_background(&agent_a)?;
    wait_shipped(&agent_a, 50 * MIB)?;
    kill_9(agent_b)?;
    let error = wait_failed(cli, Duration::from_secs(60))?;
    eprintln!("the interrupted cycle failed: {}", error.trim());

    let agent_b = Agent::start(&p.b, &p.b_config)?;
    ensure!(
        snapshot_ids(&agent_b)? == [1],
        "{:?}",
        snapshot_ids(&agent_b)
    );
    let check = p.lab.dir().join("check");
    snapshot_holds(&p.snapshot(&r1["snapshot"]), &check, &before)?;

    let r2 = replicate(&agent_a)?;
    ensure!(r2["full"] == false && r2["cycle"] == 2, "{r2}");
    p.check_snapshot(&r2)?;
    snapshot_holds(&p.snapshot(&r2["snapshot"]), &check, p.vol.mount_point())?;
    ensure!(
        agent_b.log_text().contains("cycle_abandoned"),
        "{}",
        agent_b.log_text()
    );
    Ok(())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_cycle_interrupted_by_kill_9_of_the_active_agent_is_redone() -> anyhow::Result<()> {
    require_root()?;
    let p = pair("crash-src-delta")?;
    let (agent_a, agent_b) = start_pair(&p)?;
    p.write("first", 4)?;
    let r1 = replicate(&agent_a)?;
    let before = p.lab.dir().join("before");
    sh(&format!("cp -a '{}' '{}'", p.mount(), before.display()))?;

    p.write("big", BIG_MIB)?;
    let cli = replicate_in_background(&agent_a)?;
    wait_shipped(&agent_a, 50 * MIB)?;
    kill_9(agent_a)?;
    wait_failed(cli, Duration::from_secs(30))?;
    ensure!(
        snapshot_ids(&agent_b)? == [1],
        "{:?}",
        snapshot_ids(&agent_b)
    );
    ensure!(
        p.clone_of(&Value::from(2)).exists(),
        "the killed agent left no clone of cycle 2 behind"
    );
    let check = p.lab.dir().join("check");
    snapshot_holds(&p.snapshot(&r1["snapshot"]), &check, &before)?;

    // As if it had been killed inside the freeze window, too.
    sh(&format!("fsfreeze -f '{}'", p.mount()))?;
    // The restarted agent thaws the volume and redoes cycle 2 from a new point (the clones the
    // killed one left behind are replaced), on snapshot 1.
    let redone = Agent::start(&p.a, &p.a_config).and_then(|agent| Ok((replicate(&agent)?, agent)));
    if redone.is_err() {
        // Never leave the lab a frozen file system to unmount.
        let _ = sh(&format!("fsfreeze -u '{}'", p.mount()));
    }
    let (r2, _agent_a) = redone?;
    ensure!(r2["full"] == false && r2["cycle"] == 2, "{r2}");
    p.check_snapshot(&r2)?;
    snapshot_holds(&p.snapshot(&r2["snapshot"]), &check, p.vol.mount_point())?;
    Ok(())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_cut_link_fails_the_cycle_and_the_next_one_succeeds() -> anyhow::Result<()> {
    require_root()?;
    let p = pair("crash-link")?;
    let (agent_a, agent_b) = start_pair(&p)?;
    p.write("first", 4)?;
    let r1 = replicate(&agent_a)?;
    let before = p.lab.dir().join("before");
    sh(&format!("cp -a '{}' '{}'", p.mount(), before.display()))?;

    p.write("big", BIG_MIB)?;
    let cli = replicate_in_background(&agent_a)?;
    wait_shipped(&agent_a, 50 * MIB)?;
    let cut = Instant::now();
    p.a.run("ip", ["link", "set", "eth0", "down"])?;
    let failed = wait_failed(cli, Duration::from_secs(90));
    p.a.run("ip", ["link", "set", "eth0", "up"])?;
    let error = failed?;
    eprintln!(
        "the cycle failed {:.1} s after the cut: {}",
        cut.elapsed().as_secs_f64(),
        error.trim()
    );
    ensure!(
        snapshot_ids(&agent_b)? == [1],
        "{:?}",
        snapshot_ids(&agent_b)
    );
    let check = p.lab.dir().join("check");
    snapshot_holds(&p.snapshot(&r1["snapshot"]), &check, &before)?;

    // The DR site may still wait for the cut connection's frames for a while.
    let mut r2 = Value::Null;
    wait_for(
        "a cycle after the link is back",
        Duration::from_secs(120),
        || {
            let (code, out, _) = agent_a.cli_status(&["replicate", "fs1", "--now", "--json"])?;
            if code == 0 {
                r2 = serde_json::from_str(&out)?;
            }
            Ok(code == 0)
        },
    )?;
    ensure!(r2["full"] == false, "{r2}");
    p.check_snapshot(&r2)?;
    snapshot_holds(&p.snapshot(&r2["snapshot"]), &check, p.vol.mount_point())?;
    Ok(())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_full_copy_whose_commit_answer_was_lost_is_not_shipped_again() -> anyhow::Result<()> {
    require_root()?;
    let p = pair("crash-ack")?;
    let (agent_a, agent_b) = start_pair(&p)?;
    p.write("first", 16)?;
    let r1 = replicate(&agent_a)?;
    ensure!(r1["full"] == true && r1["cycle"] == 1, "{r1}");
    agent_a.stop()?;
    // The active site's store as a kill -9 between the DR site's commit and its answer leaves
    // it (that moment is too short to hit with a kill): the full copy still pending, with the
    // point the DR site recorded.
    let point = sh(&format!(
        "sqlite3 '{}' \"SELECT point FROM snapshot_point WHERE vfs = 'fs1' AND id = 1\"",
        p.b.state_dir().join("vfsdr.db").display()
    ))?;
    let point: u64 = point
        .trim()
        .parse()
        .context("the DR site recorded no point")?;
    let clone = p.clone_of(&Value::from(1));
    sh(&format!(
        "sqlite3 '{}' \"UPDATE source_cycle SET last_acked = NULL, initial_done = 0, clone = 'null', \
         pending = json_object('cycle', 1, 'point', {point}, 'clones', json_array('{}'), 'taken_unix', 0) \
         WHERE vfs = 'fs1'\"",
        p.a.state_dir().join("vfsdr.db").display(),
        clone.display()
    ))?;

    let agent_a = Agent::start(&p.a, &p.a_config)?;
    let r = replicate(&agent_a)?;
    ensure!(
        r["cycle"] == 1 && r["snapshot"] == 1 && r["full"] == true,
        "{r}"
    );
    ensure!(
        r["wire_bytes"].as_u64().unwrap_or(u64::MAX) < 64 * 1024,
        "the copy was shipped again: {r}"
    );
    ensure!(
        agent_b.log_text().contains("cycle_already_committed"),
        "{}",
        agent_b.log_text()
    );
    ensure!(
        snapshot_ids(&agent_b)? == [1],
        "{:?}",
        snapshot_ids(&agent_b)
    );
    p.write("after", 4)?;
    let r2 = replicate(&agent_a)?;
    ensure!(r2["full"] == false && r2["cycle"] == 2, "{r2}");
    p.check_snapshot(&r2)?;
    Ok(())
}
