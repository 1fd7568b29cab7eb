//! Many small replication cycles of a [`Pair`]: before each, [`Churn`] rewrites a small part of
//! a file on the active volume (so every snapshot differs, and each snapshot holds a state that
//! can be recognised), then `vfsdr replicate V --now` runs the cycle. Shared by the snapshot
//! root test and `cargo xtask bench snapshots`; [`pool_used`] gives the DR pool's space.
//!
//! State `i` of the volume: the file `churn.bin` (`slots` x `change` bytes, written whole at
//! state 0) has slot `i % slots` filled with [`pattern`]`(i)`, and `marker` holds `state i`.
use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use serde_json::Value;

use crate::pair::Pair;

/// Rewrites one slot of a file per state.
pub struct Churn {
    pub dir: PathBuf,
    /// Bytes rewritten per state.
    pub change: u64,
    /// Slots of the file; the file is `slots * change` bytes.
    pub slots: u64,
}

/// `len` bytes that differ for each state `i` (a xorshift stream seeded by `i`).
pub fn pattern(i: u64, len: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

impl Churn {
    /// Writes state 0 in `dir` (on the active volume): every slot of the file, and the marker.
    pub fn create(dir: &Path, change: u64, slots: u64) -> anyhow::Result<Churn> {
        ensure!(change > 0 && slots > 0, "change and slots must be above 0");
        let churn = Churn {
            dir: dir.to_owned(),
            change,
            slots,
        };
        let mut f = std::fs::File::create(churn.file(dir))?;
        for slot in 0..slots {
            f.write_all(&pattern(slot.wrapping_neg(), change))?;
        }
        f.sync_all()?;
        churn.write(0)?;
        Ok(churn)
    }

    fn file(&self, root: &Path) -> PathBuf {
        root.join("churn.bin")
    }

    fn marker(&self, root: &Path) -> PathBuf {
        root.join("marker")
    }

    fn offset(&self, i: u64) -> u64 {
        (i % self.slots) * self.change
    }

    /// Writes state `i` (its slot and the marker) on the active volume.
    pub fn write(&self, i: u64) -> anyhow::Result<()> {
        let f = OpenOptions::new().write(true).open(self.file(&self.dir))?;
        f.write_all_at(&pattern(i, self.change), self.offset(i))?;
        std::fs::write(self.marker(&self.dir), format!("state {i}\n"))?;
        Ok(())
    }

    /// Checks that `root` (a mounted snapshot of the volume) holds state `i`.
    pub fn check(&self, root: &Path, i: u64) -> anyhow::Result<()> {
        let marker = std::fs::read_to_string(self.marker(root))
            .with_context(|| format!("no marker in {}", root.display()))?;
        ensure!(
            marker == format!("state {i}\n"),
            "{} holds {marker:?}, expected state {i}",
            root.display()
        );
        let f = std::fs::File::open(self.file(root))?;
        let mut slot = vec![0; self.change as usize];
        f.read_exact_at(&mut slot, self.offset(i))?;
        ensure!(
            slot == pattern(i, self.change),
            "{}: slot {} does not hold state {i}",
            root.display(),
            i % self.slots
        );
        Ok(())
    }
}

/// One cycle as `vfsdr replicate --now --json` reported it.
#[derive(Clone, Debug)]
pub struct Cycle {
    /// The state of the volume it replicated.
    pub state: u64,
    pub cycle: u64,
    pub snapshot: u64,
    pub changed_bytes: u64,
    /// The agent's `duration_ms` of the cycle (freeze to acknowledged commit).
    pub duration_ms: u64,
    /// The wall time of the CLI call (process start to report).
    pub wall: Duration,
}

/// Times a cycle whose connection to the peer timed out is tried again.
const MAX_RETRIES: usize = 3;

/// Writes state `i` and replicates it, for each `i` in `states`; `each` sees every cycle.
pub fn run_cycles(
    pair: &Pair,
    churn: &Churn,
    states: std::ops::RangeInclusive<u64>,
    mut each: impl FnMut(&Cycle) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Cycle>> {
    let mut cycles = Vec::new();
    for i in states {
        if i > 0 {
            churn.write(i)?;
        }
        let start = Instant::now();
        let mut report = pair.replicate_now();
        // A machine starved of CPU (other builds) can stall an agent past the peer link's
        // 5 s connect timeout: then nothing was sent, and the cycle is tried again.
        for _ in 0..MAX_RETRIES {
            match &report {
                Err(e) if format!("{e:#}").contains("connecting to peer") => {
                    eprintln!("cycle of state {i} not started ({e:#}); again");
                    report = pair.replicate_now();
                }
                _ => break,
            }
        }
        let report = report.with_context(|| {
            format!(
                "cycle of state {i}; the active site's log ends:\n{}\nthe DR site's:\n{}",
                tail(&pair.agent_a.log_text(), 15),
                tail(&pair.agent_b.log_text(), 15)
            )
        })?;
        let wall = start.elapsed();
        let n = |k: &str| -> anyhow::Result<u64> {
            report[k]
                .as_u64()
                .with_context(|| format!("cycle report without {k}: {report}"))
        };
        let cycle = Cycle {
            state: i,
            cycle: n("cycle")?,
            snapshot: n("snapshot")?,
            changed_bytes: n("changed_bytes")?,
            duration_ms: n("duration_ms")?,
            wall,
        };
        each(&cycle)?;
        cycles.push(cycle);
    }
    Ok(cycles)
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The DR site's snapshots of the pair's VFS as `vfsdr snapshots V --json` lists them.
pub fn listed(pair: &Pair) -> anyhow::Result<(Vec<Value>, Duration)> {
    let start = Instant::now();
    let out = pair.agent_b.cli(["snapshots", pair.vfs(), "--json"])?;
    let took = start.elapsed();
    let v: Value = serde_json::from_str(&out)?;
    let list = v
        .as_array()
        .with_context(|| format!("snapshot list is not an array: {out}"))?;
    Ok((list.clone(), took))
}

/// Bytes used in the file system of `path`, after writing back its dirty data (so delayed
/// allocations are counted).
pub fn pool_used(path: &Path) -> anyhow::Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid path; syncfs and statvfs write only to the buffer given.
    unsafe {
        let fd = libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        ensure!(fd >= 0, "cannot open {}", path.display());
        libc::syncfs(fd);
        libc::close(fd);
        let mut s: libc::statvfs = std::mem::zeroed();
        ensure!(
            libc::statvfs(c.as_ptr(), &mut s) == 0,
            "statvfs {} failed",
            path.display()
        );
        Ok((s.f_blocks - s.f_bfree) as u64 * s.f_frsize as u64)
    }
}
