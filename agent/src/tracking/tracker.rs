//! The user side of write tracking: per volume, the set of changed blocks since a mark and
//! the write rates; per process, who is writing.
use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};
use vfsdr_common::{BLOCK_SIZE, SECTOR_SIZE, VolumeCounters, WriterStats, counter};

use super::{
    blockset::{BlockRange, BlockSet},
    probes::{Drained, ProbeError, Probes},
};
use crate::volumes::DevId;

/// Rates are averaged over this window.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// One watched volume.
struct Watched {
    name: String,
    dev: DevId,
    changed: BlockSet,
    mark_time: SystemTime,
    totals: VolumeCounters,
    samples: Samples,
    /// Windows of the tracker-gap check ([`Tracker::stage_window`]).
    window: Windows,
}

/// Every block changed on a volume since a start, across marks: the gap check of a cycle
/// compares it with what FIEMAP found changed since the previous point.
#[derive(Clone, Debug)]
pub struct Window {
    /// The cycle whose success made this the window (set by [`Tracker::commit_window`]).
    pub cycle: u64,
    pub blocks: BlockSet,
    /// The kernel's dropped-record count when the window started.
    dropped_at_start: u64,
}

/// `base`: started at the mark of the last acknowledged cycle; `staged`: at the mark of the
/// running one.
#[derive(Default)]
struct Windows {
    base: Option<Window>,
    staged: Option<Window>,
}

struct Writer {
    comm: String,
    calls: u64,
    bytes: u64,
    samples: Samples,
}

/// Per-volume tracking state, fed by `Probes::drain`.
pub struct Tracker {
    volumes: Vec<Watched>,
    next_id: u32,
    ids: HashMap<u32, usize>,
    writers: HashMap<u32, Writer>,
    counters: [u64; counter::LEN as usize],
    /// Set once the kernel dropped extents: the changed sets may then be incomplete.
    dropped_since_start: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub name: String,
    pub device: String,
    pub write_bytes_per_s: f64,
    pub discard_bytes_per_s: f64,
    pub written_bytes: u64,
    pub discarded_bytes: u64,
    pub bios: u64,
    /// Blocks changed since the mark, and their bytes.
    pub changed_blocks: u64,
    pub changed_bytes: u64,
    pub changed_extents: usize,
    /// When the mark was taken (seconds since the epoch).
    pub mark_unix_s: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriterStatus {
    pub pid: u32,
    pub comm: String,
    pub calls: u64,
    pub bytes: u64,
    pub bytes_per_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeCounters {
    pub bios: u64,
    pub extents: u64,
    pub dropped: u64,
    pub wakeups: u64,
    pub writers_full: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackingStatus {
    pub volumes: Vec<VolumeStatus>,
    pub writers: Vec<WriterStatus>,
    /// Whether write syscalls are counted per process (`tracking.writers`).
    #[serde(default)]
    pub writers_on: bool,
    pub probes: ProbeCounters,
}

/// The changed blocks of a volume, as returned by `changed` and `take_mark`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    pub volume: String,
    pub block_size: u64,
    pub blocks: u64,
    pub since_unix_s: u64,
    /// True when the kernel dropped extents since the agent started: the set may be missing
    /// blocks and a full comparison is needed.
    pub incomplete: bool,
    pub ranges: Vec<BlockRange>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("no volume named {0:?} is watched")]
    UnknownVolume(String),
    #[error("volume {volume}: {source}")]
    Probe { volume: String, source: ProbeError },
    #[error(transparent)]
    Drain(#[from] ProbeError),
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    pub fn new() -> Self {
        Tracker {
            volumes: Vec::new(),
            next_id: 1,
            ids: HashMap::new(),
            writers: HashMap::new(),
            counters: [0; counter::LEN as usize],
            dropped_since_start: 0,
        }
    }

    /// Starts watching `dev` as volume `name`; its mark starts now.
    pub fn watch(
        &mut self,
        probes: &mut dyn Probes,
        name: &str,
        dev: DevId,
    ) -> Result<(), TrackError> {
        let id = self.next_id;
        probes.watch(dev, id).map_err(|source| TrackError::Probe {
            volume: name.to_owned(),
            source,
        })?;
        self.next_id += 1;
        self.ids.insert(id, self.volumes.len());
        self.volumes.push(Watched {
            name: name.to_owned(),
            dev,
            changed: BlockSet::new(),
            mark_time: SystemTime::now(),
            totals: VolumeCounters::default(),
            samples: VecDeque::new(),
            window: Windows::default(),
        });
        Ok(())
    }

    /// Stops watching volume `name`.
    pub fn unwatch(&mut self, probes: &mut dyn Probes, name: &str) -> Result<(), TrackError> {
        let index = self.index(name)?;
        let dev = self.volumes[index].dev;
        probes.unwatch(dev).map_err(|source| TrackError::Probe {
            volume: name.to_owned(),
            source,
        })?;
        self.volumes.remove(index);
        self.ids.retain(|_, i| *i != index);
        for i in self.ids.values_mut() {
            if *i > index {
                *i -= 1;
            }
        }
        Ok(())
    }

    pub fn volume_names(&self) -> impl Iterator<Item = &str> {
        self.volumes.iter().map(|v| v.name.as_str())
    }

    fn index(&self, name: &str) -> Result<usize, TrackError> {
        self.volumes
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| TrackError::UnknownVolume(name.to_owned()))
    }

    /// Drains the probes and folds the result in.
    pub fn poll(&mut self, probes: &mut dyn Probes, now: Instant) -> Result<(), TrackError> {
        let drained = probes.drain()?;
        self.apply(drained, now);
        Ok(())
    }

    /// Folds one drain into the state.
    pub fn apply(&mut self, d: Drained, now: Instant) {
        for e in d.pending.iter().chain(d.extents.iter()) {
            if e.nr_sectors == 0 {
                continue;
            }
            let dev = DevId::from_kernel(e.dev);
            if let Some(v) = self.volumes.iter_mut().find(|v| v.dev == dev) {
                let (offset, len) = (e.sector * SECTOR_SIZE, e.nr_sectors * SECTOR_SIZE);
                v.changed.insert_bytes(offset, len, BLOCK_SIZE);
                let w = &mut v.window;
                for window in w.base.iter_mut().chain(w.staged.iter_mut()) {
                    window.blocks.insert_bytes(offset, len, BLOCK_SIZE);
                }
            }
        }
        for (dev, c) in &d.volumes {
            if let Some(v) = self.volumes.iter_mut().find(|v| v.dev == *dev) {
                v.totals = *c;
                push_sample(&mut v.samples, (now, [c.write_bytes, c.discard_bytes]), now);
            }
        }
        for (pid, w) in &d.writers {
            let comm = comm_string(w);
            let entry = self.writers.entry(*pid).or_insert_with(|| Writer {
                comm: comm.clone(),
                calls: 0,
                bytes: 0,
                samples: VecDeque::new(),
            });
            if w.bytes < entry.bytes || comm != entry.comm {
                // The LRU map evicted and re-created the entry, or the pid was reused.
                entry.samples.clear();
                entry.comm = comm;
            }
            entry.calls = w.calls;
            entry.bytes = w.bytes;
            push_sample(&mut entry.samples, (now, [w.bytes, w.calls]), now);
        }
        // Processes the kernel map no longer holds (evicted to make room) are forgotten too.
        let present: std::collections::HashSet<u32> = d.writers.iter().map(|(p, _)| *p).collect();
        self.writers.retain(|pid, _| present.contains(pid));
        let dropped_before = self.counters[counter::DROPPED as usize];
        self.counters = d.counters;
        let dropped_now = self.counters[counter::DROPPED as usize];
        if dropped_now > dropped_before {
            self.dropped_since_start += dropped_now - dropped_before;
            tracing::error!(
                event = "extents_dropped",
                dropped = dropped_now - dropped_before,
                "the kernel dropped changed-extent records (ring buffer full); changed-block sets are incomplete"
            );
        }
    }

    /// How many blocks changed on `name` since its mark (without listing them).
    pub fn changed_blocks(&self, name: &str) -> Result<u64, TrackError> {
        Ok(self.volumes[self.index(name)?].changed.len())
    }

    /// The blocks changed on `name` since its mark, without resetting it.
    pub fn changed(&self, name: &str) -> Result<Changes, TrackError> {
        let v = &self.volumes[self.index(name)?];
        Ok(self.changes_of(v, &v.changed))
    }

    /// Atomically returns the blocks changed since the mark and starts a new mark. The caller
    /// drains the probes first (`poll`) so everything queued before the call is included.
    pub fn take_mark(&mut self, name: &str) -> Result<Changes, TrackError> {
        let index = self.index(name)?;
        let taken = self.volumes[index].changed.take();
        let changes = self.changes_of(&self.volumes[index], &taken);
        self.volumes[index].mark_time = SystemTime::now();
        Ok(changes)
    }

    /// Starts a staged window on `name` (at the mark of a cycle, before its point is taken).
    pub fn stage_window(&mut self, name: &str) -> Result<(), TrackError> {
        let index = self.index(name)?;
        self.volumes[index].window.staged = Some(Window {
            cycle: 0,
            blocks: BlockSet::new(),
            dropped_at_start: self.dropped_since_start,
        });
        Ok(())
    }

    /// The cycle staged on `name` was acknowledged: its window becomes the base of the next
    /// check (none if nothing was staged).
    pub fn commit_window(&mut self, name: &str, cycle: u64) -> Result<(), TrackError> {
        let index = self.index(name)?;
        let w = &mut self.volumes[index].window;
        w.base = w.staged.take().map(|s| Window { cycle, ..s });
        Ok(())
    }

    /// The cycle staged on `name` failed: the base window goes on.
    pub fn abort_window(&mut self, name: &str) -> Result<(), TrackError> {
        let index = self.index(name)?;
        self.volumes[index].window.staged = None;
        Ok(())
    }

    /// The base window of `name`, or why there is none usable: the volume was not watched
    /// since the last acknowledged cycle's mark, or the kernel dropped records since.
    pub fn window(&self, name: &str) -> Result<&Window, String> {
        let v = &self.volumes[self.index(name).map_err(|e| e.to_string())?];
        let Some(w) = &v.window.base else {
            return Err(
                "the tracker has not watched the volume since the previous point (agent restarted, or no cycle acknowledged since it started)"
                    .into(),
            );
        };
        if self.dropped_since_start > w.dropped_at_start {
            return Err(format!(
                "the kernel dropped {} change records since the previous point",
                self.dropped_since_start - w.dropped_at_start
            ));
        }
        Ok(w)
    }

    fn changes_of(&self, v: &Watched, set: &BlockSet) -> Changes {
        Changes {
            volume: v.name.clone(),
            block_size: BLOCK_SIZE,
            blocks: set.len(),
            since_unix_s: unix_s(v.mark_time),
            incomplete: self.dropped_since_start > 0,
            ranges: set.ranges().collect(),
        }
    }

    pub fn status(&self, top_writers: usize) -> TrackingStatus {
        let volumes = self
            .volumes
            .iter()
            .map(|v| {
                let [w, d] = rate(&v.samples);
                VolumeStatus {
                    name: v.name.clone(),
                    device: v.dev.to_string(),
                    write_bytes_per_s: w,
                    discard_bytes_per_s: d,
                    written_bytes: v.totals.write_bytes,
                    discarded_bytes: v.totals.discard_bytes,
                    bios: v.totals.bios,
                    changed_blocks: v.changed.len(),
                    changed_bytes: v.changed.len() * BLOCK_SIZE,
                    changed_extents: v.changed.extents(),
                    mark_unix_s: unix_s(v.mark_time),
                }
            })
            .collect();
        let mut writers: Vec<WriterStatus> = self
            .writers
            .iter()
            .map(|(pid, w)| WriterStatus {
                pid: *pid,
                comm: w.comm.clone(),
                calls: w.calls,
                bytes: w.bytes,
                bytes_per_s: rate(&w.samples)[0],
            })
            .collect();
        writers.sort_by(|a, b| {
            b.bytes_per_s
                .total_cmp(&a.bytes_per_s)
                .then(b.bytes.cmp(&a.bytes))
                .then(a.pid.cmp(&b.pid))
        });
        writers.truncate(top_writers);
        let c = &self.counters;
        TrackingStatus {
            volumes,
            writers,
            writers_on: false,
            probes: ProbeCounters {
                bios: c[counter::BIOS as usize],
                extents: c[counter::EXTENTS as usize],
                dropped: c[counter::DROPPED as usize],
                wakeups: c[counter::WAKEUPS as usize],
                writers_full: c[counter::WRITERS_FULL as usize],
            },
        }
    }
}

type Samples = VecDeque<(Instant, [u64; 2])>;

/// Keeps cumulative samples covering at least the rate window.
fn push_sample(samples: &mut Samples, sample: (Instant, [u64; 2]), now: Instant) {
    samples.push_back(sample);
    while samples.len() > 2 && now.duration_since(samples[1].0) >= RATE_WINDOW {
        samples.pop_front();
    }
}

/// Per-second rates of the two cumulative counters over the samples.
fn rate(samples: &Samples) -> [f64; 2] {
    let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
        return [0.0; 2];
    };
    let dt = last.0.duration_since(first.0).as_secs_f64();
    if dt <= 0.0 {
        return [0.0; 2];
    }
    [0, 1].map(|i| last.1[i].saturating_sub(first.1[i]) as f64 / dt)
}

fn comm_string(w: &WriterStats) -> String {
    let end = w.comm.iter().position(|&b| b == 0).unwrap_or(w.comm.len());
    String::from_utf8_lossy(&w.comm[..end]).into_owned()
}

fn unix_s(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
