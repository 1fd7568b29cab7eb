//! `vfsdr snapshot delete`: asks the DR site's agent to delete snapshots of a VFS.
use std::{path::Path, process::ExitCode, time::Duration};

use anyhow::bail;

use crate::api::{self, Request, Response, SnapshotsDeleted};

/// How long to wait for the agent: it may first wait for a prune of the VFS to finish.
const WAIT: Duration = Duration::from_secs(3600);

/// Deletes snapshots `ids` of `vfs` (the latest only with `force`); prints what was deleted.
pub fn delete(
    socket: &Path,
    vfs: String,
    ids: Vec<u64>,
    force: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match api::call_within(socket, &Request::DeleteSnapshots { vfs, ids, force }, WAIT)? {
        Response::SnapshotsDeleted(d) if json => {
            println!("{}", serde_json::to_string_pretty(&d)?);
            Ok(ExitCode::SUCCESS)
        }
        Response::SnapshotsDeleted(d) => {
            print!("{}", render(&d));
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {other:?}"),
    }
}

/// The lines `vfsdr snapshot delete` prints.
fn render(d: &SnapshotsDeleted) -> String {
    let ids: Vec<String> = d.ids.iter().map(u64::to_string).collect();
    let mut out = format!("deleted snapshot(s) {} of {}\n", ids.join(", "), d.vfs);
    if d.latest_deleted {
        out.push_str("the latest snapshot was deleted: the next cycle copies every volume again (a full resync)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_deleted_and_whether_a_full_resync_follows() {
        let mut d = SnapshotsDeleted {
            vfs: "fs1".into(),
            ids: vec![3, 4],
            latest_deleted: false,
        };
        assert_eq!(render(&d), "deleted snapshot(s) 3, 4 of fs1\n");
        d.latest_deleted = true;
        assert!(render(&d).ends_with("the next cycle copies every volume again (a full resync)\n"));
    }
}
