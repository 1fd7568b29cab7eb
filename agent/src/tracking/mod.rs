//! Write tracking with eBPF: which blocks of each watched volume changed since a mark, at what
//! rate, and which processes are writing.
//!
//! Kernel side (agent-ebpf): `block/block_bio_queue` filtered to the watched devices merges
//! contiguous bios per CPU into extents, delivered in batches through a ring buffer; a BTF
//! tracepoint on `sys_enter`, filtered to `write`, `pwrite64`, `writev`, `pwritev` and
//! `pwritev2`, counts calls and bytes per process (a per-CPU last-writer slot in front of a
//! per-CPU LRU map).
//! User side: `Tracker` folds what `Probes::drain` returns into per-volume `BlockSet`s.
pub mod blockset;
mod ebpf;
pub mod layout;
pub mod probes;
mod tracker;

#[cfg(test)]
mod tests;

pub use blockset::{BlockRange, BlockSet};
pub use ebpf::EbpfProbes;
pub use probes::{Drained, FakeProbes, ProbeError, Probes};
pub use tracker::{
    Changes, ProbeCounters, TrackError, Tracker, TrackingStatus, VolumeStatus, Window, WriterStatus,
};
