//! The DR site's side of redoing a cycle: an interrupted full copy of the same point resumes
//! ([`resumable`]); a cycle whose commit answer the sender never got is recognised by its point
//! ([`already_committed`]), or, when the sender took a new point since, the snapshots it never
//! learned of are dropped so the new point takes their place ([`drop_unacknowledged`]).
use super::{
    cycle::ReplicaVolume,
    resume::{Checkpoint, check_offsets},
    sink::{Sink, SinkError},
    wire::Begin,
};
use crate::state::{CycleState, Snapshot, SnapshotState};

/// The snapshot of `b`'s cycle if it was made from `b`'s very point: the sender retries a
/// commit whose answer it did not get.
pub(super) fn already_committed(
    sink: &Sink,
    b: &Begin,
    latest: Option<&Snapshot>,
) -> Result<Option<Snapshot>, SinkError> {
    let (Some(s), Some(point)) = (latest, b.point) else {
        return Ok(None);
    };
    if s.id != b.cycle || sink.store.snapshot_point(&b.vfs, s.id)? != Some(point) {
        return Ok(None);
    }
    tracing::info!(vfs = %b.vfs, event = "cycle_already_committed", cycle = b.cycle, snapshot = s.id,
        "the sender offers a point committed already (its answer was lost); answered again");
    Ok(Some(s.clone()))
}

/// Drops the snapshots from `b`'s cycle on when the sender never acknowledged them and `b` is
/// a delta on the latest snapshot below them: the sender numbers its cycles after the last
/// answer it got, so they were committed but their answer was lost, and `b` ships a later
/// point in their place. The base stays, so a consistent snapshot is always there. Returns
/// whether anything was dropped (the replicas then need restoring from the base).
pub(super) fn drop_unacknowledged(sink: &mut Sink, b: &Begin) -> Result<bool, SinkError> {
    let Some(base) = b.base else {
        return Ok(false);
    };
    let committed: Vec<u64> = sink
        .store
        .snapshots(&b.vfs)?
        .into_iter()
        .filter(|s| s.state == SnapshotState::Committed)
        .map(|s| s.id)
        .collect();
    let unacked: Vec<u64> = committed
        .iter()
        .copied()
        .filter(|&id| id >= b.cycle)
        .collect();
    let below = committed.iter().copied().filter(|&id| id < b.cycle).max();
    if unacked.is_empty() || below != Some(base) {
        return Ok(false);
    }
    sink.remove_now(&b.vfs, &unacked)?;
    tracing::warn!(vfs = %b.vfs, event = "unacknowledged_snapshots_dropped", cycle = b.cycle, base,
        ids = ?unacked, "snapshots whose commit the sender never learned of are replaced by its new cycle");
    Ok(true)
}

/// The offsets an interrupted full copy of the same cycle and point resumes from, if its
/// progress was recorded and its replicas are there; `None` otherwise (said in the log when
/// there was something that could not be used).
pub(super) fn resumable(
    sink: &mut Sink,
    b: &Begin,
    volumes: &[ReplicaVolume],
) -> Result<Option<Vec<u64>>, SinkError> {
    let Some(flight) = sink.store.in_flight(&b.vfs)? else {
        return Ok(None);
    };
    let (Some(point), None, None) = (b.point, b.base, flight.base) else {
        return Ok(None);
    };
    if flight.cycle != b.cycle || flight.state != CycleState::Receiving {
        return Ok(None);
    }
    let Ok(recorded) = serde_json::from_value::<Checkpoint>(flight.progress.clone()) else {
        return Ok(None); // nothing recorded yet
    };
    let sizes: Vec<u64> = volumes.iter().map(|v| v.size).collect();
    let why_not = if recorded.point != point {
        Some(format!(
            "it was of point {}, the sender now ships point {point}",
            recorded.point
        ))
    } else if let Err(e) = check_offsets(&recorded.offsets, &sizes, true) {
        Some(format!("its recorded offsets are not usable: {e}"))
    } else {
        let unfit = |v: &&ReplicaVolume| {
            !sink.images.exists(&v.image) || sink.images.size(&v.image).ok() != Some(v.size)
        };
        (volumes.iter().find(unfit))
            .map(|v| format!("replica {} is missing or resized", v.image.display()))
    };
    if let Some(why) = why_not {
        tracing::warn!(vfs = %b.vfs, event = "full_copy_restarted", cycle = b.cycle, reason = %why,
            "the interrupted full copy cannot resume; it starts over");
        return Ok(None);
    }
    Ok(Some(recorded.offsets))
}
