//! `vfsdr agent`: loads the configuration, attaches the probes, serves the local API, drains
//! the kernel on a timer and on wakeups. SIGTERM/SIGINT detach everything and exit; SIGHUP
//! reloads the configuration or keeps the old one and says why.
mod agent;
mod busy;
mod cycles;
mod gap;
mod pause;
mod replicate;
mod report;
mod snapshot_delete;
mod status;
#[cfg(test)]
mod tests;
mod verify;
mod vfs;
mod volumes;

use std::{
    io,
    os::{
        fd::{AsRawFd, RawFd},
        unix::fs::PermissionsExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

pub use agent::{Agent, AgentError, Handled, Kernel, ReloadSummary};
pub use replicate::volume_image;
pub use report::{CyclePhases, CycleReport};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, unix::AsyncFd},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};
pub use volumes::{VfsVolumeStatus, active_volumes};

use cycles::{CycleDone, Cycles, first_delay};

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::task::JoinSet;

use crate::{
    api::{self, Request, Response},
    config,
    peer::{self, DataConn, Message, PeerClient, PeerContext, PeerRequest, PeerStatus},
    resources::{RtnlLinks, SystemMounts},
    state::Store,
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
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    #[error(transparent)]
    Net(#[from] crate::resources::net::NetError),
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

/// Definitions each peer acknowledged: (peer, vfs) -> (epoch, definition).
type Acked = Arc<Mutex<HashMap<(String, String), (u64, crate::config::VfsDef)>>>;

/// The peer link's pieces the main loop uses.
struct PeerLink {
    ctx: Arc<PeerContext>,
    clients: HashMap<String, Arc<PeerClient>>,
    status: PeerStatus,
    acked: Acked,
    last_full_push: Instant,
    _tasks: JoinSet<()>,
    _heartbeats: JoinSet<()>,
}

impl PeerLink {
    async fn start(
        config: &config::Config,
        requests: mpsc::Sender<PeerRequest>,
        data: mpsc::Sender<DataConn>,
    ) -> Result<Option<PeerLink>, DaemonError> {
        let Some(ctx) = PeerContext::from_config(config)? else {
            return Ok(None);
        };
        let ctx = Arc::new(ctx);
        let mut tasks = JoinSet::new();
        if let Some(listen) = config.site.listen {
            let listener = peer::bind(listen).await?;
            tasks.spawn(peer::serve_with_data(listener, ctx.clone(), requests, data));
        }
        let status = PeerStatus::new(config.peers.iter().map(|p| p.name.as_str()));
        let heartbeats = peer::spawn_heartbeats(&ctx, &status)?;
        let mut clients = HashMap::new();
        for p in &config.peers {
            clients.insert(p.name.clone(), Arc::new(ctx.client(&p.name)?));
        }
        Ok(Some(PeerLink {
            ctx,
            clients,
            status,
            acked: Arc::default(),
            last_full_push: Instant::now(),
            _tasks: tasks,
            _heartbeats: heartbeats,
        }))
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config_path: &Path) -> Result<(), DaemonError> {
    let config = config::load(config_path)?;
    // Absolute, so a reload reads the same file whatever the working directory.
    let config_path =
        &std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_owned());
    let site = config.site.name.clone();
    let store = Store::open(&config.state_dir)?;
    let kernel = Kernel {
        probes: Box::new(EbpfProbes::load()?),
        devices: Box::new(SystemDevices),
        links: Box::new(RtnlLinks::new()?),
        mounts: Box::new(SystemMounts),
    };
    let mut agent = Agent::start(config_path, config, kernel, store)?;
    let socket = agent.config().api_socket();
    let listener = bind(&socket)?;
    let (peer_tx, mut peer_rx) = mpsc::channel::<PeerRequest>(64);
    let (data_tx, mut data_rx) = mpsc::channel::<DataConn>(4);
    let mut link = PeerLink::start(agent.config(), peer_tx, data_tx).await?;
    let mut cycles = Cycles::default();
    cycles.restore_paused(
        &agent.store,
        &site,
        agent.config().vfs.iter().map(|d| d.name.as_str()),
    );
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<CycleDone>();
    let (committed_tx, mut committed_rx) = mpsc::unbounded_channel::<String>();
    let (verified_tx, mut verified_rx) = mpsc::unbounded_channel::<String>();
    let mut cycle_tick = tokio::time::interval(Duration::from_secs(1));
    tracing::info!(
        site = %site,
        event = "agent_started",
        volumes = agent.config().volumes.len(),
        vfs = agent.config().vfs.len(),
        peers = agent.config().peers.len(),
        socket = %socket.display(),
        "agent started"
    );

    let (tx, mut rx) = mpsc::channel::<Call>(64);
    let io_err = |op, path: &Path| {
        let path = path.to_owned();
        move |source| DaemonError::Io { op, path, source }
    };
    let mut term =
        signal(SignalKind::terminate()).map_err(io_err("signal", Path::new("SIGTERM")))?;
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
    let mut push_tick = tokio::time::interval(PUSH_INTERVAL);

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
            _ = push_tick.tick(), if link.is_some() => push_definitions(&agent, link.as_mut()),
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    tokio::spawn(serve(stream, tx.clone()));
                }
            }
            Some(vfs) = verified_rx.recv() => { cycles.running.remove(&vfs); }
            Some((request, reply)) = rx.recv() => match request {
              Request::Verify { vfs } => {
                cycles.verify(agent.config(), link.as_ref().map(|l| l.ctx.clone()), vfs, reply, &verified_tx)
              }
              request => match agent.handle(request) {
                Handled::Now(Response::Status(mut report)) => {
                    if let Some(l) = &link {
                        report.peers = l.status.snapshot();
                    }
                    report.replication = cycles.last.values().cloned().collect();
                    report.replication_status = cycles.statuses(&agent, link.is_some());
                    report.paused = cycles.paused.values().cloned().collect();
                    // A cycle shows once its size is known (cycles are numbered from 1).
                    report.progress = cycles.progress.values().map(|p| p.report()).filter(|r| r.cycle > 0).collect();
                    let _ = reply.send(Response::Status(report));
                }
                Handled::Now(response) => { let _ = reply.send(response); }
                Handled::Forward { peer, message } => forward(link.as_ref(), &peer, message, reply),
                Handled::Cycle(def) => cycles.start(&mut agent, link.as_ref(), def, Some(reply), &done_tx),
                Handled::Delete(deletion) => snapshot_delete::spawn(site.clone(), deletion, reply),
              },
            },
            Some(conn) = data_rx.recv() => replicate::accept(conn, agent.config(), committed_tx.clone()),
            Some(vfs) = committed_rx.recv() => agent.refresh_reserved_mounts(&vfs),
            _ = cycle_tick.tick(), if link.is_some() => {
                for def in cycles.due(&agent) {
                    cycles.start(&mut agent, link.as_ref(), def, None, &done_tx);
                }
            }
            Some(done) = done_rx.recv() => cycles.finish(&mut agent, &site, done),
            Some(request) = peer_rx.recv() => {
                if matches!(request.message, Message::VerifyDigests { .. }) {
                    // Hashed on a thread of its own, answered from there.
                    verify::serve(request, agent.config());
                } else {
                    let answer = agent.handle_peer(&request.from, request.message.clone());
                    request.respond(answer);
                }
            }
            _ = hup.recv() => {
                match agent.reload() {
                    Ok(s) => {
                        tick = tokio::time::interval(poll_interval(&agent));
                        tracing::info!(site = %agent.config().site.name, event = "config_reloaded",
                            added = ?s.added, removed = ?s.removed, kept = ?s.kept,
                            "configuration reloaded (peer link settings take effect at restart)");
                        if let Some(l) = link.as_mut() {
                            l.acked.lock().expect("not poisoned").clear();
                        }
                        push_definitions(&agent, link.as_mut());
                    }
                    Err(e) => tracing::error!(site = %site, event = "config_reload_failed",
                        error = %e, "configuration not reloaded, keeping the running one"),
                }
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    drop(link);
    drop(wake);
    drop(agent); // detaches the programs and releases loop devices the agent attached
    let _ = std::fs::remove_file(&socket);
    tracing::info!(site = %site, event = "agent_stopped", reason, "agent stopped, probes detached");
    Ok(())
}

/// How often the active site sends the VFS definitions its DR sites have not acknowledged.
const PUSH_INTERVAL: Duration = Duration::from_secs(2);
/// How often it sends them all again (a DR site may have lost its state).
const FULL_PUSH_INTERVAL: Duration = Duration::from_secs(60);

/// Sends the local VFS definitions to their DR sites (idempotent at the receiver): those not
/// acknowledged yet, and all of them every `FULL_PUSH_INTERVAL`.
fn push_definitions(agent: &Agent, link: Option<&mut PeerLink>) {
    let Some(link) = link else { return };
    if link.last_full_push.elapsed() >= FULL_PUSH_INTERVAL {
        link.acked.lock().expect("not poisoned").clear();
        link.last_full_push = Instant::now();
    }
    let pushes = match agent.pushes() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(site = %link.ctx.site(), event = "push_failed", error = %e, "cannot read definitions to push");
            return;
        }
    };
    for (peer, message) in pushes {
        let Some(client) = link.clients.get(&peer).cloned() else {
            continue;
        };
        let Message::PushDefinition { vfs: def, epoch } = &message else {
            continue;
        };
        let key = (peer.clone(), def.name.clone());
        let entry = (*epoch, def.clone());
        if link.acked.lock().expect("not poisoned").get(&key) == Some(&entry) {
            continue;
        }
        let site = link.ctx.site().to_owned();
        let acked = link.acked.clone();
        tokio::spawn(async move {
            let vfs = key.1.clone();
            match client.call(message).await {
                Ok(Message::Ack) => {
                    tracing::info!(site = %site, vfs = %vfs, peer = %peer, event = "definition_pushed", "definition acknowledged by the DR site");
                    acked.lock().expect("not poisoned").insert(key, entry);
                }
                Ok(Message::Error { message }) | Err(peer::PeerError::Remote { message, .. }) => {
                    tracing::error!(site = %site, vfs = %vfs, peer = %peer,
                    event = "definition_refused", reason = %message, "DR site refused the definition")
                }
                Ok(other) => {
                    tracing::error!(site = %site, vfs = %vfs, peer = %peer, event = "definition_refused",
                    reason = other.kind(), "unexpected answer to a definition")
                }
                Err(e) => {
                    tracing::warn!(site = %site, vfs = %vfs, peer = %peer, event = "push_failed",
                    error = %e, "cannot send the definition; will retry")
                }
            }
        });
    }
}

/// Sends a request for a VFS active here to its DR site and answers the local caller.
fn forward(
    link: Option<&PeerLink>,
    peer: &str,
    message: Message,
    reply: oneshot::Sender<Response>,
) {
    let client = link.and_then(|l| l.clients.get(peer).cloned());
    let Some(client) = client else {
        let _ = reply.send(Response::Error {
            message: format!("the DR site {peer} is not a configured peer of this site (peers and site.tls in the configuration)"),
        });
        return;
    };
    let peer = peer.to_owned();
    tokio::spawn(async move {
        let response = match client.call(message).await {
            Ok(answer) => vfs::answer_to_response(answer),
            // The DR site answered with an error: that is the operator's answer.
            Err(peer::PeerError::Remote { message, .. }) => Response::Error {
                message: format!("site {peer}: {message}"),
            },
            Err(e) => Response::Error {
                message: format!("cannot reach the DR site {peer}: {e}"),
            },
        };
        let _ = reply.send(response);
    });
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
            message: format!(
                "bad request: longer than {} bytes or not terminated by a newline",
                api::MAX_LINE
            ),
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
