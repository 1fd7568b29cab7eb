//! A vfsdr agent running in a lab site's network namespace, and the `vfsdr` CLI against it.
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{Daemon, Site, guard::DirGuard};

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

/// The peer link port sites listen on in the lab.
pub const PEER_PORT: u16 = 7800;

/// Writes a site configuration (format version 2) for `site` into its config dir: the site
/// header, and `body` (top-level YAML sections such as `volumes:`, `resources:`, `vfs:`), and
/// returns its path.
pub fn write_config(site: &Site, body: &str) -> anyhow::Result<PathBuf> {
    write(site, "", body)
}

/// Like [`write_config`], with the peer link: listening on the site's lab address, the
/// certificates of `certs` (see [`make_certs`]), and `peers` (name, site) as its peers.
pub fn write_config_with_peers(
    site: &Site,
    certs: &Path,
    peers: &[&Site],
    body: &str,
) -> anyhow::Result<PathBuf> {
    let mut link = format!(
        "  listen: {}:{PEER_PORT}\n  tls:\n    ca: {c}/ca.pem\n    cert: {c}/{n}.pem\n    key: {c}/{n}.key\n",
        site.address(),
        c = certs.display(),
        n = site.name()
    );
    if !peers.is_empty() {
        link.push_str("peers:\n");
        for p in peers {
            link.push_str(&format!(
                "  - name: {}\n    address: {}:{PEER_PORT}\n",
                p.name(),
                p.address()
            ));
        }
    }
    write(site, &link, body)
}

fn write(site: &Site, link: &str, body: &str) -> anyhow::Result<PathBuf> {
    let path = site.config_dir().join("vfsdr.yaml");
    // `peers:` (if any) ends `link`, after the site's own fields.
    let (site_fields, peers) = match link.find("peers:") {
        Some(i) => link.split_at(i),
        None => (link, ""),
    };
    let text = format!(
        "version: 2\nsite:\n  name: {}\n{site_fields}{peers}state_dir: {}\nruntime_dir: {}\ntracking:\n  poll_interval_ms: 100\n{}",
        site.name(),
        site.state_dir().display(),
        site.run_dir().display(),
        body
    );
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The directory under which a site's agent mounts VFS volumes (`resources.mount_root`),
/// `<site dir>/vfs`, created now. Agents leave their VFS volumes mounted when they stop (an
/// agent restart does not take a file server offline), so on drop this unmounts whatever is
/// still mounted below it, then removes it. Keep it until the site's agent stopped, and drop
/// it before the site (declare it after the site): the volumes' images live in the site's pool.
pub fn mount_root(site: &Site) -> anyhow::Result<MountRoot> {
    Ok(MountRoot(DirGuard::create(&site.dir().join("vfs"), true)?))
}

/// See [`mount_root`].
#[derive(Debug)]
pub struct MountRoot(DirGuard);

impl MountRoot {
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for MountRoot {
    /// The volumes the agent left mounted (as it does) are unmounted here, last mounted first,
    /// before the directory guard removes the tree (which would warn about them).
    fn drop(&mut self) {
        for m in crate::sys::mounts_under(self.path()) {
            crate::guard::unmount(&m);
        }
    }
}

/// A `resources:` section with the site's pool, `mount_root` and `extra` lines (such as
/// `  links:` and its items) after them.
pub fn resources(site: &Site, mount_root: &Path, extra: &str) -> String {
    format!(
        "resources:\n  pool:\n    path: {}\n  mount_root: {}\n{extra}",
        site.pool().mount_point().display(),
        mount_root.display()
    )
}

/// Creates a CA and a certificate for each site name in `dir` with `vfsdr cert`.
pub fn make_certs(dir: &Path, sites: &[&str]) -> anyhow::Result<()> {
    let bin = vfsdr_bin()?;
    let run = |args: &[&std::ffi::OsStr]| -> anyhow::Result<()> {
        let out = Command::new(&bin).args(args).output()?;
        if !out.status.success() {
            bail!(
                "vfsdr cert failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    run(&["cert".as_ref(), "ca".as_ref(), dir.as_os_str()])?;
    for s in sites {
        run(&[
            "cert".as_ref(),
            "site".as_ref(),
            s.as_ref(),
            "--ca".as_ref(),
            dir.as_os_str(),
            "--out".as_ref(),
            dir.as_os_str(),
        ])?;
    }
    Ok(())
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
        let (code, stdout, stderr) = self.cli_status(&args)?;
        if code != 0 {
            bail!("vfsdr {} failed: {}", args.join(" "), stderr.trim());
        }
        Ok(stdout)
    }

    /// Runs `vfsdr ARGS --socket SOCKET` (stdin closed); returns exit code, stdout, stderr.
    pub fn cli_status(&self, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
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
            .map(|r| {
                (
                    r["start"].as_u64().unwrap_or(0),
                    r["end"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        Ok(Changed {
            ranges,
            incomplete: v["incomplete"].as_bool().unwrap_or(true),
        })
    }

    /// Runs `vfsdr ARGS --socket SOCKET` in the background (stdin closed, stdout and stderr
    /// piped).
    pub fn spawn_cli(&self, args: &[&str]) -> anyhow::Result<Child> {
        Command::new(&self.bin)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", self.bin.display()))
    }

    /// Runs `vfsdr ARGS --socket SOCKET` on a pseudo-terminal (`script`); returns what it showed,
    /// or an error with it if it failed.
    pub fn cli_on_terminal(&self, args: &str) -> anyhow::Result<String> {
        let line = format!(
            "{} {args} --socket {}",
            self.bin.display(),
            self.socket.display()
        );
        let out = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(out.status.success(), "`{line}` failed:\n{text}");
        Ok(text)
    }

    /// Kills the agent with SIGKILL (no chance to clean up) and returns how it ended.
    pub fn kill(mut self) -> anyhow::Result<ExitStatus> {
        self.end(true)
    }

    /// Stops the agent with SIGTERM and returns how it exited.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.end(false)
    }

    /// Kills (SIGKILL, `kill`) or stops (SIGTERM) the agent and returns how it ended; the handle
    /// stays, without a process: its CLI calls fail, and dropping it does nothing.
    pub(crate) fn end(&mut self, kill: bool) -> anyhow::Result<ExitStatus> {
        let daemon = self.daemon.take().context("agent already stopped")?;
        if kill {
            // SAFETY: signals the process this harness started, by its pid.
            unsafe { libc::kill(daemon.pid() as i32, libc::SIGKILL) };
        }
        daemon.stop()
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
