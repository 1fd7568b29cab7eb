//! The agent's local API: one JSON request and one JSON response per line, per connection, on
//! a Unix socket in the runtime directory (root only). Every message carries `"api": 1`.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    config::VfsDef,
    resources::{Outcome, Purpose, Report, Step},
    state::{Reservation, Role},
    tracking::{Changes, TrackingStatus},
};

pub const API_VERSION: u32 = 1;
/// Longest request line the agent reads.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    /// The blocks of `volume` changed since its mark; with `take`, also start a new mark.
    Changed {
        volume: String,
        take: bool,
    },
    /// Does the DR site of `vfs` have what it needs? For a change, of the `change` definition.
    Precheck {
        vfs: String,
        purpose: Purpose,
        change: Option<VfsDef>,
    },
    /// Precheck, then reserve at the DR site; with shortages only when `proceed`.
    Reserve {
        vfs: String,
        change: Option<VfsDef>,
        proceed: bool,
    },
    /// Remove what is reserved for `vfs` at its DR site.
    Release {
        vfs: String,
    },
    /// The VFSs this site knows, with their roles and reservations.
    ListVfs,
    /// Run a replication cycle of `vfs` (active here) now; answered when it is done.
    Replicate {
        vfs: String,
    },
    /// The snapshot catalog of `vfs` (at its DR site).
    Snapshots {
        vfs: String,
    },
    /// Delete snapshots `ids` of `vfs` (standby at this site); the latest only with `force`
    /// (the next cycle is then a full copy). All or none; answered when done.
    DeleteSnapshots {
        vfs: String,
        ids: Vec<u64>,
        force: bool,
    },
    /// Compare the DR site's snapshot of the last acknowledged cycle of `vfs` (active here) with
    /// the clones it was made from; answered when done.
    Verify {
        vfs: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Status(StatusReport),
    Changed(Changes),
    Precheck(Report),
    Reserved(Outcome),
    Released {
        vfs: String,
        steps: Vec<Step>,
    },
    Vfs {
        vfs: Vec<VfsInfo>,
    },
    Replicated(crate::daemon::CycleReport),
    Snapshots {
        vfs: String,
        snapshots: Vec<crate::state::Snapshot>,
        /// The file system of each volume (kernel name), for mounting its images.
        #[serde(default)]
        filesystems: std::collections::BTreeMap<String, String>,
    },
    Verified(crate::replication::verify::VerifyReport),
    /// Snapshots deleted by `DeleteSnapshots`.
    SnapshotsDeleted(SnapshotsDeleted),
    Error {
        message: String,
    },
}

/// What `vfsdr snapshot delete` deleted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotsDeleted {
    pub vfs: String,
    /// The snapshots deleted, by id (with any an interrupted removal had left behind).
    pub ids: Vec<u64>,
    /// The latest snapshot was among them: the next cycle copies every volume again.
    pub latest_deleted: bool,
}

/// A VFS whose replication is paused because its DR site's pool has no room: cycles are
/// retried every interval (and by `vfsdr replicate --now`) until one fits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    pub vfs: String,
    /// The DR site.
    pub site: String,
    /// Its pool, as it reported it.
    pub pool: String,
    /// Bytes the last refused cycle needed, and the bytes free beyond the pool's reserve.
    pub needs: u64,
    pub free: u64,
    pub since_unix_s: u64,
    /// Cycles refused since the pause began.
    pub refused_cycles: u64,
}

/// What a VFS's replication is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationState {
    /// No cycle was ever acknowledged and none is running.
    NeverReplicated,
    /// Waiting for its next cycle.
    Idle,
    /// A cycle is running (since `running_since_unix_ms`).
    Running,
    /// Cycles are refused (see `paused_reason`); they are retried every interval.
    Paused,
}

/// The DR site's latest consistent point of a VFS, as the active site knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsistentPoint {
    /// The cycle that made it, and the DR site's snapshot holding it.
    pub cycle: u64,
    pub snapshot: u64,
    /// When it was taken (milliseconds since the Unix epoch); `None` if not recorded (an older
    /// agent acknowledged it).
    pub point_unix_ms: Option<u64>,
}

/// Why the next cycle starts when it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NextCycleWhy {
    /// The first cycle after the agent started (at most a minute after, sooner with a short
    /// interval).
    FirstAfterStart,
    /// The configured interval from the start of the last cycle.
    Interval,
    /// Replication is paused: the refused cycle is retried after the interval.
    RetryPaused,
    /// The data at risk passed `trigger_at_risk_bytes`: at the scheduler's next tick.
    AtRiskTrigger,
    /// The interval has passed while a cycle runs: the next starts when it ends.
    AfterRunning,
    /// This site has no peer link: cycles are not scheduled.
    NoPeerLink,
}

/// When the scheduler starts the next cycle of a VFS (or earlier, when the data at risk
/// passes the trigger).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NextCycle {
    pub why: NextCycleWhy,
    /// In how many milliseconds; 0: at the next tick (every second); `None`: not known now.
    pub in_ms: Option<u64>,
    /// At what time (milliseconds since the Unix epoch), when known.
    pub unix_ms: Option<u64>,
}

/// The replication of one VFS active at this site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VfsReplicationStatus {
    pub vfs: String,
    /// Its DR site.
    pub peer: String,
    pub state: ReplicationState,
    /// When the running cycle started (milliseconds since the Unix epoch).
    #[serde(default)]
    pub running_since_unix_ms: Option<u64>,
    /// Why replication is paused.
    #[serde(default)]
    pub paused_reason: Option<String>,
    /// The DR site's latest consistent point; `None` before the first acknowledged cycle.
    pub last_point: Option<ConsistentPoint>,
    /// The RPO lag: how old the latest consistent point was when the agent answered
    /// (milliseconds); `None` without a point or its time.
    pub rpo_lag_ms: Option<u64>,
    /// Bytes written to its volumes since the start of the last cycle (the eBPF tracker).
    pub at_risk_bytes: u64,
    /// The configured amount of data at risk that starts a cycle early.
    pub trigger_at_risk_bytes: Option<u64>,
    /// The configured interval between cycles (seconds).
    pub interval_s: u64,
    /// The last cycle committed since the agent started.
    pub last_cycle: Option<crate::daemon::CycleReport>,
    pub next_cycle: NextCycle,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VfsInfo {
    pub name: String,
    pub role: Role,
    pub epoch: u64,
    pub from_site: String,
    pub reservations: Vec<Reservation>,
    pub shortages: Vec<serde_json::Value>,
    /// For a VFS active here: its volumes, mounted or what is missing.
    #[serde(default)]
    pub volumes: Vec<crate::daemon::VfsVolumeStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub api: u32,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub site: String,
    pub pid: u32,
    pub uptime_s: u64,
    pub config: PathBuf,
    pub volumes: Vec<VolumeInfo>,
    pub tracking: TrackingStatus,
    /// Health of each peer site, by name (empty without a peer link).
    #[serde(default)]
    pub peers: std::collections::BTreeMap<String, crate::peer::PeerHealth>,
    /// The last replication cycle of each VFS active here that had one since the agent
    /// started (also in `replication_status`; kept for scripts).
    #[serde(default)]
    pub replication: Vec<crate::daemon::CycleReport>,
    /// The replication of each VFS active here: state, last consistent point and RPO lag,
    /// last cycle, next cycle, data at risk.
    #[serde(default)]
    pub replication_status: Vec<VfsReplicationStatus>,
    /// VFSs whose replication is paused (their DR pool is full).
    #[serde(default)]
    pub paused: Vec<Paused>,
    /// The volumes of the VFSs active here: mounted, or what is missing.
    #[serde(default)]
    pub vfs_volumes: Vec<crate::daemon::VfsVolumeStatus>,
    /// The replication cycles running now, with how far each got.
    #[serde(default)]
    pub progress: Vec<crate::replication::progress::ProgressReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    /// The configured device or image.
    pub source: PathBuf,
    /// The block device watched (`/dev/loop3`).
    pub device: PathBuf,
    pub size_bytes: u64,
    /// True when the agent attached the loop device itself.
    pub attached_by_agent: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "cannot connect to the agent at {socket}: {source} (is `vfsdr agent` running with this configuration?)"
    )]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent at {socket}: {source}")]
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent at {socket} answered something unreadable: {reason}")]
    BadAnswer { socket: PathBuf, reason: String },
    #[error("the agent at {socket} speaks API version {found}, this vfsdr speaks {API_VERSION}")]
    Version { socket: PathBuf, found: u32 },
}

/// Parses a request line; the error message says what is wrong with it.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let env: Envelope<Request> =
        serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
    if env.api != API_VERSION {
        return Err(format!(
            "bad request: api version {} is not supported (this agent speaks {API_VERSION})",
            env.api
        ));
    }
    Ok(env.body)
}

pub fn encode<T: Serialize>(body: T) -> String {
    let mut s = serde_json::to_string(&Envelope {
        api: API_VERSION,
        body,
    })
    .expect("API types serialize");
    s.push('\n');
    s
}

/// Sends one request to the agent and returns its response (waiting up to 30 s).
pub fn call(socket: &Path, request: &Request) -> Result<Response, ApiError> {
    call_within(socket, request, Duration::from_secs(30))
}

/// Like [`call`], waiting up to `timeout` for the answer.
pub fn call_within(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let io = |source| ApiError::Io {
        socket: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ApiError::Connect {
        socket: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.write_all(encode(request).as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).map_err(io)?;
    let value: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| ApiError::BadAnswer {
            socket: socket.to_owned(),
            reason: e.to_string(),
        })?;
    let found = value.get("api").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
    if found != API_VERSION {
        return Err(ApiError::Version {
            socket: socket.to_owned(),
            found,
        });
    }
    let env: Envelope<Response> =
        serde_json::from_value(value).map_err(|e| ApiError::BadAnswer {
            socket: socket.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(env.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_say_why() {
        let line = encode(Request::Changed {
            volume: "data".into(),
            take: true,
        });
        assert_eq!(
            line,
            "{\"api\":1,\"request\":\"changed\",\"volume\":\"data\",\"take\":true}\n"
        );
        assert_eq!(
            parse_request(&line).unwrap(),
            Request::Changed {
                volume: "data".into(),
                take: true
            }
        );
        let e = parse_request("{\"api\":1,\"request\":\"format_disk\"}").unwrap_err();
        assert!(e.contains("unknown variant `format_disk`"), "{e}");
        let e = parse_request("{\"api\":7,\"request\":\"status\"}").unwrap_err();
        assert!(e.contains("api version 7"), "{e}");
        let e = parse_request("{\"api\":1,\"request\":\"changed\"}").unwrap_err();
        assert!(e.contains("missing field `volume`"), "{e}");
        assert!(parse_request("not json").is_err());
    }

    #[test]
    fn connect_errors_name_the_socket() {
        let e = call(Path::new("/nonexistent/agent.sock"), &Request::Status).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/agent.sock"), "{e}");
    }
}
