//! Field offsets of the block tracepoint, read from its `format` file in tracefs.
use std::path::{Path, PathBuf};

use vfsdr_common::BlockLayout;

use super::probes::ProbeError;

/// Where tracefs is looked for (the first that has `events/`); if neither, it is mounted at
/// the first.
pub const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Finds tracefs, mounting it at /sys/kernel/tracing when it is not mounted anywhere.
pub fn ensure_tracefs() -> Result<PathBuf, ProbeError> {
    for dir in TRACEFS {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let target = TRACEFS[0];
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, dst, fstype) = (c("nodev"), c(target), c("tracefs"));
    // SAFETY: valid C strings; no data argument.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(ProbeError::Tracefs {
            path: target.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    tracing::info!(event = "tracefs_mounted", path = target, "mounted tracefs");
    Ok(PathBuf::from(target))
}

/// Parses a tracepoint `format` file into the offsets the block program needs.
pub fn parse_block_format(text: &str, origin: &str) -> Result<BlockLayout, ProbeError> {
    let mut layout = BlockLayout::default();
    let mut found = [false; 4];
    for line in text.lines() {
        let Some((decl, rest)) = line
            .trim()
            .strip_prefix("field:")
            .and_then(|l| l.split_once(';'))
        else {
            continue;
        };
        let name = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("");
        let offset = number_after(rest, "offset:");
        let size = number_after(rest, "size:");
        let (Some(offset), Some(size)) = (offset, size) else {
            continue;
        };
        let (slot, want, index) = match name {
            "dev" => (&mut layout.dev, 4..=4, 0),
            "sector" => (&mut layout.sector, 8..=8, 1),
            "nr_sector" => (&mut layout.nr_sector, 4..=4, 2),
            "rwbs" => (&mut layout.rwbs, 8..=64, 3),
            _ => continue,
        };
        if !want.contains(&size) {
            return Err(ProbeError::Format {
                path: origin.to_owned(),
                reason: format!("field {name} has size {size}, expected {want:?}"),
            });
        }
        *slot = offset;
        found[index] = true;
    }
    let missing: Vec<&str> = ["dev", "sector", "nr_sector", "rwbs"]
        .into_iter()
        .zip(found)
        .filter(|(_, f)| !f)
        .map(|(n, _)| n)
        .collect();
    if !missing.is_empty() {
        return Err(ProbeError::Format {
            path: origin.to_owned(),
            reason: format!("missing fields: {}", missing.join(", ")),
        });
    }
    layout.ready = 1;
    Ok(layout)
}

fn number_after(text: &str, key: &str) -> Option<u32> {
    let start = text.find(key)? + key.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIO_QUEUE_6_18: &str = "name: block_bio_queue
ID: 2097
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;
\tfield:char rwbs[10];\toffset:28;\tsize:10;\tsigned:0;
\tfield:char comm[16];\toffset:38;\tsize:16;\tsigned:0;
";

    #[test]
    fn parses_the_6_18_layout() {
        let l = parse_block_format(BIO_QUEUE_6_18, "f").unwrap();
        assert_eq!(
            (l.dev, l.sector, l.nr_sector, l.rwbs, l.ready),
            (8, 16, 24, 28, 1)
        );
    }

    #[test]
    fn other_offsets_are_followed() {
        let text = BIO_QUEUE_6_18
            .replace("offset:28;\tsize:10", "offset:34;\tsize:8")
            .replace("offset:24;", "offset:30;");
        let l = parse_block_format(&text, "f").unwrap();
        assert_eq!((l.nr_sector, l.rwbs), (30, 34));
    }

    #[test]
    fn missing_or_odd_fields_are_errors() {
        let text = BIO_QUEUE_6_18.replace("field:dev_t dev;", "field:dev_t device;");
        let e = parse_block_format(&text, "f").unwrap_err().to_string();
        assert!(e.contains("missing fields: dev"), "{e}");
        let text = BIO_QUEUE_6_18.replace("offset:16;\tsize:8", "offset:16;\tsize:4");
        let e = parse_block_format(&text, "f").unwrap_err().to_string();
        assert!(e.contains("sector has size 4"), "{e}");
    }
}
