//! Root tests: with `--log journald`, and with `--log auto` when stderr is not a terminal, the
//! agent writes structured journal entries: its start and stop events carry
//! `SYSLOG_IDENTIFIER=vfsdr`, `SITE`, `EVENT` and the right `PRIORITY`, through journald's native
//! protocol.
//!
//! Uses the running journald, or starts a standalone `/lib/systemd/systemd-journald` for the test
//! and stops exactly that process afterwards. The agent is `VFSDR_BIN` (default
//! `target/debug/vfsdr`). Run with `cargo test -p vfsdr-lab --test journald -- --ignored`.
use std::{
    collections::BTreeMap,
    fs,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread::sleep,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

const JOURNALD: &str = "/lib/systemd/systemd-journald";
const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";
/// journald priority of tracing's INFO level (see agent/src/logging.rs).
const PRIORITY_INFO: &str = "6";

#[test]
#[ignore = "root: starts systemd-journald if none runs, runs the agent as root"]
fn agent_start_and_stop_reach_journald_with_structured_fields() -> anyhow::Result<()> {
    agent_logs_to_journald("journald", "j")
}

/// `--log auto` with stderr redirected to a file (not a terminal) and journald answering: the
/// agent picks journald, as under systemd.
#[test]
#[ignore = "root: starts systemd-journald if none runs, runs the agent as root"]
fn auto_picks_journald_when_stderr_is_not_a_terminal() -> anyhow::Result<()> {
    agent_logs_to_journald("auto", "a")
}

fn agent_logs_to_journald(log: &str, tag: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "this test must run as root"
    );
    let bin = agent_binary()?;
    let _journald = Journald::ensure_running()?;

    let pid = std::process::id();
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() % 1_000_000;
    // Unique to this run, also in a persistent journal that holds earlier runs.
    let site = format!("jtest{tag}-{pid}-{stamp}");
    let dir = TempDir::new(&format!("vfsdr-journald-{tag}-{pid}-{stamp}"))?;
    let config = dir.path.join("vfsdr.yaml");
    fs::write(
        &config,
        format!(
            "version: 2\nsite:\n  name: {site}\nstate_dir: {}\nruntime_dir: {}\n",
            dir.path.join("state").display(),
            dir.path.join("run").display()
        ),
    )?;

    let output = dir.path.join("agent.out");
    let mut agent = Agent::spawn(&bin, &config, log, &output)?;
    let agent_pid = agent.pid();

    let started = wait_for_event(
        &site,
        agent_pid,
        "agent_started",
        Duration::from_secs(20),
        || match agent.try_wait()? {
            Some(status) => bail!(
                "the agent exited with {status} before logging agent_started; its output:\n{}",
                fs::read_to_string(&output).unwrap_or_default()
            ),
            None => Ok(()),
        },
    )?;
    check_fields(&started, &site, agent_pid, "agent_started")?;

    let status = agent.terminate(Duration::from_secs(30))?;
    ensure!(
        status.success(),
        "the agent exited with {status} after SIGTERM; its output:\n{}",
        fs::read_to_string(&output).unwrap_or_default()
    );
    let stopped = wait_for_event(
        &site,
        agent_pid,
        "agent_stopped",
        Duration::from_secs(10),
        || Ok(()),
    )?;
    check_fields(&stopped, &site, agent_pid, "agent_stopped")?;
    Ok(())
}

/// The journal fields the logging layer must produce (agent/src/logging.rs).
fn check_fields(entry: &Entry, site: &str, pid: u32, event: &str) -> anyhow::Result<()> {
    let expect = |field: &str, want: &str| -> anyhow::Result<()> {
        let values = entry.values(field);
        ensure!(
            values.iter().any(|v| v == want),
            "{event}: field {field} is {values:?}, expected {want:?}; entry: {entry:#?}"
        );
        Ok(())
    };
    expect("SYSLOG_IDENTIFIER", "vfsdr")?;
    expect("SITE", site)?;
    expect("EVENT", event)?;
    expect("PRIORITY", PRIORITY_INFO)?;
    expect("_PID", &pid.to_string())?;
    // Native protocol with fields, not lines scraped from stdout/stderr.
    expect("_TRANSPORT", "journal")?;
    ensure!(
        !entry.values("MESSAGE").is_empty(),
        "{event}: no MESSAGE; entry: {entry:#?}"
    );
    // No tracing-journald default prefix ("F_SITE"): the names are exactly the documented ones.
    ensure!(
        !entry.0.keys().any(|k| k.starts_with("F_")),
        "{event}: prefixed field names; entry: {entry:#?}"
    );
    Ok(())
}

/// One journal entry from `journalctl -o json`: field name to value(s).
#[derive(Debug)]
struct Entry(BTreeMap<String, Value>);

impl Entry {
    /// A field's values: journald gives a string, an array of strings when the field occurs
    /// more than once, and arrays of bytes for binary values.
    fn values(&self, field: &str) -> Vec<String> {
        fn text(v: &Value) -> Option<String> {
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Array(bytes) if bytes.iter().all(Value::is_u64) => Some(
                    String::from_utf8_lossy(
                        &bytes
                            .iter()
                            .filter_map(Value::as_u64)
                            .map(|b| b as u8)
                            .collect::<Vec<_>>(),
                    )
                    .into_owned(),
                ),
                _ => None,
            }
        }
        match self.0.get(field) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) if items.iter().all(|i| !i.is_u64()) => {
                items.iter().filter_map(text).collect()
            }
            Some(v) => text(v).into_iter().collect(),
        }
    }
}

/// Polls the journal until the agent's entry for `event` appears; `check` runs between polls
/// (to notice an agent that died).
fn wait_for_event(
    site: &str,
    pid: u32,
    event: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Entry> {
    let deadline = Instant::now() + timeout;
    loop {
        let entries = journal(&[&format!("SITE={site}"), &format!("_PID={pid}")])?;
        if let Some(e) = entries
            .into_iter()
            .find(|e| e.values("EVENT").iter().any(|v| v == event))
        {
            return Ok(e);
        }
        check()?;
        if Instant::now() > deadline {
            let all = journal(&[&format!("_PID={pid}")])?;
            bail!(
                "no journal entry with EVENT={event} SITE={site} from pid {pid} after {timeout:?}; entries of that pid: {all:#?}"
            );
        }
        sleep(Duration::from_millis(200));
    }
}

fn journal(matches: &[&str]) -> anyhow::Result<Vec<Entry>> {
    let out = Command::new("journalctl")
        .args(["-o", "json", "--no-pager", "--all"])
        .args(matches)
        .output()
        .context("cannot run journalctl")?;
    ensure!(
        out.status.success(),
        "journalctl {matches:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            Ok(Entry(
                serde_json::from_str(l).with_context(|| format!("journalctl printed {l:?}"))?,
            ))
        })
        .collect()
}

fn agent_binary() -> anyhow::Result<PathBuf> {
    let bin = std::env::var_os("VFSDR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("tests/ has a parent")
                .join("target/debug/vfsdr")
        });
    ensure!(
        bin.is_file(),
        "the agent binary {} does not exist: build it with `cargo build -p vfsdr` (or set VFSDR_BIN)",
        bin.display()
    );
    Ok(bin)
}

/// Whether a journald answers on its socket (the socket file outlives a stopped journald).
fn journald_answers() -> bool {
    UnixDatagram::unbound()
        .and_then(|s| s.send_to(&[], JOURNALD_SOCKET))
        .is_ok()
}

/// The journald this test started, if it had to; stopped (exactly this pid) when dropped.
struct Journald(Option<Child>);

impl Journald {
    fn ensure_running() -> anyhow::Result<Self> {
        if journald_answers() {
            return Ok(Journald(None));
        }
        ensure!(
            Path::new(JOURNALD).is_file(),
            "no journald answers on {JOURNALD_SOCKET} and {JOURNALD} is missing"
        );
        let child = Command::new(JOURNALD)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {JOURNALD}"))?;
        eprintln!("started {JOURNALD} (pid {})", child.id());
        let mut journald = Journald(Some(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !journald_answers() {
            if let Some(status) = journald.0.as_mut().expect("just set").try_wait()? {
                bail!("{JOURNALD} exited with {status} at start");
            }
            ensure!(
                Instant::now() < deadline,
                "{JOURNALD} does not answer on {JOURNALD_SOCKET} after 10 s"
            );
            sleep(Duration::from_millis(50));
        }
        Ok(journald)
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut()
            && let Err(e) = stop(child, Duration::from_secs(10))
        {
            eprintln!("cleanup: stopping journald (pid {}): {e:#}", child.id());
        }
    }
}

/// The agent under test; killed (exactly this pid) if the test ends while it runs.
struct Agent(Child);

impl Agent {
    fn spawn(bin: &Path, config: &Path, log: &str, output: &Path) -> anyhow::Result<Self> {
        let out = fs::File::create(output)?;
        let child = Command::new(bin)
            .arg("agent")
            .arg("--config")
            .arg(config)
            .args(["--log", log])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Agent(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.0.try_wait()?)
    }

    fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        stop(&mut self.0, timeout)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// SIGTERM to this child, wait up to `timeout`, then SIGKILL.
fn stop(child: &mut Child, timeout: Duration) -> anyhow::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let pid = libc::pid_t::try_from(child.id())?;
    // SAFETY: kill has no memory preconditions; `pid` is our own unreaped child, so it cannot
    // have been reused by another process.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(std::io::Error::last_os_error()).context("kill SIGTERM");
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            bail!("pid {pid} did not exit within {timeout:?} of SIGTERM; killed");
        }
        sleep(Duration::from_millis(50));
    }
}

/// A directory under the system temp dir, removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(name: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(name);
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
