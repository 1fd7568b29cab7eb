//! vfsdr: disaster recovery agent for virtual SMB file servers.
//!
//! Modules follow capabilities: `tracking` (eBPF write tracking), `volumes` (block devices and
//! loop-attached images), `api` (the local Unix-socket API), `daemon` (the agent's main loop),
//! `config`, `logging`, and `cli` (the `vfsdr` command line).
pub mod api;
pub mod cert;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod logging;
pub mod peer;
pub mod replication;
pub mod resources;
pub mod state;
pub mod tracking;
pub mod volumes;
