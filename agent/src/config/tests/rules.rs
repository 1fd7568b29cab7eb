//! The value rules of `values.rs` and `units.rs`, on their own.

use std::net::Ipv4Addr;
use std::path::Path;

use super::super::units::{self, MIB};
use super::super::values::{self, Seen};
use crate::config::FsType;

const GIB: u64 = 1 << 30;

#[test]
fn sizes_take_binary_units_or_bytes() {
    for (text, bytes) in [
        ("0", 0),
        ("4096", 4096),
        ("512B", 512),
        ("1KiB", 1024),
        ("300MiB", 300 * MIB),
        ("2 GiB", 2 * GIB),
        ("1TiB", 1 << 40),
        ("16777215TiB", 16_777_215 << 40),
    ] {
        assert_eq!(units::size(text), Ok(bytes), "{text}");
    }
    let expected = units::SIZE_EXPECTED;
    for unit in ["KB", "MB", "GB", "TB", "k", "G"] {
        assert_eq!(
            units::size(&format!("2{unit}")),
            Err(format!(
                "unknown size unit `{unit}` in `2{unit}`, {expected}"
            ))
        );
    }
    for text in [
        "", "GiB", "2.5GiB", "-1", "+2GiB", "2gib", "2 GiB/s", "0x10", "2GiB ",
    ] {
        assert_eq!(
            units::size(text),
            Err(format!("invalid size `{text}`, {expected}")),
            "{text}"
        );
    }
    assert_eq!(
        units::size("16777216TiB"),
        Err("`16777216TiB` is too large".into())
    );
    assert_eq!(
        units::size("99999999999999999999"),
        Err("`99999999999999999999` is too large".into())
    );
}

#[test]
fn sizes_and_durations_are_shown_in_their_largest_exact_unit() {
    assert_eq!(units::show_size(300 * MIB), "300MiB");
    assert_eq!(units::show_size(1536 * MIB), "1536MiB");
    assert_eq!(units::show_size(1000), "1000B");
    assert_eq!(units::show_size(0), "0B");
    assert_eq!(units::show_duration(86_400), "1d");
    assert_eq!(units::show_duration(5400), "90m");
    assert_eq!(units::show_duration(0), "0s");
}

#[test]
fn volume_sizes_depend_on_the_file_system() {
    assert_eq!(units::volume_size(300 * MIB, FsType::Xfs), Ok(()));
    assert_eq!(
        units::volume_size(300 * MIB - 4096, FsType::Xfs),
        Err("xfs volumes need at least 300MiB, found 307196KiB".into())
    );
    assert_eq!(units::volume_size(128 * MIB, FsType::Btrfs), Ok(()));
    assert!(units::volume_size(127 * MIB, FsType::Btrfs).is_err());
    assert_eq!(units::volume_size(16 * MIB, FsType::Ext4), Ok(()));
    assert_eq!(
        units::volume_size(0, FsType::Ext4),
        Err("ext4 volumes need at least 16MiB, found 0B".into())
    );
    assert_eq!(
        units::volume_size(GIB + 512, FsType::Xfs),
        Err("must be a whole number of 4KiB blocks, found 1073742336 bytes".into())
    );
}

#[test]
fn durations_need_a_unit() {
    for (text, seconds) in [
        ("0s", 0),
        ("90s", 90),
        ("15m", 900),
        ("1h", 3600),
        ("30d", 2_592_000),
    ] {
        assert_eq!(units::duration(text), Ok(seconds), "{text}");
    }
    for text in ["60", "1w", "1.5h", "h", "-1s", "1H", "1 h x"] {
        assert_eq!(
            units::duration(text),
            Err(format!(
                "invalid duration `{text}`, {}",
                units::DURATION_EXPECTED
            )),
            "{text}"
        );
    }
    assert!(units::duration("99999999999999999999d").is_err());
    assert_eq!(units::interval(1), Ok(()));
    assert_eq!(units::interval(86_400), Ok(()));
    assert_eq!(
        units::interval(0),
        Err("must be between 1s and 1d, found 0s".into())
    );
    assert_eq!(
        units::interval(86_401),
        Err("must be between 1s and 1d, found 86401s".into())
    );
}

#[test]
fn retention_rules_keep_something() {
    assert_eq!(units::retention_for(1), Ok(()));
    assert!(units::retention_for(0).is_err());
    assert_eq!(units::retention_every(0, 3600), Ok(()));
    assert_eq!(units::retention_every(3600, 3600), Ok(()));
    assert_eq!(
        units::retention_every(86_400, 3600),
        Err(
            "one snapshot every 1d for 1h keeps at most one snapshot, expected `every` not longer \
             than `for`"
                .into()
        )
    );
}

#[test]
fn bandwidths_are_sizes_per_second() {
    assert_eq!(units::bandwidth("100MiB/s"), Ok(100 * MIB));
    assert_eq!(units::bandwidth("512 KiB/s"), Ok(512 * 1024));
    assert_eq!(units::bandwidth("1000/s"), Ok(1000));
    assert_eq!(
        units::bandwidth("100MiB"),
        Err(format!(
            "invalid bandwidth `100MiB`, {}",
            units::BANDWIDTH_EXPECTED
        ))
    );
    assert!(
        units::bandwidth("100Mbit/s")
            .is_err_and(|e| e.starts_with("invalid bandwidth `100Mbit/s`: invalid size `100Mbit`"))
    );
    assert_eq!(
        units::bandwidth("0MiB/s"),
        Err("must be more than 0B/s (leave it out for no limit)".into())
    );
}

#[test]
fn interface_addresses_are_unicast_ipv4_with_a_prefix() {
    let ip = Ipv4Addr::new(198, 18, 0, 100);
    assert_eq!(units::interface_address("198.18.0.100/24"), Ok((ip, 24)));
    assert_eq!(units::interface_address("198.18.0.100/32"), Ok((ip, 32)));
    assert_eq!(
        units::interface_address("10.0.0.1/1"),
        Ok((Ipv4Addr::new(10, 0, 0, 1), 1))
    );
    let expected = units::CIDR_EXPECTED;
    assert_eq!(
        units::interface_address("198.18.0.100"),
        Err(format!("`198.18.0.100` has no prefix length, {expected}"))
    );
    for text in [
        "198.18.0.1/x",
        "198.18.0.1/",
        "198.18.0.1/+24",
        "198.18.0.01/24",
        "fe80::1/64",
        "a/24",
    ] {
        assert_eq!(
            units::interface_address(text),
            Err(format!("invalid address `{text}`, {expected}")),
            "{text}"
        );
    }
    assert_eq!(
        units::interface_address("198.18.0.1/0"),
        Err("prefix length must be between 1 and 32, found 0".into())
    );
    assert_eq!(
        units::interface_address("198.18.0.1/33"),
        Err("prefix length must be between 1 and 32, found 33".into())
    );
    for (text, what) in [
        ("0.0.0.0/8", "0.0.0.0 is the unspecified address"),
        ("127.0.0.2/8", "127.0.0.2 is a loopback address"),
        ("239.1.1.1/8", "239.1.1.1 is a multicast address"),
        (
            "255.255.255.255/32",
            "255.255.255.255 is the broadcast address",
        ),
    ] {
        assert_eq!(
            units::interface_address(text),
            Err(format!(
                "{what}, expected a unicast address for the interface"
            ))
        );
    }
}

#[test]
fn socket_addresses_have_a_port() {
    assert!(units::socket_address("198.18.0.1:7800", true).is_ok());
    assert!(units::socket_address("[2001:db8::1]:7800", true).is_ok());
    assert!(units::socket_address("0.0.0.0:7800", false).is_ok());
    assert_eq!(
        units::socket_address("[::]:7800", true),
        Err("`[::]:7800` names no host, expected the address where the peer listens".into())
    );
    assert!(units::socket_address("198.18.0.1:0", false).is_err_and(|e| e.starts_with("port 0")));
    for text in [
        "198.18.0.1",
        "site-b:7800",
        "2001:db8::1:7800",
        "198.18.0.1:70000",
    ] {
        assert_eq!(
            units::socket_address(text, false),
            Err(format!(
                "invalid address `{text}`, {}",
                units::SOCKET_EXPECTED
            ))
        );
    }
}

#[test]
fn vfs_link_netbios_and_share_names() {
    assert_eq!(values::vfs_name("fs-accounts"), Ok(()));
    assert!(values::vfs_name("fs-accounts1").is_err_and(|e| e.contains("(12 characters)")));
    assert!(values::vfs_name("Fs").is_err_and(|e| e.starts_with("invalid name `Fs`")));
    for good in [
        "eth0",
        "bond0.120",
        "enp0s31f6",
        "veth-a_b",
        "123456789012345",
    ] {
        assert_eq!(values::link_name(good), Ok(()), "{good}");
    }
    for (bad, reason) in [
        ("", "empty link name"),
        (
            "1234567890123456",
            "invalid link name `1234567890123456` (16 bytes)",
        ),
        ("eth 0", "invalid link name `eth 0` (` ` is not allowed)"),
        ("a/b", "invalid link name `a/b` (`/` is not allowed)"),
        ("..", "invalid link name `..`"),
    ] {
        assert!(
            values::link_name(bad).is_err_and(|e| e.starts_with(&format!("{reason}, expected"))),
            "{bad}"
        );
    }
    for good in ["FS1", "FS-LEGAL", "A23456789012345"] {
        assert_eq!(values::netbios_name(good), Ok(()), "{good}");
    }
    assert!(
        values::netbios_name("Fs1").is_err_and(|e| e.contains("(`s` is lower case: write `FS1`)"))
    );
    assert!(values::netbios_name("FS.1").is_err_and(|e| e.contains("(`.` is not allowed)")));
    assert!(values::netbios_name("A234567890123456").is_err_and(|e| e.contains("(16 characters)")));
    assert!(values::netbios_name("").is_err_and(|e| e.starts_with("empty NetBIOS name")));
    for good in ["data", "Projects 2024$", "ünïcode", &"x".repeat(80)] {
        assert_eq!(values::share_name(good), Ok(()), "{good}");
    }
    for (bad, reason) in [
        ("", "empty share name".to_owned()),
        (
            &"x".repeat(81) as &str,
            format!("invalid share name `{}` (81 characters)", "x".repeat(81)),
        ),
        (
            "a*b",
            "invalid share name `a*b` (`*` is not allowed)".to_owned(),
        ),
        (
            "a\tb",
            "invalid share name `a\tb` (`\\t` is not allowed)".to_owned(),
        ),
        (
            " data",
            "invalid share name ` data` (it starts or ends with a space)".to_owned(),
        ),
        (
            "Global",
            "share name `Global` is reserved (`[global]` is a section of smb.conf)".to_owned(),
        ),
        (
            "IPC$",
            "share name `IPC$` is reserved (`[ipc$]` is a section of smb.conf)".to_owned(),
        ),
    ] {
        assert!(
            values::share_name(bad).is_err_and(|e| e.starts_with(&format!("{reason}, expected"))),
            "{bad}: {:?}",
            values::share_name(bad)
        );
    }
}

#[test]
fn share_paths_stay_inside_the_volume() {
    for good in ["", "a", "projects/2024", "a b/.hidden"] {
        assert_eq!(values::share_path(good), Ok(()), "{good}");
    }
    for (bad, reason) in [
        ("/a", "`/a` starts with `/`"),
        ("a/../../b", "`a/../../b` goes up with `..`"),
        ("a//b", "`a//b` has an empty or `.` component"),
        ("a/", "`a/` has an empty or `.` component"),
        ("./a", "`./a` has an empty or `.` component"),
        ("a\0", "a path with a NUL character"),
    ] {
        assert!(
            values::share_path(bad).is_err_and(|e| e.starts_with(&format!("{reason}, expected"))),
            "{bad}"
        );
    }
}

#[test]
fn mounts_are_plain_absolute_paths_that_do_not_meet() {
    assert_eq!(values::mount_path(Path::new("/srv/a")), Ok(()));
    assert_eq!(values::mount_path(Path::new("/srv/a/")), Ok(()));
    assert!(values::mount_path(Path::new("srv/a")).is_err());
    assert!(values::mount_path(Path::new("/srv/./a")).is_err());
    assert!(values::mount_path(Path::new("/srv/../a")).is_err());
    assert_eq!(
        values::mount_path(Path::new("/")),
        Err("cannot mount a volume on `/`, expected a directory below it".into())
    );
    let conflict = |a: &str, b: &str| {
        values::mount_conflict("mount path", Path::new(a), "state_dir", Path::new(b))
    };
    assert_eq!(conflict("/srv/a", "/srv/ab"), None);
    assert_eq!(conflict("/srv/ab", "/srv/a"), None);
    assert_eq!(
        conflict("/srv/a/", "/srv/a"),
        Some("mount path `/srv/a/` is the same path as state_dir `/srv/a`".into())
    );
    assert_eq!(
        conflict("/var/lib/vfsdr/x", "/var/lib/vfsdr"),
        Some("mount path `/var/lib/vfsdr/x` is inside state_dir `/var/lib/vfsdr`".into())
    );
    assert_eq!(
        conflict("/var", "/var/lib/vfsdr"),
        Some("mount path `/var` contains state_dir `/var/lib/vfsdr`".into())
    );
}

#[test]
fn duplicates_name_the_first_use() {
    let mut seen = Seen::new();
    assert!(seen.add("volume name", "a", "volumes[0]", 1).is_none());
    assert!(seen.add("volume name", "A", "volumes[1]", 2).is_none());
    assert_eq!(
        seen.add("volume name", "a", "volumes[2]", 3),
        Some((
            "duplicate volume name `a`, already used by volumes[0]".into(),
            &1
        ))
    );
    let mut shares = Seen::ignoring_case();
    assert!(shares.add("share name", "Data", "shares[0]", ()).is_none());
    assert_eq!(
        shares.add("share name", "DATA", "shares[1]", ()),
        Some((
            "duplicate share name `DATA` (names ignore case: `Data` is the same), already used \
             by shares[0]"
                .into(),
            &()
        ))
    );
    assert_eq!(values::listing(["a", "b", "a"]), "`a`, `b`");
}
