//! Every shipped configuration file is a test.
//!
//! - `config/*.yaml` and `config/examples/*.yaml` must be valid;
//! - each `config/invalid/NAME.yaml` must be refused with exactly the lines of
//!   `config/invalid/NAME.expected`, where the file is named relative to `config/`
//!   (`invalid/NAME.yaml:LINE:COLUMN: FIELD: MESSAGE`).
//!
//! After a deliberate change of messages, `VFSDR_BLESS=1 cargo test --test config_samples`
//! rewrites the `.expected` files; review their diff before committing.

use std::fs;
use std::path::{Path, PathBuf};

use vfsdr::config::{self, ConfigError, VolumeSource};

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

/// Parses `config/<relative>`, naming it `relative` in the problems.
fn parse(relative: &Path) -> Result<config::Config, ConfigError> {
    let text = fs::read_to_string(config_dir().join(relative))
        .unwrap_or_else(|e| panic!("cannot read config/{}: {e}", relative.display()));
    config::parse(&text, relative)
}

#[test]
fn shipped_and_example_configs_are_valid() {
    let samples: Vec<PathBuf> = files(".", "yaml")
        .into_iter()
        .chain(files("examples", "yaml"))
        .collect();
    assert!(
        samples.len() >= 3,
        "expected config/vfsdr.yaml and examples, found {samples:?}"
    );
    let failures: Vec<String> = samples
        .iter()
        .filter_map(|sample| parse(sample).err().map(|e| e.to_string()))
        .collect();
    assert!(
        failures.is_empty(),
        "valid samples refused:\n{}",
        failures.join("\n")
    );
}

#[test]
fn invalid_configs_report_exactly_their_expected_problems() {
    let samples = files("invalid", "yaml");
    assert!(
        samples.len() >= 12,
        "expected at least 12 invalid samples, found {}",
        samples.len()
    );
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
    for expected in files("invalid", "expected") {
        if !config_dir().join(expected.with_extension("yaml")).exists() {
            failures.push(format!("{}: no sample for it", expected.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "invalid samples:\n{}",
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
        problems.len() >= 8,
        "found only {} problems",
        problems.len()
    );
}

#[test]
fn installed_default_loads_with_defaults() {
    let config =
        config::load(&config_dir().join("vfsdr.yaml")).expect("config/vfsdr.yaml is valid");
    assert_eq!(config.site.name, "site1");
    assert_eq!(config.state_dir, Path::new(config::DEFAULT_STATE_DIR));
    assert_eq!(config.runtime_dir, Path::new(config::DEFAULT_RUNTIME_DIR));
    assert_eq!(
        config.tracking.poll_interval_ms,
        config::DEFAULT_POLL_INTERVAL_MS
    );
    assert_eq!(config.tracking.top_writers, config::DEFAULT_TOP_WRITERS);
    assert!(config.volumes.is_empty());
}

#[test]
fn example_with_all_fields_is_read_as_written() {
    let config = parse(Path::new("examples/all-fields.yaml")).expect("valid");
    assert_eq!(config.site.name, "hq-paris-01");
    assert_eq!(config.tracking.poll_interval_ms, 500);
    assert_eq!(config.tracking.top_writers, 25);
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
}
