//! Replication in the agent. The DR site receives each cycle on a data connection and writes it
//! through a [`Sink`] on a thread of its own; the active site runs each cycle (group clone,
//! delta, shipping) on a thread of its own with its own small runtime, so neither the agent's
//! API nor its heartbeats wait for a cycle.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use crate::{
    config::{Config, VfsDef},
    peer::{DataConn, DataPurpose, PeerClient, PeerContext},
    replication::{
        codec::Codec,
        cycle::{Pieces, Point, SourceVolume, clone_path, delta, drop_point, take_point},
        extents,
        fsops::{Images, SystemImages},
        progress::{Counted, Progress},
        resume::{PendingPoint, data_below, new_point_id, skip_below},
        session::{self, SessionError},
        sink::{CHECKPOINT_BYTES, Sink},
        wire::{Begin, VolumeInfo},
    },
    state::Store,
};

use super::{
    busy::{Activity, Claim},
    report::{CyclePhases, CycleReport, unix_ms_now},
};

/// Where a VFS volume's image lives in the active site's pool.
pub fn volume_image(pool: &Path, vfs: &str, volume: &str) -> PathBuf {
    pool.join("volumes").join(vfs).join(format!("{volume}.img"))
}

/// DR site: takes a data connection's cycle into the replicas and the catalog.
/// When the cycle is committed, its VFS is sent on `committed` (so the main loop refreshes the
/// reserved mount points).
pub fn accept(
    conn: DataConn,
    config: &Config,
    committed: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let site = config.site.name.clone();
    let Some(pool) = config.resources.pool.as_ref().map(|p| p.path.clone()) else {
        tracing::error!(site = %site, vfs = %conn.vfs, peer = %conn.from, event = "cycle_refused",
            "a cycle arrived but this site has no pool (resources.pool)");
        return;
    };
    let state_dir = config.state_dir.clone();
    let reserve = config
        .resources
        .pool
        .as_ref()
        .map_or(0, |p| p.reserve_bytes);
    // One cycle per VFS at a time, and none while snapshots of it are deleted (`busy`).
    let done = match Claim::take(&conn.vfs, Activity::Receiving) {
        Ok(c) => c,
        Err(holder) => {
            tracing::error!(site = %site, vfs = %conn.vfs, peer = %conn.from, event = "cycle_refused",
                reason = %holder, "the VFS is busy ({holder}); connection dropped");
            return;
        }
    };
    tokio::spawn(async move {
        let store = match Store::open(&state_dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(site = %site, vfs = %conn.vfs, event = "cycle_refused", error = %e, "cannot open the state store");
                return;
            }
        };
        let sink = Sink {
            store,
            images: Box::new(SystemImages::new()),
            pool,
            reserve,
            checkpoint_bytes: CHECKPOINT_BYTES,
        };
        let started = Instant::now();
        match session::receive(conn.stream, &conn.from, sink).await {
            Ok(session::Received {
                snapshot: s,
                mut sink,
            }) => {
                let _ = committed.send(s.vfs.clone());
                tracing::info!(site = %site, vfs = %s.vfs, peer = %conn.from, event = "cycle_committed",
                cycle = s.cycle, snapshot = s.id, changed_bytes = s.changed_bytes, shipped_bytes = s.shipped_bytes,
                duration_ms = started.elapsed().as_millis() as u64, "snapshot committed");
                // The sender has its answer: the next cycle of this VFS may come in while the
                // snapshots the grid no longer keeps are removed.
                drop(done);
                let vfs = s.vfs.clone();
                let pruned = tokio::task::spawn_blocking(move || sink.prune(&vfs)).await;
                if let Ok(Err(e)) = pruned {
                    // Retried after the next commit.
                    tracing::warn!(site = %site, vfs = %s.vfs, event = "prune_failed", error = %e,
                        "pruning old snapshots failed");
                }
            }
            Err(e) => {
                tracing::error!(site = %site, vfs = %conn.vfs, peer = %conn.from, event = "cycle_refused",
                error = %e, "cycle refused; the replicas stay at the last snapshot")
            }
        }
    });
}

/// What the active site needs to run a cycle.
pub struct CycleJob {
    pub def: VfsDef,
    pub pool: PathBuf,
    /// This site's `resources.mount_root`, under which relative mounts are.
    pub mount_root: PathBuf,
    pub state_dir: PathBuf,
    pub ctx: Arc<PeerContext>,
    /// Where the cycle reports how far it got.
    pub progress: Arc<Progress>,
}

/// A cycle done: its report, and per volume (in the definition's order) the blocks FIEMAP found
/// changed, for the tracker-gap check.
pub struct CycleOutcome {
    pub report: CycleReport,
    pub changed: Vec<(String, crate::tracking::BlockSet)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CycleFailure {
    #[error("VFS {vfs}: {what}")]
    Setup { vfs: String, what: String },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Cycle(#[from] crate::replication::cycle::CycleError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    #[error(transparent)]
    Fs(#[from] crate::replication::fsops::FsError),
}

/// Runs one cycle of `job.def` to its DR site, on the calling thread (with a runtime of its own).
pub fn run_cycle(job: CycleJob) -> Result<CycleOutcome, CycleFailure> {
    let vfs = job.def.name.clone();
    let setup = |what: String| CycleFailure::Setup {
        vfs: vfs.clone(),
        what,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| setup(format!("cannot start a runtime: {e}")))?;
    let mut store = Store::open(&job.state_dir)?;
    let epoch = store.definition(&vfs)?.map_or(1, |s| s.epoch);
    let mut images = SystemImages::new();
    let volumes: Vec<SourceVolume> = job
        .def
        .volumes
        .iter()
        .map(|v| SourceVolume {
            name: v.name.clone(),
            image: volume_image(&job.pool, &vfs, &v.name),
            mount: v.mount_at(&job.mount_root),
        })
        .collect();
    for v in &volumes {
        if !images.exists(&v.image) {
            return Err(setup(format!(
                "volume {} has no image at {}",
                v.name,
                v.image.display()
            )));
        }
    }
    // The previous point, if its clones are all still there.
    let state = store.source_state(&vfs)?;
    let prev = state.as_ref().and_then(|s| {
        let clones: Vec<PathBuf> = serde_json::from_value(s.clones.clone()).ok()?;
        let cycle = s.last_acked?;
        (s.initial_done && clones.len() == volumes.len() && clones.iter().all(|c| images.exists(c)))
            .then_some(Point {
                cycle,
                clones,
                freeze_window: Default::default(),
                window_parts: Default::default(),
            })
    });
    let cycle = state
        .as_ref()
        .and_then(|s| s.last_acked)
        .map_or(1, |c| c + 1);
    let clones_dir = job.pool.join("clones").join(&vfs);
    let started = Instant::now();
    // A full copy under way keeps its point (and its identity) across failures and restarts,
    // so the DR site's partly written replicas stay valid and the copy resumes.
    let pending = match prev {
        Some(_) => None,
        None => state
            .as_ref()
            .and_then(|s| serde_json::from_value::<PendingPoint>(s.pending.clone()).ok())
            .filter(|p| {
                let expected: Vec<PathBuf> = volumes
                    .iter()
                    .map(|v| clone_path(&clones_dir, cycle, &v.name))
                    .collect();
                let usable =
                    p.cycle == cycle && p.clones == expected && expected.iter().all(|c| images.exists(c));
                if !usable {
                    tracing::warn!(vfs = %vfs, event = "pending_point_dropped", cycle = p.cycle,
                        "the point of the interrupted full copy is gone or no longer fits; a new one is taken");
                }
                usable
            }),
    };
    let (point, point_id, point_unix_ms) = match pending {
        Some(p) => {
            tracing::info!(vfs = %vfs, event = "pending_point_reused", cycle, point = p.point,
                "the interrupted full copy goes on from the point it started with");
            let point = Point {
                cycle,
                clones: p.clones,
                freeze_window: Default::default(),
                window_parts: Default::default(),
            };
            (point, p.point, p.taken_unix * 1000)
        }
        None => {
            // Clones an interrupted attempt at this cycle left behind.
            for v in &volumes {
                images.remove(&clone_path(&clones_dir, cycle, &v.name))?;
            }
            // An agent killed inside the freeze window left the volumes frozen (and the
            // pre-flush would wait forever): thaw them; thawing one not frozen does nothing.
            let mounts: Vec<PathBuf> = volumes.iter().map(|v| v.mount.clone()).collect();
            if let Err(e) = images.thaw_all(&mounts) {
                tracing::warn!(vfs = %vfs, event = "thaw_failed", error = %e, "cannot thaw the volumes before the cycle");
            }
            let point = take_point(&mut images, &volumes, cycle, &clones_dir)?;
            let id = new_point_id();
            let taken_ms = unix_ms_now();
            let taken = taken_ms / 1000;
            if prev.is_none() {
                let pending = PendingPoint {
                    cycle,
                    point: id,
                    clones: point.clones.clone(),
                    taken_unix: taken,
                };
                let value = serde_json::to_value(&pending).unwrap_or_default();
                if let Err(e) = store.source_pending(&vfs, &value) {
                    let _ = drop_point(&mut images, &point);
                    return Err(e.into());
                }
            }
            (point, id, taken_ms)
        }
    };
    let mut phases = CyclePhases {
        point_ms: ms(started.elapsed()),
        preclone_ms: ms(point.window_parts.preclone),
        freeze_ms: ms(point.window_parts.freeze),
        clone_ms: ms(point.window_parts.clone),
        ..Default::default()
    };
    let result = (|| {
        let diffing = Instant::now();
        let d = delta(&mut images, prev.as_ref(), &point)?;
        let (changed, zeroed) = d.iter().fold((0, 0), |acc, c| {
            let (a, b) = extents::total(c);
            (acc.0 + a, acc.1 + b)
        });
        let mut sizes = Vec::new();
        for c in &point.clones {
            sizes.push(images.size(c)?);
        }
        job.progress.plan(cycle, prev.is_none(), changed);
        let begin = Begin {
            vfs: vfs.clone(),
            cycle,
            epoch,
            point: Some(point_id),
            base: prev.as_ref().map(|p| p.cycle),
            volumes: volumes
                .iter()
                .zip(sizes)
                .zip(&d)
                .map(|((v, size), changes)| VolumeInfo {
                    name: v.name.clone(),
                    size,
                    write_bytes: Some(extents::total(changes).0),
                })
                .collect(),
        };
        phases.diff_ms = ms(diffing.elapsed());
        let shipping = Instant::now();
        let peer = job.def.replication.peer.clone();
        let codec = Codec::from(job.def.replication.compression);
        let limit = job.def.replication.bandwidth_limit_bytes_per_s;
        let sent = rt.block_on(async {
            let client = PeerClient::new(
                job.ctx.clone(),
                job.ctx
                    .peer(&peer)
                    .cloned()
                    .ok_or_else(|| crate::peer::PeerError::UnknownPeer { peer: peer.clone() })?,
            )?;
            let stream = client
                .open_data(DataPurpose::Replication { vfs: vfs.clone() })
                .await?;
            let pieces = resumed_pieces(&mut images, &point, &d, &job.progress);
            Ok::<_, CycleFailure>(session::send(stream, &begin, pieces, codec, limit).await?)
        })?;
        phases.ship_commit_ms = ms(shipping.elapsed());
        let blocks = volumes
            .iter()
            .zip(&d)
            .map(|(v, c)| (v.name.clone(), crate::replication::gap::changed_blocks(c)))
            .collect();
        let resumed = data_below(&d, &sent.resumed);
        Ok::<_, CycleFailure>((sent, changed, zeroed, blocks, resumed))
    })();
    match result {
        Ok((sent, changed, zeroed, blocks, resumed)) => {
            let acking = Instant::now();
            store.source_acked(
                &vfs,
                cycle,
                &serde_json::to_value(&point.clones).unwrap_or_default(),
                Some(point_unix_ms),
            )?;
            if let Some(p) = &prev {
                let _ = drop_point(&mut images, p);
            }
            phases.ack_ms = ms(acking.elapsed());
            let report = CycleReport {
                vfs,
                cycle,
                snapshot: sent.snapshot,
                full: prev.is_none(),
                changed_bytes: changed,
                zeroed_bytes: zeroed,
                wire_bytes: sent.stats.wire_bytes,
                freeze_window_ms: point.freeze_window.as_secs_f64() * 1000.0,
                duration_ms: started.elapsed().as_millis() as u64,
                point_unix_s: point_unix_ms / 1000,
                point_unix_ms,
                phases,
                resumed_bytes: resumed,
                ..Default::default()
            }
            .with_rates();
            Ok(CycleOutcome {
                report,
                changed: blocks,
            })
        }
        Err(e) if prev.is_none() => {
            tracing::warn!(vfs = %vfs, event = "full_copy_interrupted", cycle, error = %e,
                "the full copy failed; its point is kept and the next attempt resumes it");
            Err(e)
        }
        Err(e) => {
            let _ = drop_point(&mut images, &point);
            if let CycleFailure::Session(SessionError::BaseMissing { missing, .. }) = &e {
                // The DR site lost the base (snapshots removed by hand, a catalog started
                // anew): only a full copy brings it back; its other snapshots stay.
                store.source_resync(&vfs)?;
                tracing::warn!(vfs = %vfs, event = "resync_needed", cycle, base = missing.base,
                    dr_latest = ?missing.latest,
                    "the DR site does not hold the last acknowledged snapshot; a full copy follows");
            }
            Err(e)
        }
    }
}

/// The pieces of `d` above the offsets the DR site answers, counted into `progress`.
fn resumed_pieces<'a>(
    images: &'a mut dyn Images,
    point: &'a Point,
    d: &'a [Vec<extents::Change>],
    progress: &'a Progress,
) -> impl FnOnce(&[u64]) -> Counted<'a, Pieces<'a>> {
    move |offsets| {
        progress.start(data_below(d, offsets));
        Counted::new(Pieces::new(images, point, skip_below(d, offsets)), progress)
    }
}

/// A duration in milliseconds, with microsecond resolution.
fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
