//! State store tests: temporary directories, no root.
//!
//! `opening`: migrations, restarts, refused files. `records`: definitions, epochs,
//! reservations, and the constraints of the schema.

mod opening;
mod records;
mod snapshots;
mod snapshots_many;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde_json::json;

use super::*;
use crate::config::{
    Compression, FsType, Replication, Retention, Share, Smb, VfsDef, VfsInterface, VfsVolume,
};

/// A complete definition of VFS `name`, with one volume, one interface and one share.
fn vfs_def(name: &str) -> VfsDef {
    VfsDef {
        name: name.to_string(),
        volumes: vec![VfsVolume {
            name: "data".to_string(),
            size_bytes: 2 << 30,
            filesystem: FsType::Xfs,
            mount: PathBuf::from(format!("/srv/vfsdr/mnt/{name}/data")),
        }],
        interfaces: vec![VfsInterface {
            name: "smb0".to_string(),
            address: Ipv4Addr::new(198, 18, 0, 100),
            prefix_len: 24,
            network: "lan".to_string(),
        }],
        smb: Smb {
            netbios_name: name.to_uppercase(),
            shares: vec![Share {
                name: "public".to_string(),
                volume: "data".to_string(),
                path: String::new(),
            }],
        },
        replication: Replication {
            peer: "site-b".to_string(),
            interval_s: 60,
            compression: Compression::Zstd,
            bandwidth_limit_bytes_per_s: None,
            trigger_at_risk_bytes: None,
        },
        snapshots: Retention::default(),
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

/// A store with VFSs `fs1` and `fs2` defined (active, epoch 1, from site-a).
fn store_with_two(dir: &Path) -> Store {
    let mut store = open(dir);
    for name in ["fs1", "fs2"] {
        let change = store.put_definition(&vfs_def(name), Role::Active, 1, "site-a");
        assert_eq!(change.unwrap(), Change::Created);
    }
    store
}

fn link(name: &str) -> (ResourceKind, String, serde_json::Value) {
    (
        ResourceKind::Link,
        name.to_string(),
        json!({ "ifindex": 7, "parent": "eth1" }),
    )
}

fn mount(path: &str) -> (ResourceKind, String, serde_json::Value) {
    (
        ResourceKind::Mount,
        path.to_string(),
        json!({ "device": "/dev/loop3" }),
    )
}

/// (vfs, kind, resource, detail) of reservations, without their times.
fn keys(reservations: &[Reservation]) -> Vec<(String, ResourceKind, String, serde_json::Value)> {
    reservations
        .iter()
        .map(|r| (r.vfs.clone(), r.kind, r.resource.clone(), r.detail.clone()))
        .collect()
}

fn tables(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap();
    stmt.query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}
