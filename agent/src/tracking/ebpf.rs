//! The real `Probes`: loads the embedded eBPF object, fills in the block tracepoint layout,
//! attaches the programs and reads their maps. Dropping it detaches everything.
use std::os::fd::{AsRawFd, RawFd};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::TracePoint,
};
use vfsdr_common::{BlockLayout, Extent, VolumeCounters, WriterStats, counter, names};

use super::{
    layout::{ensure_tracefs, parse_block_format},
    probes::{Drained, ProbeError, Probes},
};
use crate::volumes::DevId;

/// The eBPF object built by agent/build.rs; empty when built with `AYA_BUILD_SKIP=1`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vfsdr-probes"));

pub struct EbpfProbes {
    watched: PerCpuHashMap<MapData, u32, VolumeCounters>,
    pending: PerCpuArray<MapData, Extent>,
    extents: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    writers: PerCpuHashMap<MapData, u32, WriterStats>,
    nr_cpus: usize,
    /// Owns the programs and their links; dropped last.
    _ebpf: Ebpf,
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map { map, source: Box::new(source) }
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    map: &'static str,
) -> Result<T, ProbeError> {
    let m = ebpf.take_map(map).ok_or(ProbeError::MissingMap { map })?;
    T::try_from(m).map_err(map_err(map))
}

fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &str,
    tp: &str,
) -> Result<(), ProbeError> {
    let err = |source| ProbeError::Program { program, source: Box::new(source) };
    let p: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or(ProbeError::Program {
            program,
            source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
        })?
        .try_into()
        .map_err(err)?;
    p.load().map_err(err)?;
    p.attach(category, tp).map_err(err)?;
    Ok(())
}

impl EbpfProbes {
    /// Loads and attaches every program. Fails if the binary was built without them.
    pub fn load() -> Result<Self, ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::NotBuilt);
        }
        let tracefs = ensure_tracefs()?;
        let format = tracefs.join("events/block/block_bio_queue/format");
        let text = std::fs::read_to_string(&format).map_err(|e| ProbeError::Format {
            path: format.display().to_string(),
            reason: e.to_string(),
        })?;
        let layout = parse_block_format(&text, &format.display().to_string())?;

        let mut ebpf = Ebpf::load(OBJECT)?;
        {
            let map = ebpf
                .map_mut(names::BLOCK_LAYOUT)
                .ok_or(ProbeError::MissingMap {
                    map: names::BLOCK_LAYOUT,
                })?;
            let mut array: Array<&mut MapData, BlockLayout> =
                Array::try_from(map).map_err(map_err(names::BLOCK_LAYOUT))?;
            array
                .set(0, layout, 0)
                .map_err(map_err(names::BLOCK_LAYOUT))?;
        }
        attach(&mut ebpf, names::BLOCK_PROGRAM, "block", "block_bio_queue")?;
        for (program, tp) in names::SYSCALL_PROGRAMS {
            attach(&mut ebpf, program, "syscalls", tp)?;
        }
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| ProbeError::Format {
            path: "/sys/devices/system/cpu/possible".into(),
            reason: e.to_string(),
        })?;
        Ok(EbpfProbes {
            watched: take(&mut ebpf, names::WATCHED)?,
            pending: take(&mut ebpf, names::PENDING)?,
            extents: take(&mut ebpf, names::EXTENTS)?,
            counters: take(&mut ebpf, names::COUNTERS)?,
            writers: take(&mut ebpf, names::WRITERS)?,
            nr_cpus,
            _ebpf: ebpf,
        })
    }
}

/// Sums per-CPU counter structs.
fn sum_volume(values: &PerCpuValues<VolumeCounters>) -> VolumeCounters {
    let mut total = VolumeCounters::default();
    for v in values.iter() {
        total.volume = v.volume;
        total.write_bytes += v.write_bytes;
        total.discard_bytes += v.discard_bytes;
        total.bios += v.bios;
    }
    total
}

fn sum_writer(values: &PerCpuValues<WriterStats>) -> WriterStats {
    let mut total = WriterStats::default();
    for v in values.iter() {
        total.calls += v.calls;
        total.bytes += v.bytes;
        if v.comm[0] != 0 {
            total.comm = v.comm;
        }
    }
    total
}

impl Probes for EbpfProbes {
    fn watch(&mut self, dev: DevId, volume: u32) -> Result<(), ProbeError> {
        if self.watched.get(&dev.kernel(), 0).is_ok() {
            return Err(ProbeError::AlreadyWatched { dev });
        }
        let init = VolumeCounters {
            volume,
            ..Default::default()
        };
        let values =
            PerCpuValues::try_from(vec![init; self.nr_cpus]).map_err(|e| ProbeError::Map {
                map: names::WATCHED,
                source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "nr_cpus",
                    io_error: e,
                })),
            })?;
        self.watched
            .insert(dev.kernel(), values, 0)
            .map_err(map_err(names::WATCHED))
    }

    fn unwatch(&mut self, dev: DevId) -> Result<(), ProbeError> {
        match self.watched.remove(&dev.kernel()) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(names::WATCHED)(e)),
        }
    }

    fn drain(&mut self) -> Result<Drained, ProbeError> {
        let mut d = Drained::default();
        // Pending slots first, then the ring: an extent moved from a slot to the ring in
        // between is then seen in the ring.
        let pending = self.pending.get(&0, 0).map_err(map_err(names::PENDING))?;
        d.pending = pending
            .iter()
            .filter(|e| e.nr_sectors != 0)
            .copied()
            .collect();
        while let Some(item) = self.extents.next() {
            if item.len() >= size_of::<Extent>() {
                // SAFETY: records are written by the kernel program as `Extent`.
                d.extents
                    .push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Extent>()) });
            }
        }
        for entry in self.watched.iter() {
            let (dev, values) = entry.map_err(map_err(names::WATCHED))?;
            d.volumes
                .push((DevId::from_kernel(dev), sum_volume(&values)));
        }
        for entry in self.writers.iter() {
            let (pid, values) = entry.map_err(map_err(names::WRITERS))?;
            d.writers.push((pid, sum_writer(&values)));
        }
        for i in 0..counter::LEN {
            let values = self.counters.get(&i, 0).map_err(map_err(names::COUNTERS))?;
            d.counters[i as usize] = values.iter().sum();
        }
        Ok(d)
    }

    fn wakeup_fd(&self) -> Option<RawFd> {
        Some(self.extents.as_raw_fd())
    }
}
