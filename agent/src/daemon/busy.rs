//! What holds a VFS at this (DR) site: a cycle being received, or an operator's deletion of
//! snapshots. One at a time per VFS: a second connection of a cycle (a sender that restarted
//! while its old connection lingers) must not undo the cycle in flight, and snapshots must not
//! be deleted under a cycle that applies to them.
use std::{
    collections::BTreeMap,
    fmt,
    sync::{Mutex, MutexGuard},
};

/// What holds a VFS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// A cycle of it is being received.
    Receiving,
    /// Snapshots of it are being deleted (`vfsdr snapshot delete`).
    Deleting,
}

impl fmt::Display for Activity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Activity::Receiving => "a cycle of it is being received",
            Activity::Deleting => "snapshots of it are being deleted",
        })
    }
}

/// The VFSs held at this site, and by what.
static HELD: Mutex<BTreeMap<String, Activity>> = Mutex::new(BTreeMap::new());

fn held() -> MutexGuard<'static, BTreeMap<String, Activity>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// A VFS held for an activity; dropping it lets the VFS go, however the activity ends.
#[derive(Debug)]
pub struct Claim(String);

impl Claim {
    /// Holds `vfs` for `activity`, or says what holds it already.
    pub fn take(vfs: &str, activity: Activity) -> Result<Claim, Activity> {
        let mut held = held();
        if let Some(&other) = held.get(vfs) {
            return Err(other);
        }
        held.insert(vfs.to_owned(), activity);
        Ok(Claim(vfs.to_owned()))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        held().remove(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_activity_per_vfs_until_its_claim_is_dropped() {
        let c = Claim::take("busy-t1", Activity::Receiving).unwrap();
        assert_eq!(
            Claim::take("busy-t1", Activity::Deleting).unwrap_err(),
            Activity::Receiving
        );
        let other = Claim::take("busy-t2", Activity::Deleting).unwrap();
        drop(c);
        let again = Claim::take("busy-t1", Activity::Deleting).unwrap();
        assert_eq!(
            Claim::take("busy-t2", Activity::Receiving).unwrap_err(),
            Activity::Deleting
        );
        drop((again, other));
        assert!(Claim::take("busy-t2", Activity::Receiving).is_ok());
    }
}
