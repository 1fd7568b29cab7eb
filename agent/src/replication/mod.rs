//! Block-level replication of a VFS's volumes (DESIGN.md, "block-level replication").
//!
//! Volumes are image files on a reflink-capable pool (XFS `reflink=1`), loop-attached and
//! mounted. A cycle pre-flushes each volume (syncfs of its file system, fsync of its image),
//! freezes all volumes of the VFS together (FIFREEZE, in parallel), reflinks each image into a
//! point-in-time clone next to it (FICLONE), thaws (FITHAW), then compares the physical extents
//! (FIEMAP) of the new clone with those of the previous one to find the changed blocks, and ships
//! only those. The DR site writes them into its replicas (pwrite + fsync) and commits a
//! group-consistent snapshot (a reflink of each replica).
//!
//! - [`fsops`]: the seam in front of the kernel ([`fsops::Images`]) and the real implementation
//!   ([`fsops::SystemImages`]).
//! - [`fake_fs`]: the in-memory fake ([`fake_fs::FakeImages`]), with copy-on-write physical blocks
//!   like a reflinked XFS.
//! - [`extents`]: the extent diff ([`extents::changed`]).
pub mod codec;
mod compress_stage;
pub mod cycle;
#[cfg(test)]
mod cycle_tests;
pub mod extents;
pub mod fake_fs;
pub mod fsops;
pub mod gap;
#[cfg(test)]
mod pool_full_tests;
pub mod progress;
mod prune;
mod redo;
pub mod resume;
pub mod retention;
pub mod session;
#[cfg(test)]
mod session_tests;
pub mod sink;
pub mod throttle;
pub mod verify;
pub mod wire;
