//! Root tests of `vfsdr verify`, the tracker-gap check and a full DR pool, between two lab
//! sites: the active site's agent replicates a volume; `vfsdr verify` compares the DR site's
//! snapshot with the clones it was made from (and finds a block the test corrupts); every block
//! FIEMAP found changed was seen by the eBPF tracker; a DR pool without room pauses replication
//! with one alert, loses nothing, and resumes once there is room.
use std::{os::unix::fs::FileExt as _, path::Path, time::Duration};

use anyhow::{Context as _, ensure};
use serde_json::Value;
use vfsdr_lab::{
    MIB,
    check::{sh, wait_for},
    pair::{Pair, PairOptions, number},
    require_root,
};

/// Two sites, VFS fs1 (one 512 MiB volume `data`) active at site-a, DR at site-b, with
/// `dr_pool` lines under the DR site's `resources.pool:` and `replication` lines under fs1's
/// `replication:`.
fn pair(name: &str, dr_pool: &[&str], replication: &[&str]) -> anyhow::Result<Pair> {
    let mut options = PairOptions::new(name, "fs1", &[("data", 512 * MIB)]);
    options.dr_pool = dr_pool.iter().map(|l| l.to_string()).collect();
    options.replication = replication.iter().map(|l| l.to_string()).collect();
    Pair::start(options)
}

/// The mount point of `data` at the active site, as text for shell steps.
fn mnt(p: &Pair) -> String {
    p.mount("data").display().to_string()
}

/// The tracker-gap check of volume `data` in a cycle report.
fn tracker_check(r: &Value) -> anyhow::Result<Value> {
    r["tracker_check"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["volume"] == "data"))
        .map(|c| c["check"].clone())
        .with_context(|| format!("no tracker check of data in {r}"))
}

/// The first allocated byte of `file` at or after `from` (SEEK_DATA).
fn data_at(file: &Path, from: u64) -> anyhow::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(file)?;
    // SAFETY: the fd is open for the call; lseek only moves its offset.
    let at = unsafe { libc::lseek(f.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) };
    ensure!(at >= 0, "no data in {} after {from}", file.display());
    Ok(at as u64)
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn cycles_are_tracked_without_gaps_and_verify_finds_a_corrupted_snapshot_block()
-> anyhow::Result<()> {
    require_root()?;
    let p = pair("verify-corrupt", &[], &[])?;
    let m = mnt(&p);
    sh(&format!(
        "mkdir -p '{m}/dir'; dd if=/dev/urandom of='{m}/big' bs=1M count=24 status=none; \
         for i in $(seq 1 100); do echo file $i > '{m}/dir/f'$i; done; sync"
    ))?;
    let r1 = p.replicate_now()?;
    ensure!(r1["full"] == true, "{r1}");
    let first = tracker_check(&r1)?;
    ensure!(first["result"] == "not_checked", "{first}");

    // Cycles with writes: in-place overwrites, new files, a delete, buffered and O_DIRECT.
    for round in 0..2 {
        sh(&format!(
            "dd if=/dev/urandom of='{m}/big' bs=4k count=40 seek={} conv=notrunc status=none; \
             dd if=/dev/urandom of='{m}/direct{round}' bs=64k count=20 oflag=direct status=none; \
             echo new > '{m}/dir/new{round}'; rm -f '{m}/dir/f{}'; sync",
            100 + round * 500,
            round + 3
        ))?;
        let r = p.replicate_now()?;
        let check = tracker_check(&r)?;
        ensure!(
            check["result"] == "ok",
            "cycle {}: every block FIEMAP found changed must have been tracked: {check}",
            r["cycle"]
        );
        ensure!(
            check["changed_blocks"].as_u64().unwrap_or(0) > 100,
            "{check}"
        );
        println!(
            "cycle {}: {} changed blocks, all tracked; {} tracked blocks that did not change",
            r["cycle"], check["changed_blocks"], check["extra_blocks"]
        );
    }
    let status = p.agent_a.status()?;
    ensure!(
        status["replication"][0]["tracker_check"][0]["check"]["result"] == "ok",
        "{status}"
    );
    let log = p.agent_a.log_text();
    ensure!(
        !log.contains("not seen by the eBPF tracker") && log.contains("tracker_gaps=0"),
        "{log}"
    );

    // A write that bypasses the loop device (straight into the image file, in free space of
    // the volume's file system) is shipped, and reported as a tracker gap.
    let direct = 500 * MIB;
    let img = std::fs::OpenOptions::new()
        .write(true)
        .open(p.volumes[0].image())?;
    img.write_all_at(&[0x5a; 4096], direct)?;
    img.sync_all()?;
    drop(img);
    let r = p.replicate_now()?;
    let check = tracker_check(&r)?;
    ensure!(
        check["result"] == "gap"
            && check["missing_blocks"] == 1
            && check["first_missing"][0]["offset"].as_u64() == Some(direct),
        "a write the tracker could not see must be a gap: {check}"
    );
    let log = p.agent_a.log_text();
    ensure!(
        log.contains("tracker_gap") && log.contains("not seen by the eBPF tracker"),
        "{log}"
    );

    let (code, report) = p.verify()?;
    ensure!(code == 0, "verify after cycles: exit {code}: {report}");
    let v = &report["volumes"][0];
    ensure!(
        v["volume"] == "data" && v["verdict"]["result"] == "match",
        "{report}"
    );
    let hashed = v["hashed_bytes_active"].as_u64().unwrap_or(0);
    ensure!(
        hashed >= 24 * MIB && v["hashed_bytes_dr"].as_u64() == Some(hashed),
        "{report}"
    );
    println!(
        "verify: {} hashed at each site in {} ms",
        hashed, report["duration_ms"]
    );
    let cycle = report["cycle"].clone();
    ensure!(report["snapshot"] == cycle, "{report}");

    // One byte of one block of the DR snapshot image changes behind the agents' back.
    let image = p.snapshot_image(number(&report, "snapshot")?, "data");
    let at = data_at(&image, 64 * MIB)? + 3 * 4096 + 100;
    let f = std::fs::OpenOptions::new().write(true).open(&image)?;
    let mut byte = [0u8; 1];
    std::fs::File::open(&image)?.read_exact_at(&mut byte, at)?;
    f.write_all_at(&[!byte[0]], at)?;
    f.sync_all()?;
    drop(f);

    let (code, report) = p.verify()?;
    ensure!(
        code == 4,
        "a corrupted snapshot must fail verify with exit 4, got {code}: {report}"
    );
    let v = &report["volumes"][0];
    ensure!(v["verdict"]["result"] == "mismatch", "{report}");
    let first = &v["verdict"]["first_ranges"][0];
    ensure!(
        first["offset"].as_u64() == Some(at / 4096 * 4096) && first["len"].as_u64() == Some(4096),
        "the mismatch must be located at the corrupted block {}: {report}",
        at / 4096 * 4096
    );
    let (code, text, _) = p.agent_a.cli_status(&["verify", "fs1"])?;
    ensure!(
        code == 4
            && text.contains("data")
            && text.contains("MISMATCH")
            && text.contains(&(at / 4096 * 4096).to_string()),
        "{text}"
    );
    println!("{text}");
    Ok(())
}

/// Replication resumed (the active site logged it) with cycle report `r`, and `vfsdr verify`
/// passes on its snapshot.
fn resumed_and_verified(p: &Pair, r: &Value) -> anyhow::Result<()> {
    ensure!(p.agent_a.log_text().contains("replication_resumed"));
    let (code, report) = p.verify()?;
    ensure!(code == 0 && report["snapshot"] == r["snapshot"], "{report}");
    Ok(())
}

/// Free bytes of the file system holding `dir` (`df` output, bytes available).
fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let out = sh(&format!(
        "df -B1 --output=avail '{}' | tail -1",
        dir.display()
    ))?;
    Ok(out.trim().parse()?)
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_full_dr_pool_pauses_replication_with_one_alert_and_loses_nothing() -> anyhow::Result<()> {
    require_root()?;
    let p = pair("verify-poolfull", &["reserve: 16MiB"], &[])?;
    let m = mnt(&p);
    sh(&format!(
        "dd if=/dev/urandom of='{m}/first' bs=1M count=8 status=none; sync"
    ))?;
    let r1 = p.replicate_now()?;
    // The DR pool fills up: 40 MiB left, 16 of them reserved.
    let pool = p.b.pool().mount_point().to_owned();
    let ballast = pool.join("ballast");
    let free = free_bytes(&pool)?;
    sh(&format!(
        "fallocate -l {} '{}'",
        free - 40 * MIB,
        ballast.display()
    ))?;
    sh(&format!(
        "dd if=/dev/urandom of='{m}/second' bs=1M count=64 status=none; sync"
    ))?;
    for attempt in 0..2 {
        let (code, _, err) = p.agent_a.cli_status(&["replicate", "fs1", "--now"])?;
        ensure!(code != 0, "attempt {attempt}: the cycle must be refused");
        ensure!(err.contains("no room"), "attempt {attempt}: {err}");
    }
    let status = p.agent_a.status()?;
    let paused = &status["paused"][0];
    ensure!(
        paused["vfs"] == "fs1" && paused["site"] == "site-b" && paused["refused_cycles"] == 2,
        "{status}"
    );
    let needs = paused["needs"].as_u64().unwrap_or(0);
    ensure!(
        needs >= 64 * MIB && paused["free"].as_u64().unwrap_or(u64::MAX) < 25 * MIB,
        "{status}"
    );
    let (_, text, _) = p.agent_a.cli_status(&["status"])?;
    ensure!(
        text.contains("replication paused: DR pool full at site-b (needs"),
        "{text}"
    );
    println!(
        "{}",
        text.lines()
            .filter(|l| l.contains("paused"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let log = p.agent_a.log_text();
    ensure!(
        log.matches("replication_paused").count() == 1,
        "one alert, not one per retry:\n{log}"
    );
    // Nothing lost: the DR site's latest snapshot is still the first, and it matches its clones.
    let ids = p.snapshots()?;
    ensure!(ids == [number(&r1, "snapshot")?], "{ids:?}");
    let (code, report) = p.verify()?;
    ensure!(code == 0, "the DR snapshot must be intact: {report}");

    std::fs::remove_file(&ballast)?;
    let r2 = p.replicate_now()?;
    ensure!(r2["full"] == false, "{r2}");
    ensure!(
        r2["changed_bytes"].as_u64().unwrap_or(0) >= 64 * MIB,
        "{r2}"
    );
    ensure!(
        p.agent_a.status()?["paused"]
            .as_array()
            .is_some_and(|a| a.is_empty())
    );
    resumed_and_verified(&p, &r2)
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn enospc_while_applying_restores_the_replicas_and_pauses() -> anyhow::Result<()> {
    require_root()?;
    // 40 MiB/s: a 160 MiB change takes seconds to arrive, so the pool fills up mid-cycle.
    let p = pair("verify-enospc", &[], &["bandwidth_limit: 40MiB/s"])?;
    let m = mnt(&p);
    sh(&format!(
        "dd if=/dev/urandom of='{m}/first' bs=1M count=8 status=none; sync"
    ))?;
    let r1 = p.replicate_now()?;
    sh(&format!(
        "dd if=/dev/urandom of='{m}/second' bs=1M count=160 status=none; sync"
    ))?;
    let pool = p.b.pool().mount_point().to_owned();
    let before = free_bytes(&pool)?;
    let cycle = p.agent_a.spawn_cli(&["replicate", "fs1", "--now"])?;
    // Once the DR site has written 20 MiB of the cycle, its pool fills up (2 MiB left).
    let applying = wait_for(
        "the DR site applying the cycle",
        Duration::from_secs(30),
        || Ok(before.saturating_sub(free_bytes(&pool)?) >= 20 * MIB),
    );
    let ballast = pool.join("ballast");
    if applying.is_ok() {
        sh(&format!(
            "fallocate -l {} '{}'",
            free_bytes(&pool)? - 2 * MIB,
            ballast.display()
        ))?;
    }
    let out = cycle.wait_with_output()?;
    applying?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("no room"), "{err}");
    ensure!(
        p.agent_b
            .log_text()
            .contains("ran out of space while applying"),
        "{}",
        p.agent_b.log_text()
    );
    ensure!(p.agent_a.status()?["paused"][0]["vfs"] == "fs1");
    // The DR site's latest snapshot is the first one, intact, and the replica is back at it.
    let ids = p.snapshots()?;
    ensure!(ids == [number(&r1, "snapshot")?], "{ids:?}");
    let (code, report) = p.verify()?;
    ensure!(code == 0, "the DR snapshot must be intact: {report}");
    let snapshot = p.snapshot_image(number(&r1, "snapshot")?, "data");
    let differing = vfsdr_lab::check::differing_blocks(&p.replica_image("data"), &snapshot)?;
    ensure!(
        differing.is_empty(),
        "the replica differs from the snapshot at {differing:?}"
    );

    std::fs::remove_file(&ballast)?;
    let r2 = p.replicate_now()?;
    ensure!(
        r2["changed_bytes"].as_u64().unwrap_or(0) >= 160 * MIB,
        "{r2}"
    );
    resumed_and_verified(&p, &r2)
}
