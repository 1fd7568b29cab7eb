//! What one replication cycle did, as the active site measured it: the report `vfsdr replicate`
//! prints, `vfsdr status` keeps per VFS, and the `cycle_done` journald event carries.
//!
//! The derived figures (compression ratio, throughputs) are computed once, when the report is
//! made, by the pure functions here, so the CLI, the status and the journal show the same values.
//!
//! The `cycle_done` event (journal fields, see `logging.rs`): `SITE`, `VFS`, `EVENT=cycle_done`,
//! `CYCLE`, `SNAPSHOT`, `FULL`, `POINT_UNIX_MS`, `RPO_LAG_MS` (the point's age when logged),
//! `CHANGED_BYTES`, `ZEROED_BYTES`, `WIRE_BYTES`, `COMPRESSION_RATIO` (0 when nothing was
//! sent), `CHANGED_BYTES_PER_S`, `WIRE_BYTES_PER_S`, `FREEZE_WINDOW_MS`, `DURATION_MS`,
//! `POINT_MS`, `PRECLONE_MS`, `FREEZE_MS`, `CLONE_MS`, `DIFF_MS`, `SHIP_COMMIT_MS`, `ACK_MS`, `NEXT_CYCLE_IN_MS` (absent when none is
//! scheduled), `TRACKER_GAPS`.
use serde::{Deserialize, Serialize};

/// Where a cycle's time went, in milliseconds, as far as the active site can tell.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CyclePhases {
    /// Pre-flush, freeze, reflink clone and thaw of all the volumes (contains the freeze window).
    pub point_ms: f64,
    /// Before the freeze window: cloning the images while the volumes are live (their reads
    /// and writes wait on the image's lock meanwhile; the file systems are not frozen).
    #[serde(default)]
    pub preclone_ms: f64,
    /// Inside the freeze window: the FIFREEZE calls of all the volumes (in parallel)...
    #[serde(default)]
    pub freeze_ms: f64,
    /// ... and catching the clones up with what changed since (FICLONERANGE of those ranges).
    #[serde(default)]
    pub clone_ms: f64,
    /// Comparing the physical extents of the new clones with the previous ones (FIEMAP).
    pub diff_ms: f64,
    /// Connecting to the DR site, shipping the changed blocks, and the DR site writing them,
    /// fsyncing and committing its snapshot, until it acknowledged the commit.
    pub ship_commit_ms: f64,
    /// Recording the acknowledgement and dropping the previous point's clones.
    pub ack_ms: f64,
}

/// The outcome of one cycle, for `vfsdr replicate`, `vfsdr status` and journald.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CycleReport {
    pub vfs: String,
    pub cycle: u64,
    pub snapshot: u64,
    /// A full copy (no previous point).
    pub full: bool,
    pub changed_bytes: u64,
    pub zeroed_bytes: u64,
    /// Bytes on the wire (frames, compressed).
    pub wire_bytes: u64,
    pub freeze_window_ms: f64,
    pub duration_ms: u64,
    /// When the point was taken (seconds since the Unix epoch): the consistent point the DR
    /// site now has. Kept for scripts; `point_unix_ms` is the same time in milliseconds.
    pub point_unix_s: u64,
    /// When the point was taken (milliseconds since the Unix epoch): the volumes were thawed at
    /// that moment, and nothing written after it is in the snapshot.
    #[serde(default)]
    pub point_unix_ms: u64,
    /// Where the cycle's time went.
    #[serde(default)]
    pub phases: CyclePhases,
    /// Changed bytes per wire byte (`changed_bytes / wire_bytes`); `None` when nothing was sent.
    #[serde(default)]
    pub compression_ratio: Option<f64>,
    /// Changed bytes replicated per second of the whole cycle.
    #[serde(default)]
    pub changed_bytes_per_s: f64,
    /// Wire bytes per second of the shipping phase (`phases.ship_commit_ms`).
    #[serde(default)]
    pub wire_bytes_per_s: f64,
    /// Per volume: did the eBPF tracker see every block FIEMAP found changed?
    #[serde(default)]
    pub tracker_check: Vec<crate::replication::gap::VolumeGap>,
    /// Bytes of an interrupted full copy that the DR site held already: this attempt resumed
    /// after them.
    #[serde(default)]
    pub resumed_bytes: u64,
}

impl CycleReport {
    /// Fills the derived figures from the measured ones.
    pub fn with_rates(mut self) -> CycleReport {
        self.compression_ratio = ratio(self.changed_bytes, self.wire_bytes);
        self.changed_bytes_per_s = per_second(self.changed_bytes, self.duration_ms as f64);
        self.wire_bytes_per_s = per_second(self.wire_bytes, self.phases.ship_commit_ms);
        self
    }
}

/// `changed / wire`; `None` without wire bytes.
pub fn ratio(changed: u64, wire: u64) -> Option<f64> {
    (wire > 0).then(|| changed as f64 / wire as f64)
}

/// `bytes` per second over `ms` milliseconds; 0 over no time.
pub fn per_second(bytes: u64, ms: f64) -> f64 {
    if ms > 0.0 {
        bytes as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The `cycle_done` event: one per committed cycle, with the figures of `vfsdr status`.
/// `next_cycle_in_ms` is when the scheduler starts the next one (`None`: not scheduled).
pub fn log_cycle_done(
    site: &str,
    r: &CycleReport,
    tracker_gaps: usize,
    next_cycle_in_ms: Option<u64>,
) {
    let lag_ms = unix_ms_now().saturating_sub(r.point_unix_ms);
    tracing::info!(site = %site, vfs = %r.vfs, event = "cycle_done", cycle = r.cycle, snapshot = r.snapshot,
        full = r.full, resumed_bytes = r.resumed_bytes, point_unix_ms = r.point_unix_ms, rpo_lag_ms = lag_ms,
        changed_bytes = r.changed_bytes, zeroed_bytes = r.zeroed_bytes, wire_bytes = r.wire_bytes,
        compression_ratio = r.compression_ratio.unwrap_or(0.0),
        changed_bytes_per_s = r.changed_bytes_per_s as u64, wire_bytes_per_s = r.wire_bytes_per_s as u64,
        freeze_window_ms = r.freeze_window_ms, duration_ms = r.duration_ms,
        point_ms = r.phases.point_ms, preclone_ms = r.phases.preclone_ms, freeze_ms = r.phases.freeze_ms, clone_ms = r.phases.clone_ms,
        diff_ms = r.phases.diff_ms,
        ship_commit_ms = r.phases.ship_commit_ms, ack_ms = r.phases.ack_ms,
        next_cycle_in_ms = next_cycle_in_ms, tracker_gaps,
        "replication cycle committed at the DR site");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_measured_figures() {
        let r = CycleReport {
            changed_bytes: 40 << 20,
            wire_bytes: 10 << 20,
            duration_ms: 2000,
            phases: CyclePhases {
                point_ms: 10.0,
                preclone_ms: 5.0,
                freeze_ms: 1.0,
                clone_ms: 2.0,
                diff_ms: 90.0,
                ship_commit_ms: 1000.0,
                ack_ms: 900.0,
            },
            ..Default::default()
        }
        .with_rates();
        assert_eq!(r.compression_ratio, Some(4.0));
        assert_eq!(r.changed_bytes_per_s, (20 << 20) as f64);
        assert_eq!(r.wire_bytes_per_s, (10 << 20) as f64);
    }

    #[test]
    fn nothing_sent_has_no_ratio_and_no_time_no_rate() {
        assert_eq!(ratio(5, 0), None);
        assert_eq!(ratio(0, 100), Some(0.0));
        assert_eq!(per_second(100, 0.0), 0.0);
        let r = CycleReport::default().with_rates();
        assert_eq!(
            (
                r.compression_ratio,
                r.changed_bytes_per_s,
                r.wire_bytes_per_s
            ),
            (None, 0.0, 0.0)
        );
    }

    #[test]
    fn reports_of_older_agents_still_read() {
        let old = r#"{"vfs":"fs1","cycle":3,"snapshot":3,"full":false,"changed_bytes":1,
            "zeroed_bytes":0,"wire_bytes":2,"freeze_window_ms":1.5,"duration_ms":9,"point_unix_s":7}"#;
        let r: CycleReport = serde_json::from_str(old).unwrap();
        assert_eq!(
            (r.cycle, r.point_unix_ms, r.compression_ratio),
            (3, 0, None)
        );
    }
}
