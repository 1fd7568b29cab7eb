//! Removing what labs of dead processes left behind (a test run killed with SIGKILL, a demo that
//! lost its terminal): their daemons, namespaces, mounts, loop devices and directories.
use std::{fs, path::Path, thread, time::Duration};

use crate::{
    cmd::{command, run},
    guard::release_tree,
    lab::{DIR_PREFIX, NETNS_PREFIX, owner_pid},
    sys,
};

/// Tears down every lab whose creating process is gone, recognised by name: namespaces
/// `vfsdr-<pid>x...` and directories `<tmp>/vfsdr-lab-<pid>x...` whose `<pid>` is not running.
/// Processes still inside such a namespace are killed by pid (SIGKILL) first. Labs of live
/// processes are never touched. Returns one line per thing removed. Needs root.
pub fn sweep_stale() -> anyhow::Result<Vec<String>> {
    crate::require_root()?;
    let mut done = Vec::new();
    for name in sys::netns_names() {
        let Some(pid) = name.strip_prefix(NETNS_PREFIX).and_then(owner_pid) else {
            continue;
        };
        if alive(pid) {
            continue;
        }
        let path = Path::new("/run/netns").join(&name);
        for p in sys::pids_in_netns(&path) {
            // SAFETY: kill has no memory-safety preconditions.
            if unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) } == 0 {
                done.push(format!(
                    "killed process {p} left in network namespace {name}"
                ));
            }
        }
        for _ in 0..50 {
            if sys::pids_in_netns(&path).is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        match run(&mut command("ip", ["netns", "delete", name.as_str()])) {
            Ok(_) => done.push(format!("deleted network namespace {name}")),
            Err(e) => eprintln!("vfsdr-lab: sweep: {e:#}"),
        }
    }
    let tmp = std::env::temp_dir();
    let Ok(entries) = fs::read_dir(&tmp) else {
        return Ok(done);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(DIR_PREFIX).and_then(owner_pid) else {
            continue;
        };
        if alive(pid) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = e.path();
        let mounts = sys::mounts_under(&dir).len();
        let loops = sys::loops_backed_under(&dir).len();
        release_tree(&dir);
        if !sys::mounts_under(&dir).is_empty() {
            eprintln!(
                "vfsdr-lab: sweep: {} still has mounts below it; left in place",
                dir.display()
            );
            continue;
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => done.push(format!(
                "removed {} ({mounts} mounts, {loops} loop devices released)",
                dir.display()
            )),
            Err(e) => eprintln!("vfsdr-lab: sweep: cannot remove {}: {e}", dir.display()),
        }
    }
    // Loop devices whose backing files were already deleted, below a dead lab's directory.
    for l in sys::loop_devices() {
        let Some(rest) = l
            .backing_file
            .strip_prefix(&tmp)
            .ok()
            .and_then(|r| r.iter().next())
        else {
            continue;
        };
        let Some(pid) = rest
            .to_str()
            .and_then(|r| r.strip_prefix(DIR_PREFIX))
            .and_then(owner_pid)
        else {
            continue;
        };
        if l.deleted
            && !alive(pid)
            && run(&mut command(
                "losetup",
                ["-d".as_ref(), l.device.as_os_str()],
            ))
            .is_ok()
        {
            done.push(format!(
                "detached {} (backed by deleted {})",
                l.device.display(),
                l.backing_file.display()
            ));
        }
    }
    Ok(done)
}

fn alive(pid: u32) -> bool {
    sys::process_start_time(pid).is_some()
}
