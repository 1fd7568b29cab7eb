//! Human-readable renderings of API answers.
use std::fmt::Write as _;

use crate::{
    api::{Request, Response, StatusReport},
    replication::{gap::GapResult, progress::ProgressReport},
    tracking::Changes,
};

/// `1.5 MiB` style sizes.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn status(r: &StatusReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "site {}  agent pid {}  up {}s  config {}",
        r.site,
        r.pid,
        r.uptime_s,
        r.config.display()
    );
    let _ = writeln!(
        o,
        "\n{:<14} {:<12} {:>12} {:>12} {:>12} {:>10} {:>8}  SOURCE",
        "VOLUME", "DEVICE", "WRITE/s", "DISCARD/s", "CHANGED", "BLOCKS", "EXTENTS"
    );
    for (info, v) in r.volumes.iter().zip(&r.tracking.volumes) {
        let _ = writeln!(
            o,
            "{:<14} {:<12} {:>12} {:>12} {:>12} {:>10} {:>8}  {}",
            v.name,
            info.device.display().to_string(),
            bytes(v.write_bytes_per_s),
            bytes(v.discard_bytes_per_s),
            bytes(v.changed_bytes as f64),
            v.changed_blocks,
            v.changed_extents,
            info.source.display()
        );
    }
    if r.volumes.is_empty() {
        let _ = writeln!(o, "(no volumes configured)");
    }
    if !r.tracking.writers_on {
        let _ = writeln!(
            o,
            "\nwrite syscalls per process: not counted (tracking.writers: false)"
        );
    } else {
        let _ = writeln!(
            o,
            "\n{:<8} {:<16} {:>12} {:>12} {:>10}   (write syscalls, all processes)",
            "PID", "COMMAND", "BYTES/s", "BYTES", "CALLS"
        );
    }
    for w in &r.tracking.writers {
        let _ = writeln!(
            o,
            "{:<8} {:<16} {:>12} {:>12} {:>10}",
            w.pid,
            w.comm,
            bytes(w.bytes_per_s),
            bytes(w.bytes as f64),
            w.calls
        );
    }
    if !r.peers.is_empty() {
        let _ = writeln!(
            o,
            "\n{:<16} {:<12} {:>8}  LAST ERROR",
            "PEER", "REACHABLE", "RTT"
        );
        for (name, h) in &r.peers {
            let _ = writeln!(
                o,
                "{:<16} {:<12} {:>8}  {}",
                name,
                if h.reachable { "yes" } else { "no" },
                h.rtt_ms.map_or("-".into(), |ms| format!("{ms} ms")),
                h.last_error.as_deref().unwrap_or("")
            );
        }
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for v in &r.replication_status {
        let paused = r.paused.iter().find(|p| p.vfs == v.vfs);
        o.push_str(&super::show_replication::vfs_block(v, paused, now_ms));
    }
    if !r.vfs_volumes.is_empty() {
        let _ = writeln!(o, "\n{:<24} {:<6} STATE", "VFS VOLUME", "READY");
        for v in &r.vfs_volumes {
            let _ = writeln!(
                o,
                "{:<24} {:<6} {}{}",
                format!("{}/{}", v.vfs, v.volume),
                if v.ready { "yes" } else { "no" },
                v.state,
                v.error
                    .as_ref()
                    .map_or(String::new(), |e| format!("\n{:31}last error: {e}", ""))
            );
        }
    }
    if !r.progress.is_empty() {
        let _ = writeln!(o, "\nrunning cycles:");
        for p in &r.progress {
            let _ = writeln!(o, "  {}", progress_line(p));
        }
    }
    let p = &r.tracking.probes;
    let _ = writeln!(
        o,
        "\nprobes: {} bios, {} extents, {} dropped, {} wakeups{}",
        p.bios,
        p.extents,
        p.dropped,
        p.wakeups,
        if p.dropped > 0 {
            "  (DROPPED EXTENTS: changed sets are incomplete)"
        } else {
            ""
        }
    );
    o
}

/// One volume's tracker-gap check, in a few words.
pub fn tracker_check(c: &GapResult) -> String {
    match c {
        GapResult::Ok {
            changed_blocks,
            extra_blocks,
        } => format!(
            "ok, {changed_blocks} changed blocks all tracked ({extra_blocks} tracked blocks did not change)"
        ),
        GapResult::Gap {
            missing_blocks,
            changed_blocks,
            first_missing,
            ..
        } => format!(
            "GAP: {missing_blocks} of {changed_blocks} changed blocks not tracked, first at byte {}",
            first_missing.first().map_or(0, |r| r.offset)
        ),
        GapResult::NotChecked { reason } => format!("not checked ({reason})"),
    }
}

/// One line of a running cycle: `fs1 cycle 1 full [#####     ] 52.0% 1.0 GiB of 2.0 GiB,
/// 95.2 MiB/s, 11 s left (resumed after 512.0 MiB)`.
pub fn progress_line(p: &ProgressReport) -> String {
    const WIDTH: usize = 24;
    let filled = ((p.percent / 100.0) * WIDTH as f64)
        .round()
        .clamp(0.0, WIDTH as f64) as usize;
    let mut line = format!(
        "{} cycle {} {} [{}{}] {:5.1}% {} of {}, {}/s, {}",
        p.vfs,
        p.cycle,
        if p.full { "full" } else { "incremental" },
        "#".repeat(filled),
        " ".repeat(WIDTH - filled),
        p.percent,
        bytes(p.done_bytes as f64),
        bytes(p.total_bytes as f64),
        bytes(p.rate_bytes_per_s),
        p.eta_s
            .map_or("time left unknown".into(), |s| format!("{s} s left")),
    );
    if p.resumed_bytes > 0 {
        let _ = write!(line, " (resumed after {})", bytes(p.resumed_bytes as f64));
    }
    line
}

/// Until `stop` is set, shows the progress of `vfs`'s running cycle on one terminal line of
/// stderr (rewritten in place), polling the agent's status; clears the line at the end.
pub fn watch_progress(socket: &std::path::Path, vfs: &str, stop: &std::sync::atomic::AtomicBool) {
    use std::{io::Write as _, sync::atomic::Ordering};
    let mut shown = false;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(Response::Status(r)) = crate::api::call(socket, &Request::Status)
            && let Some(p) = r.progress.iter().find(|p| p.vfs == vfs)
        {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{}", progress_line(p));
            let _ = err.flush();
            shown = true;
        }
        for _ in 0..5 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    if shown {
        let _ = write!(std::io::stderr(), "\r\x1b[2K");
    }
}

pub fn changes(c: &Changes) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "volume {}: {} blocks of {} bytes ({}) in {} extents since {}{}",
        c.volume,
        c.blocks,
        c.block_size,
        bytes((c.blocks * c.block_size) as f64),
        c.ranges.len(),
        c.since_unix_s,
        if c.incomplete {
            " (INCOMPLETE: extents were dropped)"
        } else {
            ""
        }
    );
    for r in &c.ranges {
        let _ = writeln!(o, "{}-{}", r.start, r.end - 1);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::{ProgressReport, bytes, progress_line};

    #[test]
    fn a_progress_line_has_its_bar_percentage_rate_and_resume() {
        let p = ProgressReport {
            vfs: "fs1".into(),
            cycle: 1,
            full: true,
            total_bytes: 2 << 30,
            done_bytes: 1 << 30,
            resumed_bytes: 512 << 20,
            percent: 50.0,
            rate_bytes_per_s: 100.0 * 1024.0 * 1024.0,
            eta_s: Some(11),
            elapsed_s: 5,
        };
        assert_eq!(
            progress_line(&p),
            "fs1 cycle 1 full [############            ]  50.0% 1.0 GiB of 2.0 GiB, 100.0 MiB/s, 11 s left (resumed after 512.0 MiB)"
        );
    }

    #[test]
    fn sizes_read_like_sizes() {
        assert_eq!(bytes(0.0), "0 B");
        assert_eq!(bytes(1023.0), "1023 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(5.0 * 1024.0 * 1024.0 * 1024.0), "5.0 GiB");
    }
}
