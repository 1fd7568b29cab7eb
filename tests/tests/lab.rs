//! Root tests of the lab itself: build it, use it, tear it down, and prove nothing is left.
//!
//! Run as root: `cargo test -p vfsdr-lab -- --ignored --test-threads=1`.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    panic::{AssertUnwindSafe, catch_unwind},
    path::Path,
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use vfsdr_lab::{Footprint, Lab, MIB, Netns, sweep_stale, sys};

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("tool runs");
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks with the system tools that nothing of the lab is left, then with [`Footprint::leftovers`].
fn assert_nothing_left(fp: &Footprint) {
    assert!(
        !fp.netns.is_empty() && !fp.files.is_empty(),
        "footprint is empty: {fp:?}"
    );
    let listed = sh("ip", &["netns", "list"]);
    for ns in &fp.netns {
        assert!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns.as_str())),
            "netns {ns} left:\n{listed}"
        );
    }
    for f in &fp.files {
        let f = f.to_str().unwrap();
        // `losetup -j` finds nothing once the file is gone, so also look at every loop device.
        assert_eq!(
            sh("losetup", &["-j", f]).trim(),
            "",
            "loop device left for {f}"
        );
    }
    let all_loops = sh("losetup", &["-a"]);
    let dir = fp.dir.to_str().unwrap();
    assert!(
        !all_loops.contains(dir),
        "loop device left under {dir}:\n{all_loops}"
    );
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(dir), "mount left under {dir}:\n{mounts}");
    assert!(!fp.dir.exists(), "{dir} left");
    let left = fp.leftovers();
    assert!(left.is_empty(), "leftovers: {left:#?}");
}

fn netns_inode(path: &Path) -> u64 {
    fs::metadata(path).unwrap().ino()
}

fn ns_link(pid: u32, kind: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts"]
fn sites_pool_volume_daemon_and_clean_teardown() {
    let lab = Lab::new("sites_pool_volume").unwrap();
    let a = lab.add_site("a").unwrap();
    let b = lab.add_site("b").unwrap();
    let client = lab.add_client("client").unwrap();
    assert_eq!(a.address().to_string(), "198.18.0.1");
    assert_eq!(b.address().to_string(), "198.18.0.2");
    assert_eq!(client.address().to_string(), "198.18.0.200");
    assert!(lab.add_site("a").is_err(), "duplicate names are refused");

    // The LAN works inside the lab, and there is no way out of it.
    a.ping(lab.lan().address()).unwrap();
    a.ping(b.address()).unwrap();
    client.ping(a.address()).unwrap();
    let routes = a.run("ip", ["-4", "route", "show"]).unwrap();
    assert!(!routes.contains("default"), "{routes}");
    assert!(a.ping("8.8.8.8".parse().unwrap()).is_err());
    // The site's interfaces are in its namespace, not in ours.
    let links = a.run("ip", ["-o", "link", "show"]).unwrap();
    assert!(links.contains("eth0@"), "{links}");

    // Directories and pool.
    for d in [a.config_dir(), a.state_dir(), a.run_dir()] {
        assert!(d.is_dir(), "{}", d.display());
    }
    let pool = a.pool();
    assert!(sys::is_mounted(pool.mount_point()));
    let info = sh("xfs_info", &[pool.mount_point().to_str().unwrap()]);
    assert!(info.contains("reflink=1"), "{info}");

    // A volume in the pool, written through its mount.
    let vol = pool.create_volume("vol1", 320 * MIB).unwrap();
    assert!(vol.image().starts_with(pool.mount_point()));
    assert_eq!(
        sys::loop_backing_file(vol.loop_device()).as_deref(),
        Some(vol.image())
    );
    assert!(sys::is_mounted(vol.mount_point()));
    let file = vol.mount_point().join("hello.txt");
    fs::write(&file, b"hello lab\n").unwrap();
    assert_eq!(fs::read(&file).unwrap(), b"hello lab\n");
    assert_eq!(fs::metadata(vol.image()).unwrap().len(), 320 * MIB);

    // A daemon in the site's network namespace, but in our mount namespace.
    let daemon = a.spawn("sleep", ["1000"]).unwrap();
    let pid = daemon.pid();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        ns_link(pid, "net"),
        format!("net:[{}]", netns_inode(&a.netns().path()))
    );
    assert_eq!(
        ns_link(pid, "mnt"),
        ns_link(std::process::id(), "mnt"),
        "nsenter must not unshare mounts"
    );
    assert_eq!(
        fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "sleep"
    );

    let fp = lab.footprint();
    assert_eq!(fp.netns.len(), 4, "{fp:?}"); // lan, a, b, client
    assert_eq!(fp.files.len(), 3, "{fp:?}"); // two pools, one volume
    assert_eq!(fp.processes.len(), 1, "{fp:?}");
    let left = fp.leftovers();
    // 4 namespaces, 3 loop devices, 3 mounts, the directory, the daemon.
    assert_eq!(left.len(), 4 + 3 + 3 + 1 + 1, "{left:#?}");

    // Drop in an order that is not the creation order: guards keep dependencies alive.
    drop(lab);
    drop(a);
    drop(client);
    assert!(
        sys::is_mounted(vol.mount_point()),
        "the volume keeps its pool and the lab alive"
    );
    drop(vol);
    drop(b);
    assert!(
        sys::process_start_time(pid).is_some(),
        "daemon still runs until dropped"
    );
    drop(daemon);
    assert_nothing_left(&fp);
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts"]
fn a_panicking_test_still_tears_down() {
    let footprint = Mutex::new(None);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let lab = Lab::new("panicking").unwrap();
        let site = lab.add_site("site").unwrap();
        let vol = site.pool().create_volume("v", 300 * MIB).unwrap();
        fs::write(vol.mount_point().join("f"), b"x").unwrap();
        // A daemon with its cwd on the volume: it must be stopped before the volume unmounts.
        let mut cmd = site.command("sleep");
        cmd.arg("1000")
            .current_dir(vol.mount_point())
            .stdin(Stdio::null());
        let _daemon = site.spawn_command(cmd).unwrap();
        site.ping(lab.lan().address()).unwrap();
        *footprint.lock().unwrap() = Some(lab.footprint());
        panic!("test body fails after building the lab");
    }));
    assert!(result.is_err());
    let fp = footprint
        .lock()
        .unwrap()
        .take()
        .expect("footprint taken before the panic");
    assert_nothing_left(&fp);
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts"]
fn busy_volume_is_unmounted_lazily_and_released() {
    let lab = Lab::new("busy_volume").unwrap();
    let site = lab.add_site("s").unwrap();
    let fp;
    {
        // Daemon declared before the volume, so it outlives it: the volume's unmount finds it busy.
        let mut cmd = site.command("sleep");
        let mp = site.pool().volumes_dir().join("busy");
        fs::create_dir(&mp).unwrap();
        cmd.arg("1000").current_dir(&mp).stdin(Stdio::null());
        let vol =
            vfsdr_lab::Volume::create(&site.pool().mount_point().join("busy.img"), &mp, 300 * MIB)
                .unwrap();
        let daemon = site.spawn_command(cmd).unwrap();
        fp = lab.footprint();
        drop(vol);
        assert!(!sys::is_mounted(&mp), "lazily unmounted");
        drop(daemon);
        fs::remove_dir(&mp).unwrap();
    }
    drop(site);
    drop(lab);
    // Lazy unmounts finish when the last user goes; the loop device clears asynchronously.
    for _ in 0..50 {
        if fp.leftovers().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The volume was made outside the lab's registry; its loop device is still found by directory.
    assert_nothing_left(&fp);
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts"]
fn daemon_is_stopped_by_pid_with_its_process_group() {
    let ns = Netns::create(&format!("vfsdr-{}x0-daemon-test", std::process::id())).unwrap();
    // A shell that ignores SIGTERM and has a child: stop must escalate to SIGKILL and take the child.
    let daemon = ns
        .spawn("sh", ["-c", "trap '' TERM; sleep 1000 & wait"])
        .unwrap();
    let pid = daemon.pid();
    std::thread::sleep(Duration::from_millis(200));
    let group: Vec<u32> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s[s.rfind(')')? + 2..]
                        .split(' ')
                        .nth(2)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(pid)
        })
        .collect();
    assert!(group.len() >= 2, "shell and its sleep: {group:?}");
    let started = std::time::Instant::now();
    let status = daemon.stop_timeout(Duration::from_millis(500)).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    for p in group {
        // stop() waited for the whole group; a SIGKILLed child is reaped by init.
        assert!(
            sys::process_start_time(p).is_none(),
            "process {p} of the group survived"
        );
    }
    // A well-behaved daemon stops on SIGTERM.
    let daemon = ns.spawn("sleep", ["1000"]).unwrap();
    let status = daemon.stop().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM)
    );
    let path = ns.path();
    drop(ns);
    assert!(!path.exists());
}

/// The child half of `sweep_removes_labs_of_dead_processes`: a no-op unless that test re-runs this
/// binary with VFSDR_LAB_LEAK_TO set. It builds a lab and dies by SIGKILL, so no guard runs.
#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts"]
fn leaky_child() {
    let Some(out) = std::env::var_os("VFSDR_LAB_LEAK_TO") else {
        return;
    };
    let lab = Lab::new("leaky").unwrap();
    let site = lab.add_site("s").unwrap();
    let vol = site.pool().create_volume("v", 300 * MIB).unwrap();
    let daemon = site.spawn("sleep", ["1000"]).unwrap();
    let fp = lab.footprint();
    let mut text = format!("dir {}\n", fp.dir.display());
    text += &fp
        .netns
        .iter()
        .map(|n| format!("netns {n}\n"))
        .collect::<String>();
    text += &fp
        .files
        .iter()
        .map(|f| format!("file {}\n", f.display()))
        .collect::<String>();
    text += &fp
        .processes
        .iter()
        .map(|(p, s)| format!("process {p} {s}\n"))
        .collect::<String>();
    fs::write(out, text).unwrap();
    let _keep = (lab, site, vol, daemon);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts"]
fn sweep_removes_labs_of_dead_processes() {
    let out = std::env::temp_dir().join(format!("vfsdr-lab-leak-{}.txt", std::process::id()));
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "leaky_child", "--ignored", "--nocapture"])
        .env("VFSDR_LAB_LEAK_TO", &out)
        .status()
        .unwrap();
    assert!(!status.success(), "the child dies by SIGKILL");
    let text = fs::read_to_string(&out).unwrap();
    fs::remove_file(&out).unwrap();
    let mut fp = Footprint::default();
    for line in text.lines() {
        match line.split_once(' ').unwrap() {
            ("dir", d) => fp.dir = d.into(),
            ("netns", n) => fp.netns.push(n.into()),
            ("file", f) => fp.files.push(f.into()),
            ("process", p) => {
                let (pid, start) = p.split_once(' ').unwrap();
                fp.processes
                    .push((pid.parse().unwrap(), start.parse().unwrap()));
            }
            other => panic!("bad line {other:?}"),
        }
    }
    let left = fp.leftovers();
    assert!(
        left.len() > 2 + 2,
        "the killed child left its lab behind: {left:#?}"
    );
    let swept = sweep_stale().unwrap();
    eprintln!("swept:\n{}", swept.join("\n"));
    assert_nothing_left(&fp);
}
