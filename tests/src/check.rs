//! Small helpers shared by the root tests: shell steps, waiting, and block-by-block compares.
use std::{
    fs::File,
    io::Read as _,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure};

/// Block size of the compares.
pub const BLOCK: usize = 4096;

/// Runs `script` with `sh -e`; returns its stdout, or an error with its stderr.
pub fn sh(script: &str) -> anyhow::Result<String> {
    let out = Command::new("sh").args(["-ec", script]).output()?;
    ensure!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` every 100 ms until it is true, failing after `timeout` with `what`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !f()? {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Indexes of the 4 KiB blocks that differ between two files of the same size.
pub fn differing_blocks(a: &Path, b: &Path) -> anyhow::Result<Vec<u64>> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    ensure!(
        fa.metadata()?.len() == fb.metadata()?.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    let mut out = Vec::new();
    let (mut ba, mut bb) = (vec![0u8; 256 * BLOCK], vec![0u8; 256 * BLOCK]);
    let mut block = 0u64;
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        ensure!(read_full(&mut fb, &mut bb)? == n, "short read");
        if n == 0 {
            return Ok(out);
        }
        for (x, y) in ba[..n].chunks(BLOCK).zip(bb[..n].chunks(BLOCK)) {
            if x != y {
                out.push(block);
            }
            block += 1;
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> anyhow::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The write workload of the completeness and change-detection tests, in two phases, as shell
/// steps on the file system mounted at `m`: buffered, O_DIRECT, in-place overwrites and 1,500
/// small files; then deletes and fstrim.
pub fn write_phases(m: &Path) -> [(&'static str, Vec<String>); 2] {
    let m = m.display();
    [
        (
            "writes",
            vec![
                format!("dd if=/dev/urandom of='{m}/buffered' bs=64k count=200 status=none"),
                format!(
                    "dd if=/dev/urandom of='{m}/direct' bs=1M count=16 oflag=direct status=none"
                ),
                format!(
                    "dd if=/dev/urandom of='{m}/seed' bs=4k count=300 seek=1000 conv=notrunc status=none"
                ),
                format!(
                    "dd if=/dev/urandom of='{m}/seed' bs=512 count=3 seek=7 conv=notrunc oflag=direct status=none"
                ),
                format!(
                    "mkdir '{m}/small'; for i in $(seq 1 1500); do head -c $((i % 7000 + 1)) /dev/urandom > '{m}/small/f'$i; done"
                ),
            ],
        ),
        (
            "deletes and fstrim",
            vec![
                format!("rm '{m}/buffered' '{m}/direct'; rm '{m}'/small/f1*"),
                format!("sync; fstrim '{m}'"),
            ],
        ),
    ]
}

/// The trees `expected` and `actual` hold the same files, links and contents (`diff -r
/// --no-dereference`); else an error with the differences.
pub fn same_tree(expected: &Path, actual: &Path) -> anyhow::Result<()> {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(expected)
        .arg(actual)
        .output()?;
    ensure!(
        out.status.success(),
        "{} differs from {}:\n{}",
        actual.display(),
        expected.display(),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}
