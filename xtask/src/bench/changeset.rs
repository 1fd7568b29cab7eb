//! The change set of the replication benchmark: a seeded base data set, then random 4-64 KiB
//! writes into existing files and new files; and the byte ranges that differ between two images.
//!
//! Data is half random, half repeated text per 4 KiB block, so compressing codecs get roughly
//! 2:1 (as file-server data often does) and no tool gets all-zero or all-random blocks.
use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

const BLOCK: u64 = 4096;
const BASE_FILE: u64 = 16 << 20;

/// SplitMix64: small, fast, reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Fills `buf` block by block: the first half of each 4 KiB random, the second half a
    /// repeated 16-byte word.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for block in buf.chunks_mut(BLOCK as usize) {
            let half = block.len() / 2;
            for c in block[..half].chunks_mut(8) {
                let r = self.next_u64().to_le_bytes();
                c.copy_from_slice(&r[..c.len()]);
            }
            let word = [self.next_u64().to_le_bytes(), *b"vfsdr-bn"].concat();
            for (i, b) in block[half..].iter_mut().enumerate() {
                *b = word[i % word.len()];
            }
        }
    }
}

/// Fills `dir/base/` with files of 16 MiB (the last one shorter) up to `bytes`, fsynced.
pub fn fill_base(dir: &Path, bytes: u64, rng: &mut Rng) -> anyhow::Result<Vec<(PathBuf, u64)>> {
    let base = dir.join("base");
    std::fs::create_dir_all(&base)?;
    let mut files = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let len = left.min(BASE_FILE);
        let path = base.join(format!("f{:04}", files.len()));
        let mut f =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n])?;
            done += n as u64;
        }
        f.sync_all()?;
        files.push((path, len));
        left -= len;
    }
    Ok(files)
}

/// What [`apply_changes`] did.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub writes: u64,
    pub written_bytes: u64,
    pub new_files: u64,
    pub new_bytes: u64,
}

/// Changes about `bytes`: `(100 - new_percent)%` as random writes of 4-64 KiB (4 KiB aligned)
/// into the base files, the rest as new files of 64 KiB-4 MiB in `dir/new/`; all fsynced.
pub fn apply_changes(
    dir: &Path,
    base: &[(PathBuf, u64)],
    bytes: u64,
    new_percent: u64,
    rng: &mut Rng,
) -> anyhow::Result<Applied> {
    let mut a = Applied::default();
    let in_place = bytes * (100 - new_percent.min(100)) / 100;
    let files: Vec<(File, u64)> = base
        .iter()
        .filter(|(_, len)| *len >= 64 * 1024)
        .map(|(p, len)| {
            OpenOptions::new()
                .write(true)
                .open(p)
                .map(|f| (f, *len))
                .with_context(|| format!("cannot open {}", p.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!files.is_empty() || in_place == 0, "no base file to change");
    let mut buf = vec![0u8; 4 << 20];
    while a.written_bytes < in_place {
        let (f, len) = &files[rng.below(files.len() as u64) as usize];
        let size = BLOCK * (1 + rng.below(16));
        let off = BLOCK * rng.below((len - size) / BLOCK + 1);
        rng.fill(&mut buf[..size as usize]);
        f.write_all_at(&buf[..size as usize], off)?;
        a.writes += 1;
        a.written_bytes += size;
    }
    for (f, _) in &files {
        f.sync_all()?;
    }
    let new_dir = dir.join("new");
    std::fs::create_dir_all(&new_dir)?;
    while a.new_bytes < bytes - in_place {
        let size = BLOCK * (16 + rng.below(1009));
        let path = new_dir.join(format!("n{:05}", a.new_files));
        let mut f =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        rng.fill(&mut buf[..size as usize]);
        f.write_all(&buf[..size as usize])?;
        f.sync_all()?;
        a.new_files += 1;
        a.new_bytes += size;
    }
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    Ok(a)
}

/// The byte ranges `[start, end)` (4 KiB granularity, coalesced) where `a` and `b` differ.
pub fn differing_ranges(a: &Path, b: &Path) -> anyhow::Result<Vec<(u64, u64)>> {
    let blocks = vfsdr_lab::check::differing_blocks(a, b)?;
    Ok(coalesce(&blocks))
}

fn coalesce(blocks: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &blk in blocks {
        let (s, e) = (blk * BLOCK, (blk + 1) * BLOCK);
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => out.push((s, e)),
        }
    }
    out
}

pub fn total(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|(s, e)| e - s).sum()
}

/// Writes the ranges of `src` into `dst` at the same offsets, then fsyncs `dst`.
pub fn copy_ranges(src: &Path, dst: &Path, ranges: &[(u64, u64)]) -> anyhow::Result<()> {
    let s = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let d = OpenOptions::new()
        .write(true)
        .open(dst)
        .with_context(|| format!("cannot open {}", dst.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    for &(start, end) in ranges {
        let mut off = start;
        while off < end {
            let n = (end - off).min(buf.len() as u64) as usize;
            s.read_exact_at(&mut buf[..n], off)?;
            d.write_all_at(&buf[..n], off)?;
            off += n as u64;
        }
    }
    d.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_is_reproducible_and_fills_half_compressible_blocks() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let (mut x, mut y) = (vec![0u8; 8192], vec![0u8; 8192]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        assert_eq!(x[2048..2064], x[2064..2080]);
        assert_ne!(x[..16], x[16..32]);
        assert!((0..1000).all(|_| a.below(10) < 10));
    }

    #[test]
    fn adjacent_blocks_coalesce() {
        assert_eq!(
            coalesce(&[0, 1, 2, 5, 7, 8]),
            vec![
                (0, 3 * BLOCK),
                (5 * BLOCK, 6 * BLOCK),
                (7 * BLOCK, 9 * BLOCK)
            ]
        );
        assert_eq!(total(&coalesce(&[1, 3])), 2 * BLOCK);
    }
}
