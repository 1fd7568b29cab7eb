//! Resources at a DR site for a VFS: the precheck (are the links, addresses, replicas, mount
//! points and pool room there?), the reservation of what it found (a macvlan per interface,
//! created down and named after the VFS; a read-only mount of each replica at its mount point),
//! release, and reconciliation after a restart.
//!
//! Kernel access goes through two seams: `Links` (rtnetlink; `FakeLinks`) and `Mounts`
//! (mountinfo, statvfs, loop + mount(2); `FakeMounts`).
pub mod mounts;
pub mod net;
pub mod precheck;
pub mod reserve;
mod rtnl;
mod sysmounts;

#[cfg(test)]
mod tests;

pub use mounts::{FakeMounts, Mounts};
pub use net::{FakeLinks, Links};
pub use precheck::{Discrepancy, Kind, Purpose, Report, ResourceError, precheck, replica_image};
pub use reserve::{Outcome, Step, reconcile, refresh, release, reserve};
pub use rtnl::RtnlLinks;
pub use sysmounts::SystemMounts;
