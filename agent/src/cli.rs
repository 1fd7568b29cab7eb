//! The `vfsdr` command line: the daemon (`agent`) and the operator commands.
mod show;
mod show_replication;
mod snapshot_delete;
mod verify;
mod vfs;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};

use crate::{
    api::{self, Request, Response},
    config, daemon,
    logging::{self, LogTarget},
};

#[derive(Parser)]
#[command(
    name = "vfsdr",
    version,
    about = "Disaster recovery for virtual SMB file servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (daemon) of this site.
    Agent {
        #[arg(
            long,
            short,
            value_name = "FILE",
            default_value = "/etc/vfsdr/vfsdr.yaml"
        )]
        config: PathBuf,
        /// Where logs go: journald when connected to it, else stderr (auto).
        #[arg(long, value_enum, default_value = "auto")]
        log: LogTarget,
        #[arg(long, default_value = "info", value_name = "LEVEL")]
        log_level: tracing::Level,
    },
    /// Show each volume's write rate and changes since its mark, and the top writers.
    Status {
        #[command(flatten)]
        target: AgentTarget,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Refresh every SECONDS until interrupted.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<f64>,
    },
    /// List the 4 KiB blocks of VOLUME changed since its mark.
    Changed {
        volume: String,
        /// Also reset the mark (atomically): the next call lists only newer changes.
        #[arg(long)]
        take: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check whether the DR site of VFS has the links, addresses, replicas and mount points
    /// it needs. Exit status 0: sufficient, 3: insufficient.
    Precheck {
        vfs: String,
        /// `failover` (default) or `change FILE` (a proposed new definition).
        #[arg(long = "for", num_args = 1..=2, value_names = ["PURPOSE", "FILE"])]
        purpose: Vec<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// Precheck, then reserve at the DR site what VFS needs. When resources are short, asks
    /// (on a terminal) whether to terminate or proceed; without a terminal it aborts.
    Reserve {
        vfs: String,
        #[arg(long = "for", num_args = 1..=2, value_names = ["PURPOSE", "FILE"])]
        purpose: Vec<String>,
        /// Answer the shortage question for scripts.
        #[arg(long, value_enum)]
        on_shortage: Option<vfs::OnShortage>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// Remove exactly what is reserved for VFS at its DR site.
    Release {
        vfs: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// Replicate VFS (active at this site) to its DR site now, and wait for the snapshot.
    Replicate {
        vfs: String,
        /// Run a cycle now (the interval runs them otherwise).
        #[arg(long, required = true)]
        now: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// Compare checksums of the DR site's latest snapshot of VFS (active here) with the clones it
    /// was made from. Exit status 0: every volume matches; 4: a volume differs; 5: a volume could
    /// not be compared (clone or snapshot missing); 1: verify could not run.
    Verify {
        vfs: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// Mount or unmount a snapshot read-only (browsing, single-file restore), or delete snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// List the snapshots of VFS kept at this (DR) site.
    Snapshots {
        vfs: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// List the VFSs this site knows: role, epoch, reservations.
    Vfs {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// Create the peer link's certificates (a CA, and one certificate per site).
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Mount snapshot ID of VFS read-only at DIR (one volume: DIR; several: DIR/<volume>).
    Mount {
        vfs: String,
        id: u64,
        dir: PathBuf,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// Unmount what `snapshot mount` mounted at DIR.
    Umount { dir: PathBuf },
    /// Delete snapshots of VFS at this (DR) site, all or none: refused for a snapshot that is
    /// mounted (a loop device holds its image) or while a cycle of VFS is being received.
    Delete {
        vfs: String,
        #[arg(required = true, value_name = "ID")]
        ids: Vec<u64>,
        /// Delete the latest snapshot too: the next cycle then copies every volume again (a
        /// full resync).
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AgentTarget,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Create a CA (`ca.pem`, `ca.key`) in DIR.
    Ca {
        dir: PathBuf,
        #[arg(long, default_value = "vfsdr CA")]
        name: String,
    },
    /// Create `SITE.pem` and `SITE.key` signed by the CA in --ca DIR.
    Site {
        site: String,
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check configuration files; report every problem with file, line, column and field.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

/// Which agent to talk to: its socket, or the one named by a site configuration.
#[derive(Args)]
struct AgentTarget {
    /// The site configuration whose agent to ask (its runtime_dir holds the socket).
    #[arg(long, short, value_name = "FILE", conflicts_with = "socket")]
    config: Option<PathBuf>,
    /// The agent's API socket.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

impl AgentTarget {
    fn socket(&self) -> anyhow::Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/vfsdr/vfsdr.yaml"));
        Ok(config::load(&path)?.api_socket())
    }
}

pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vfsdr: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Agent {
            config,
            log,
            log_level,
        } => {
            logging::init(log, log_level)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            if let Err(e) = rt.block_on(daemon::run(&config)) {
                tracing::error!(event = "agent_failed", error = %e, "agent cannot run");
                return Err(e.into());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            target,
            json,
            watch,
        } => {
            let socket = target.socket()?;
            loop {
                let report = match api::call(&socket, &Request::Status)? {
                    Response::Status(r) => r,
                    other => anyhow::bail!("unexpected answer from the agent: {other:?}"),
                };
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    if watch.is_some() {
                        print!("\x1b[H\x1b[2J");
                    }
                    print!("{}", show::status(&report));
                }
                let Some(secs) = watch else {
                    return Ok(ExitCode::SUCCESS);
                };
                std::thread::sleep(std::time::Duration::from_secs_f64(secs.max(0.1)));
            }
        }
        Command::Changed {
            volume,
            take,
            json,
            target,
        } => match api::call(&target.socket()?, &Request::Changed { volume, take })? {
            Response::Changed(c) if json => {
                println!("{}", serde_json::to_string(&c)?);
                Ok(ExitCode::SUCCESS)
            }
            Response::Changed(c) => {
                print!("{}", show::changes(&c));
                Ok(ExitCode::SUCCESS)
            }
            Response::Error { message } => anyhow::bail!("{message}"),
            other => anyhow::bail!("unexpected answer from the agent: {other:?}"),
        },
        Command::Precheck {
            vfs,
            purpose,
            json,
            target,
        } => vfs::precheck(&target.socket()?, vfs, &purpose, json),
        Command::Reserve {
            vfs,
            purpose,
            on_shortage,
            json,
            target,
        } => vfs::reserve(&target.socket()?, vfs, &purpose, on_shortage, json),
        Command::Release { vfs, json, target } => vfs::release(&target.socket()?, vfs, json),
        Command::Vfs { json, target } => vfs::list(&target.socket()?, json),
        Command::Snapshots { vfs, json, target } => vfs::snapshots(&target.socket()?, vfs, json),
        Command::Snapshot(SnapshotCommand::Mount {
            vfs,
            id,
            dir,
            target,
        }) => vfs::mount_snapshot(&target.socket()?, vfs, id, &dir),
        Command::Snapshot(SnapshotCommand::Umount { dir }) => vfs::umount_snapshot(&dir),
        Command::Snapshot(SnapshotCommand::Delete {
            vfs,
            ids,
            force,
            json,
            target,
        }) => snapshot_delete::delete(&target.socket()?, vfs, ids, force, json),
        Command::Replicate {
            vfs,
            now: _,
            json,
            target,
        } => vfs::replicate(&target.socket()?, vfs, json),
        Command::Verify { vfs, json, target } => verify::verify(&target.socket()?, vfs, json),
        Command::Cert(CertCommand::Ca { dir, name }) => {
            let files = crate::cert::create_ca(&dir, &name)?;
            println!(
                "CA certificate {}\nCA key {}",
                files.cert.display(),
                files.key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Cert(CertCommand::Site { site, ca, out }) => {
            let files = crate::cert::create_site(&ca, &site, &out)?;
            println!(
                "site certificate {}\nsite key {}",
                files.cert.display(),
                files.key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { files }) => {
            let mut ok = true;
            for file in &files {
                match config::load(file) {
                    Ok(c) => println!(
                        "{}: ok (site {}, {} peer(s), {} VFS(s), {} tracked volume(s))",
                        file.display(),
                        c.site.name,
                        c.peers.len(),
                        c.vfs.len(),
                        c.volumes.len(),
                    ),
                    Err(e) => {
                        ok = false;
                        eprintln!("{e}");
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
