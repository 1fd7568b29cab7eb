//! The real `Probes`: loads the embedded eBPF object, fills in the block tracepoint layout,
//! attaches the programs and reads their maps. Dropping it detaches everything.
use std::os::fd::{AsRawFd, RawFd};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{BtfTracePoint, TracePoint, tp_btf::BtfTracePointLinkId},
};
use vfsdr_common::{
    BlockLayout, Extent, SyscallNrs, VolumeCounters, WriterSlot, WriterStats, counter, names,
};

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
    last_writer: PerCpuArray<MapData, WriterSlot>,
    nr_cpus: usize,
    /// The write-syscall program's link while it is attached.
    writers_link: Option<BtfTracePointLinkId>,
    /// Owns the programs and their links; dropped last.
    ebpf: Ebpf,
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> ProbeError {
    move |source| ProbeError::Map {
        map,
        source: Box::new(source),
    }
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    map: &'static str,
) -> Result<T, ProbeError> {
    let m = ebpf.take_map(map).ok_or(ProbeError::MissingMap { map })?;
    T::try_from(m).map_err(map_err(map))
}

/// The write syscalls' numbers on the architecture the agent runs on.
const SYSCALL_NRS: SyscallNrs = SyscallNrs {
    write: libc::SYS_write as u64,
    pwrite64: libc::SYS_pwrite64 as u64,
    writev: libc::SYS_writev as u64,
    pwritev: libc::SYS_pwritev as u64,
    pwritev2: libc::SYS_pwritev2 as u64,
};

/// The write-syscall program, a BTF tracepoint on the raw `sys_enter` hook.
fn syscall_program(ebpf: &mut Ebpf) -> Result<&mut BtfTracePoint, ProbeError> {
    let program = names::SYSCALL_PROGRAM;
    ebpf.program_mut(program)
        .ok_or(ProbeError::Program {
            program,
            source: Box::new(aya::programs::ProgramError::UnexpectedProgramType),
        })?
        .try_into()
        .map_err(|source| ProbeError::Program {
            program,
            source: Box::new(source),
        })
}

/// Loads the write-syscall program (needs the kernel's BTF); it is attached on demand.
fn load_syscalls(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let program = names::SYSCALL_PROGRAM;
    let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Format {
        path: "/sys/kernel/btf/vmlinux".into(),
        reason: format!("the kernel's BTF is needed for the syscall probe: {e}"),
    })?;
    syscall_program(ebpf)?
        .load("sys_enter", &btf)
        .map_err(|source| ProbeError::Program {
            program,
            source: Box::new(source),
        })
}

fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &str,
    tp: &str,
) -> Result<(), ProbeError> {
    let err = |source| ProbeError::Program {
        program,
        source: Box::new(source),
    };
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

        let mut ebpf = EbpfLoader::new()
            .override_global(names::SYSCALL_NRS, &SYSCALL_NRS, true)
            .load(OBJECT)?;
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
        load_syscalls(&mut ebpf)?;
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
            last_writer: take(&mut ebpf, names::LAST_WRITER)?,
            nr_cpus,
            writers_link: None,
            ebpf,
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

/// Adds one CPU's counts of a process to its total.
fn add_writer(total: &mut WriterStats, v: &WriterStats) {
    total.calls += v.calls;
    total.bytes += v.bytes;
    if v.comm[0] != 0 {
        total.comm = v.comm;
    }
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
        // The map first, then the per-CPU slots: counts a slot hands to the map in between
        // are missed by this drain only, never counted twice.
        let mut writers: std::collections::BTreeMap<u32, WriterStats> = Default::default();
        for entry in self.writers.iter() {
            let (pid, values) = entry.map_err(map_err(names::WRITERS))?;
            let total = writers.entry(pid).or_default();
            values.iter().for_each(|v| add_writer(total, v));
        }
        let slots = self
            .last_writer
            .get(&0, 0)
            .map_err(map_err(names::LAST_WRITER))?;
        for slot in slots.iter().filter(|s| s.stats.calls != 0) {
            add_writer(writers.entry(slot.tgid).or_default(), &slot.stats);
        }
        d.writers = writers.into_iter().collect();
        for i in 0..counter::LEN {
            let values = self.counters.get(&i, 0).map_err(map_err(names::COUNTERS))?;
            d.counters[i as usize] = values.iter().sum();
        }
        Ok(d)
    }

    fn wakeup_fd(&self) -> Option<RawFd> {
        Some(self.extents.as_raw_fd())
    }

    fn set_writers(&mut self, on: bool) -> Result<(), ProbeError> {
        let program = names::SYSCALL_PROGRAM;
        let err = |source| ProbeError::Program {
            program,
            source: Box::new(source),
        };
        match (on, self.writers_link.take()) {
            (true, None) => {
                self.writers_link = Some(syscall_program(&mut self.ebpf)?.attach().map_err(err)?)
            }
            (false, Some(link)) => syscall_program(&mut self.ebpf)?.detach(link).map_err(err)?,
            (_, link) => self.writers_link = link,
        }
        Ok(())
    }
}
