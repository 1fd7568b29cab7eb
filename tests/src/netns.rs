//! Named network namespaces, and running programs in them (network namespace only).
use std::{
    ffi::OsStr,
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
};

use anyhow::{Context as _, bail};

use crate::{
    cmd::{command, run},
    daemon::Daemon,
    guard::warn,
    registry::Registry,
};

/// A named network namespace (`/run/netns/NAME`), deleted when the last clone is dropped.
///
/// Programs run in it through `nsenter --net=/run/netns/NAME`, which enters the network namespace
/// only. Never `ip netns exec` (or `ip -n`) for daemons: they also unshare the mount namespace and
/// pin every mount that exists at that moment (see DESIGN.md).
#[derive(Clone, Debug)]
pub struct Netns {
    inner: Arc<NetnsInner>,
}

#[derive(Debug)]
struct NetnsInner {
    name: String,
    path: PathBuf,
    registry: Option<Registry>,
}

impl Netns {
    /// `ip netns add NAME`, then brings `lo` up in it.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        Self::create_in(name, None)
    }

    pub(crate) fn create_in(name: &str, registry: Option<Registry>) -> anyhow::Result<Self> {
        if name.is_empty() || name.contains('/') || name.len() > 200 {
            bail!("bad network namespace name {name:?}");
        }
        run(&mut command("ip", ["netns", "add", name]))?;
        if let Some(r) = &registry {
            r.note_netns(name);
        }
        // From here on the guard deletes it, also when the next step fails.
        let ns = Self {
            inner: Arc::new(NetnsInner {
                name: name.to_string(),
                path: Path::new("/run/netns").join(name),
                registry,
            }),
        };
        ns.run("ip", ["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `/run/netns/NAME`: for `nsenter --net=`, `setns(2)`, or the agent's configuration.
    pub fn path(&self) -> PathBuf {
        self.inner.path.clone()
    }

    /// A command that runs `program` in this network namespace only:
    /// `nsenter --net=/run/netns/NAME -- program`. nsenter execs the program, so a spawned child's
    /// pid is the program's.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        let mut net = std::ffi::OsString::from("--net=");
        net.push(&self.inner.path);
        cmd.arg(net).arg("--").arg(program);
        cmd
    }

    /// Runs `program args` in the namespace to completion; returns stdout, or an error with stderr.
    pub fn run<I, S>(&self, program: &str, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        run(&mut cmd)
    }

    /// Starts `program args` in the namespace as a long-running [`Daemon`] (stdin closed, stdout and
    /// stderr inherited). The daemon keeps the namespace alive until it is stopped.
    pub fn spawn<I, S>(&self, program: &str, args: I) -> anyhow::Result<Daemon>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args).stdin(Stdio::null());
        self.spawn_command(cmd)
    }

    /// Starts a command built with [`Netns::command`] (with your own stdio, env, cwd) as a
    /// [`Daemon`] tied to this namespace.
    pub fn spawn_command(&self, cmd: Command) -> anyhow::Result<Daemon> {
        let daemon = Daemon::start_with(cmd, Some(self.clone()))?;
        if let Some(r) = &self.inner.registry {
            r.note_process(daemon.pid());
        }
        Ok(daemon)
    }

    /// Runs `f` on a fresh thread that has entered this network namespace with `setns(2)` (only the
    /// network namespace; the calling thread is untouched). For in-process netlink or sockets.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let file = File::open(&self.inner.path)
            .with_context(|| format!("cannot open {}", self.inner.path.display()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this (new, unshared) thread with a valid netns fd.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("setns into {}", self.inner.path.display()));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.inner.name))?
        })
    }
}

impl Drop for NetnsInner {
    fn drop(&mut self) {
        if !self.path.exists() {
            return;
        }
        if let Err(e) = run(&mut command("ip", ["netns", "delete", self.name.as_str()])) {
            warn(format_args!("{e:#}"));
        }
    }
}
