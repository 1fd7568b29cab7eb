//! `vfsdr precheck`, `reserve`, `release`, `vfs`: the operator's side of DR resources.
use std::{
    io::{BufRead as _, IsTerminal as _, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::bail;

use crate::{
    api::{self, Request, Response},
    config,
    resources::{Outcome, Purpose, Report},
};

/// Exit status of `precheck` (and `reserve`) when the DR site lacks resources.
pub const INSUFFICIENT: u8 = 3;

/// What to do when resources are short.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnShortage {
    Abort,
    Proceed,
}

/// `--for failover` or `--for change FILE`.
pub fn purpose(words: &[String]) -> anyhow::Result<(Purpose, Option<config::VfsDef>)> {
    match words {
        [] => Ok((Purpose::Failover, None)),
        [w] if w == "failover" => Ok((Purpose::Failover, None)),
        [w, file] if w == "change" => Ok((
            Purpose::Change,
            Some(config::parse_vfs_file(&PathBuf::from(file))?),
        )),
        [w] if w == "change" => {
            bail!("--for change needs the file with the proposed definition: --for change FILE")
        }
        _ => bail!(
            "--for takes `failover` or `change FILE`, got `{}`",
            words.join(" ")
        ),
    }
}

pub fn precheck(
    socket: &std::path::Path,
    vfs: String,
    words: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (purpose, change) = purpose(words)?;
    let report = match api::call(
        socket,
        &Request::Precheck {
            vfs,
            purpose,
            change,
        },
    )? {
        Response::Precheck(r) => r,
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_report(&report));
    }
    Ok(if report.sufficient {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INSUFFICIENT)
    })
}

pub fn reserve(
    socket: &std::path::Path,
    vfs: String,
    words: &[String],
    on_shortage: Option<OnShortage>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (purpose, change) = purpose(words)?;
    let report = match api::call(
        socket,
        &Request::Precheck {
            vfs: vfs.clone(),
            purpose,
            change: change.clone(),
        },
    )? {
        Response::Precheck(r) => r,
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    };
    let proceed = if report.sufficient {
        false
    } else {
        let choice = match on_shortage {
            Some(c) => c,
            None if std::io::stdin().is_terminal() => ask(&report)?,
            None => {
                eprint!("{}", render_report(&report));
                eprintln!(
                    "resources are short and there is no terminal to ask: aborting (use --on-shortage proceed to reserve what is there)"
                );
                OnShortage::Abort
            }
        };
        if choice == OnShortage::Abort {
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if on_shortage.is_some() {
                print!("{}", render_report(&report));
                println!("aborted: nothing reserved");
            }
            return Ok(ExitCode::from(INSUFFICIENT));
        }
        true
    };
    let outcome = match api::call(
        socket,
        &Request::Reserve {
            vfs,
            change,
            proceed,
        },
    )? {
        Response::Reserved(o) => o,
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        print!("{}", render_outcome(&outcome));
    }
    Ok(if outcome.reserved {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INSUFFICIENT)
    })
}

/// Shows the shortages and asks: terminate or proceed.
fn ask(report: &Report) -> anyhow::Result<OnShortage> {
    print!("{}", render_report(report));
    loop {
        print!(
            "Resources at {} are short for {}. [t]erminate or [p]roceed and reserve what is there? ",
            report.site, report.vfs
        );
        std::io::stdout().flush()?;
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line)? == 0 {
            return Ok(OnShortage::Abort);
        }
        match line.trim().to_lowercase().as_str() {
            "t" | "terminate" | "a" | "abort" => return Ok(OnShortage::Abort),
            "p" | "proceed" => return Ok(OnShortage::Proceed),
            _ => println!("answer t or p"),
        }
    }
}

pub fn release(socket: &std::path::Path, vfs: String, json: bool) -> anyhow::Result<ExitCode> {
    match api::call(socket, &Request::Release { vfs })? {
        Response::Released { vfs, steps } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&steps)?);
            } else {
                println!("released {vfs}:");
                for s in &steps {
                    println!("  {:<40} {:<10} {}", s.resource, s.action, s.detail);
                }
                if steps.is_empty() {
                    println!("  (nothing was reserved)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}

pub fn replicate(socket: &std::path::Path, vfs: String, json: bool) -> anyhow::Result<ExitCode> {
    let wait = std::time::Duration::from_secs(24 * 3600);
    // A progress bar on a terminal, from the agent's status, while the cycle runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let (socket, vfs, stop) = (socket.to_owned(), vfs.clone(), stop.clone());
        std::thread::spawn(move || super::show::watch_progress(&socket, &vfs, &stop))
    });
    let answer = api::call_within(socket, &Request::Replicate { vfs }, wait);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(bar) = bar {
        let _ = bar.join();
    }
    match answer? {
        Response::Replicated(r) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", super::show_replication::replicated(&r));
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}

pub fn snapshots(socket: &std::path::Path, vfs: String, json: bool) -> anyhow::Result<ExitCode> {
    match api::call(socket, &Request::Snapshots { vfs })? {
        Response::Snapshots { vfs, snapshots, .. } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&snapshots)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:>8} {:<19} {:>6} {:>12} {:>12}  IMAGES ({vfs})",
                "ID", "CREATED (UTC)", "EPOCH", "CHANGED", "SHIPPED"
            );
            for s in &snapshots {
                let images: Vec<String> = s
                    .images
                    .iter()
                    .map(|i| i.path.display().to_string())
                    .collect();
                println!(
                    "{:>8} {:<19} {:>6} {:>12} {:>12}  {}",
                    s.id,
                    // Seconds: the milliseconds are always 000, so they are left out.
                    super::show_replication::utc(s.created_unix * 1000)
                        .trim_end_matches(".000 UTC")
                        .to_owned(),
                    s.epoch,
                    super::show::bytes(s.changed_bytes as f64),
                    super::show::bytes(s.shipped_bytes as f64),
                    images.join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}

/// Mounts the images of a snapshot read-only (a loop device each; `ro,nouuid,norecovery` for
/// XFS, as the clone of a frozen file system needs).
pub fn mount_snapshot(
    socket: &std::path::Path,
    vfs: String,
    id: u64,
    dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use crate::resources::{Mounts as _, SystemMounts, precheck::ro_options};
    let (snapshots, filesystems) =
        match api::call(socket, &Request::Snapshots { vfs: vfs.clone() })? {
            Response::Snapshots {
                snapshots,
                filesystems,
                ..
            } => (snapshots, filesystems),
            Response::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer from the agent: {other:?}"),
        };
    let Some(snap) = snapshots.into_iter().find(|s| s.id == id) else {
        bail!("VFS {vfs} has no snapshot {id} at this site (`vfsdr snapshots {vfs}` lists them)");
    };
    let mut mounts = SystemMounts;
    let single = snap.images.len() == 1;
    for image in &snap.images {
        let target = if single {
            dir.to_owned()
        } else {
            dir.join(&image.volume)
        };
        if mounts.mounts()?.iter().any(|m| m.target == target) {
            bail!("{} is already a mount point", target.display());
        }
        mounts.make_dir(&target)?;
        let fstype = filesystems.get(&image.volume).map_or("xfs", String::as_str);
        let device = mounts.mount_image_ro(&image.path, &target, fstype, ro_options(fstype))?;
        println!(
            "snapshot {id} of {vfs}, volume {}: {} (read-only, {})",
            image.volume,
            target.display(),
            device.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn umount_snapshot(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use crate::resources::{Mounts as _, SystemMounts};
    let mut mounts = SystemMounts;
    let under: Vec<_> = mounts
        .mounts()?
        .into_iter()
        .filter(|m| m.target.starts_with(dir))
        .map(|m| m.target)
        .collect();
    if under.is_empty() {
        bail!("nothing is mounted at {}", dir.display());
    }
    for t in under.iter().rev() {
        mounts.unmount(t)?;
        println!("unmounted {}", t.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn list(socket: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    match api::call(socket, &Request::ListVfs)? {
        Response::Vfs { vfs } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&vfs)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<12} {:<8} {:>6} {:<12} RESERVED",
                "VFS", "ROLE", "EPOCH", "FROM"
            );
            for v in &vfs {
                let res: Vec<String> = v
                    .reservations
                    .iter()
                    .map(|r| format!("{} {}", r.kind.as_str(), r.resource))
                    .collect();
                println!(
                    "{:<12} {:<8} {:>6} {:<12} {}{}",
                    v.name,
                    v.role.as_str(),
                    v.epoch,
                    v.from_site,
                    if res.is_empty() {
                        "-".into()
                    } else {
                        res.join(", ")
                    },
                    if v.shortages.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} shortages)", v.shortages.len())
                    }
                );
                for vol in &v.volumes {
                    println!("  volume {}: {}", vol.volume, vol.state);
                    if let Some(e) = &vol.error {
                        println!("    last error: {e}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}

pub fn render_report(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let purpose = match r.purpose {
        Purpose::Failover => "failover",
        Purpose::Change => "a configuration change",
    };
    let _ = writeln!(
        o,
        "precheck of {} at site {} for {purpose}: {}",
        r.vfs,
        r.site,
        if r.sufficient {
            "SUFFICIENT".to_string()
        } else {
            format!("INSUFFICIENT ({} discrepancies)", r.discrepancies.len())
        }
    );
    if !r.discrepancies.is_empty() {
        let _ = writeln!(
            o,
            "  {:<22} {:<32} {:<7} FOUND / NEEDED",
            "KIND", "RESOURCE", "BLOCKS"
        );
        for d in &r.discrepancies {
            let kind = serde_json::to_value(d.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  {:<22} {:<32} {:<7} {}\n  {:<22} {:<32} {:<7} needed: {}",
                kind,
                d.resource,
                if d.blocks_access { "yes" } else { "no" },
                d.found,
                "",
                "",
                "",
                d.needed
            );
        }
    }
    for l in &r.links {
        let _ = writeln!(
            o,
            "  available: interface {} {}/{} -> macvlan {} on {}",
            l.interface, l.address, l.prefix_len, l.name, l.parent
        );
    }
    for m in &r.mounts {
        let _ = writeln!(
            o,
            "  available: volume {} -> {} read-only from {}",
            m.volume,
            m.target.display(),
            m.image.display()
        );
    }
    o
}

fn render_outcome(o: &Outcome) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if !o.reserved {
        s.push_str(&render_report(&o.report));
        s.push_str("not reserved\n");
        return s;
    }
    let _ = writeln!(
        s,
        "reserved for {} at site {}{}:",
        o.vfs,
        o.report.site,
        if o.report.sufficient {
            String::new()
        } else {
            format!(" with {} shortages recorded", o.report.discrepancies.len())
        }
    );
    for st in &o.steps {
        let _ = writeln!(s, "  {:<40} {:<8} {}", st.resource, st.action, st.detail);
    }
    if o.steps.iter().all(|st| st.action == "present") && !o.steps.is_empty() {
        let _ = writeln!(s, "  (already reserved: nothing changed)");
    }
    s
}
