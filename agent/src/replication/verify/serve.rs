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

/// DR site: the digests of a volume of the snapshot of `req.cycle`, for the active site `from`
/// (which must own the VFS). `open` opens an image read-only.
/// Opens a snapshot image read-only.
pub type Opener<'a> = dyn FnMut(&Path) -> Result<Box<dyn ReadOnly>, FsError> + 'a;

pub fn serve_digests(
    store: &Store,
    site: &str,
    from: &str,
    req: &DigestRequest,
    open: &mut Opener<'_>,
) -> Result<Digests, String> {
    let vfs = &req.vfs;
    let stored = store
        .definition(vfs)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("site {site} has no definition of VFS {vfs}"))?;
    if stored.role != Role::Standby || stored.from_site != from {
        return Err(format!(
            "site {from} does not own VFS {vfs} at site {site} (its definition came from {}, role {})",
            stored.from_site,
            stored.role.as_str()
        ));
    }
    if req.chunk < FINE
        || !req.chunk.is_multiple_of(FINE)
        || req.len.div_ceil(req.chunk) > MAX_CHUNKS
    {
        return Err(format!(
            "verify of {vfs}/{}: chunk {} for {} bytes is not allowed (a multiple of {FINE}, at most {MAX_CHUNKS} chunks)",
            req.volume, req.chunk, req.len
        ));
    }
    let snapshots = store.snapshots(vfs).map_err(|e| e.to_string())?;
    let latest = snapshots
        .iter()
        .filter(|s| s.state == SnapshotState::Committed)
        .map(|s| s.cycle)
        .max();
    let Some(snap) = snapshots
        .iter()
        .find(|s| s.cycle == req.cycle && s.state == SnapshotState::Committed)
    else {
        return Err(format!(
            "site {site} has no snapshot of cycle {} of VFS {vfs} (its latest is of cycle {})",
            req.cycle,
            latest.map_or("none".into(), |c| c.to_string())
        ));
    };
    let Some(image) = snap.images.iter().find(|i| i.volume == req.volume) else {
        return Err(format!(
            "snapshot {} of VFS {vfs} at site {site} has no volume {}",
            snap.id, req.volume
        ));
    };
    let mut src =
        open(&image.path).map_err(|e| format!("snapshot {} at site {site}: {e}", snap.id))?;
    let mut d = digest_range(src.as_mut(), req.offset, req.len, req.chunk)
        .map_err(|e| format!("snapshot {} at site {site}: {e}", snap.id))?;
    d.snapshot = Some(snap.id);
    Ok(d)
}
