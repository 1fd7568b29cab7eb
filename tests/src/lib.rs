//! The vfsdr lab: network namespaces, a bridge, veth pairs and loop-backed XFS on one machine, for
//! the root integration tests and the demo (DESIGN.md, "The lab").
//!
//! ```text
//!   vfsdr-<id>-lan            vfsdr-<id>-<site>                 /tmp/vfsdr-lab-<id>/<site>/
//!   br0 198.18.0.254/24 ──veth── eth0 198.18.0.1/24            config/ state/ run/
//!        │                                                      pool.img -> /dev/loopN -> pool/ (XFS, reflink=1)
//!        └──veth── eth0 198.18.0.200/24 (client)                mnt/<volume>  <- pool/<volume>.img (XFS)
//! ```
//!
//! # Pieces
//! - [`Lab::new`] builds the LAN: the bridge namespace `vfsdr-<id>-lan` with `br0` up, and the lab
//!   directory `/tmp/vfsdr-lab-<id>`. `<id>` is `<pid>x<clock><counter>-<test name>`, unique per test.
//! - [`Lab::add_site`] adds a [`Site`]: a namespace joined to the LAN by a veth pair (`eth0` inside,
//!   a bridge port in the LAN), a directory with `config/`, `state/`, `run/`, and a [`Pool`].
//! - [`Lab::add_client`] adds a [`Client`]: a namespace on the LAN and a directory.
//! - [`Pool::create_volume`] (or [`Volume::create`]) makes a loop-backed, mounted XFS [`Volume`].
//! - [`Netns::command`] / [`Netns::spawn`] run programs in a namespace with `nsenter --net` (network
//!   namespace only; never `ip netns exec`, which pins mounts). [`Daemon`] stops by pid and process
//!   group: SIGTERM, up to 10 s, SIGKILL.
//! - [`Lab::footprint`] records what the lab created; [`Footprint::leftovers`] lists what is still
//!   there after teardown. [`sweep_stale`] removes labs whose creating process died.
//!
//! # Addresses
//! Only 198.18.0.0/24 (inside 198.18.0.0/15) with no default route, so nothing leaves the lab:
//! sites .1-.99 in the order added, [`service_address`] .100-.199 for addresses that move between
//! sites (VFS addresses), clients .200-.249, the bridge .254. Every lab has its own bridge namespace,
//! so labs running in parallel do not see each other.
//!
//! # Teardown
//! Every piece is a Drop guard; composite pieces drop their parts in reverse order of creation, and a
//! constructor that fails half-way undoes what it did. Pieces keep what they depend on alive (a
//! volume its pool, a pool its site directory and the lab, a daemon its namespace), so nothing is
//! pulled from under another, whatever the order of drops. Teardown also runs when a test panics,
//! is best-effort, logs to stderr what it could not undo, and never panics. A busy mount is retried
//! for a second, then unmounted lazily.
//!
//! # Example
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use vfsdr_lab::{Lab, MIB};
//! let lab = Lab::new("my_test")?;
//! let site = lab.add_site("a")?;
//! site.ping(lab.lan().address())?;
//! let vol = site.pool().create_volume("vol1", 512 * MIB)?;
//! std::fs::write(vol.mount_point().join("hello"), b"hi")?;
//! let daemon = site.spawn("sleep", ["1000"])?;
//! let footprint = lab.footprint();
//! drop((daemon, vol, site, lab));
//! assert!(footprint.leftovers().is_empty());
//! # Ok(()) }
//! ```
pub mod agent;
pub mod check;
pub mod churn;
mod cmd;
mod daemon;
mod guard;
mod lab;
mod netns;
pub mod pair;
mod registry;
mod storage;
mod sweep;
pub mod sys;

pub use crate::{
    daemon::{Daemon, STOP_TIMEOUT},
    lab::{
        BRIDGE_HOST, Client, DIR_PREFIX, LAN_INTERFACE, LAN_PREFIX_LEN, Lab, Lan, NETNS_PREFIX,
        Site, SiteOptions, lan_address, service_address,
    },
    netns::Netns,
    registry::Footprint,
    storage::{GIB, MIB, Pool, Volume},
    sweep::sweep_stale,
};

/// Fails with "root lab tests need root" unless running as root (euid 0).
pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "root lab tests need root: they create network namespaces, loop devices and mounts \
             (run them as root: cargo test -p vfsdr-lab -- --ignored --test-threads=1)"
        );
    }
    Ok(())
}
