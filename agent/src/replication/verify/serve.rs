//! The DR site's side of verify: the digests of a volume of the snapshot of a cycle, for the
//! active site that owns the VFS.
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Digests, FINE, MAX_CHUNKS, ReadOnly, digest_range};
use crate::{
    replication::fsops::FsError,
    state::{Role, SnapshotState, Store},
};

/// What the DR site is asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestRequest {
    pub vfs: String,
    pub cycle: u64,
    pub volume: String,
    pub offset: u64,
    pub len: u64,
    pub chunk: u64,
}

/// Opens a snapshot image read-only.
pub type Opener<'a> = dyn FnMut(&Path) -> Result<Box<dyn ReadOnly>, FsError> + 'a;

/// Why the DR site does not answer a digest request; each names the site, VFS and thing.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("site {site} has no definition of VFS {vfs}")]
    UnknownVfs { site: String, vfs: String },
    #[error(
        "site {from} does not own VFS {vfs} at site {site} (its definition came from {owner}, role {role})"
    )]
    NotOwner {
        site: String,
        from: String,
        vfs: String,
        owner: String,
        role: &'static str,
    },
    #[error(
        "verify of {vfs}/{volume}: chunk {chunk} for {len} bytes is not allowed (a multiple of {FINE}, at most {MAX_CHUNKS} chunks)"
    )]
    BadChunk {
        vfs: String,
        volume: String,
        chunk: u64,
        len: u64,
    },
    #[error("site {site} has no snapshot of cycle {cycle} of VFS {vfs} (its latest is of cycle {})",
        latest.map_or("none".into(), |c| c.to_string()))]
    NoSnapshot {
        site: String,
        vfs: String,
        cycle: u64,
        latest: Option<u64>,
    },
    #[error("snapshot {snapshot} of VFS {vfs} at site {site} has no volume {volume}")]
    NoVolume {
        site: String,
        vfs: String,
        snapshot: u64,
        volume: String,
    },
    #[error("snapshot {snapshot} at site {site}: {source}")]
    Read {
        site: String,
        snapshot: u64,
        source: FsError,
    },
    #[error("site {site}: {source}")]
    State {
        site: String,
        source: Box<crate::state::StateError>,
    },
}

/// DR site: the digests of a volume of the snapshot of `req.cycle`, for the active site `from`
/// (which must own the VFS). `open` opens an image read-only.
pub fn serve_digests(
    store: &Store,
    site: &str,
    from: &str,
    req: &DigestRequest,
    open: &mut Opener<'_>,
) -> Result<Digests, DigestError> {
    let vfs = &req.vfs;
    let state = |source| DigestError::State {
        site: site.to_owned(),
        source: Box::new(source),
    };
    let stored = store
        .definition(vfs)
        .map_err(state)?
        .ok_or_else(|| DigestError::UnknownVfs {
            site: site.to_owned(),
            vfs: vfs.clone(),
        })?;
    if stored.role != Role::Standby || stored.from_site != from {
        return Err(DigestError::NotOwner {
            site: site.to_owned(),
            from: from.to_owned(),
            vfs: vfs.clone(),
            owner: stored.from_site,
            role: stored.role.as_str(),
        });
    }
    if req.chunk < FINE
        || !req.chunk.is_multiple_of(FINE)
        || req.len.div_ceil(req.chunk) > MAX_CHUNKS
    {
        return Err(DigestError::BadChunk {
            vfs: vfs.clone(),
            volume: req.volume.clone(),
            chunk: req.chunk,
            len: req.len,
        });
    }
    let snapshots = store.snapshots(vfs).map_err(state)?;
    let committed = |s: &&crate::state::Snapshot| s.state == SnapshotState::Committed;
    let latest = snapshots.iter().filter(committed).map(|s| s.cycle).max();
    let Some(snap) = snapshots
        .iter()
        .filter(committed)
        .find(|s| s.cycle == req.cycle)
    else {
        return Err(DigestError::NoSnapshot {
            site: site.to_owned(),
            vfs: vfs.clone(),
            cycle: req.cycle,
            latest,
        });
    };
    let Some(image) = snap.images.iter().find(|i| i.volume == req.volume) else {
        return Err(DigestError::NoVolume {
            site: site.to_owned(),
            vfs: vfs.clone(),
            snapshot: snap.id,
            volume: req.volume.clone(),
        });
    };
    let read = |source| DigestError::Read {
        site: site.to_owned(),
        snapshot: snap.id,
        source,
    };
    let mut src = open(&image.path).map_err(read)?;
    let mut d = digest_range(src.as_mut(), req.offset, req.len, req.chunk).map_err(read)?;
    d.snapshot = Some(snap.id);
    Ok(d)
}
