//! The volume life cycle against `FakeDevices` and `FakeMounts`.
use std::path::{Path, PathBuf};

use super::{ActiveVolume, Refusal, Stage, bring_down, bring_up, describe, observe};
use crate::{
    config::FsType,
    resources::FakeMounts,
    volumes::{FakeDevices, ImageInfo},
};

const GIB: u64 = 1 << 30;
const IMG: &str = "/pool/volumes/fs1/data.img";
const MNT: &str = "/srv/mnt/fs1/data";

fn vol() -> ActiveVolume {
    ActiveVolume {
        vfs: "fs1".into(),
        volume: "data".into(),
        image: IMG.into(),
        mount: MNT.into(),
        size_bytes: 2 * GIB,
        filesystem: FsType::Xfs,
    }
}

fn xfs(size: u64) -> ImageInfo {
    ImageInfo {
        size,
        allocated: 20 << 20,
        filesystem: Some(FsType::Xfs),
    }
}

fn changed(steps: &[super::StepDone]) -> Vec<Stage> {
    steps
        .iter()
        .filter(|s| s.changed)
        .map(|s| s.stage)
        .collect()
}

#[test]
fn a_fresh_volume_is_created_formatted_attached_and_mounted() {
    let (mut d, mut m) = (FakeDevices::default(), FakeMounts::new());
    let up = bring_up(&vol(), &mut d, &mut m).unwrap();
    assert_eq!(
        changed(&up.steps),
        [Stage::Image, Stage::FileSystem, Stage::Loop, Stage::Mount]
    );
    assert_eq!(
        d.log,
        [
            format!("create {IMG}"),
            format!("format {IMG} xfs"),
            format!("attach {IMG}")
        ]
    );
    assert_eq!(d.contents[Path::new(IMG)].size, 2 * GIB);
    assert_eq!(m.dirs, [PathBuf::from(MNT)]);
    assert_eq!(
        (m.mounts[0].source.as_str(), m.mounts[0].fstype.as_str()),
        ("/dev/loop0", "xfs")
    );
    assert_eq!(up.device, Path::new("/dev/loop0"));
    let seen = observe(&vol(), &mut d, &mut m).unwrap();
    assert_eq!(
        describe(&vol(), &seen),
        (true, format!("mounted at {MNT} via /dev/loop0"))
    );
}

#[test]
fn a_volume_all_present_is_left_alone() {
    let (mut d, mut m) = (FakeDevices::default(), FakeMounts::new());
    bring_up(&vol(), &mut d, &mut m).unwrap();
    let (log, mounts) = (d.log.clone(), m.mounts.clone());
    let again = bring_up(&vol(), &mut d, &mut m).unwrap();
    assert_eq!(changed(&again.steps), []);
    assert_eq!(again.steps.len(), 4, "{:?}", again.steps);
    assert_eq!((d.log, m.mounts), (log, mounts));
}

#[test]
fn an_image_mounted_by_hand_at_the_mount_path_is_present() {
    // As a volume set up before the agent managed volumes: attached and mounted already.
    let mut d = FakeDevices::default()
        .with_image_holding(IMG, xfs(2 * GIB))
        .with_attached(IMG);
    let mut m = FakeMounts::new().with_mount("/dev/loop0", MNT, "xfs");
    let up = bring_up(&vol(), &mut d, &mut m).unwrap();
    assert_eq!(changed(&up.steps), []);
    assert!(d.log.is_empty());
}

#[test]
fn an_attached_image_is_mounted_through_its_loop_device() {
    let mut d = FakeDevices::default()
        .with_image_holding(IMG, xfs(2 * GIB))
        .with_attached(IMG);
    let mut m = FakeMounts::new();
    let up = bring_up(&vol(), &mut d, &mut m).unwrap();
    assert_eq!(changed(&up.steps), [Stage::Mount]);
    assert!(d.log.is_empty(), "no second loop device: {:?}", d.log);
    assert_eq!(m.mounts[0].source, "/dev/loop0");
}

#[test]
fn a_blank_image_is_formatted_but_one_holding_data_is_refused() {
    let blank = ImageInfo {
        size: 2 * GIB,
        allocated: 0,
        filesystem: None,
    };
    let mut d = FakeDevices::default().with_image_holding(IMG, blank);
    let mut m = FakeMounts::new();
    let up = bring_up(&vol(), &mut d, &mut m).unwrap();
    assert_eq!(
        changed(&up.steps),
        [Stage::FileSystem, Stage::Loop, Stage::Mount]
    );

    let data = ImageInfo {
        allocated: 4096,
        ..blank
    };
    let mut d = FakeDevices::default().with_image_holding(IMG, data);
    let mut m = FakeMounts::new();
    let e = bring_up(&vol(), &mut d, &mut m).unwrap_err();
    assert_eq!(e.stage, Stage::FileSystem);
    assert!(matches!(
        *e.problem,
        super::Problem::Refused(Refusal::DataWithoutFileSystem { .. })
    ));
    assert_eq!(
        e.to_string(),
        format!(
            "VFS fs1 volume data: file system: image {IMG} holds data (4096 bytes allocated) \
             but no file system signature; it is not formatted over (restore it, or move it \
             away to start empty)"
        )
    );
    assert!(d.log.is_empty() && m.mounts.is_empty() && m.dirs.is_empty());
}

#[test]
fn another_file_system_than_configured_is_refused() {
    let ext4 = ImageInfo {
        filesystem: Some(FsType::Ext4),
        ..xfs(2 * GIB)
    };
    let mut d = FakeDevices::default().with_image_holding(IMG, ext4);
    let e = bring_up(&vol(), &mut d, &mut FakeMounts::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "VFS fs1 volume data: file system: image {IMG} holds ext4, the configuration says xfs"
        )
    );
    assert!(d.log.is_empty());
}

#[test]
fn a_foreign_mount_at_the_path_is_refused_and_nothing_changes() {
    let (mut d, mut m) = (
        FakeDevices::default(),
        FakeMounts::new().with_mount("/dev/sdz1", MNT, "ext4"),
    );
    let e = bring_up(&vol(), &mut d, &mut m).unwrap_err();
    assert_eq!(e.stage, Stage::Mount);
    assert_eq!(
        e.to_string(),
        format!(
            "VFS fs1 volume data: mount: {MNT} is held by /dev/sdz1 (ext4), not by the image \
             {IMG}; nothing changed"
        )
    );
    assert!(d.log.is_empty() && d.files.is_empty(), "{:?}", d.log);
    let seen = observe(&vol(), &mut d, &mut m).unwrap();
    let (ok, text) = describe(&vol(), &seen);
    assert!(!ok);
    assert_eq!(
        text,
        format!("no image {IMG}, not attached, {MNT} is held by /dev/sdz1 (ext4)")
    );
}

#[test]
fn an_image_mounted_elsewhere_is_refused() {
    let mut d = FakeDevices::default()
        .with_image_holding(IMG, xfs(2 * GIB))
        .with_attached(IMG);
    let mut m = FakeMounts::new().with_mount("/dev/loop0", "/old/place", "xfs");
    let e = bring_up(&vol(), &mut d, &mut m).unwrap_err();
    assert!(
        e.to_string().contains("is mounted at /old/place, not at"),
        "{e}"
    );
    assert_eq!(m.mounts.len(), 1);
}

#[test]
fn sizes_larger_are_refused_smaller_are_reported() {
    let mut d = FakeDevices::default().with_image_holding(IMG, xfs(3 * GIB));
    let e = bring_up(&vol(), &mut d, &mut FakeMounts::new()).unwrap_err();
    assert_eq!(e.stage, Stage::Image);
    assert_eq!(
        e.to_string(),
        format!(
            "VFS fs1 volume data: image: image {IMG} is 3221225472 bytes, larger than the \
             configured size 2147483648 bytes; shrinking would lose data (configure at least \
             3221225472)"
        )
    );
    let mut d = FakeDevices::default().with_image_holding(IMG, xfs(GIB));
    let up = bring_up(&vol(), &mut d, &mut FakeMounts::new()).unwrap();
    assert_eq!(up.smaller_than_configured, Some(GIB));
}

#[test]
fn a_failed_step_names_the_volume_and_the_step() {
    let mut d = FakeDevices::default();
    d.failing.push("format");
    let mut m = FakeMounts::new();
    let e = bring_up(&vol(), &mut d, &mut m).unwrap_err();
    assert_eq!(e.stage, Stage::FileSystem);
    assert!(
        e.to_string()
            .starts_with("VFS fs1 volume data: file system: "),
        "{e}"
    );
    assert!(m.mounts.is_empty());
    // The image stays; the next try formats it (it is still blank) and goes on.
    d.failing.clear();
    let up = bring_up(&vol(), &mut d, &mut m).unwrap();
    assert_eq!(
        changed(&up.steps),
        [Stage::FileSystem, Stage::Loop, Stage::Mount]
    );
}

#[test]
fn a_failed_mount_removes_the_directory_it_made() {
    let mut d = FakeDevices::default().with_image_holding(IMG, xfs(2 * GIB));
    let mut m = FakeMounts::new();
    m.failing.push("mount_rw");
    let e = bring_up(&vol(), &mut d, &mut m).unwrap_err();
    assert_eq!(e.stage, Stage::Mount);
    assert!(
        e.to_string()
            .starts_with(&format!("VFS fs1 volume data: mount: mount {MNT}: ")),
        "{e}"
    );
    assert!(m.dirs.is_empty() && m.mounts.is_empty());
}

#[test]
fn bringing_down_unmounts_and_detaches_and_keeps_the_image() {
    let (mut d, mut m) = (FakeDevices::default(), FakeMounts::new());
    bring_up(&vol(), &mut d, &mut m).unwrap();
    let steps = bring_down(&vol(), &mut d, &mut m).unwrap();
    assert_eq!(changed(&steps), [Stage::Mount, Stage::Loop]);
    assert!(m.mounts.is_empty());
    assert!(d.images.is_empty());
    assert_eq!(d.files, [PathBuf::from(IMG)]);
    assert_eq!(d.log.last().map(String::as_str), Some("detach /dev/loop0"));
    // Again: nothing left to do.
    assert_eq!(bring_down(&vol(), &mut d, &mut m).unwrap(), []);
}

#[test]
fn bringing_down_leaves_a_foreign_mount_alone() {
    let mut d = FakeDevices::default().with_image_holding(IMG, xfs(2 * GIB));
    let mut m = FakeMounts::new().with_mount("/dev/sdz1", MNT, "ext4");
    let steps = bring_down(&vol(), &mut d, &mut m).unwrap();
    assert_eq!(changed(&steps), []);
    assert_eq!(m.mounts.len(), 1);
}
