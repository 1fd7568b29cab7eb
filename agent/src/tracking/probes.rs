//! The seam in front of the kernel's eBPF programs: what the tracker needs from them.
//!
//! `EbpfProbes` (in `ebpf.rs`) is the real implementation; `FakeProbes` here lets the tracker
//! and the daemon be tested without root, nightly or a kernel.
use std::{
    collections::HashMap,
    os::fd::RawFd,
    sync::{Arc, Mutex},
};

use vfsdr_common::{Extent, VolumeCounters, WriterStats, counter};

use crate::volumes::DevId;

/// Everything read from the kernel in one drain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Finished extents from the ring buffer, in submission order per CPU.
    pub extents: Vec<Extent>,
    /// The extents the CPUs are still growing (may also arrive later as finished extents).
    pub pending: Vec<Extent>,
    /// Per watched device: counters summed over CPUs, cumulative since it was watched.
    pub volumes: Vec<(DevId, VolumeCounters)>,
    /// Per process (tgid): write-syscall counters summed over CPUs, cumulative.
    pub writers: Vec<(u32, WriterStats)>,
    /// Global counters summed over CPUs (`vfsdr_common::counter`), cumulative.
    pub counters: [u64; counter::LEN as usize],
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this vfsdr was built without its eBPF programs (AYA_BUILD_SKIP=1); rebuild it without AYA_BUILD_SKIP to track writes"
    )]
    NotBuilt,
    #[error("cannot read the block tracepoint format {path}: {reason}")]
    Format { path: String, reason: String },
    #[error("cannot mount tracefs at {path}: {source}")]
    Tracefs {
        path: String,
        source: std::io::Error,
    },
    #[error("loading the eBPF programs failed: {0}")]
    Load(Box<aya::EbpfError>),
    #[error("eBPF program {program}: {source}")]
    Program {
        program: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("eBPF map {map} missing from the object")]
    MissingMap { map: &'static str },
    #[error("device {dev} is already watched")]
    AlreadyWatched { dev: DevId },
}

impl From<aya::EbpfError> for ProbeError {
    fn from(e: aya::EbpfError) -> Self {
        ProbeError::Load(Box::new(e))
    }
}

/// The kernel side of write tracking.
pub trait Probes: Send {
    /// Starts tracking block writes of `dev` as `volume`. Counters start at zero.
    fn watch(&mut self, dev: DevId, volume: u32) -> Result<(), ProbeError>;
    /// Stops tracking `dev`; unknown devices are ignored.
    fn unwatch(&mut self, dev: DevId) -> Result<(), ProbeError>;
    /// Reads what the kernel collected since the last drain (pending slots and counters are
    /// read before the ring buffer, so every bio queued before the call is in the result).
    fn drain(&mut self) -> Result<Drained, ProbeError>;
    /// A descriptor that becomes readable when the kernel forces a wakeup (ring buffer past
    /// its fill threshold), if the implementation has one.
    fn wakeup_fd(&self) -> Option<RawFd>;
    /// Attaches (`true`) or detaches the per-process write-syscall probe; idempotent.
    fn set_writers(&mut self, on: bool) -> Result<(), ProbeError>;
}

/// In-memory probes: tests push what "the kernel" saw; `drain` hands it out once.
#[derive(Clone, Default)]
pub struct FakeProbes {
    pub state: Arc<Mutex<FakeState>>,
}

#[derive(Debug, Default)]
pub struct FakeState {
    pub watched: HashMap<DevId, VolumeCounters>,
    pub queued: Vec<Extent>,
    pub pending: Vec<Extent>,
    pub writers: HashMap<u32, WriterStats>,
    /// Whether the write-syscall probe is attached.
    pub writers_on: bool,
    pub counters: [u64; counter::LEN as usize],
    /// Makes the next `watch` fail, to test error paths.
    pub fail_watch: bool,
}

impl FakeProbes {
    /// Simulates a bio: counts it on its device and queues it as a finished extent.
    pub fn write(&self, dev: DevId, kind: u32, sector: u64, nr_sectors: u64) {
        let mut s = self.state.lock().unwrap();
        let Some(v) = s.watched.get_mut(&dev) else {
            return;
        };
        if kind == vfsdr_common::EXTENT_WRITE {
            v.write_bytes += nr_sectors * 512;
        } else {
            v.discard_bytes += nr_sectors * 512;
        }
        v.bios += 1;
        s.counters[counter::BIOS as usize] += 1;
        s.queued.push(Extent {
            dev: dev.kernel(),
            kind,
            sector,
            nr_sectors,
            bios: 1,
        });
    }

    pub fn syscall(&self, pid: u32, comm: &str, bytes: u64) {
        let mut s = self.state.lock().unwrap();
        let w = s.writers.entry(pid).or_default();
        w.calls += 1;
        w.bytes += bytes;
        let n = comm.len().min(15);
        w.comm[..n].copy_from_slice(&comm.as_bytes()[..n]);
    }
}

impl Probes for FakeProbes {
    fn watch(&mut self, dev: DevId, volume: u32) -> Result<(), ProbeError> {
        let mut s = self.state.lock().unwrap();
        if std::mem::take(&mut s.fail_watch) || s.watched.contains_key(&dev) {
            return Err(ProbeError::AlreadyWatched { dev });
        }
        s.watched.insert(
            dev,
            VolumeCounters {
                volume,
                ..Default::default()
            },
        );
        Ok(())
    }

    fn unwatch(&mut self, dev: DevId) -> Result<(), ProbeError> {
        self.state.lock().unwrap().watched.remove(&dev);
        Ok(())
    }

    fn drain(&mut self) -> Result<Drained, ProbeError> {
        let mut s = self.state.lock().unwrap();
        Ok(Drained {
            extents: std::mem::take(&mut s.queued),
            pending: s.pending.clone(),
            volumes: s.watched.iter().map(|(d, c)| (*d, *c)).collect(),
            writers: s.writers.iter().map(|(p, w)| (*p, *w)).collect(),
            counters: s.counters,
        })
    }

    fn wakeup_fd(&self) -> Option<RawFd> {
        None
    }

    fn set_writers(&mut self, on: bool) -> Result<(), ProbeError> {
        self.state.lock().unwrap().writers_on = on;
        Ok(())
    }
}
