//! Root tests of eBPF write tracking on real loop-backed XFS volumes in the lab.
use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use vfsdr_lab::{
    Lab,
    agent::{Agent, vfsdr_bin, write_config},
    check::{differing_blocks, sh, wait_for, write_phases},
    require_root,
};

const MIB: u64 = 1 << 20;

/// Freezes the file system, runs `f`, thaws it again even if `f` failed.
fn frozen<T>(mount: &Path, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    sh(&format!("fsfreeze -f '{}'", mount.display()))?;
    let r = f();
    sh(&format!("fsfreeze -u '{}'", mount.display()))?;
    r
}

/// Every 4 KiB block that changed on the volume is in the tracked set, for buffered writes,
/// O_DIRECT, overwrite in place, many small files, deletes and fstrim.
#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, loads eBPF"]
fn every_changed_block_is_tracked() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("tracking-complete")?;
    let site = lab.add_site("site-a")?;
    let vol = site.pool().create_volume("data", 512 * MIB)?;
    let config = write_config(
        &site,
        &format!(
            "volumes:\n  - name: data\n    image: {}\n",
            vol.image().display()
        ),
    )?;
    let agent = Agent::start(&site, &config)?;
    let mnt = vol.mount_point().to_owned();
    let before = site.pool().mount_point().join("before.img");
    let after = site.pool().mount_point().join("after.img");

    // Baseline: with the file system frozen, copy the image and start a new mark.
    sh(&format!(
        "dd if=/dev/urandom of='{}/seed' bs=1M count=24 status=none; sync",
        mnt.display()
    ))?;
    frozen(&mnt, || {
        sh(&format!(
            "cp --reflink=always '{}' '{}'",
            vol.image().display(),
            before.display()
        ))?;
        agent.changed("data", true).map(drop)
    })?;

    // Each phase ends at a checkpoint: frozen, the image copied and the mark taken together.
    let phases = write_phases(&mnt);
    for (phase, steps) in phases {
        for step in steps {
            sh(&step)?;
        }
        let tracked = frozen(&mnt, || {
            sh(&format!(
                "cp --reflink=always '{}' '{}'",
                vol.image().display(),
                after.display()
            ))?;
            agent.changed("data", true)
        })?;
        let changed = differing_blocks(&before, &after)?;
        let missed: Vec<u64> = changed
            .iter()
            .copied()
            .filter(|b| !tracked.contains(*b))
            .collect();
        let extra = tracked.blocks() - (changed.len() - missed.len()) as u64;
        eprintln!(
            "completeness, {phase}: {} blocks changed, {} tracked, {} missed, {} extra",
            changed.len(),
            tracked.blocks(),
            missed.len(),
            extra,
        );
        ensure!(
            changed.len() > 4_000,
            "{phase} changed only {} blocks",
            changed.len()
        );
        ensure!(!tracked.incomplete, "the agent reports dropped extents");
        ensure!(
            missed.is_empty(),
            "{phase}: {} changed blocks were not tracked, first: {:?}",
            missed.len(),
            &missed[..missed.len().min(20)]
        );
        std::fs::rename(&after, &before)?;
    }

    let status = agent.status()?;
    let v = &status["tracking"]["volumes"][0];
    ensure!(
        v["discarded_bytes"].as_u64().unwrap_or(0) > 0,
        "fstrim discards not counted: {v}"
    );
    ensure!(
        v["written_bytes"].as_u64().unwrap_or(0) > 40 * MIB,
        "writes not counted: {v}"
    );
    agent.stop()?;
    std::fs::remove_file(before)?;
    Ok(())
}

/// The agent refuses to start when a configured device or image is missing, and says which.
#[test]
#[ignore = "root: builds lab namespaces and runs the agent"]
fn a_missing_volume_stops_the_start() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("tracking-missing")?;
    let site = lab.add_site("site-a")?;
    let missing = site.dir().join("nope.img");
    for (key, path) in [
        ("image", missing.clone()),
        ("device", site.dir().join("no-such-device")),
    ] {
        let config = write_config(
            &site,
            &format!("volumes:\n  - name: data\n    {key}: {}\n", path.display()),
        )?;
        let out = site
            .command(vfsdr_bin()?)
            .args(["agent", "--log", "stderr", "--config"])
            .arg(&config)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "the agent started without {}",
            path.display()
        );
        let want = format!("volume data: {} does not exist", path.display());
        ensure!(stderr.contains(&want), "expected `{want}` in:\n{stderr}");
        ensure!(
            !site.run_dir().join("agent.sock").exists(),
            "socket left behind"
        );
    }
    Ok(())
}

/// Write syscalls are counted per process: plain, positioned and vectored writes of one known
/// process show up under its pid and name with their calls and bytes.
#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, loads eBPF"]
fn writes_are_counted_per_process() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("tracking-writers")?;
    let site = lab.add_site("site-a")?;
    let vol = site.pool().create_volume("data", 320 * MIB)?;
    // The body continues the `tracking:` section the helper writes: list up to 100 writers, so
    // the busiest processes of the machine do not push this one out.
    let config = write_config(
        &site,
        &format!(
            "  top_writers: 100\n  writers: true\nvolumes:\n  - name: data\n    image: {}\n",
            vol.image().display()
        ),
    )?;
    let agent = Agent::start(&site, &config)?;
    // 1000 write(4096), 500 pwrite64(100), 200 writev(1000+2000), 100 pwritev(2 x 1000),
    // 100 pwritev2(2 x 1000, RWF_DSYNC).
    let script = format!(
        "import os\n\
         fd = os.open('{}/w', os.O_CREAT | os.O_WRONLY)\n\
         for _ in range(1000): os.write(fd, b'a' * 4096)\n\
         for i in range(500): os.pwrite(fd, b'b' * 100, i * 100)\n\
         for _ in range(200): os.writev(fd, [b'c' * 1000, b'd' * 2000])\n\
         for i in range(100): os.pwritev(fd, [b'e' * 1000, b'f' * 1000], i * 2000)\n\
         for i in range(100): os.pwritev(fd, [b'g' * 1000, b'h' * 1000], i * 2000, os.RWF_DSYNC)\n\
         os.close(fd)\n",
        vol.mount_point().display()
    );
    let mut child = Command::new("python3").arg("-c").arg(&script).spawn()?;
    let pid = u64::from(child.id());
    let exit = child.wait()?;
    ensure!(exit.success(), "the python writer failed: {exit}");
    let calls = 1000 + 500 + 200 + 100 + 100;
    let bytes = 1000 * 4096 + 500 * 100 + 200 * 3000 + 100 * 2000 + 100 * 2000;
    let mut last = serde_json::Value::Null;
    let found = wait_for("the writer in status", Duration::from_secs(10), || {
        last = agent.status()?;
        Ok(last["tracking"]["writers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|w| w["pid"] == pid && w["calls"].as_u64().is_some_and(|c| c >= calls)))
    });
    found.with_context(|| format!("status: {last}"))?;
    let w = last["tracking"]["writers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["pid"] == pid)
        .context("writer")?;
    ensure!(w["comm"] == "python3", "{w}");
    // The interpreter itself may write a few times (nothing to a terminal here).
    let (c, b) = (
        w["calls"].as_u64().unwrap_or(0),
        w["bytes"].as_u64().unwrap_or(0),
    );
    ensure!(c <= calls + 20, "calls {c}, expected {calls}: {w}");
    ensure!(
        b >= bytes && b <= bytes + (64 << 10),
        "bytes {b}, expected {bytes}: {w}"
    );
    Ok(())
}

/// An image the agent attached itself is detached again when it stops; SIGHUP with a broken
/// configuration keeps the running one; SIGHUP with a new volume starts watching it.
#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, loads eBPF"]
fn reload_and_clean_stop() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("tracking-reload")?;
    let site = lab.add_site("site-a")?;
    let vol = site.pool().create_volume("data", 320 * MIB)?;
    let spare = site.pool().mount_point().join("spare.img");
    sh(&format!("truncate -s 64M '{}'", spare.display()))?;
    let one = format!(
        "volumes:\n  - name: data\n    image: {}\n",
        vol.image().display()
    );
    let config = write_config(&site, &one)?;
    let agent = Agent::start(&site, &config)?;

    std::fs::write(
        &config,
        "version: 2\nsite: {name: site-a}\nvolumes: [{name: x}]\n",
    )?;
    signal(agent.pid(), libc::SIGHUP);
    wait_for("the failed reload", Duration::from_secs(10), || {
        Ok(agent.log_text().contains("config_reload_failed"))
    })?;
    ensure!(
        agent.log_text().contains("volumes[0]"),
        "reload error does not name the field:\n{}",
        agent.log_text()
    );
    ensure!(agent.status()?["volumes"].as_array().map(Vec::len) == Some(1));

    write_config(
        &site,
        &format!("{one}  - name: spare\n    image: {}\n", spare.display()),
    )?;
    signal(agent.pid(), libc::SIGHUP);
    wait_for("the reload", Duration::from_secs(10), || {
        Ok(agent.log_text().contains("config_reloaded"))
    })?;
    let status = agent.status()?;
    let vols = status["volumes"].as_array().context("volumes")?;
    ensure!(vols.len() == 2, "{status}");
    ensure!(vols[1]["attached_by_agent"] == true, "{status}");
    let spare_dev = vols[1]["device"].as_str().context("device")?.to_owned();

    let exit = agent.stop()?;
    ensure!(exit.success(), "agent exited with {exit}");
    let out = Command::new("losetup").arg("-j").arg(&spare).output()?;
    ensure!(
        out.stdout.is_empty(),
        "{spare_dev} still attached: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: signals the agent this test started, by its pid.
    unsafe { libc::kill(pid as i32, sig) };
}
