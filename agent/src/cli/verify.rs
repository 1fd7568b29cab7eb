//! `vfsdr verify VFS`: the DR site's latest snapshot against the clones it was made from.
use std::{path::Path, process::ExitCode};

use anyhow::bail;

use super::show::bytes;
use crate::{
    api::{self, Request, Response},
    replication::verify::{VerifyReport, VerifyResult},
};

/// Exit status when a volume differs.
pub const MISMATCH: u8 = 4;
/// Exit status when a volume could not be compared (and none differs).
pub const UNVERIFIED: u8 = 5;

pub fn verify(socket: &Path, vfs: String, json: bool) -> anyhow::Result<ExitCode> {
    let wait = std::time::Duration::from_secs(24 * 3600);
    let report = match api::call_within(socket, &Request::Verify { vfs }, wait)? {
        Response::Verified(r) => r,
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(exit_code(&report))
}

pub fn exit_code(r: &VerifyReport) -> ExitCode {
    if r.any_mismatch() {
        ExitCode::from(MISMATCH)
    } else if !r.all_match() {
        ExitCode::from(UNVERIFIED)
    } else {
        ExitCode::SUCCESS
    }
}

pub fn render(r: &VerifyReport) -> String {
    let mut out = format!(
        "VFS {}: cycle {} (snapshot {} at {}), {:.2} s\n",
        r.vfs,
        r.cycle,
        r.snapshot.map_or("?".to_owned(), |s| s.to_string()),
        r.peer,
        r.duration_ms as f64 / 1000.0
    );
    for v in &r.volumes {
        let hashed = format!(
            "{} hashed here, {} there, {:.2} s",
            bytes(v.hashed_bytes_active as f64),
            bytes(v.hashed_bytes_dr as f64),
            v.duration_ms as f64 / 1000.0
        );
        match &v.verdict {
            VerifyResult::Match => {
                out += &format!(
                    "  {:<16} match ({}; {hashed})\n",
                    v.volume,
                    bytes(v.size as f64)
                )
            }
            VerifyResult::Mismatch {
                differing_chunks,
                first_ranges,
            } => {
                out += &format!(
                    "  {:<16} MISMATCH: {differing_chunks} chunk(s) of {} differ ({hashed}); first at:\n",
                    v.volume,
                    bytes(v.chunk as f64)
                );
                for range in first_ranges {
                    out += &format!(
                        "  {:<16}   bytes {}..{} (offset {:#x}, {} bytes)\n",
                        "",
                        range.offset,
                        range.offset + range.len,
                        range.offset,
                        range.len
                    );
                }
            }
            VerifyResult::Unverified { reason } => {
                out += &format!("  {:<16} NOT COMPARED: {reason}\n", v.volume)
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::{gap::ByteRange, verify::VolumeVerify};

    fn report(verdicts: Vec<VerifyResult>) -> VerifyReport {
        VerifyReport {
            vfs: "fs1".into(),
            peer: "site-b".into(),
            cycle: 3,
            snapshot: Some(3),
            volumes: verdicts
                .into_iter()
                .enumerate()
                .map(|(i, verdict)| VolumeVerify {
                    volume: format!("vol{i}"),
                    size: 1 << 30,
                    chunk: 4 << 20,
                    verdict,
                    hashed_bytes_active: 1 << 20,
                    hashed_bytes_dr: 1 << 20,
                    duration_ms: 5,
                })
                .collect(),
            duration_ms: 9,
        }
    }

    #[test]
    fn exit_codes_and_text_name_the_volume_and_the_offset() {
        let mismatch = VerifyResult::Mismatch {
            differing_chunks: 1,
            first_ranges: vec![ByteRange {
                offset: 0x8003000,
                len: 4096,
            }],
        };
        let unverified = VerifyResult::Unverified {
            reason: "site site-b has no snapshot of cycle 3 of VFS fs1".into(),
        };
        let ok = report(vec![VerifyResult::Match, VerifyResult::Match]);
        assert_eq!(exit_code(&ok), ExitCode::SUCCESS);
        assert!(
            render(&ok).contains("vol1             match"),
            "{}",
            render(&ok)
        );
        let bad = report(vec![
            VerifyResult::Match,
            mismatch.clone(),
            unverified.clone(),
        ]);
        assert_eq!(exit_code(&bad), ExitCode::from(MISMATCH));
        let text = render(&bad);
        assert!(
            text.contains("vol1             MISMATCH") && text.contains("offset 0x8003000"),
            "{text}"
        );
        assert!(text.contains("vol2             NOT COMPARED: site site-b has no snapshot"));
        let missing = report(vec![VerifyResult::Match, unverified]);
        assert_eq!(exit_code(&missing), ExitCode::from(UNVERIFIED));
    }
}
