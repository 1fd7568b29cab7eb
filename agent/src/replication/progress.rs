//! How far a running cycle got, shared between its thread and the agent's status: bytes done
//! and to do, the rate, the time left. A full copy that resumed counts what it skipped as done
//! (and says how much that was), and its rate only from what it ships itself.
use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::cycle::{CycleError, Piece};

/// A journald `sync_progress` event at least this often...
pub const EVENT_INTERVAL: Duration = Duration::from_secs(10);
/// ... and at every this many percent.
pub const EVENT_PERCENT: u64 = 10;

/// The live counters of one running cycle.
#[derive(Debug)]
pub struct Progress {
    pub vfs: String,
    cycle: AtomicU64,
    full: AtomicU64,
    total: AtomicU64,
    resumed: AtomicU64,
    done: AtomicU64,
    /// When shipping started (after the handshake); `None` before.
    started: Mutex<Option<Instant>>,
}

/// What `vfsdr status` shows of a running cycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressReport {
    pub vfs: String,
    pub cycle: u64,
    /// A full copy (the initial sync, or a resync).
    pub full: bool,
    /// Data bytes of the cycle, and of those, shipped or (resumed) held already.
    pub total_bytes: u64,
    pub done_bytes: u64,
    /// Bytes an interrupted full copy had synced before this attempt (counted in `done_bytes`).
    pub resumed_bytes: u64,
    pub percent: f64,
    /// Shipped by this attempt per second (decoded bytes), since shipping started.
    pub rate_bytes_per_s: f64,
    /// Time left at that rate; `None` before it is known.
    pub eta_s: Option<u64>,
    pub elapsed_s: u64,
}

impl Progress {
    pub fn new(vfs: &str) -> Progress {
        Progress {
            vfs: vfs.to_owned(),
            cycle: AtomicU64::new(0),
            full: AtomicU64::new(0),
            total: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            done: AtomicU64::new(0),
            started: Mutex::new(None),
        }
    }

    /// The cycle's size is known (its delta computed).
    pub fn plan(&self, cycle: u64, full: bool, total: u64) {
        self.cycle.store(cycle, Ordering::Relaxed);
        self.full.store(u64::from(full), Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    /// Shipping starts, `resumed` bytes being held by the DR site already.
    pub fn start(&self, resumed: u64) {
        self.resumed.store(resumed, Ordering::Relaxed);
        self.done.store(resumed, Ordering::Relaxed);
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    pub fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn report(&self) -> ProgressReport {
        let total = self.total.load(Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed).min(total);
        let resumed = self.resumed.load(Ordering::Relaxed);
        let elapsed = self
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(Duration::ZERO, |s| s.elapsed());
        let shipped = done.saturating_sub(resumed);
        let rate = match elapsed.as_secs_f64() {
            s if s > 0.0 => shipped as f64 / s,
            _ => 0.0,
        };
        ProgressReport {
            vfs: self.vfs.clone(),
            cycle: self.cycle.load(Ordering::Relaxed),
            full: self.full.load(Ordering::Relaxed) != 0,
            total_bytes: total,
            done_bytes: done,
            resumed_bytes: resumed,
            percent: percent(done, total),
            rate_bytes_per_s: rate,
            eta_s: (rate > 0.0).then(|| ((total - done) as f64 / rate).ceil() as u64),
            elapsed_s: elapsed.as_secs(),
        }
    }
}

fn percent(done: u64, total: u64) -> f64 {
    match total {
        0 => 100.0,
        t => done as f64 * 100.0 / t as f64,
    }
}

/// Counts the data of the pieces it passes on into a [`Progress`], and logs `sync_progress`
/// every [`EVENT_INTERVAL`] or [`EVENT_PERCENT`] percent.
pub struct Counted<'a, I> {
    inner: I,
    progress: &'a Progress,
    last_event: Instant,
    last_step: u64,
}

impl<'a, I> Counted<'a, I> {
    pub fn new(inner: I, progress: &'a Progress) -> Self {
        let r = progress.report();
        Counted {
            inner,
            progress,
            last_event: Instant::now(),
            last_step: r.percent as u64 / EVENT_PERCENT,
        }
    }

    fn maybe_log(&mut self) {
        let r = self.progress.report();
        let step = r.percent as u64 / EVENT_PERCENT;
        if step > self.last_step || self.last_event.elapsed() >= EVENT_INTERVAL {
            self.last_step = step;
            self.last_event = Instant::now();
            tracing::info!(vfs = %r.vfs, event = "sync_progress", cycle = r.cycle, full = r.full,
                done_bytes = r.done_bytes, total_bytes = r.total_bytes, resumed_bytes = r.resumed_bytes,
                percent = format!("{:.1}", r.percent), rate_bytes_per_s = r.rate_bytes_per_s as u64,
                eta_s = r.eta_s, "replication progress");
        }
    }
}

impl<I: Iterator<Item = Result<Piece, CycleError>>> Iterator for Counted<'_, I> {
    type Item = Result<Piece, CycleError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.inner.next()?;
        if let Ok(Piece::Data { data, .. }) = &item {
            self.progress.add(data.len() as u64);
            self.maybe_log();
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_copy_counts_what_it_skipped_as_done_and_the_pieces_it_ships() {
        let p = Progress::new("fs1");
        p.plan(1, true, 10 << 20);
        p.start(4 << 20);
        let pieces = (0..3).map(|i| {
            Ok(Piece::Data {
                volume: 0,
                offset: (4 << 20) + i * (1 << 20),
                data: vec![0; 1 << 20],
            })
        });
        assert_eq!(Counted::new(pieces, &p).count(), 3);
        let r = p.report();
        assert_eq!(
            (
                r.cycle,
                r.full,
                r.total_bytes,
                r.done_bytes,
                r.resumed_bytes
            ),
            (1, true, 10 << 20, 7 << 20, 4 << 20)
        );
        assert!((r.percent - 70.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn an_empty_cycle_is_complete() {
        let p = Progress::new("fs1");
        p.plan(3, false, 0);
        assert_eq!(p.report().percent, 100.0);
        assert_eq!(p.report().eta_s, None);
    }
}
