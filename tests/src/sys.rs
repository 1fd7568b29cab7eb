//! Read-only views of what the kernel holds: mounts, loop devices, network namespaces, processes.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Mount points from /proc/mounts (octal escapes decoded), in mount order.
pub fn mount_points() -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/mounts") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(|p| PathBuf::from(unescape_mount(p)))
        .collect()
}

/// Mount points at or below `dir`, deepest (last mounted) first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    v.reverse();
    v.dedup();
    v
}

pub fn is_mounted(path: &Path) -> bool {
    mount_points().iter().any(|m| m == path)
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A loop device and its backing file (as sysfs reports it, without the " (deleted)" suffix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopDevice {
    pub device: PathBuf,
    pub backing_file: PathBuf,
    /// The backing file has been unlinked.
    pub deleted: bool,
    /// The kernel detaches it by itself when its last user closes it (set by a detach of a busy
    /// device, or by `mount -o loop`).
    pub autoclear: bool,
}

/// Every bound loop device, from /sys/block/loop*/loop/backing_file.
pub fn loop_devices() -> Vec<LoopDevice> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(back) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue; // not bound
        };
        let back = back.trim_end_matches('\n');
        let (file, deleted) = match back.strip_suffix(" (deleted)") {
            Some(f) => (f, true),
            None => (back, false),
        };
        let autoclear =
            fs::read_to_string(e.path().join("loop/autoclear")).is_ok_and(|a| a.trim() == "1");
        v.push(LoopDevice {
            device: PathBuf::from("/dev").join(&name),
            backing_file: file.into(),
            deleted,
            autoclear,
        });
    }
    v.sort_by(|a, b| a.device.cmp(&b.device));
    v
}

/// Loop devices whose backing file is `file`.
pub fn loops_backed_by(file: &Path) -> Vec<LoopDevice> {
    loop_devices()
        .into_iter()
        .filter(|l| l.backing_file == file)
        .collect()
}

/// Loop devices whose backing file lies below `dir`.
pub fn loops_backed_under(dir: &Path) -> Vec<LoopDevice> {
    loop_devices()
        .into_iter()
        .filter(|l| l.backing_file.starts_with(dir))
        .collect()
}

/// The loop device's backing file, if it is bound.
pub fn loop_backing_file(device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?;
    loop_devices()
        .into_iter()
        .find(|l| l.device.file_name() == Some(name))
        .map(|l| l.backing_file)
}

/// Names of the named network namespaces (/run/netns).
pub fn netns_names() -> Vec<String> {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A process identity that survives pid reuse: pid plus start time (clock ticks since boot).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state); starttime is field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None; // a zombie is as good as gone (its parent reaps it)
    }
    fields.get(22 - 3)?.parse().ok()
}

/// Pids of processes whose network namespace is the one bound at `ns_path`.
pub fn pids_in_netns(ns_path: &Path) -> Vec<u32> {
    let Ok(meta) = fs::metadata(ns_path) else {
        return Vec::new();
    };
    let want = format!("net:[{}]", meta.ino());
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l.to_string_lossy() == want)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal_in_mount_points() {
        assert_eq!(unescape_mount("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/x\\"), "/x\\");
    }

    #[test]
    fn own_start_time_is_readable() {
        assert!(process_start_time(std::process::id()).is_some());
    }
}
