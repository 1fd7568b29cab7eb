//! Expedited RCU grace periods for the length of a group freeze.
//!
//! `FIFREEZE` takes a file system's three freeze levels (writes, page faults, internal) one after
//! another, and the write side of each level's per-CPU rwsem waits for an RCU grace period. A
//! normal grace period on a busy host takes 10-20 ms, so the freeze of one volume costs about
//! 2 ms when idle and about 50 ms under a 50 MB/s writer, almost all of it waiting. While
//! `/sys/kernel/rcu_expedited` is 1, grace periods are expedited (an IPI to every CPU, tens of
//! microseconds) and the same freeze takes about 3 ms (bench/results/replication.md).
//!
//! The agent raises the knob only around its FIFREEZE calls and puts back the value it found.
//! Concurrent freezes (two VFSs) share one raise: the last one out restores. When the knob cannot
//! be written (no sysfs, not root) the freeze proceeds with normal grace periods.
use std::{fs, path::PathBuf, sync::Mutex};

/// The system's knob.
pub const SYSTEM_KNOB: &str = "/sys/kernel/rcu_expedited";

/// A knob and who holds it raised.
#[derive(Debug)]
pub struct Knob {
    path: PathBuf,
    state: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    holders: usize,
    /// The value found before the first holder raised it (`None`: not raised, write failed).
    previous: Option<String>,
    warned: bool,
}

impl Knob {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            state: Mutex::new(Held {
                holders: 0,
                previous: None,
                warned: false,
            }),
        }
    }

    /// Raises the knob (if no one else holds it raised) until the returned guard drops.
    pub fn raise(&self) -> Raised<'_> {
        let mut held = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if held.holders == 0 {
            held.previous = match fs::read_to_string(&self.path) {
                Ok(previous) => match fs::write(&self.path, "1") {
                    Ok(()) => Some(previous.trim().to_owned()),
                    Err(e) => self.cannot(&mut held, e),
                },
                Err(e) => self.cannot(&mut held, e),
            };
        }
        held.holders += 1;
        Raised { knob: self }
    }

    fn cannot(&self, held: &mut Held, e: std::io::Error) -> Option<String> {
        if !held.warned {
            held.warned = true;
            tracing::info!(knob = %self.path.display(), error = %e,
                "cannot expedite RCU grace periods: group freezes wait for normal ones");
        }
        None
    }

    fn lower(&self) {
        let mut held = self.state.lock().unwrap_or_else(|e| e.into_inner());
        held.holders -= 1;
        if held.holders > 0 {
            return;
        }
        if let Some(previous) = held.previous.take()
            && let Err(e) = fs::write(&self.path, &previous)
        {
            tracing::error!(knob = %self.path.display(), error = %e, value = %previous,
                "cannot restore the RCU knob");
        }
    }
}

/// The knob held raised; dropping it lowers it.
#[must_use]
pub struct Raised<'a> {
    knob: &'a Knob,
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        self.knob.lower();
    }
}

/// The knob of this host.
pub fn system() -> &'static Knob {
    static KNOB: std::sync::OnceLock<Knob> = std::sync::OnceLock::new();
    KNOB.get_or_init(|| Knob::new(PathBuf::from(SYSTEM_KNOB)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knob(value: &str) -> (tempfile::TempDir, Knob) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rcu_expedited");
        fs::write(&path, value).unwrap();
        (dir, Knob::new(path))
    }

    fn value(k: &Knob) -> String {
        fs::read_to_string(&k.path).unwrap()
    }

    #[test]
    fn raised_while_held_and_restored_after() {
        let (_d, k) = knob("0\n");
        {
            let _r = k.raise();
            assert_eq!(value(&k), "1");
        }
        assert_eq!(value(&k), "0");
    }

    #[test]
    fn overlapping_holders_restore_once_the_last_leaves() {
        let (_d, k) = knob("0\n");
        let a = k.raise();
        let b = k.raise();
        drop(a);
        assert_eq!(value(&k), "1", "still held by the second freeze");
        drop(b);
        assert_eq!(value(&k), "0");
    }

    #[test]
    fn a_value_set_by_the_operator_is_kept() {
        let (_d, k) = knob("1\n");
        drop(k.raise());
        assert_eq!(value(&k), "1");
    }

    #[test]
    fn a_missing_knob_changes_nothing_and_the_freeze_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let k = Knob::new(dir.path().join("absent"));
        drop(k.raise());
        drop(k.raise());
        assert!(!dir.path().join("absent").exists());
    }
}
