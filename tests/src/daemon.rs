//! Long-running processes started by the lab, stopped by their pid (never by name).
use std::{
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use std::os::unix::process::CommandExt as _;

use crate::{cmd::show, guard::warn, netns::Netns};

/// How long [`Daemon::stop`] waits after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running process started by the lab, in its own process group. Stopping it (explicitly or on
/// drop) sends SIGTERM to its process group, waits up to [`STOP_TIMEOUT`] for it to exit, then sends
/// SIGKILL to the group (which also takes any children it left behind) and reaps it. Signals go only
/// to this pid and its group, never to processes found by name.
///
/// The program must stay in the foreground (e.g. `smbd --foreground`), or its pid is not the daemon.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    pid: u32,
    what: String,
    /// Keeps the namespace the daemon runs in alive until it has been stopped.
    _netns: Option<Netns>,
}

impl Daemon {
    /// Starts `cmd` (any command, e.g. from [`Netns::command`]) in a new process group.
    pub fn start(cmd: Command) -> anyhow::Result<Self> {
        Self::start_with(cmd, None)
    }

    pub(crate) fn start_with(mut cmd: Command, netns: Option<Netns>) -> anyhow::Result<Self> {
        let what = show(&cmd);
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start `{what}`"))?;
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            what,
            _netns: netns,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.what
    }

    /// Whether it is still running (false once it has exited, even if not yet stopped).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops it (SIGTERM, up to [`STOP_TIMEOUT`], then SIGKILL) and returns how it ended.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.stop_within(STOP_TIMEOUT)
    }

    /// Like [`Daemon::stop`] with another grace period.
    pub fn stop_timeout(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.stop_within(timeout)
    }

    fn stop_within(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("daemon already stopped")?;
        let pid = self.pid as libc::pid_t;
        // The leader stays unreaped (a zombie at worst) until the end, so neither its pid nor its
        // process group id can be reused while we signal them.
        if !exited_unreaped(pid) {
            signal_group(pid, libc::SIGTERM);
            let deadline = Instant::now() + timeout;
            while !exited_unreaped(pid) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if !exited_unreaped(pid) {
                warn(format_args!(
                    "pid {pid} (`{}`) ignored SIGTERM for {timeout:?}; sending SIGKILL",
                    self.what
                ));
            }
        }
        // Kill whatever is left in the group (the leader if it ignored SIGTERM, its children).
        signal_group(pid, libc::SIGKILL);
        let status = child
            .wait()
            .with_context(|| format!("cannot reap pid {pid} (`{}`)", self.what))?;
        // SIGKILL is asynchronous: give children (reaped by init) a moment to be gone.
        let deadline = Instant::now() + Duration::from_secs(2);
        // SAFETY: signal 0 only checks for existence.
        while unsafe { libc::kill(-pid, 0) } == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        Ok(status)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(e) = self.stop_within(STOP_TIMEOUT)
        {
            warn(format_args!("{e:#}"));
        }
    }
}

/// Sends `sig` to the process group `pid` (falls back to the pid alone if the group is gone).
fn signal_group(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; pid > 0 is our own unreaped child.
    unsafe {
        if libc::kill(-pid, sig) != 0 {
            libc::kill(pid, sig);
        }
    }
}

/// Whether our child `pid` has exited, without reaping it (waitid with WNOWAIT).
fn exited_unreaped(pid: libc::pid_t) -> bool {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with a valid siginfo pointer.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        return true; // ECHILD: nothing left to wait for
    }
    // SAFETY: waitid filled (or zeroed) the struct; si_pid is 0 when the child has not exited.
    unsafe { info.si_pid() != 0 }
}
