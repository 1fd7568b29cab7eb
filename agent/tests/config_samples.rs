//! Every shipped configuration file is a test.
//!
//! - `config/*.yaml` and `config/examples/*.yaml` must be valid configurations, and
//!   `config/examples/vfs/*.yaml` valid VFS files (`config::parse_vfs_file`);
//! - each `config/invalid/NAME.yaml` (configurations) and `config/invalid/vfs/NAME.yaml` (VFS
//!   files) must be refused with exactly the lines of `NAME.expected` next to it, where the file
//!   is named relative to `config/` (`invalid/NAME.yaml:LINE:COLUMN: FIELD: MESSAGE`).
//!
//! After a deliberate change of messages, `VFSDR_BLESS=1 cargo test --test config_samples`
//! rewrites the `.expected` files; review their diff before committing.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use vfsdr::config::{
    self, Compression, ConfigError, FsType, Link, Peer, Pool, Replication, Resources, Retention,
    RetentionRule, Share, Site, Smb, Tls, VfsDef, VfsInterface, VfsVolume, VolumeSource,
};

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// The files of `config/<dir>` whose name ends with `.<ext>`, as paths relative to `config/`.
fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let root = config_dir();
    let mut found: Vec<PathBuf> = fs::read_dir(root.join(dir))
        .unwrap_or_else(|e| panic!("cannot list config/{dir}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == ext))
        .map(|path| path.strip_prefix(&root).expect("under config/").to_owned())
        .collect();
    found.sort();
    found
}

fn read(relative: &Path) -> String {
    fs::read_to_string(config_dir().join(relative))
        .unwrap_or_else(|e| panic!("cannot read config/{}: {e}", relative.display()))
}

/// Parses `config/<relative>`, naming it `relative` in the problems.
fn parse(relative: &Path) -> Result<config::Config, ConfigError> {
    config::parse(&read(relative), relative)
}

/// Parses the VFS file `config/<relative>`, naming it `relative` in the problems.
fn parse_vfs(relative: &Path) -> Result<VfsDef, ConfigError> {
    config::parse_vfs(&read(relative), relative)
}

#[test]
fn shipped_and_example_configs_are_valid() {
    let samples: Vec<PathBuf> = files(".", "yaml")
        .into_iter()
        .chain(files("examples", "yaml"))
        .collect();
    assert!(
        samples.len() >= 5,
        "expected config/vfsdr.yaml and examples, found {samples:?}"
    );
    let mut failures = Vec::new();
    for sample in &samples {
        match parse(sample) {
            Err(e) => failures.push(e.to_string()),
            // What a site checks, its peers check again when they receive it.
            Ok(config) => failures.extend(config.vfs.iter().filter_map(|vfs| {
                let problems = vfs.validate().err()?;
                Some(format!("{}: {}: {problems:?}", sample.display(), vfs.name))
            })),
        }
    }
    assert!(
        failures.is_empty(),
        "valid samples refused:\n{}",
        failures.join("\n")
    );
}

#[test]
fn example_vfs_files_are_valid() {
    let samples = files("examples/vfs", "yaml");
    assert!(!samples.is_empty(), "expected config/examples/vfs/*.yaml");
    for sample in &samples {
        let vfs = parse_vfs(sample).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(vfs.validate(), Ok(()), "{}", sample.display());
        let file = config::parse_vfs_file(&config_dir().join(sample)).expect("valid");
        assert_eq!(file, vfs);
    }
}

/// Checks every sample of `config/<dir>` against its `.expected` file (or writes it when
/// blessing); returns the failures.
fn check_invalid<T>(dir: &str, parse: fn(&Path) -> Result<T, ConfigError>) -> (usize, Vec<String>) {
    let samples = files(dir, "yaml");
    let bless = std::env::var_os("VFSDR_BLESS").is_some();
    let mut failures = Vec::new();
    for sample in &samples {
        let expected_path = config_dir().join(sample.with_extension("expected"));
        let actual = match parse(sample) {
            Ok(_) => {
                failures.push(format!(
                    "{}: accepted, expected to be refused",
                    sample.display()
                ));
                continue;
            }
            Err(ConfigError::Read { .. }) => unreachable!("parse never reads"),
            Err(e) => e.to_string(),
        };
        if bless {
            fs::write(&expected_path, format!("{actual}\n")).expect("write .expected");
            continue;
        }
        let Ok(expected) = fs::read_to_string(&expected_path) else {
            failures.push(format!(
                "{}: no {} next to it",
                sample.display(),
                sample.with_extension("expected").display()
            ));
            continue;
        };
        let expected: Vec<&str> = expected.lines().collect();
        let actual: Vec<&str> = actual.lines().collect();
        if expected != actual {
            failures.push(format!(
                "{}:\n  expected:\n    {}\n  actual:\n    {}",
                sample.display(),
                expected.join("\n    "),
                actual.join("\n    ")
            ));
        }
    }
    for expected in files(dir, "expected") {
        if !config_dir().join(expected.with_extension("yaml")).exists() {
            failures.push(format!("{}: no sample for it", expected.display()));
        }
    }
    (samples.len(), failures)
}

#[test]
fn invalid_configs_report_exactly_their_expected_problems() {
    let (count, failures) = check_invalid("invalid", parse);
    assert!(
        count >= 32,
        "expected at least 32 invalid samples, found {count}"
    );
    assert!(
        failures.is_empty(),
        "invalid samples:\n{}",
        failures.join("\n")
    );
}

#[test]
fn invalid_vfs_files_report_exactly_their_expected_problems() {
    let (count, failures) = check_invalid("invalid/vfs", parse_vfs);
    assert!(count >= 2, "expected invalid VFS files, found {count}");
    assert!(
        failures.is_empty(),
        "invalid VFS files:\n{}",
        failures.join("\n")
    );
}

#[test]
fn several_errors_sample_reports_several_problems() {
    let Err(ConfigError::Invalid { problems, .. }) =
        parse(Path::new("invalid/several-errors.yaml"))
    else {
        panic!("several-errors.yaml must be invalid");
    };
    assert!(
        problems.len() >= 25,
        "found only {} problems",
        problems.len()
    );
    // In every section.
    for section in [
        "site",
        "runtime_dir",
        "peers",
        "tracking",
        "resources",
        "volumes",
        "vfs",
    ] {
        assert!(
            problems.iter().any(|p| p.field.starts_with(section)),
            "no problem in {section}"
        );
    }
}

/// Installed as is, the default sets nothing but the site name: everything else, including
/// the peer link, resources and VFSs, takes its default (none).
#[test]
fn installed_default_loads_with_defaults() {
    let config =
        config::load(&config_dir().join("vfsdr.yaml")).expect("config/vfsdr.yaml is valid");
    let minimal = config::parse("version: 2\nsite: {name: site1}\n", Path::new("minimal"));
    assert_eq!(config, minimal.expect("valid"));
    assert_eq!(config.state_dir, Path::new(config::DEFAULT_STATE_DIR));
    assert_eq!(
        config.resources.mount_root,
        Path::new(config::DEFAULT_MOUNT_ROOT)
    );
    assert!(config.site.listen.is_none() && config.peers.is_empty() && config.vfs.is_empty());
}

/// `text` with its commented-out settings uncommented: a comment whose text is a `key:`, a
/// `- ` item or a nested comment loses its `#`; other comments (prose) are dropped.
fn uncomment(text: &str) -> String {
    let is_setting = |text: &str| {
        let key = text.split_once(':');
        text.starts_with('#')
            || text.starts_with("- ")
            || key.is_some_and(|(key, rest)| {
                !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && (rest.is_empty() || rest.starts_with(' '))
            })
    };
    let mut uncommented = String::new();
    for line in text.lines() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        match body.strip_prefix('#') {
            None => uncommented.push_str(line),
            Some("") => {}
            Some(setting) if is_setting(setting.trim_start()) => {
                uncommented.push_str(indent);
                uncommented.push_str(setting);
            }
            Some(_) => continue,
        }
        uncommented.push('\n');
    }
    uncommented
}

/// The commented-out settings of the default configuration are right: uncommented, they load.
#[test]
fn installed_default_uncommented_is_valid() {
    let text = read(Path::new("vfsdr.yaml"))
        .replace("peers: []\n", "peers:\n")
        .replace("links: []\n", "links:\n")
        .replace("volumes: []\n", "volumes:\n")
        .replace("vfs: []\n", "vfs:\n");
    let uncommented = uncomment(&text);
    let config = config::parse(&uncommented, Path::new("vfsdr.yaml (uncommented)"))
        .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert!(config.site.tls.is_some());
    assert_eq!(config.peers.len(), 1);
    assert_eq!(config.resources.links.len(), 1);
    assert!(config.resources.pool.is_some());
    assert_eq!(config.volumes.len(), 2);
    assert_eq!(config.vfs.len(), 1);
    assert_eq!(config.vfs[0].validate(), Ok(()));
}

#[test]
fn example_with_all_fields_is_read_as_written() {
    let config = parse(Path::new("examples/all-fields.yaml")).expect("valid");
    let tls = Tls {
        ca: "/etc/vfsdr/tls/ca.pem".into(),
        cert: "/etc/vfsdr/tls/hq-paris-01.pem".into(),
        key: "/etc/vfsdr/tls/hq-paris-01.key".into(),
    };
    let site = Site {
        name: "hq-paris-01".into(),
        listen: Some(SocketAddr::from(([198, 18, 0, 2], 7800))),
        tls: Some(tls),
    };
    assert_eq!(config.site, site);
    let peers = [
        Peer {
            name: "dr-lyon-01".into(),
            address: SocketAddr::from(([198, 18, 0, 1], 7800)),
        },
        Peer {
            name: "dr-lille-02".into(),
            address: "[2001:db8::2]:7801".parse().expect("address"),
        },
    ];
    assert_eq!(config.peers, peers);
    assert_eq!(config.state_dir, Path::new("/var/lib/vfsdr"));
    assert_eq!(config.runtime_dir, Path::new("/run/vfsdr"));
    assert_eq!(config.tracking.poll_interval_ms, 500);
    assert_eq!(config.tracking.top_writers, 25);
    let link = |name: &str, networks: &[&str]| Link {
        name: name.into(),
        networks: networks.iter().map(|n| n.to_string()).collect(),
    };
    let resources = Resources {
        links: vec![
            link("eth0", &["lan", "backup"]),
            link("bond0.120", &["dmz"]),
        ],
        pool: Some(Pool {
            path: "/srv/vfsdr/pool".into(),
            reserve_bytes: 1 << 30,
        }),
        mount_root: "/srv/shares".into(),
    };
    assert_eq!(config.resources, resources);
    let sources: Vec<(&str, &VolumeSource)> = config
        .volumes
        .iter()
        .map(|v| (v.name.as_str(), &v.source))
        .collect();
    assert_eq!(
        sources,
        [
            (
                "home",
                &VolumeSource::Device("/dev/disk/by-id/virtio-home".into())
            ),
            ("shares", &VolumeSource::Device("/dev/vdc".into())),
            (
                "archive",
                &VolumeSource::Image("/srv/vfsdr/pool/archive 2024.img".into())
            ),
        ]
    );
    assert_eq!(config.vfs, [all_fields_fs1(), all_fields_fs_legal()]);
}

fn volume(name: &str, size_bytes: u64, filesystem: FsType, mount: &str) -> VfsVolume {
    VfsVolume {
        name: name.into(),
        size_bytes,
        filesystem,
        mount: mount.into(),
    }
}

fn interface(name: &str, address: [u8; 4], prefix_len: u8, network: &str) -> VfsInterface {
    VfsInterface {
        name: name.into(),
        address: Ipv4Addr::from(address),
        prefix_len,
        network: network.into(),
    }
}

fn share(name: &str, volume: &str, path: &str) -> Share {
    Share {
        name: name.into(),
        volume: volume.into(),
        path: path.into(),
    }
}

const DAY: u64 = 86_400;

fn all_fields_fs1() -> VfsDef {
    VfsDef {
        name: "fs1".into(),
        volumes: vec![
            volume("data", 2 << 30, FsType::Xfs, "fs1/data"),
            volume("scratch", 512 << 20, FsType::Ext4, "/mnt/fs1-scratch"),
        ],
        interfaces: vec![
            interface("smb0", [198, 18, 0, 100], 24, "lan"),
            interface("smb1", [10, 20, 0, 100], 16, "dmz"),
        ],
        smb: Smb {
            netbios_name: "FS1".into(),
            shares: vec![
                share("Data", "data", ""),
                share("Projects 2024$", "data", "projects/2024"),
                share("scratch", "scratch", "tmp"),
            ],
        },
        replication: Replication {
            peer: "dr-lyon-01".into(),
            interval_s: 60,
            compression: Compression::Zstd,
            bandwidth_limit_bytes_per_s: Some(100 << 20),
            trigger_at_risk_bytes: Some(2 << 30),
        },
        snapshots: Retention::default(),
    }
}

fn all_fields_fs_legal() -> VfsDef {
    VfsDef {
        name: "fs-legal".into(),
        volumes: vec![volume(
            "cases",
            1 << 40,
            FsType::Btrfs,
            "/srv/shares/fs-legal/cases",
        )],
        interfaces: vec![interface("smb0", [198, 18, 0, 101], 24, "lan")],
        smb: Smb {
            netbios_name: "FS-LEGAL".into(),
            shares: vec![share("cases", "cases", "")],
        },
        replication: Replication {
            peer: "dr-lille-02".into(),
            interval_s: 15 * 60,
            compression: Compression::None,
            bandwidth_limit_bytes_per_s: Some(512 << 10),
            trigger_at_risk_bytes: None,
        },
        snapshots: Retention {
            rules: vec![
                RetentionRule {
                    every_s: 4 * 3600,
                    for_s: 2 * DAY,
                },
                RetentionRule {
                    every_s: 7 * DAY,
                    for_s: 365 * DAY,
                },
            ],
        },
    }
}

#[test]
fn vfs_definitions_travel_as_json() {
    let config = parse(Path::new("examples/all-fields.yaml")).expect("valid");
    for vfs in &config.vfs {
        let json = serde_json::to_string(vfs).expect("json");
        let received: VfsDef = serde_json::from_str(&json).expect("definition");
        assert_eq!(&received, vfs);
        assert_eq!(received.validate(), Ok(()));
    }
}
