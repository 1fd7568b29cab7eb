//! Edge cases of the configuration; the shipped samples are tested by `tests/config_samples.rs`.
//!
//! Here: the file as a whole and the version 1 sections; `sections.rs`: the sections of version 2
//! and the checks across them; `rules.rs`: the value rules; `validate.rs`: `VfsDef::validate`;
//! `yaml.rs`: the YAML tree.

use std::path::{Path, PathBuf};

use super::values;
use super::*;

mod rules;
mod sections;
mod validate;
mod yaml;

pub(super) const HEAD: &str = "version: 2\nsite:\n  name: s\n";

pub(super) fn ok(text: &str) -> Config {
    parse(text, Path::new("t.yaml")).unwrap_or_else(|e| panic!("expected a valid config:\n{e}"))
}

/// The problems of `text`, as `LINE:COLUMN: FIELD: MESSAGE`.
pub(super) fn problems(text: &str) -> Vec<String> {
    match parse(text, Path::new("t.yaml")) {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty());
            problems.iter().map(ToString::to_string).collect()
        }
        Err(e) => panic!("expected problems, got {e}"),
    }
}

/// The only problem of `text`.
pub(super) fn problem(text: &str) -> String {
    let mut all = problems(text);
    assert_eq!(all.len(), 1, "expected one problem, found {all:#?}");
    all.remove(0)
}

#[test]
fn minimal_config_takes_the_defaults() {
    let config = ok(HEAD);
    let expected = Config {
        version: 2,
        site: Site {
            name: "s".into(),
            listen: None,
            tls: None,
        },
        state_dir: DEFAULT_STATE_DIR.into(),
        runtime_dir: DEFAULT_RUNTIME_DIR.into(),
        tracking: Tracking {
            poll_interval_ms: 200,
            top_writers: 10,
            writers: false,
        },
        peers: Vec::new(),
        resources: Resources {
            links: Vec::new(),
            pool: None,
            mount_root: DEFAULT_MOUNT_ROOT.into(),
        },
        volumes: Vec::new(),
        vfs: Vec::new(),
    };
    assert_eq!(config, expected);
    assert_eq!(config.api_socket(), Path::new("/run/vfsdr/agent.sock"));
}

#[test]
fn every_field_is_read() {
    let config = ok(
        "version: 2\nsite: {name: b-2}\nstate_dir: /s\nruntime_dir: /r\n\
         tracking: {poll_interval_ms: 10, top_writers: 100, writers: true}\n\
         volumes:\n  - {name: d, device: /dev/vdb}\n  - {name: i, image: '/p/i.img'}\n",
    );
    assert_eq!(config.site.name, "b-2");
    assert_eq!(
        (config.state_dir, config.runtime_dir),
        (PathBuf::from("/s"), PathBuf::from("/r"))
    );
    assert_eq!(
        config.tracking,
        Tracking {
            poll_interval_ms: 10,
            top_writers: 100,
            writers: true,
        }
    );
    let volumes = [
        Volume {
            name: "d".into(),
            source: VolumeSource::Device("/dev/vdb".into()),
        },
        Volume {
            name: "i".into(),
            source: VolumeSource::Image("/p/i.img".into()),
        },
    ];
    assert_eq!(config.volumes, volumes);
}

#[test]
fn empty_optional_fields_take_their_defaults() {
    let config = ok(&format!(
        "{HEAD}state_dir: ~\nruntime_dir:\ntracking:\n  top_writers: null\nvolumes:\n\
         peers:\nresources: {{links: , pool: ~, mount_root: }}\nvfs: []\n"
    ));
    assert_eq!(config, ok(HEAD));
}

#[test]
fn range_bounds_are_inclusive() {
    for (text, poll, top) in [("10", 10, 1), ("10000", 10_000, 100), ("0x10", 16, 1)] {
        let config = ok(&format!(
            "{HEAD}tracking: {{poll_interval_ms: {text}, top_writers: {top}}}\n"
        ));
        assert_eq!(
            config.tracking,
            Tracking {
                poll_interval_ms: poll,
                top_writers: top,
                writers: false,
            }
        );
    }
}

#[test]
fn integers_out_of_range_or_of_another_type() {
    let field = |value: &str| problem(&format!("{HEAD}tracking:\n  poll_interval_ms: {value}\n"));
    let at = "5:21: tracking.poll_interval_ms";
    assert_eq!(
        field("9"),
        format!("{at}: must be between 10 and 10000, found 9")
    );
    assert_eq!(
        field("10001"),
        format!("{at}: must be between 10 and 10000, found 10001")
    );
    assert_eq!(
        field("-200"),
        format!("{at}: must be between 10 and 10000, found -200")
    );
    let huge = "9".repeat(50);
    assert_eq!(
        field(&huge),
        format!("{at}: must be between 10 and 10000, found {huge}")
    );
    assert_eq!(
        field("2.5"),
        format!("{at}: expected an integer, found a floating-point number `2.5`")
    );
    assert_eq!(
        field("true"),
        format!("{at}: expected an integer, found a boolean `true`")
    );
    assert_eq!(
        field("'200'"),
        format!("{at}: expected an integer, found the string `200` (remove the quotes)")
    );
    assert_eq!(
        field("[200]"),
        format!("{at}: expected an integer, found a sequence")
    );
}

#[test]
fn names_follow_the_rules() {
    let name = |n: &str| {
        parse(
            &format!("version: 2\nsite:\n  name: {n}\n"),
            Path::new("t.yaml"),
        )
    };
    for good in [
        "a",
        "a-",
        "site-1",
        &format!("a{}", "0".repeat(31)),
        "'quoted'",
    ] {
        assert!(name(good).is_ok(), "{good} refused");
    }
    let expected = "expected 1 to 32 characters from `a-z`, `0-9` and `-`, starting with a letter";
    let cases = [
        (
            "'-a'",
            "invalid name `-a` (it does not start with a letter)".to_owned(),
        ),
        ("é", "invalid name `é` (`é` is not allowed)".to_owned()),
        ("a b", "invalid name `a b` (` ` is not allowed)".to_owned()),
        (
            &"a".repeat(33),
            format!("invalid name `{}` (33 characters)", "a".repeat(33)),
        ),
        ("''", "empty name".to_owned()),
    ];
    for (text, reason) in cases {
        assert_eq!(
            problem(&format!("version: 2\nsite:\n  name: {text}\n")),
            format!("3:9: site.name: {reason}, {expected}")
        );
    }
    // A plain `true` is a boolean; quoted, it is a valid name.
    assert_eq!(
        problem("version: 2\nsite:\n  name: true\n"),
        "3:9: site.name: expected a name, found a boolean `true`"
    );
    assert!(name("'true'").is_ok());
}

#[test]
fn paths_must_be_absolute_strings() {
    let dir = |value: &str| problem(&format!("{HEAD}state_dir: {value}\n"));
    assert_eq!(
        dir("''"),
        "4:12: state_dir: expected an absolute path, found an empty string"
    );
    assert_eq!(
        dir("./x"),
        "4:12: state_dir: expected an absolute path, found `./x`"
    );
    assert_eq!(
        dir("12"),
        "4:12: state_dir: expected an absolute path, found an integer `12`"
    );
    assert_eq!(
        dir("\"/a\\0b\""),
        "4:12: state_dir: expected an absolute path, found a string with a NUL character"
    );
    let volume = problem(&format!("{HEAD}volumes:\n  - name: v\n    image:\n"));
    assert_eq!(
        volume,
        "6:10: volumes[0].image: expected an absolute path, found an empty value"
    );
}

#[test]
fn version_problems() {
    let rest = "site:\n  name: s\n";
    let v = |version: &str| problems(&format!("version: {version}\n{rest}"));
    assert_eq!(
        v("'1'"),
        ["1:10: version: expected an integer, found the string `1` (remove the quotes)"]
    );
    assert_eq!(
        v("1.0"),
        ["1:10: version: expected an integer, found a floating-point number `1.0`"]
    );
    assert_eq!(
        v("0"),
        ["1:10: version: expected a version number (this vfsdr reads version 2), found 0"]
    );
    // A missing version does not hide the other problems.
    let found = problems("site:\n  name: S\n");
    assert_eq!(
        found[0],
        "1:1: version: missing field `version`, expected `version: 2`"
    );
    assert!(
        found[1].starts_with("2:9: site.name: invalid name `S`"),
        "{found:?}"
    );
    assert_eq!(found.len(), 2);
}

#[test]
fn an_unsupported_version_is_the_only_problem_reported() {
    let found = problems("site: {color: red}\nversion: 3\nfuture: yes\n");
    let message = "version 3 is a newer format: this vfsdr reads version 2 (the file was \
                   written for a newer vfsdr: upgrade vfsdr, or rewrite the file as version 2)";
    assert_eq!(found, [format!("2:10: version: {message}")]);
}

#[test]
fn an_older_version_is_named_as_such() {
    let found = problems("version: 1\nsite: {name: s}\nvolumes: [{name: v, device: /dev/vdb}]\n");
    let message = "version 1 is an older format: this vfsdr reads version 2 (rewrite the file \
                   as version 2: its version 1 fields keep their meaning, and the vfsdr.yaml \
                   shipped with vfsdr documents the new ones)";
    assert_eq!(found, [format!("1:10: version: {message}")]);
    // A version with no note says what to do all the same.
    assert_eq!(
        values::unsupported_version("2", Some(2), 4),
        "version 2 is an older format: this vfsdr reads version 4 (rewrite the file as version 4)"
    );
}

#[test]
fn missing_fields_point_at_their_mapping() {
    assert_eq!(
        problems("version: 2\n"),
        ["1:1: site: missing field `site`"]
    );
    assert_eq!(
        problems("version: 2\nsite: {}\n"),
        ["2:7: site.name: missing field `name`"]
    );
    assert_eq!(
        problems("version: 2\nsite:\n"),
        ["2:5: site: expected a mapping with fields `name`, `listen`, `tls`, found an empty value"]
    );
    assert_eq!(
        problems(&format!("{HEAD}volumes:\n  - device: /dev/vdb\n")),
        ["5:5: volumes[0].name: missing field `name`"]
    );
}

#[test]
fn keys_are_checked() {
    let found = problems("version: 2\nsite: {name: s, Name: t}\nversion: 2\n[a]: 1\n");
    let expected = [
        "2:17: site.Name: unknown field `Name`, expected one of `name`, `listen`, `tls`",
        "3:1: version: duplicate field `version`, already set on line 1",
        "4:1: (document): expected a field name, found a sequence as a key",
    ];
    assert_eq!(found, expected);
}

#[test]
fn problems_come_in_file_order() {
    // `name` is missing (reported at the mapping, line 5) after its unknown field was seen.
    let found = problems(&format!(
        "{HEAD}volumes:\n  - nam: a\n    image: b\n  - name: a\n    image: /b\n    image: /c\n"
    ));
    let lines: Vec<&str> = found
        .iter()
        .map(|p| p.split(": ").next().unwrap_or_default())
        .collect();
    assert_eq!(lines, ["5:5", "5:5", "6:12", "9:5"]);
}

#[test]
fn invalid_display_has_one_line_per_problem_with_the_file() {
    let error = parse("version: 3\n", Path::new("/etc/vfsdr/vfsdr.yaml")).expect_err("invalid");
    assert!(
        error
            .to_string()
            .starts_with("/etc/vfsdr/vfsdr.yaml:1:10: version: version 3 is a newer format")
    );
    let error = parse("site: 1\nx: 2\n", Path::new("f")).expect_err("invalid");
    assert_eq!(error.to_string().lines().count(), 3);
    assert!(!error.to_string().ends_with('\n'));
}

#[test]
fn load_names_a_file_it_cannot_read() {
    let path = Path::new("/nonexistent/vfsdr.yaml");
    let error = load(path).expect_err("no such file");
    assert!(matches!(&error, ConfigError::Read { path: p, .. } if p == path));
    assert!(
        error
            .to_string()
            .starts_with("cannot read config /nonexistent/vfsdr.yaml: "),
        "{error}"
    );
}

#[test]
fn load_reads_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vfsdr.yaml");
    std::fs::write(&path, HEAD).expect("write");
    assert_eq!(load(&path).expect("valid"), ok(HEAD));
}
