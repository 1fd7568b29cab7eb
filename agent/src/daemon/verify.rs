//! `vfsdr verify` in the agent. At the active site the job runs on a thread of its own (with a
//! small runtime for its peer calls, on a connection of its own with a long call timeout): it
//! hashes the clones of the last acknowledged cycle while the DR site hashes its snapshot of the
//! same cycle. At the DR site each `VerifyDigests` request is hashed on a thread of its own and
//! answered from there. Neither blocks the main loop or the heartbeats. While a verify runs, no
//! cycle of the VFS starts (it would replace the clones and the DR site's latest snapshot).
use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};

use super::Cycles;
use crate::{
    api::Response,
    config::{Config, VfsDef},
    peer::{Message, PeerClient, PeerContext, PeerError, PeerRequest, Timeouts},
    replication::verify::{
        self, DigestRequest, Digests, ReadOnlyFile, Remote, VerifyReport, VerifyResult,
    },
    state::Store,
};

/// How long the DR site may hash one volume.
const CALL_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The DR site, asked over a peer connection of the verify's own.
struct PeerRemote {
    rt: tokio::runtime::Runtime,
    client: PeerClient,
    vfs: String,
    cycle: u64,
}

impl Remote for PeerRemote {
    fn digests(
        &mut self,
        volume: &str,
        offset: u64,
        len: u64,
        chunk: u64,
    ) -> Result<Digests, String> {
        let request = DigestRequest {
            vfs: self.vfs.clone(),
            cycle: self.cycle,
            volume: volume.to_owned(),
            offset,
            len,
            chunk,
        };
        let peer = self.client.peer().name.clone();
        match self
            .rt
            .block_on(self.client.call(Message::VerifyDigests { request }))
        {
            Ok(Message::Digests { digests }) => Ok(digests),
            Ok(other) => Err(format!("site {peer} answered {}", other.kind())),
            Err(PeerError::Remote { message, .. }) => Err(message),
            Err(e) => Err(format!("cannot ask the DR site {peer}: {e}")),
        }
    }
}

/// Why a verify could not run at all (a volume that cannot be compared is a verdict instead).
#[derive(Debug, thiserror::Error)]
enum VerifyError {
    #[error("VFS {vfs} has no acknowledged cycle yet: there is nothing to verify")]
    NoCycle { vfs: String },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("cannot start a runtime for the verify: {0}")]
    Runtime(std::io::Error),
}

/// Active site: verifies the last acknowledged cycle of `def` against its DR site.
fn run(
    def: &VfsDef,
    state_dir: &std::path::Path,
    ctx: Arc<PeerContext>,
) -> Result<VerifyReport, VerifyError> {
    let started = std::time::Instant::now();
    let vfs = def.name.clone();
    let store = Store::open(state_dir)?;
    let state = store.source_state(&vfs)?;
    let Some((cycle, clones)) = state.and_then(|s| {
        let clones: Vec<PathBuf> = serde_json::from_value(s.clones).ok()?;
        Some((s.last_acked?, clones))
    }) else {
        return Err(VerifyError::NoCycle { vfs });
    };
    let peer_name = def.replication.peer.clone();
    let peer = ctx
        .peer(&peer_name)
        .cloned()
        .ok_or_else(|| PeerError::UnknownPeer {
            peer: peer_name.clone(),
        })?;
    let client = PeerClient::new(ctx, peer)?.with_timeouts(Timeouts {
        connect: Duration::from_secs(5),
        call: CALL_TIMEOUT,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(VerifyError::Runtime)?;
    let mut remote = PeerRemote {
        rt,
        client,
        vfs: vfs.clone(),
        cycle,
    };
    let mut report = VerifyReport {
        vfs: vfs.clone(),
        peer: peer_name,
        cycle,
        snapshot: None,
        volumes: Vec::new(),
        duration_ms: 0,
    };
    for (i, v) in def.volumes.iter().enumerate() {
        let clone = clones
            .get(i)
            .filter(|c| c.ends_with(format!("{}.img", v.name)));
        let opened = match clone {
            None => Err(format!(
                "the active site keeps no clone of volume {} for cycle {cycle}",
                v.name
            )),
            Some(c) => ReadOnlyFile::open(c).map_err(|e| {
                format!("the clone of cycle {cycle} is missing at the active site (a newer cycle may have replaced it): {e}")
            }),
        };
        let result = match opened {
            Ok(mut file) => verify::verify_volume(&v.name, &mut file, &mut remote),
            Err(reason) => (
                verify::VolumeVerify {
                    volume: v.name.clone(),
                    size: v.size_bytes,
                    chunk: 0,
                    verdict: VerifyResult::Unverified { reason },
                    hashed_bytes_active: 0,
                    hashed_bytes_dr: 0,
                    duration_ms: 0,
                },
                None,
            ),
        };
        report.snapshot = report.snapshot.or(result.1);
        report.volumes.push(result.0);
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Hands the VFS back to the main loop when the verify thread ends, however it ends.
struct Release(String, mpsc::UnboundedSender<String>);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self.1.send(std::mem::take(&mut self.0));
    }
}

impl Cycles {
    /// Starts `vfsdr verify` of `vfs` (active here) on a thread; `done` gets the VFS back when
    /// it is over, so cycles may run again.
    pub(super) fn verify(
        &mut self,
        config: &Config,
        ctx: Option<Arc<PeerContext>>,
        vfs: String,
        reply: oneshot::Sender<Response>,
        done: &mpsc::UnboundedSender<String>,
    ) {
        let error = |message: String| Response::Error { message };
        let Some(def) = config.vfs.iter().find(|d| d.name == vfs).cloned() else {
            let _ = reply.send(error(format!(
                "VFS {vfs} is not active at site {}; verify runs at its active site",
                config.site.name
            )));
            return;
        };
        let Some(ctx) = ctx else {
            let _ = reply.send(error(format!(
                "VFS {vfs}: this site has no peer link (site.tls, peers)"
            )));
            return;
        };
        if !self.running.insert(vfs.clone()) {
            let _ = reply.send(error(format!(
                "a cycle or a verify of {vfs} is running; try again when it is done"
            )));
            return;
        }
        let state_dir = config.state_dir.clone();
        let site = config.site.name.clone();
        let release = Release(vfs.clone(), done.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("verify-{vfs}"))
            .spawn({
                let vfs = vfs.clone();
                move || {
                    let _release = release;
                    let result = run(&def, &state_dir, ctx);
                    match &result {
                        Ok(r) => {
                            let mismatched: Vec<&str> = r
                                .volumes
                                .iter()
                                .filter(|v| v.verdict != VerifyResult::Match)
                                .map(|v| v.volume.as_str())
                                .collect();
                            if mismatched.is_empty() {
                                tracing::info!(site = %site, vfs = %vfs, event = "verified", cycle = r.cycle,
                                    duration_ms = r.duration_ms, "the DR snapshot matches the clones");
                            } else {
                                tracing::error!(site = %site, vfs = %vfs, event = "verify_failed", cycle = r.cycle,
                                    volumes = ?mismatched, "the DR snapshot does not match the clones (or was not compared)");
                            }
                        }
                        Err(e) => tracing::warn!(site = %site, vfs = %vfs, event = "verify_failed", error = %e,
                            "verify could not run"),
                    }
                    let _ = reply.send(match result {
                        Ok(r) => Response::Verified(r),
                        Err(e) => Response::Error {
                            message: e.to_string(),
                        },
                    });
                }
            });
        if let Err(e) = spawned {
            self.running.remove(&vfs);
            tracing::error!(vfs = %vfs, event = "verify_failed", error = %e, "cannot start the verify thread");
        }
    }
}

/// DR site: answers a `VerifyDigests` request from a thread of its own.
pub(super) fn serve(request: PeerRequest, config: &Config) {
    let Message::VerifyDigests { request: req } = request.message.clone() else {
        return;
    };
    let state_dir = config.state_dir.clone();
    let site = config.site.name.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("digests-{}", req.vfs))
        .spawn(move || {
            let answer = Store::open(&state_dir)
                .map_err(|e| e.to_string())
                .and_then(|store| {
                    verify::serve_digests(&store, &site, &request.from, &req, &mut |p| {
                        Ok(Box::new(ReadOnlyFile::open(p)?))
                    })
                    .map_err(|e| e.to_string())
                });
            match &answer {
                Ok(d) => tracing::info!(site = %site, vfs = %req.vfs, volume = %req.volume, peer = %request.from,
                    event = "digests_served", cycle = req.cycle, hashed_bytes = d.hashed_bytes,
                    duration_ms = d.elapsed_ms, "snapshot hashed for verify"),
                Err(e) => tracing::warn!(site = %site, vfs = %req.vfs, peer = %request.from,
                    event = "digests_refused", error = %e, "verify request refused"),
            }
            request.respond(match answer {
                Ok(digests) => Message::Digests { digests },
                Err(message) => Message::Error { message },
            });
        });
    if let Err(e) = spawned {
        tracing::error!(event = "digests_refused", error = %e, "cannot start a hashing thread");
    }
}
