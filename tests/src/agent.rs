//! A vfsdr agent running in a lab site's network namespace, and the `vfsdr` CLI against it.
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{Daemon, Site};

/// The `vfsdr` binary under test: `$VFSDR_BIN`, else the workspace's `target/debug/vfsdr`.
pub fn vfsdr_bin() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("VFSDR_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/vfsdr"),
    };
    if !path.is_file() {
        bail!(
            "the vfsdr binary {} does not exist: build it first (`cargo build -p vfsdr`) or set VFSDR_BIN; `cargo xtask test` does both",
            path.display()
        );
    }
    Ok(path)
}

/// Writes a site configuration for `site` into its config dir, with the given `volumes:` YAML
/// block (may be empty), and returns its path.
pub fn write_config(site: &Site, volumes_yaml: &str) -> anyhow::Result<PathBuf> {
    let path = site.config_dir().join("vfsdr.yaml");
    let text = format!(
        "version: 1\nsite:\n  name: {}\nstate_dir: {}\nruntime_dir: {}\ntracking:\n  poll_interval_ms: 100\n{}",
        site.name(),
        site.state_dir().display(),
        site.run_dir().display(),
        volumes_yaml
    );
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// A running agent; stopped (SIGTERM by pid) when dropped.
pub struct Agent {
    daemon: Option<Daemon>,
    bin: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Starts `vfsdr agent --config CONFIG` in the site's network namespace, logging to
    /// `<site dir>/agent.log`, and waits until its API answers.
    pub fn start(site: &Site, config: &Path) -> anyhow::Result<Agent> {
        let bin = vfsdr_bin()?;
        let log = site.dir().join("agent.log");
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = site.command(&bin);
        cmd.args(["agent", "--log", "stderr", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let daemon = site.spawn_command(cmd)?;
        let mut agent = Agent {
            daemon: Some(daemon),
            bin,
            socket: site.run_dir().join("agent.sock"),
            log,
        };
        agent.wait_ready(Duration::from_secs(20))?;
        Ok(agent)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.cli(["status", "--json"]).is_ok() {
                return Ok(());
            }
            let running = self.daemon.as_mut().is_some_and(|d| d.is_running());
            if !running || Instant::now() > deadline {
                bail!(
                    "the agent {} within {timeout:?}; its log:\n{}",
                    if running { "did not answer" } else { "exited" },
                    self.log_text()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().map_or(0, |d| d.pid())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `vfsdr ARGS --socket SOCKET` and returns its stdout.
    pub fn cli<const N: usize>(&self, args: [&str; N]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "vfsdr {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.cli(["status", "--json"])?)?)
    }

    /// The changed block ranges of `volume` (`[start, end)` in 4 KiB blocks), and whether the
    /// agent marked them incomplete; with `take`, a new mark starts.
    pub fn changed(&self, volume: &str, take: bool) -> anyhow::Result<Changed> {
        let out = if take {
            self.cli(["changed", volume, "--json", "--take"])?
        } else {
            self.cli(["changed", volume, "--json"])?
        };
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let ranges = v["ranges"]
            .as_array()
            .context("no ranges in the answer")?
            .iter()
            .map(|r| (r["start"].as_u64().unwrap_or(0), r["end"].as_u64().unwrap_or(0)))
            .collect();
        Ok(Changed {
            ranges,
            incomplete: v["incomplete"].as_bool().unwrap_or(true),
        })
    }

    /// Stops the agent with SIGTERM and returns how it exited.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.daemon.take().context("agent already stopped")?.stop()
    }
}

/// Changed blocks as the agent reports them.
#[derive(Debug, Clone)]
pub struct Changed {
    pub ranges: Vec<(u64, u64)>,
    pub incomplete: bool,
}

impl Changed {
    pub fn contains(&self, block: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 <= block);
        self.ranges.get(i).is_some_and(|r| r.0 <= block)
    }
    pub fn blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.1 - r.0).sum()
    }
}
