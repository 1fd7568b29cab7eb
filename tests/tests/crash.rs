//! Root tests of "nothing lost on a crash": kill -9 of either agent in the middle of a cycle,
//! or a cut link, leaves the DR site at its last consistent snapshot; the interrupted cycle is
//! redone (an interrupted full copy resumes where the DR site had synced it) and its snapshot
//! equals, byte for byte, the active site's clone of that cycle.
//!
//! A bandwidth limit makes a cycle of 160 MiB last about 8 s, so the interruption lands in the
//! middle of it.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;
use vfsdr_lab::{
    Lab, Site, Volume,
    agent::{Agent, make_certs, vfsdr_bin, write_config_with_peers},
    check::{differing_blocks, sh, wait_for},
    require_root,
};

const MIB: u64 = 1 << 20;
/// Bytes of random data a long cycle ships.
const BIG_MIB: u64 = 160;

/// Two sites and the active site's volume `fs1/data` (512 MiB, mounted), with their configs.
/// Fields drop in order: the volume before the sites' pools, the sites before the lab.
struct Pair {
    vol: Volume,
    a_config: PathBuf,
    b_config: PathBuf,
    a: Site,
    b: Site,
    lab: Lab,
}

fn pair(name: &str) -> anyhow::Result<Pair> {
    let lab = Lab::new(name)?;
    let a = lab.add_site("site-a")?;
    let b = lab.add_site("site-b")?;
    let certs = lab.dir().join("certs");
    std::fs::create_dir_all(&certs)?;
    make_certs(&certs, &["site-a", "site-b"])?;
    let mount = lab.dir().join("vfs-mnt/fs1/data");
    let image = a.pool().mount_point().join("volumes/fs1/data.img");
    std::fs::create_dir_all(image.parent().context("dir")?)?;
    std::fs::create_dir_all(mount.parent().context("dir")?)?;
    let vol = Volume::create(&image, &mount, 512 * MIB)?;
    let vfs = format!(
        "resources:\n  pool:\n    path: {}\nvfs:\n  - name: fs1\n    volumes:\n      - {{name: data, size: 512MiB, mount: {}}}\n    \
         interfaces:\n      - {{name: smb0, address: 198.18.0.100/24, network: lan}}\n    smb:\n      netbios_name: FS1\n    \
         replication:\n      peer: site-b\n      interval: 1h\n      compression: none\n      bandwidth_limit: 20MiB/s\n",
        a.pool().mount_point().display(),
        mount.display()
    );
    let a_config = write_config_with_peers(&a, &certs, &[&b], &vfs)?;
    let b_config = write_config_with_peers(
        &b,
        &certs,
        &[&a],
        &format!(
            "resources:\n  pool:\n    path: {}\n",
            b.pool().mount_point().display()
        ),
    )?;
    Ok(Pair {
        vol,
        a_config,
        b_config,
        a,
        b,
        lab,
    })
}

impl Pair {
    fn mount(&self) -> String {
        self.vol.mount_point().display().to_string()
    }

    /// Writes `mib` MiB of random data into a new file `name`, and a few small files.
    fn write(&self, name: &str, mib: u64) -> anyhow::Result<()> {
        let m = self.mount();
        sh(&format!(
            "mkdir -p '{m}/dir'; dd if=/dev/urandom of='{m}/{name}' bs=1M count={mib} status=none; \
             for i in $(seq 1 50); do echo {name} $i > '{m}/dir/{name}-'$i; done; sync"
        ))?;
        Ok(())
    }

    /// The DR site's image of snapshot `id`.
    fn snapshot(&self, id: &Value) -> PathBuf {
        self.b
            .pool()
            .mount_point()
            .join(format!("snapshots/fs1/{id}/data.img"))
    }

    /// The active site's clone of cycle `cycle`.
    fn clone_of(&self, cycle: &Value) -> PathBuf {
        self.a
            .pool()
            .mount_point()
            .join(format!("clones/fs1/{cycle}/data.img"))
    }

    /// The DR snapshot of report `r` equals, block for block, the clone it was made from.
    fn check_snapshot(&self, r: &Value) -> anyhow::Result<()> {
        let (snap, clone) = (self.snapshot(&r["snapshot"]), self.clone_of(&r["cycle"]));
        let differ = differing_blocks(&snap, &clone)?;
        ensure!(
            differ.is_empty(),
            "snapshot {} differs from the clone {} in {} blocks, first {:?}",
            snap.display(),
            clone.display(),
            differ.len(),
            &differ[..differ.len().min(8)]
        );
        Ok(())
    }
}

fn start_pair(p: &Pair) -> anyhow::Result<(Agent, Agent)> {
    let b = Agent::start(&p.b, &p.b_config)?;
    let a = Agent::start(&p.a, &p.a_config)?;
    wait_for("the definition at site-b", Duration::from_secs(30), || {
        Ok(b.cli(["vfs"])?.contains("fs1"))
    })?;
    Ok((a, b))
}

fn replicate(agent: &Agent) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&agent.cli([
        "replicate",
        "fs1",
        "--now",
        "--json",
    ])?)?)
}

/// `vfsdr replicate fs1 --now` against `agent`, running in the background.
fn replicate_in_background(agent: &Agent) -> anyhow::Result<Child> {
    Ok(Command::new(vfsdr_bin()?)
        .args(["replicate", "fs1", "--now", "--json", "--socket"])
        .arg(agent.socket())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// Runs `vfsdr ARGS --socket SOCKET` on a pseudo-terminal (`script`); returns what it showed.
fn on_a_terminal(agent: &Agent, args: &str) -> anyhow::Result<String> {
    let line = format!(
        "{} {args} --socket {}",
        vfsdr_bin()?.display(),
        agent.socket().display()
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "`{line}` failed:\n{text}");
    Ok(text)
}

/// Waits until the running cycle of fs1 at `agent` shipped at least `bytes`; returns its
/// progress.
fn wait_shipped(agent: &Agent, bytes: u64) -> anyhow::Result<Value> {
    let mut seen = Value::Null;
    wait_for(
        "the cycle to be well under way",
        Duration::from_secs(60),
        || {
            let status = agent.status()?;
            if let Some(p) = status["progress"]
                .as_array()
                .and_then(|a| a.iter().find(|p| p["vfs"] == "fs1"))
            {
                seen = p.clone();
                return Ok(p["done_bytes"].as_u64().unwrap_or(0) >= bytes);
            }
            Ok(false)
        },
    )?;
    Ok(seen)
}

/// The background `replicate` ended, with an error, within `limit`; returns its stderr.
fn wait_failed(mut child: Child, limit: Duration) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            ensure!(
                !out.status.success(),
                "the interrupted cycle succeeded: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            return Ok(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the interrupted cycle did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SIGKILL to an agent this test started.
fn kill_9(agent: Agent) -> anyhow::Result<()> {
    sh(&format!("kill -9 {}", agent.pid()))?;
    drop(agent); // reaps it
    Ok(())
}

fn snapshot_ids(agent: &Agent) -> anyhow::Result<Vec<u64>> {
    let all: Value = serde_json::from_str(&agent.cli(["snapshots", "fs1", "--json"])?)?;
    Ok(all
        .as_array()
        .context("snapshots")?
        .iter()
        .filter_map(|s| s["id"].as_u64())
        .collect())
}

/// Mounts a snapshot image read-only and compares its tree with `expected`.
fn snapshot_holds(image: &Path, at: &Path, expected: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(at)?;
    sh(&format!(
        "mount -o ro,nouuid,norecovery,loop '{}' '{}'",
        image.display(),
        at.display()
    ))?;
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(expected)
        .arg(at)
        .output();
    sh(&format!("umount '{}'", at.display()))?;
    let diff = diff?;
    ensure!(
        diff.status.success(),
        "snapshot {} differs from {}:\n{}",
        image.display(),
        expected.display(),
        String::from_utf8_lossy(&diff.stdout)
    );
    Ok(())
}

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

    // The restarted agent redoes cycle 2 from a new point (the clones the killed one left
    // behind are replaced), on snapshot 1.
    let agent_a = Agent::start(&p.a, &p.a_config)?;
    let r2 = replicate(&agent_a)?;
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
