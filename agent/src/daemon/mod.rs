//! `vfsdr agent`: loads the configuration, attaches the probes, serves the local API, drains
//! the kernel on a timer and on wakeups. SIGTERM/SIGINT detach everything and exit; SIGHUP
//! reloads the configuration or keeps the old one and says why.
mod agent;
#[cfg(test)]
mod tests;

use std::{
    io,
    os::{
        fd::{AsRawFd, RawFd},
        unix::fs::PermissionsExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

pub use agent::{Agent, AgentError, ReloadSummary};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, unix::AsyncFd},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use crate::{
    api::{self, Request, Response},
    config,
    tracking::EbpfProbes,
    volumes::SystemDevices,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Probe(#[from] crate::tracking::ProbeError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("another agent is already serving {0}")]
    SocketInUse(PathBuf),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

type Call = (Request, oneshot::Sender<Response>);

struct WakeFd(RawFd);
impl AsRawFd for WakeFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> Result<(), DaemonError> {
    let config = config::load(config_path)?;
    // Absolute, so a reload reads the same file whatever the working directory.
    let config_path = &std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_owned());
    let site = config.site.name.clone();
    let probes = EbpfProbes::load()?;
    let mut agent = Agent::start(config_path, config, Box::new(probes), Box::new(SystemDevices))?;
    let socket = agent.config().api_socket();
    let listener = bind(&socket)?;
    tracing::info!(
        site = %site,
        event = "agent_started",
        volumes = agent.config().volumes.len(),
        socket = %socket.display(),
        "agent started"
    );

    let (tx, mut rx) = mpsc::channel::<Call>(64);
    let io_err = |op, path: &Path| {
        let path = path.to_owned();
        move |source| DaemonError::Io { op, path, source }
    };
    let mut term = signal(SignalKind::terminate()).map_err(io_err("signal", Path::new("SIGTERM")))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io_err("signal", Path::new("SIGINT")))?;
    let mut hup = signal(SignalKind::hangup()).map_err(io_err("signal", Path::new("SIGHUP")))?;
    let wake = match agent.wakeup_fd() {
        // SAFETY: the ring buffer's fd stays open until `agent` is dropped, after `wake`.
        Some(fd) => Some(
            unsafe { AsyncFd::register(WakeFd(fd)) }
                .map_err(|e| io_err("epoll", Path::new("ring buffer"))(e.into_parts().1))?,
        ),
        None => None,
    };
    let mut tick = tokio::time::interval(poll_interval(&agent));

    let reason = loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = agent.poll() {
                    tracing::error!(site = %site, event = "drain_failed", error = %e, "reading the probes failed");
                }
            }
            ready = async { wake.as_ref().expect("guarded").readable().await }, if wake.is_some() => {
                if let Ok(mut guard) = ready {
                    guard.clear_ready();
                }
                if let Err(e) = agent.poll() {
                    tracing::error!(site = %site, event = "drain_failed", error = %e, "reading the probes failed");
                }
            }
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    tokio::spawn(serve(stream, tx.clone()));
                }
            }
            Some((request, reply)) = rx.recv() => {
                let _ = reply.send(agent.handle(request));
            }
            _ = hup.recv() => {
                match agent.reload() {
                    Ok(s) => {
                        tick = tokio::time::interval(poll_interval(&agent));
                        tracing::info!(site = %agent.config().site.name, event = "config_reloaded",
                            added = ?s.added, removed = ?s.removed, kept = ?s.kept, "configuration reloaded");
                    }
                    Err(e) => tracing::error!(site = %site, event = "config_reload_failed",
                        error = %e, "configuration not reloaded, keeping the running one"),
                }
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    drop(wake);
    drop(agent); // detaches the programs and releases loop devices the agent attached
    let _ = std::fs::remove_file(&socket);
    tracing::info!(site = %site, event = "agent_stopped", reason, "agent stopped, probes detached");
    Ok(())
}

fn poll_interval(agent: &Agent) -> Duration {
    Duration::from_millis(agent.config().tracking.poll_interval_ms)
}

/// Binds the API socket, replacing a stale one but never one a live agent serves.
fn bind(socket: &Path) -> Result<UnixListener, DaemonError> {
    let io_err = |op, source| DaemonError::Io {
        op,
        path: socket.to_owned(),
        source,
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_err("create directory for", e))?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(DaemonError::SocketInUse(socket.to_owned()));
        }
        std::fs::remove_file(socket).map_err(|e| io_err("remove stale socket", e))?;
    }
    let listener = UnixListener::bind(socket).map_err(|e| io_err("bind", e))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err("chmod", e))?;
    Ok(listener)
}

/// Serves one API connection: one request line, one response line.
async fn serve(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(api::MAX_LINE as u64);
    let mut line = String::new();
    let response = match reader.read_line(&mut line).await {
        Ok(0) => return,
        Ok(_) if !line.ends_with('\n') => Response::Error {
            message: format!("bad request: longer than {} bytes or not terminated by a newline", api::MAX_LINE),
        },
        Ok(_) => match api::parse_request(&line) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if calls.send((request, tx)).await.is_err() {
                    return;
                }
                match rx.await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
            Err(message) => Response::Error { message },
        },
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    let _ = write.write_all(api::encode(response).as_bytes()).await;
}
