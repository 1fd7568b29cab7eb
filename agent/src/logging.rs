//! Logging: journald when the agent runs under systemd, human-readable stderr otherwise.
//!
//! [`init`] installs one global `tracing` subscriber. With [`LogTarget::Auto`] it picks journald
//! when the process is connected to journald (the `JOURNAL_STREAM` variable names the device and
//! inode of our stderr, which is how systemd's own `sd_journal` check works), or, when stderr is not
//! a terminal, when the journald socket `/run/systemd/journal/socket` exists; otherwise stderr.
//! `RUST_LOG`, when set, replaces the level given on the command line (full `EnvFilter` syntax, e.g.
//! `RUST_LOG=vfsdr=debug,aya=info`); an invalid `RUST_LOG` is an error rather than ignored.
//!
//! # Journal fields
//!
//! Events go to journald through its native protocol with structured fields. Field names are the
//! tracing field names upper-cased, with no prefix (`.` becomes `_`, other characters outside
//! `[A-Za-z0-9_]` and leading `_` are dropped), so a tracing field can never forge a trusted `_*`
//! field. Fields of every span an event is in are sent with it. What the agent uses:
//!
//! | journal field       | from                                                    |
//! |---------------------|---------------------------------------------------------|
//! | `MESSAGE`           | the event's message                                     |
//! | `PRIORITY`          | level: ERROR 3, WARN 4, INFO 6, DEBUG 7, TRACE 7        |
//! | `SYSLOG_IDENTIFIER` | always `vfsdr` (`journalctl -t vfsdr`)                  |
//! | `EVENT`             | field `event`: a stable name such as `agent_started`    |
//! | `SITE`              | field `site` (event or span)                            |
//! | `VFS`               | field `vfs` (event or span)                             |
//! | `VOLUME`            | field `volume` (event or span)                          |
//! | `TARGET`, `CODE_FILE`, `CODE_LINE` | the event's module path and source location |
//! | `SPAN_NAME`, `SPAN_TARGET`, `SPAN_CODE_FILE`, `SPAN_CODE_LINE` | for each enclosing span |
//!
//! Any other field `foo_bar` appears as `FOO_BAR`. Do not name tracing fields `message`,
//! `priority`, `syslog_identifier`, `target`, `code_file`, `code_line` or `span_name`: they would
//! add a second value to the standard field. When the same field is both in a span and in the event
//! (e.g. `site`), journald receives it twice; equal values are stored once.
//!
//! Query examples: `journalctl -t vfsdr SITE=dr1 EVENT=agent_started`,
//! `journalctl -o json -t vfsdr VOLUME=data`.
use std::{
    ffi::OsStr,
    fmt,
    io::IsTerminal as _,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::Path,
};

use anyhow::{Context as _, anyhow};
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::{
    EnvFilter, filter::LevelFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// The journald native-protocol socket.
pub const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// The `SYSLOG_IDENTIFIER` of every journal entry the agent writes.
pub const SYSLOG_IDENTIFIER: &str = "vfsdr";

/// Where log events go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTarget {
    /// journald when connected to it (running under systemd), else stderr.
    Auto,
    /// journald's native protocol, with structured fields.
    Journald,
    /// Human-readable lines on stderr.
    Stderr,
}

impl fmt::Display for LogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogTarget::Auto => "auto",
            LogTarget::Journald => "journald",
            LogTarget::Stderr => "stderr",
        })
    }
}

/// What the [`LogTarget::Auto`] decision looks at, gathered by [`Environment::probe`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    /// The `JOURNAL_STREAM` variable (`DEV:INODE`), set by systemd for a service whose stdout or
    /// stderr is connected to journald.
    pub journal_stream: Option<String>,
    /// Device and inode of file descriptor 2, if it is open.
    pub stderr_id: Option<(u64, u64)>,
    pub stderr_is_terminal: bool,
    pub journald_socket_exists: bool,
}

impl Environment {
    /// Reads the environment of this process.
    pub fn probe() -> Self {
        let stderr = std::io::stderr();
        let stderr_id = stderr
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .and_then(|fd| std::fs::File::from(fd).metadata().ok())
            .map(|m| (m.dev(), m.ino()));
        Environment {
            journal_stream: std::env::var_os("JOURNAL_STREAM")
                .as_deref()
                .and_then(OsStr::to_str)
                .map(str::to_owned),
            stderr_id,
            stderr_is_terminal: stderr.is_terminal(),
            journald_socket_exists: Path::new(JOURNALD_SOCKET).exists(),
        }
    }

    /// Whether stderr is the stream systemd connected to journald (what `sd_journal`'s
    /// `JOURNAL_STREAM` check does): a child whose stderr was redirected elsewhere inherits the
    /// variable but no longer matches.
    pub fn connected_to_journal(&self) -> bool {
        match (
            self.journal_stream
                .as_deref()
                .and_then(parse_journal_stream),
            self.stderr_id,
        ) {
            (Some(stream), Some(stderr)) => stream == stderr,
            _ => false,
        }
    }
}

/// Parses `JOURNAL_STREAM`'s `DEV:INODE` (both decimal).
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Resolves [`LogTarget::Auto`] against `env`; explicit targets are returned unchanged.
pub fn decide(requested: LogTarget, env: &Environment) -> LogTarget {
    match requested {
        LogTarget::Auto if env.connected_to_journal() => LogTarget::Journald,
        LogTarget::Auto if !env.stderr_is_terminal && env.journald_socket_exists => {
            LogTarget::Journald
        }
        LogTarget::Auto => LogTarget::Stderr,
        explicit => explicit,
    }
}

/// The level filter: `rust_log` (the `RUST_LOG` value) when set and not blank, else `level`.
pub fn filter(level: tracing::Level, rust_log: Option<&str>) -> anyhow::Result<EnvFilter> {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(spec) => EnvFilter::builder()
            .parse(spec)
            .with_context(|| format!("RUST_LOG={spec:?} is not a valid log filter")),
        None => Ok(EnvFilter::default().add_directive(LevelFilter::from_level(level).into())),
    }
}

/// How tracing levels map to journald priorities (syslog severities): INFO is `info` (6), not
/// tracing-journald's default `notice` (5), so `journalctl -p info` and `-p notice` mean what
/// operators expect.
pub fn priority_mappings() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// The journald layer: no field prefix (fields are `SITE`, `EVENT`, ... not `F_SITE`), identifier
/// `vfsdr`. Fails when the socket cannot be reached.
pub fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    Ok(tracing_journald::layer()?
        .with_field_prefix(None)
        .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned())
        .with_priority_mappings(priority_mappings()))
}

/// Installs the global subscriber and returns the target chosen. `RUST_LOG`, when set, replaces
/// `level`. With [`LogTarget::Auto`], a journald socket that exists but does not answer falls back
/// to stderr (with a warning); an explicit [`LogTarget::Journald`] fails instead.
pub fn init(target: LogTarget, level: tracing::Level) -> anyhow::Result<LogTarget> {
    let rust_log = match std::env::var("RUST_LOG") {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(v)) => {
            return Err(anyhow!("RUST_LOG={v:?} is not valid UTF-8"));
        }
    };
    let filter = filter(level, rust_log.as_deref())?;
    let registry = tracing_subscriber::registry().with(filter);
    let already = "a global tracing subscriber is already installed";

    let chosen = decide(target, &Environment::probe());
    let journald_error = if chosen == LogTarget::Journald {
        match journald_layer() {
            Ok(layer) => {
                registry.with(layer).try_init().context(already)?;
                return Ok(LogTarget::Journald);
            }
            Err(e) if target == LogTarget::Journald => {
                return Err(e).with_context(|| {
                    format!("cannot log to journald: cannot send to {JOURNALD_SOCKET}")
                });
            }
            Err(e) => Some(e),
        }
    } else {
        None
    };

    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    registry.with(stderr_layer).try_init().context(already)?;
    if let Some(e) = journald_error {
        tracing::warn!(
            event = "log_fallback",
            "journald socket {JOURNALD_SOCKET} does not answer ({e}); logging to stderr"
        );
    }
    Ok(LogTarget::Stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(
        stream: Option<&str>,
        stderr: Option<(u64, u64)>,
        tty: bool,
        socket: bool,
    ) -> Environment {
        Environment {
            journal_stream: stream.map(str::to_owned),
            stderr_id: stderr,
            stderr_is_terminal: tty,
            journald_socket_exists: socket,
        }
    }

    #[test]
    fn parses_journal_stream() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream(" 0:1\n"), Some((0, 1)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("8:x"), None);
        assert_eq!(parse_journal_stream(":1"), None);
        assert_eq!(parse_journal_stream(""), None);
    }

    #[test]
    fn journal_stream_must_match_stderr() {
        assert!(env(Some("8:42"), Some((8, 42)), false, true).connected_to_journal());
        // Inherited by a child whose stderr goes elsewhere.
        assert!(!env(Some("8:42"), Some((8, 43)), false, true).connected_to_journal());
        assert!(!env(Some("8:42"), None, false, true).connected_to_journal());
        assert!(!env(None, Some((8, 42)), false, true).connected_to_journal());
        assert!(!env(Some("garbage"), Some((8, 42)), false, true).connected_to_journal());
    }

    #[test]
    fn auto_prefers_journal_stream() {
        // Even on a terminal and without the socket check: the stream match wins.
        let e = env(Some("8:42"), Some((8, 42)), true, false);
        assert_eq!(decide(LogTarget::Auto, &e), LogTarget::Journald);
    }

    #[test]
    fn auto_uses_socket_only_when_stderr_is_not_a_terminal() {
        assert_eq!(
            decide(LogTarget::Auto, &env(None, None, false, true)),
            LogTarget::Journald
        );
        assert_eq!(
            decide(LogTarget::Auto, &env(None, None, true, true)),
            LogTarget::Stderr
        );
        assert_eq!(
            decide(LogTarget::Auto, &env(None, None, false, false)),
            LogTarget::Stderr
        );
        assert_eq!(
            decide(LogTarget::Auto, &env(Some("1:2"), Some((3, 4)), true, true)),
            LogTarget::Stderr
        );
    }

    #[test]
    fn explicit_targets_are_kept() {
        let journal = env(Some("8:42"), Some((8, 42)), false, true);
        let none = env(None, None, true, false);
        assert_eq!(decide(LogTarget::Stderr, &journal), LogTarget::Stderr);
        assert_eq!(decide(LogTarget::Journald, &none), LogTarget::Journald);
    }

    #[test]
    fn probe_reads_this_process() {
        let e = Environment::probe();
        assert_eq!(
            e.journald_socket_exists,
            Path::new(JOURNALD_SOCKET).exists()
        );
        assert!(e.stderr_id.is_some(), "the test harness has a stderr");
    }

    #[test]
    fn filter_uses_level_unless_rust_log_is_set() {
        let f = filter(tracing::Level::WARN, None).unwrap();
        assert_eq!(f.max_level_hint(), Some(LevelFilter::WARN));
        let f = filter(tracing::Level::WARN, Some("  ")).unwrap();
        assert_eq!(f.max_level_hint(), Some(LevelFilter::WARN));
        let f = filter(tracing::Level::WARN, Some("vfsdr=trace")).unwrap();
        assert_eq!(f.max_level_hint(), Some(LevelFilter::TRACE));
    }

    #[test]
    fn invalid_rust_log_is_an_error() {
        let err = filter(tracing::Level::INFO, Some("vfsdr=loud")).unwrap_err();
        assert!(
            format!("{err:#}").contains("RUST_LOG=\"vfsdr=loud\""),
            "{err:#}"
        );
    }

    #[test]
    fn target_names_match_the_cli() {
        use clap::ValueEnum as _;
        for t in LogTarget::value_variants() {
            let name = t.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(name, t.to_string());
        }
    }
}
