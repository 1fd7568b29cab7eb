//! The two lab sites of the crash tests, and the steps they share: cycles in the foreground, in
//! the background and on a terminal, waiting for progress or failure, kill -9, checks of
//! snapshots against clones and trees.
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
};

pub const MIB: u64 = 1 << 20;
/// Bytes of random data a long cycle ships.
pub const BIG_MIB: u64 = 160;

/// Two sites and the active site's volume `fs1/data` (512 MiB, mounted), with their configs.
/// Fields drop in order: the volume before the sites' pools, the sites before the lab.
pub struct Pair {
    pub vol: Volume,
    pub a_config: PathBuf,
    pub b_config: PathBuf,
    pub a: Site,
    pub b: Site,
    pub lab: Lab,
}

pub fn pair(name: &str) -> anyhow::Result<Pair> {
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
    pub fn mount(&self) -> String {
        self.vol.mount_point().display().to_string()
    }

    /// Writes `mib` MiB of random data into a new file `name`, and a few small files.
    pub fn write(&self, name: &str, mib: u64) -> anyhow::Result<()> {
        let m = self.mount();
        sh(&format!(
            "mkdir -p '{m}/dir'; dd if=/dev/urandom of='{m}/{name}' bs=1M count={mib} status=none; \
             for i in $(seq 1 50); do echo {name} $i > '{m}/dir/{name}-'$i; done; sync"
        ))?;
        Ok(())
    }

    /// The DR site's image of snapshot `id`.
    pub fn snapshot(&self, id: &Value) -> PathBuf {
        self.b
            .pool()
            .mount_point()
            .join(format!("snapshots/fs1/{id}/data.img"))
    }

    /// The active site's clone of cycle `cycle`.
    pub fn clone_of(&self, cycle: &Value) -> PathBuf {
        self.a
            .pool()
            .mount_point()
            .join(format!("clones/fs1/{cycle}/data.img"))
    }

    /// The DR snapshot of report `r` equals, block for block, the clone it was made from.
    pub fn check_snapshot(&self, r: &Value) -> anyhow::Result<()> {
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

pub fn start_pair(p: &Pair) -> anyhow::Result<(Agent, Agent)> {
    let b = Agent::start(&p.b, &p.b_config)?;
    let a = Agent::start(&p.a, &p.a_config)?;
    wait_for("the definition at site-b", Duration::from_secs(30), || {
        Ok(b.cli(["vfs"])?.contains("fs1"))
    })?;
    Ok((a, b))
}

pub fn replicate(agent: &Agent) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&agent.cli([
        "replicate",
        "fs1",
        "--now",
        "--json",
    ])?)?)
}

/// `vfsdr replicate fs1 --now` against `agent`, running in the background.
pub fn replicate_in_background(agent: &Agent) -> anyhow::Result<Child> {
    Ok(Command::new(vfsdr_bin()?)
        .args(["replicate", "fs1", "--now", "--json", "--socket"])
        .arg(agent.socket())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// Runs `vfsdr ARGS --socket SOCKET` on a pseudo-terminal (`script`); returns what it showed.
pub fn on_a_terminal(agent: &Agent, args: &str) -> anyhow::Result<String> {
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
pub fn wait_shipped(agent: &Agent, bytes: u64) -> anyhow::Result<Value> {
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
pub fn wait_failed(mut child: Child, limit: Duration) -> anyhow::Result<String> {
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
pub fn kill_9(agent: Agent) -> anyhow::Result<()> {
    sh(&format!("kill -9 {}", agent.pid()))?;
    drop(agent); // reaps it
    Ok(())
}

pub fn snapshot_ids(agent: &Agent) -> anyhow::Result<Vec<u64>> {
    let all: Value = serde_json::from_str(&agent.cli(["snapshots", "fs1", "--json"])?)?;
    Ok(all
        .as_array()
        .context("snapshots")?
        .iter()
        .filter_map(|s| s["id"].as_u64())
        .collect())
}

/// Mounts a snapshot image read-only and compares its tree with `expected`.
pub fn snapshot_holds(image: &Path, at: &Path, expected: &Path) -> anyhow::Result<()> {
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
