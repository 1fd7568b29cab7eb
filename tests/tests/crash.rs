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
    MIB,
    check::{sh, wait_for},
    pair::Side,
    require_root,
};

/// A full copy interrupted by kill -9 of the active agent (`kill_active`) or of the DR agent,
/// both restarted: the next attempt resumes after what the DR site had synced, from the same
/// point, and its snapshot equals that point's clone.
fn full_copy_interrupted(name: &str, kill_active: bool) -> anyhow::Result<()> {
    require_root()?;
    let mut p = pair(name)?;
    write(&p, "big", BIG_MIB)?;
    let cli = p.replicate_in_background()?;
    let progress = p.wait_shipped(110 * MIB)?;
    ensure!(progress["full"] == true, "{progress}");
    let text = p.agent_a.cli(["status"])?;
    ensure!(
        text.contains("running cycles") && text.contains("fs1 cycle 1 full ["),
        "{text}"
    );
    let killed = if kill_active { Side::Active } else { Side::Dr };
    p.kill_agent(killed)?;
    wait_failed(cli, Duration::from_secs(30))?;
    p.start_agent(killed)?;
    ensure!(p.snapshots()?.is_empty(), "a snapshot of half a copy");

    let r = if kill_active {
        // On a terminal, `replicate --now` draws the progress line.
        let out = p.agent_a.cli_on_terminal("replicate fs1 --now")?;
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
        let status = p.status_a()?;
        let last = status["replication"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["vfs"] == "fs1"));
        last.context("no cycle in the status")?.clone()
    } else {
        p.replicate_now()?
    };
    ensure!(r["full"] == true && r["cycle"] == 1, "{r}");
    let resumed = r["resumed_bytes"].as_u64().unwrap_or(0);
    ensure!(
        resumed >= 64 * MIB,
        "the copy started over instead of resuming: {r}"
    );
    let (log_a, log_b) = (p.agent_a.log_text(), p.agent_b.log_text());
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
    write(&p, "after", 4)?;
    let r2 = p.replicate_now()?;
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
    let mut p = pair("crash-dr")?;
    let (r1, before) = first_cycle(&p)?;
    p.check_snapshot(&r1)?;
    let cli = big_cycle_under_way(&p)?;
    p.kill_agent(Side::Dr)?;
    let error = wait_failed(cli, Duration::from_secs(60))?;
    eprintln!("the interrupted cycle failed: {}", error.trim());

    p.start_agent(Side::Dr)?;
    only_the_first_snapshot(&p)?;
    p.snapshot_holds(&r1, "data", &before)?;

    let r2 = p.replicate_now()?;
    ensure!(r2["full"] == false && r2["cycle"] == 2, "{r2}");
    check_latest(&p, &r2)?;
    ensure!(
        p.agent_b.log_text().contains("cycle_abandoned"),
        "{}",
        p.agent_b.log_text()
    );
    Ok(())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_cycle_interrupted_by_kill_9_of_the_active_agent_is_redone() -> anyhow::Result<()> {
    require_root()?;
    let mut p = pair("crash-src-delta")?;
    let (r1, before) = first_cycle(&p)?;
    let cli = big_cycle_under_way(&p)?;
    p.kill_agent(Side::Active)?;
    wait_failed(cli, Duration::from_secs(30))?;
    only_the_first_snapshot(&p)?;
    ensure!(
        p.clone_image(2, "data").exists(),
        "the killed agent left no clone of cycle 2 behind"
    );
    p.snapshot_holds(&r1, "data", &before)?;

    // As if it had been killed inside the freeze window, too.
    let m = p.mount("data").display().to_string();
    sh(&format!("fsfreeze -f '{m}'"))?;
    // The restarted agent thaws the volume and redoes cycle 2 from a new point (the clones the
    // killed one left behind are replaced), on snapshot 1.
    let redone = p.start_agent(Side::Active).and_then(|()| p.replicate_now());
    if redone.is_err() {
        // Never leave the lab a frozen file system to unmount.
        let _ = sh(&format!("fsfreeze -u '{m}'"));
    }
    let r2 = redone?;
    ensure!(r2["full"] == false && r2["cycle"] == 2, "{r2}");
    check_latest(&p, &r2)?;
    Ok(())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_cut_link_fails_the_cycle_and_the_next_one_succeeds() -> anyhow::Result<()> {
    require_root()?;
    let p = pair("crash-link")?;
    let (r1, before) = first_cycle(&p)?;
    let cli = big_cycle_under_way(&p)?;
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
    only_the_first_snapshot(&p)?;
    p.snapshot_holds(&r1, "data", &before)?;

    // The DR site may still wait for the cut connection's frames for a while.
    let mut r2 = Value::Null;
    wait_for(
        "a cycle after the link is back",
        Duration::from_secs(120),
        || {
            let (code, out, _) = p
                .agent_a
                .cli_status(&["replicate", "fs1", "--now", "--json"])?;
            if code == 0 {
                r2 = serde_json::from_str(&out)?;
            }
            Ok(code == 0)
        },
    )?;
    ensure!(r2["full"] == false, "{r2}");
    check_latest(&p, &r2)?;
    Ok(())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_full_copy_whose_commit_answer_was_lost_is_not_shipped_again() -> anyhow::Result<()> {
    require_root()?;
    let mut p = pair("crash-ack")?;
    write(&p, "first", 16)?;
    let r1 = p.replicate_now()?;
    ensure!(r1["full"] == true && r1["cycle"] == 1, "{r1}");
    p.stop_agent(Side::Active)?;
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
    let clone = p.clone_image(1, "data");
    sh(&format!(
        "sqlite3 '{}' \"UPDATE source_cycle SET last_acked = NULL, initial_done = 0, clone = 'null', \
         pending = json_object('cycle', 1, 'point', {point}, 'clones', json_array('{}'), 'taken_unix', 0) \
         WHERE vfs = 'fs1'\"",
        p.a.state_dir().join("vfsdr.db").display(),
        clone.display()
    ))?;

    p.start_agent(Side::Active)?;
    let r = p.replicate_now()?;
    ensure!(
        r["cycle"] == 1 && r["snapshot"] == 1 && r["full"] == true,
        "{r}"
    );
    ensure!(
        r["wire_bytes"].as_u64().unwrap_or(u64::MAX) < 64 * 1024,
        "the copy was shipped again: {r}"
    );
    ensure!(
        p.agent_b.log_text().contains("cycle_already_committed"),
        "{}",
        p.agent_b.log_text()
    );
    only_the_first_snapshot(&p)?;
    write(&p, "after", 4)?;
    let r2 = p.replicate_now()?;
    ensure!(r2["full"] == false && r2["cycle"] == 2, "{r2}");
    p.check_snapshot(&r2)?;
    Ok(())
}
