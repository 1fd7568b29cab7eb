//! Root tests of the VFS volume life cycle at the active site: the agent creates each volume's
//! image (sparse, in the pool), formats it (XFS with reflink), attaches it to a loop device and
//! mounts it under the site's mount root; a restart (even after kill -9) finds it all present
//! and formats nothing; a foreign mount at a mount path is refused and left alone; a VFS that
//! leaves the configuration is unmounted and detached, its images kept.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, ensure};
use serde_json::Value;
use vfsdr_lab::{
    Lab,
    agent::{Agent, make_certs, mount_root, resources, write_config_with_peers},
    check::{sh, wait_for},
    require_root,
};

fn vfs_item(name: &str, volumes: &str, host: u8) -> String {
    format!(
        "  - name: {name}\n    volumes:\n{volumes}    interfaces:\n      - {{name: smb0, address: 198.18.0.{}/24, network: lan}}\n    \
         smb:\n      netbios_name: {}\n    replication:\n      peer: site-b\n      interval: 1h\n",
        100 + u32::from(host),
        name.to_uppercase()
    )
}

/// The mountinfo line of what is mounted at `target`, if anything (the top one).
fn mounted_at(target: &Path) -> anyhow::Result<Option<String>> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    Ok(mounts
        .lines()
        .rfind(|l| l.split(' ').nth(1) == target.to_str())
        .map(str::to_owned))
}

fn count_mounts(target: &Path) -> anyhow::Result<usize> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    Ok(mounts
        .lines()
        .filter(|l| l.split(' ').nth(1) == target.to_str())
        .count())
}

fn volume_states(agent: &Agent) -> anyhow::Result<Vec<Value>> {
    let status = agent.status()?;
    Ok(status["vfs_volumes"]
        .as_array()
        .context("no vfs_volumes in the status")?
        .clone())
}

fn state_of<'a>(states: &'a [Value], name: &str) -> anyhow::Result<&'a Value> {
    states
        .iter()
        .find(|s| {
            format!(
                "{}/{}",
                s["vfs"].as_str().unwrap_or(""),
                s["volume"].as_str().unwrap_or("")
            ) == name
        })
        .with_context(|| format!("{name} not in {states:?}"))
}

fn uuid(image: &Path) -> anyhow::Result<String> {
    let out = sh(&format!("blkid -p -o value -s UUID '{}'", image.display()))?;
    Ok(out.trim().to_owned())
}

fn loops_of(image: &Path) -> anyhow::Result<String> {
    Ok(sh(&format!("losetup -j '{}'", image.display()))?
        .trim()
        .to_owned())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn the_agent_brings_up_its_volumes_and_a_restart_keeps_them() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("vol-lifecycle")?;
    let a = lab.add_site("site-a")?;
    let b = lab.add_site("site-b")?;
    let root = mount_root(&a)?;
    let certs = lab.dir().join("certs");
    std::fs::create_dir_all(&certs)?;
    make_certs(&certs, &["site-a", "site-b"])?;
    let logs_mount = root.path().join("absolute/fs1-logs");
    let fs1 = vfs_item(
        "fs1",
        &format!(
            "      - {{name: data, size: 512MiB}}\n      - {{name: logs, size: 320MiB, mount: {}}}\n",
            logs_mount.display()
        ),
        0,
    );
    let body = |vfs: &str| format!("{}vfs:\n{vfs}", resources(&a, root.path(), ""));
    let config = write_config_with_peers(&a, &certs, &[&b], &body(&fs1))?;
    let data_mount = root.path().join("fs1/data");
    let data_image = a.pool().mount_point().join("volumes/fs1/data.img");
    let logs_image = a.pool().mount_point().join("volumes/fs1/logs.img");

    let agent = Agent::start(&a, &config)?;
    let log = agent.log_text();
    for event in [
        "volume_created",
        "volume_formatted",
        "volume_attached",
        "volume_mounted",
    ] {
        ensure!(
            log.matches(event).count() == 2,
            "{event} twice expected:\n{log}"
        );
    }
    let states = volume_states(&agent)?;
    for (name, mount) in [("fs1/data", &data_mount), ("fs1/logs", &logs_mount)] {
        let s = state_of(&states, name)?;
        ensure!(s["ready"] == true, "{s}");
        let line =
            mounted_at(mount)?.with_context(|| format!("{} not mounted", mount.display()))?;
        ensure!(
            line.starts_with("/dev/loop") && line.contains(" xfs rw,"),
            "{line}"
        );
        let device = line.split(' ').next().unwrap_or("");
        ensure!(
            s["state"] == format!("mounted at {} via {device}", mount.display()),
            "{s}"
        );
    }
    // Sparse, and XFS with reflink (the cycles clone the images).
    let allocated = sh(&format!("du -k '{}' | cut -f1", data_image.display()))?;
    let allocated: u64 = allocated.trim().parse().context("du")?;
    ensure!(
        allocated < 100 * 1024,
        "the image is not sparse: {allocated} KiB"
    );
    let info = sh(&format!("xfs_info '{}'", data_mount.display()))?;
    ensure!(info.contains("reflink=1"), "{info}");
    ensure!(
        sh(&format!("stat -c %s '{}'", logs_image.display()))?.trim() == (320u64 << 20).to_string()
    );

    // A file survives a kill -9 and restart: nothing is formatted again.
    let uuid_before = uuid(&data_image)?;
    sh(&format!(
        "dd if=/dev/urandom of='{}/file' bs=1M count=4 status=none && sync",
        data_mount.display()
    ))?;
    let sum = sh(&format!("sha256sum < '{}/file'", data_mount.display()))?;
    agent.kill()?;
    ensure!(
        mounted_at(&data_mount)?.is_some(),
        "the volume went with the agent"
    );
    let agent = Agent::start(&a, &config)?;
    let log = agent.log_text();
    for event in [
        "volume_created",
        "volume_formatted",
        "volume_attached",
        "volume_mounted",
    ] {
        ensure!(!log.contains(event), "{event} after a restart:\n{log}");
    }
    ensure!(
        uuid(&data_image)? == uuid_before,
        "the file system was made again"
    );
    ensure!(sh(&format!("sha256sum < '{}/file'", data_mount.display()))? == sum);
    ensure!(count_mounts(&data_mount)? == 1, "mounted twice");
    ensure!(
        loops_of(&data_image)?.lines().count() == 1,
        "{}",
        loops_of(&data_image)?
    );
    ensure!(volume_states(&agent)?.iter().all(|s| s["ready"] == true));
    let listed = agent.cli(["vfs"])?;
    ensure!(
        listed.contains(&format!(
            "  volume data: mounted at {}",
            data_mount.display()
        )),
        "{listed}"
    );

    // A new VFS whose mount path holds a foreign mount: refused with the holder named, nothing
    // done for it; fs1 goes on.
    let fs2_mount = root.path().join("fs2/data");
    std::fs::create_dir_all(&fs2_mount)?;
    sh(&format!(
        "mount -t tmpfs vfsdr-foreign '{}'",
        fs2_mount.display()
    ))?;
    let fs2 = vfs_item("fs2", "      - {name: data, size: 512MiB}\n", 1);
    let refused = (|| {
        reload(&agent, &config, &body(&format!("{fs1}{fs2}")))?;
        let states = volume_states(&agent)?;
        let s = state_of(&states, "fs2/data")?;
        let error = s["error"].as_str().unwrap_or("");
        ensure!(
            s["ready"] == false
                && error.contains("VFS fs2 volume data: mount:")
                && error.contains("is held by vfsdr-foreign (tmpfs)"),
            "{s}"
        );
        ensure!(agent.log_text().contains("volume_failed"));
        ensure!(state_of(&states, "fs1/data")?["ready"] == true);
        ensure!(
            !a.pool().mount_point().join("volumes/fs2").exists(),
            "an image was created for a refused volume"
        );
        let top = mounted_at(&fs2_mount)?.unwrap_or_default();
        ensure!(top.starts_with("vfsdr-foreign "), "{top}");
        let human = agent.cli(["status"])?;
        ensure!(
            human.contains("fs2/data") && human.contains("last error:"),
            "{human}"
        );
        Ok(())
    })();
    sh(&format!("umount '{}'", fs2_mount.display()))?;
    refused?;

    // fs1 leaves the configuration: unmounted, detached, its images kept.
    reload(&agent, &config, &body(&fs2))?;
    ensure!(mounted_at(&data_mount)?.is_none(), "fs1/data still mounted");
    ensure!(mounted_at(&logs_mount)?.is_none(), "fs1/logs still mounted");
    wait_for("the loop devices to go", Duration::from_secs(5), || {
        Ok(loops_of(&data_image)?.is_empty() && loops_of(&logs_image)?.is_empty())
    })?;
    ensure!(
        data_image.is_file() && logs_image.is_file(),
        "an image was deleted"
    );
    ensure!(agent.log_text().contains("volume_unmounted"));
    // fs2 is up now that its mount path is free.
    ensure!(state_of(&volume_states(&agent)?, "fs2/data")?["ready"] == true);
    // Stopping the agent (SIGTERM) leaves the file server's volume mounted.
    agent.stop()?;
    ensure!(
        mounted_at(&fs2_mount)?.is_some(),
        "SIGTERM unmounted fs2/data"
    );
    // fs2 removed while the agent is down: the next start takes its volume down.
    let text = std::fs::read_to_string(&config)?;
    let head = &text[..text.find("resources:").context("resources")?];
    std::fs::write(&config, format!("{head}{}", resources(&a, root.path(), "")))?;
    let agent = Agent::start(&a, &config)?;
    ensure!(mounted_at(&fs2_mount)?.is_none(), "{}", agent.log_text());
    let fs2_image = a.pool().mount_point().join("volumes/fs2/data.img");
    ensure!(fs2_image.is_file(), "the image was deleted");
    wait_for("the loop device to go", Duration::from_secs(5), || {
        Ok(loops_of(&fs2_image)?.is_empty())
    })?;
    agent.stop()?;
    Ok(())
}

fn reload(agent: &Agent, config: &Path, body: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)?;
    let head = &text[..text.find("resources:").context("no resources section")?];
    let before = agent.log_text().matches("config_reloaded").count();
    std::fs::write(config, format!("{head}{body}"))?;
    // SAFETY: signals the agent this test started, by its pid.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    wait_for("the reload", Duration::from_secs(30), || {
        let log = agent.log_text();
        ensure!(
            !log.contains("config_reload_failed"),
            "reload failed:\n{log}"
        );
        Ok(log.matches("config_reloaded").count() > before)
    })
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn a_volume_set_up_by_hand_at_an_absolute_path_is_taken_as_present() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("vol-by-hand")?;
    let a = lab.add_site("site-a")?;
    let b = lab.add_site("site-b")?;
    let certs = lab.dir().join("certs");
    std::fs::create_dir_all(&certs)?;
    make_certs(&certs, &["site-a", "site-b"])?;
    // Image in the pool where the agent looks for it, attached (losetup) and mounted by hand.
    let image = a.pool().mount_point().join("volumes/fs1/data.img");
    std::fs::create_dir_all(image.parent().context("dir")?)?;
    let mount = lab.dir().join("vfs-mnt/fs1/data");
    std::fs::create_dir_all(mount.parent().context("dir")?)?;
    let vol = vfsdr_lab::Volume::create(&image, &mount, 512 << 20)?;
    let uuid_before = uuid(&image)?;
    let fs1 = vfs_item(
        "fs1",
        &format!(
            "      - {{name: data, size: 512MiB, mount: {}}}\n",
            mount.display()
        ),
        0,
    );
    let body = format!(
        "resources:\n  pool:\n    path: {}\nvfs:\n{fs1}",
        a.pool().mount_point().display()
    );
    let config = write_config_with_peers(&a, &certs, &[&b], &body)?;
    let agent = Agent::start(&a, &config)?;
    let log = agent.log_text();
    for event in [
        "volume_created",
        "volume_formatted",
        "volume_attached",
        "volume_mounted",
    ] {
        ensure!(
            !log.contains(event),
            "{event} for a volume already up:\n{log}"
        );
    }
    let states = volume_states(&agent)?;
    let s = state_of(&states, "fs1/data")?;
    ensure!(
        s["ready"] == true
            && s["state"]
                == format!(
                    "mounted at {} via {}",
                    mount.display(),
                    vol.loop_device().display()
                ),
        "{s}"
    );
    ensure!(uuid(&image)? == uuid_before);
    ensure!(count_mounts(&mount)? == 1 && loops_of(&image)?.lines().count() == 1);
    agent.stop()?;
    // The hand-made volume's own guards take it down.
    drop(vol);
    ensure!(mounted_at(&mount)?.is_none());
    Ok(())
}

#[test]
#[ignore = "root: builds lab namespaces, loop devices and mounts, runs agents"]
fn no_image_is_created_where_the_pool_is_not_mounted() -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::new("vol-no-pool")?;
    let a = lab.add_site("site-a")?;
    let b = lab.add_site("site-b")?;
    let root = mount_root(&a)?;
    let certs = lab.dir().join("certs");
    std::fs::create_dir_all(&certs)?;
    make_certs(&certs, &["site-a", "site-b"])?;
    // The configured pool is a directory on tmpfs, as one whose file system failed to mount
    // would be on the root file system.
    let pool = root.path().join("not-a-pool");
    std::fs::create_dir_all(&pool)?;
    sh(&format!("mount -t tmpfs vfsdr-test '{}'", pool.display()))?;
    let result = (|| {
        let fs1 = vfs_item("fs1", "      - {name: data, size: 512MiB}\n", 0);
        let body = format!(
            "resources:\n  pool:\n    path: {}\n  mount_root: {}\nvfs:\n{fs1}",
            pool.display(),
            root.path().display()
        );
        let config = write_config_with_peers(&a, &certs, &[&b], &body)?;
        let agent = Agent::start(&a, &config)?;
        let states = volume_states(&agent)?;
        let s = state_of(&states, "fs1/data")?;
        let error = s["error"].as_str().unwrap_or("");
        ensure!(
            s["ready"] == false
                && error.starts_with("VFS fs1 volume data: image: volume fs1/data: ")
                && error.contains("is on tmpfs, not on a reflink-capable file system"),
            "{s}"
        );
        ensure!(
            !pool.join("volumes").exists(),
            "something was created in the pool"
        );
        agent.stop()?;
        Ok(())
    })();
    sh(&format!("umount '{}'", pool.display()))?;
    result
}
