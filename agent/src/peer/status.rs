//! Heartbeats: is each peer reachable, and since when.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::{Message, PeerClient, PeerContext, PeerError, Timeouts, unix_ms};

/// How often each peer is probed.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// How long a heartbeat (and connecting for it) may take before the peer counts as unreachable.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// What this site knows of one peer, as `vfsdr status` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHealth {
    /// The last heartbeat was answered.
    pub reachable: bool,
    /// When a heartbeat was last answered (Unix ms); `None`: never since the agent started.
    pub last_ok_unix_ms: Option<u64>,
    /// Round trip of the last answered heartbeat, including connecting if it had to.
    pub rtt_ms: Option<u64>,
    /// Why the last failed heartbeat failed (kept after the peer is back, for the record).
    pub last_error: Option<String>,
}

/// The health of every peer, shared between the heartbeat tasks and the agent.
#[derive(Clone, Debug, Default)]
pub struct PeerStatus(Arc<Mutex<BTreeMap<String, PeerHealth>>>);

impl PeerStatus {
    /// Every named peer unreachable until its first heartbeat is answered.
    pub fn new<'a>(peers: impl IntoIterator<Item = &'a str>) -> PeerStatus {
        let map = peers
            .into_iter()
            .map(|p| (p.to_owned(), PeerHealth::default()))
            .collect();
        PeerStatus(Arc::new(Mutex::new(map)))
    }

    /// The health of one peer.
    pub fn get(&self, peer: &str) -> Option<PeerHealth> {
        self.lock().get(peer).cloned()
    }

    /// The health of every peer, by name.
    pub fn snapshot(&self) -> BTreeMap<String, PeerHealth> {
        self.lock().clone()
    }

    fn update(&self, peer: &str, change: impl FnOnce(&mut PeerHealth)) {
        change(self.lock().entry(peer.to_owned()).or_default());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PeerHealth>> {
        // The map stays consistent whatever panicked while holding it: every update is one field set.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One heartbeat task per configured peer, each on its own connection (so a long call on the
/// agent's [`PeerClient`] never delays a heartbeat). Dropping the set stops them.
pub fn spawn_heartbeats(
    ctx: &Arc<PeerContext>,
    status: &PeerStatus,
) -> Result<JoinSet<()>, PeerError> {
    let timeouts = Timeouts {
        connect: HEARTBEAT_TIMEOUT,
        call: HEARTBEAT_TIMEOUT,
    };
    let mut tasks = JoinSet::new();
    for peer in ctx.peers() {
        let client = PeerClient::new(ctx.clone(), peer.clone())?.with_timeouts(timeouts);
        tasks.spawn(heartbeat(client, status.clone(), HEARTBEAT_INTERVAL));
    }
    Ok(tasks)
}

/// Probes the client's peer every `interval` forever, updating `status` and logging
/// `peer_up` / `peer_down` when reachability changes (and `peer_down` if the first probe fails).
pub async fn heartbeat(client: PeerClient, status: PeerStatus, interval: Duration) {
    let (site, peer) = (client.site().to_owned(), client.peer().name.clone());
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_reachable: Option<bool> = None;
    loop {
        ticks.tick().await;
        let started = Instant::now();
        let result = client
            .call(Message::Heartbeat {
                site: site.clone(),
                unix_ms: unix_ms(),
            })
            .await;
        let rtt_ms = started.elapsed().as_millis() as u64;
        let result = match result {
            Ok(Message::HeartbeatAck { .. }) => Ok(()),
            Ok(other) => Err(format!("answered a heartbeat with {}", other.kind())),
            Err(error) => Err(error.to_string()),
        };
        let reachable = result.is_ok();
        match result {
            Ok(()) => status.update(&peer, |h| {
                h.reachable = true;
                h.last_ok_unix_ms = Some(unix_ms());
                h.rtt_ms = Some(rtt_ms);
            }),
            Err(error) => {
                if was_reachable != Some(false) {
                    tracing::warn!(site = %site, event = "peer_down", peer = %peer, error = %error,
                        "peer is unreachable");
                }
                status.update(&peer, |h| {
                    h.reachable = false;
                    h.last_error = Some(error);
                });
            }
        }
        if reachable && was_reachable != Some(true) {
            tracing::info!(site = %site, event = "peer_up", peer = %peer, rtt_ms, "peer is reachable");
        }
        was_reachable = Some(reachable);
    }
}
