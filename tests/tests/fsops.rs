//! Root tests of the replication file-system seam (`SystemImages`: syncfs/fsync, FIFREEZE, FICLONE,
//! FITHAW, FIEMAP, pwrite, punch) and the extent diff, on loop-backed XFS volumes whose images
//! live in the lab's XFS (reflink=1) pool.
use std::{
    fs::File,
    io::{Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use vfsdr::replication::{
    cycle::catch_up,
    extents::{Change, ChangeKind, changed, total},
    fsops::{FsError, Images as _, SystemImages},
};
use vfsdr_lab::{Lab, MIB, Volume, require_root};

use vfsdr_lab::check::{BLOCK, differing_blocks, sh, write_phases};

/// One cycle's point in time: optionally pre-flush each volume, freeze all of them, clone each
/// image to `<image>.<tag>`, thaw all (always, even if a clone failed). Returns the clones and
/// the write-blocked window (first freeze call to last thaw), and how long the freeze calls took.
fn snapshot(
    fs: &mut SystemImages,
    volumes: &[&Volume],
    tag: &str,
    preflush: bool,
) -> anyhow::Result<(Vec<PathBuf>, Duration, Duration)> {
    if preflush {
        for v in volumes {
            fs.flush(v.mount_point(), v.image())?;
        }
    }
    let mounts: Vec<PathBuf> = volumes.iter().map(|v| v.mount_point().to_owned()).collect();
    let clones: Vec<PathBuf> = volumes
        .iter()
        .map(|v| v.image().with_extension(tag))
        .collect();
    let start = Instant::now();
    let freeze = fs.freeze_all(&mounts)?;
    let cloned: Result<(), FsError> = volumes
        .iter()
        .zip(&clones)
        .try_for_each(|(v, c)| fs.clone_file(v.image(), c));
    let thawed = fs.thaw_all(&mounts);
    let window = start.elapsed();
    cloned?;
    thawed?;
    Ok((clones, window, freeze))
}

/// Applies `changes` to `to`: `Data` copied from `from`, `Zero` punched; then fsync.
fn apply(fs: &mut SystemImages, changes: &[Change], from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 4 * MIB as usize];
    for c in changes {
        match c.kind {
            ChangeKind::Data => {
                let mut at = c.offset;
                while at < c.end() {
                    let n = (c.end() - at).min(buf.len() as u64) as usize;
                    fs.read_at(from, at, &mut buf[..n])?;
                    fs.write_at(to, at, &buf[..n])?;
                    at += n as u64;
                }
            }
            ChangeKind::Zero => fs.punch(to, c.offset, c.len)?,
        }
    }
    fs.fsync(to)?;
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// Two cycles around a workload of buffered, O_DIRECT, in-place, small-file writes, then deletes
/// and fstrim: the changes found by comparing the clones' extents, applied to a reflink of the
/// first clone, reproduce the second clone byte for byte, and are not much more than what
/// really differs.
#[test]
#[ignore = "root: builds lab loop devices, XFS mounts and freezes them"]
fn extent_changes_reproduce_the_next_clone() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("fsops-diff")?;
    let site = lab.add_site("site-a")?;
    let vol = site.pool().create_volume("data", 512 * MIB)?;
    let m = vol.mount_point().display().to_string();
    let mut fs = SystemImages::new();

    sh(&format!(
        "dd if=/dev/urandom of='{m}/seed' bs=1M count=24 status=none; sync"
    ))?;
    let (mut prev, _, _) = snapshot(&mut fs, &[&vol], "c0", true)?;
    let phases = write_phases(vol.mount_point());
    for (i, (phase, steps)) in phases.iter().enumerate() {
        for step in steps {
            sh(step)?;
        }
        let (next, window, _) = snapshot(&mut fs, &[&vol], &format!("c{}", i + 1), true)?;
        let (p, n) = (&prev[0], &next[0]);
        let differ = differing_blocks(p, n)?.len() as u64 * BLOCK as u64;
        let t = Instant::now();
        let (pe, ne) = (fs.extents(p)?, fs.extents(n)?);
        let fiemap = t.elapsed();
        let size = fs.size(n)?;
        for block in [4096, 64 * 1024] {
            let t = Instant::now();
            let changes = changed(&pe, &ne, size, block);
            let diff_time = t.elapsed();
            let (data, zero) = total(&changes);
            let replica = p.with_extension(format!("r{block}"));
            fs.clone_file(p, &replica)?;
            apply(&mut fs, &changes, n, &replica)?;
            let left = differing_blocks(&replica, n)?.len();
            eprintln!(
                "{phase}, {} KiB blocks: {} + {} extents, {} changes: {:.2} MiB data + {:.2} MiB zero \
                 for {:.2} MiB really differing; window {window:.1?}, FIEMAP {fiemap:.1?}, diff {diff_time:.1?}",
                block / 1024,
                pe.len(),
                ne.len(),
                changes.len(),
                mib(data),
                mib(zero),
                mib(differ),
            );
            ensure!(
                left == 0,
                "{phase}: the replica differs from the clone in {left} blocks"
            );
            ensure!(
                data + zero < 4 * differ + MIB,
                "{phase}: {} bytes of changes for {differ} bytes that differ",
                data + zero
            );
            fs.remove(&replica)?;
        }
        ensure!(differ > 16 * MIB, "{phase} changed only {differ} bytes");
        fs.remove(p)?;
        prev = next;
    }
    fs.remove(&prev[0])?;
    Ok(())
}

/// Stops the load when dropped (also when the test fails).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Writes 1 MiB chunks round and round a 256 MiB file on `mount` (buffered, in place), at
/// `rate` MiB/s or as fast as it can, until `stop`; returns the bytes written.
fn load(mount: &Path, rate: Option<u64>, stop: &AtomicBool) -> anyhow::Result<u64> {
    let path = mount.join("load");
    let mut f = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let mut chunk: Vec<u8> = (0..MIB as usize).map(|i| (i * 7 + 1) as u8).collect();
    let (start, mut written) = (Instant::now(), 0u64);
    while !stop.load(Ordering::Relaxed) {
        if written % (256 * MIB) == 0 {
            f.seek(SeekFrom::Start(0))?;
        }
        chunk[0] = chunk[0].wrapping_add(1);
        f.write_all(&chunk)?;
        written += MIB;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64((written / MIB) as f64 / rate as f64);
            thread::sleep(due.saturating_sub(start.elapsed()));
        }
    }
    Ok(written)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p).div_ceil(100).max(1) - 1]
}

/// Runs 10 cycles (every `interval`) with and without the pre-flush while `rate` MiB/s (0: none;
/// `None`: as fast as it can) are written to each volume, and prints the windows.
fn measure_windows(
    fs: &mut SystemImages,
    volumes: &[&Volume],
    rate: Option<u64>,
    interval: Duration,
) -> anyhow::Result<()> {
    let stop = AtomicBool::new(false);
    let load_name = match rate {
        Some(0) => "idle".to_owned(),
        Some(r) => format!("{r} MiB/s written per volume"),
        None => "unthrottled writers".to_owned(),
    };
    let loaded = if rate == Some(0) { &[][..] } else { volumes };
    thread::scope(|s| -> anyhow::Result<()> {
        let writers: Vec<_> = loaded
            .iter()
            .map(|v| s.spawn(|| load(v.mount_point(), rate, &stop)))
            .collect();
        let result = (|| -> anyhow::Result<()> {
            let _stop = StopOnDrop(&stop);
            // Warm-up, not counted: the load files are written once over and a cycle runs.
            thread::sleep(match rate {
                Some(r) if r > 0 => Duration::from_secs(256u64.div_ceil(r)),
                _ => Duration::from_millis(500),
            });
            let mut cycle =
                |tag: &str, preflush| -> anyhow::Result<(Duration, Duration, Duration)> {
                    thread::sleep(interval);
                    let t = Instant::now();
                    let (clones, window, freeze) = snapshot(fs, volumes, tag, preflush)?;
                    let flush = t.elapsed() - window;
                    for c in clones {
                        fs.remove(&c)?;
                    }
                    Ok((window, freeze, flush))
                };
            cycle("warm", true)?;
            // The two modes alternate, so both see the same load.
            let mut runs: [Vec<(Duration, Duration, Duration)>; 2] = Default::default();
            for run in 0..10 {
                for (mode, preflush) in [true, false].into_iter().enumerate() {
                    runs[mode].push(cycle(&format!("w{run}"), preflush)?);
                }
            }
            for (preflush, runs) in [true, false].into_iter().zip(runs) {
                let mut windows: Vec<Duration> = runs.iter().map(|r| r.0).collect();
                let mut freezes: Vec<Duration> = runs.iter().map(|r| r.1).collect();
                let mut flushes: Vec<Duration> = runs.iter().map(|r| r.2).collect();
                for v in [&mut windows, &mut freezes, &mut flushes] {
                    v.sort();
                }
                eprintln!(
                    "group freeze of {} volumes, {load_name}, every {interval:?}, {}: window p50 \
                     {:.1?}, p99 {:.1?} (min {:.1?}); freeze calls p50 {:.1?}, p99 {:.1?}; pre-flush \
                     p50 {:.1?}",
                    volumes.len(),
                    if preflush {
                        "with pre-flush"
                    } else {
                        "without pre-flush"
                    },
                    percentile(&windows, 50),
                    percentile(&windows, 99),
                    windows[0],
                    percentile(&freezes, 50),
                    percentile(&freezes, 99),
                    percentile(&flushes, 50),
                );
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            let written = w
                .join()
                .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
            eprintln!("  writer: {:.0} MiB", mib(written));
        }
        result
    })
}

/// The write-blocked window of a group freeze of 3 volumes (freeze_all, three clones,
/// thaw_all), with and without the pre-flush, 10 runs each: idle, under a steady write load, and
/// under writers as fast as they can. Printed, not asserted.
#[test]
#[ignore = "root: builds lab loop devices, XFS mounts and freezes them"]
fn group_freeze_window_of_three_volumes() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("fsops-window")?;
    let site = lab.add_site("site-a")?;
    let vols: Vec<Volume> = ["v1", "v2", "v3"]
        .iter()
        .map(|n| site.pool().create_volume(n, 1024 * MIB))
        .collect::<anyhow::Result<_>>()?;
    let refs: Vec<&Volume> = vols.iter().collect();
    let mut fs = SystemImages::new();
    measure_windows(&mut fs, &refs, Some(0), Duration::from_millis(200))?;
    measure_windows(&mut fs, &refs, Some(64), Duration::from_secs(2))?;
    measure_windows(&mut fs, &refs, None, Duration::from_secs(1))?;
    Ok(())
}

/// A group freeze that fails on one volume thaws the others; thawing is idempotent; a clone
/// never replaces an existing file.
#[test]
#[ignore = "root: builds lab loop devices, XFS mounts and freezes them"]
fn a_failed_group_freeze_leaves_nothing_frozen() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("fsops-errors")?;
    let site = lab.add_site("site-a")?;
    let (a, b) = (
        site.pool().create_volume("a", 320 * MIB)?,
        site.pool().create_volume("b", 320 * MIB)?,
    );
    let (ma, mb) = (a.mount_point().to_owned(), b.mount_point().to_owned());
    let mut fs = SystemImages::new();

    // `a` twice: one of its freezes fails with EBUSY; the other and `b` are thawed again.
    let err = fs
        .freeze_all(&[ma.clone(), mb.clone(), ma.clone()])
        .unwrap_err();
    ensure!(err.raw_os_error() == Some(libc::EBUSY), "{err}");
    ensure!(
        err.to_string()
            .starts_with(&format!("FIFREEZE {}: ", ma.display())),
        "{err}"
    );
    // Nothing is frozen: freezing both works (and thawing twice is fine).
    fs.freeze_all(&[ma.clone(), mb.clone()])?;
    fs.thaw_all(&[ma.clone(), mb.clone()])?;
    fs.thaw_all(&[ma.clone(), mb.clone()])?;

    let missing = site.dir().join("no-such-mount");
    let err = fs.freeze_all(&[ma.clone(), missing.clone()]).unwrap_err();
    ensure!(
        err.to_string()
            .starts_with(&format!("open {}: ", missing.display())),
        "{err}"
    );
    std::fs::write(ma.join("still-writable"), b"yes")?;

    let clone = a.image().with_extension("c");
    fs.clone_file(a.image(), &clone)?;
    let err = fs.clone_file(b.image(), &clone).unwrap_err();
    ensure!(err.raw_os_error() == Some(libc::EEXIST), "{err}");
    fs.remove(&clone)?;
    Ok(())
}

/// The point in time of a cycle: clones taken while the volumes are live, then caught up inside
/// the freeze with what changed since (`cycle::catch_up`), equal clones taken whole inside the
/// same freeze, block for block: under writers on both volumes, and after a delete + fstrim
/// (punched ranges) between the early clone and the freeze.
#[test]
#[ignore = "root: builds lab loop devices, XFS mounts and freezes them"]
fn clones_caught_up_in_the_freeze_equal_clones_taken_in_it() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("fsops-catchup")?;
    let site = lab.add_site("site-a")?;
    let vols: Vec<Volume> = ["c1", "c2"]
        .iter()
        .map(|n| site.pool().create_volume(n, 512 * MIB))
        .collect::<anyhow::Result<_>>()?;
    let victim = vols[0].mount_point().join("victim");
    std::fs::write(&victim, vec![5u8; 32 * MIB as usize])?;
    let mut fs = SystemImages::new();
    let mounts: Vec<PathBuf> = vols.iter().map(|v| v.mount_point().to_owned()).collect();
    let stop = AtomicBool::new(false);
    let (mut redone, mut punched) = (0u64, 0u64);
    thread::scope(|s| -> anyhow::Result<()> {
        let writers: Vec<_> = vols
            .iter()
            .map(|v| s.spawn(|| load(v.mount_point(), Some(64), &stop)))
            .collect();
        let result = (|| -> anyhow::Result<()> {
            let _stop = StopOnDrop(&stop);
            thread::sleep(Duration::from_millis(500));
            for round in 0..20 {
                let early: Vec<PathBuf> = vols
                    .iter()
                    .map(|v| v.image().with_extension(format!("early{round}")))
                    .collect();
                let whole: Vec<PathBuf> = vols
                    .iter()
                    .map(|v| v.image().with_extension(format!("whole{round}")))
                    .collect();
                let mut before = Vec::new();
                for (v, e) in vols.iter().zip(&early) {
                    fs.flush(v.mount_point(), v.image())?;
                    fs.clone_file(v.image(), e)?;
                    before.push(fs.extents(e)?);
                }
                thread::sleep(Duration::from_millis(50));
                if round == 10 {
                    std::fs::remove_file(&victim)?;
                    sh(&format!("sync; fstrim {}", vols[0].mount_point().display()))?;
                }
                fs.freeze_all(&mounts)?;
                let inside = (|| -> anyhow::Result<()> {
                    for ((v, e), b) in vols.iter().zip(&early).zip(&before) {
                        let changes = changed(
                            b,
                            &fs.extents(v.image())?,
                            fs.size(v.image())?,
                            BLOCK as u64,
                        );
                        let (data, zero) = total(&changes);
                        redone += data;
                        punched += zero;
                        catch_up(&mut fs, v.image(), e, b)?;
                    }
                    for (v, w) in vols.iter().zip(&whole) {
                        fs.clone_file(v.image(), w)?;
                    }
                    Ok(())
                })();
                fs.thaw_all(&mounts)?;
                inside?;
                for (e, w) in early.iter().zip(&whole) {
                    let differ = differing_blocks(e, w)?;
                    ensure!(
                        differ.is_empty(),
                        "round {round}: {} blocks of {} differ from {}, first at block {}",
                        differ.len(),
                        e.display(),
                        w.display(),
                        differ[0]
                    );
                    fs.remove(e)?;
                    fs.remove(w)?;
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        }
        result
    })?;
    eprintln!(
        "caught up {:.1} MiB of data and {:.1} MiB punched over 20 rounds of 2 volumes",
        mib(redone),
        mib(punched)
    );
    ensure!(
        redone > 16 * MIB,
        "the writers changed only {redone} bytes between clone and freeze"
    );
    ensure!(
        punched > 0,
        "the fstrim punched nothing between clone and freeze"
    );
    Ok(())
}
