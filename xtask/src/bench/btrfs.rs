//! The btrfs side of the replication benchmark: a loop-backed btrfs pool per site, a subvolume
//! holding the same image file, and `btrfs send -p | btrfs receive` over the lab link.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use vfsdr_lab::Site;

use super::link;

/// A btrfs file system on a sparse file, mounted with `-o loop` (the loop device goes with the
/// unmount). Dropping it unmounts it and removes the file and the mount point.
pub struct BtrfsPool {
    file: PathBuf,
    mount: PathBuf,
}

impl BtrfsPool {
    pub fn create(dir: &Path, size: u64) -> anyhow::Result<Self> {
        let file = dir.join("btrfs.img");
        let mount = dir.join("btrfs");
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(size))
            .with_context(|| format!("cannot create {}", file.display()))?;
        let pool = Self {
            file: file.clone(),
            mount: mount.clone(),
        };
        link::run(Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&file))?;
        std::fs::create_dir_all(&mount)?;
        link::run(
            Command::new("mount")
                .args(["-t", "btrfs", "-o", "loop"])
                .arg(&file)
                .arg(&mount),
        )?;
        Ok(pool)
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for BtrfsPool {
    fn drop(&mut self) {
        let mounted = || {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(&*self.mount.to_string_lossy()))
        };
        for _ in 0..10 {
            if !mounted() {
                break;
            }
            let _ = Command::new("umount").arg(&self.mount).status();
            if mounted() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if mounted() {
            eprintln!(
                "warning: {} still busy, unmounting lazily",
                self.mount.display()
            );
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        let _ = std::fs::remove_dir(&self.mount);
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The untimed setup of the btrfs run: at the active site a subvolume `vol` with `data.img` =
/// `prev` (sparse copy), its read-only snapshot `vol@1` received at the DR site; then the
/// changed `ranges` of `new` written into `vol/data.img` and fsynced (the same writes the volume
/// took, at block level).
pub fn prepare(
    a: &Site,
    b: &Site,
    pa: &BtrfsPool,
    pb: &BtrfsPool,
    prev: &Path,
    new: &Path,
    ranges: &[(u64, u64)],
) -> anyhow::Result<()> {
    let vol = pa.path().join("vol");
    let s1 = pa.path().join("vol@1");
    link::run(
        Command::new("btrfs")
            .args(["-q", "subvolume", "create"])
            .arg(&vol),
    )?;
    let image = vol.join("data.img");
    link::run(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(prev)
            .arg(&image),
    )?;
    link::run(Command::new("sync").arg("-f").arg(&image))?;
    link::run(
        Command::new("btrfs")
            .args(["-q", "subvolume", "snapshot", "-r"])
            .arg(&vol)
            .arg(&s1),
    )?;
    let initial = stream(
        a,
        b,
        &["send".as_ref(), "-q".as_ref(), s1.as_os_str()],
        pb.path(),
    )?;
    eprintln!("btrfs: initial stream {initial} bytes received");
    super::changeset::copy_ranges(new, &image, ranges)?;
    Ok(())
}

/// The timed part: the read-only snapshot `vol@2`, `btrfs send -p vol@1 vol@2` piped over the
/// lab link into `btrfs receive`, and a syncfs of the DR pool. Returns the time, the stream
/// bytes, and the received image.
pub fn incremental(
    a: &Site,
    b: &Site,
    pa: &BtrfsPool,
    pb: &BtrfsPool,
) -> anyhow::Result<(Duration, u64, PathBuf)> {
    let vol = pa.path().join("vol");
    let s1 = pa.path().join("vol@1");
    let s2 = pa.path().join("vol@2");
    let start = Instant::now();
    link::run(
        Command::new("btrfs")
            .args(["-q", "subvolume", "snapshot", "-r"])
            .arg(&vol)
            .arg(&s2),
    )?;
    let bytes = stream(
        a,
        b,
        &[
            "send".as_ref(),
            "-q".as_ref(),
            "-p".as_ref(),
            s1.as_os_str(),
            s2.as_os_str(),
        ],
        pb.path(),
    )?;
    link::run(Command::new("sync").arg("-f").arg(pb.path()))?;
    let took = start.elapsed();
    let received = pb.path().join("vol@2/data.img");
    ensure!(
        received.is_file(),
        "btrfs receive did not create {}",
        received.display()
    );
    Ok((took, bytes, received))
}

/// `btrfs SEND_ARGS` at the active site, its stream over the lab link into `btrfs receive DIR`.
fn stream(a: &Site, b: &Site, send_args: &[&std::ffi::OsStr], dir: &Path) -> anyhow::Result<u64> {
    let mut send = Command::new("btrfs")
        .args(send_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start btrfs send")?;
    let mut recv = Command::new("btrfs")
        .args(["receive", "-q"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start btrfs receive")?;
    let input = send.stdout.take().context("send stdout")?;
    let output = recv.stdin.take().context("receive stdin")?;
    let piped = link::pipe(
        a.netns().path(),
        b.netns().path(),
        b.address(),
        input,
        output,
    );
    let s = send.wait_with_output()?;
    let r = recv.wait_with_output()?;
    let bytes = piped?;
    ensure!(
        s.status.success(),
        "btrfs send failed: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    ensure!(
        r.status.success(),
        "btrfs receive failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    Ok(bytes)
}
