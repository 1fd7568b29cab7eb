//! The tracker-gap check in the agent: at a cycle's start a window is staged on each tracked
//! volume of the VFS (with its mark); when the cycle is acknowledged, the blocks FIEMAP found
//! changed are compared with the window that started at the previous acknowledged cycle's mark
//! ([`crate::replication::gap`]), and the staged window takes its place. A gap is logged as an
//! error (`tracker_gap`); the cycle shipped the FIEMAP blocks regardless.
use super::{agent::Agent, replicate::CycleOutcome};
use crate::replication::gap::{self, GapResult, VolumeGap};

fn tracked_name(vfs: &str, volume: &str) -> String {
    format!("{vfs}/{volume}")
}

impl Agent {
    /// Stages a window on every tracked volume of `vfs` (right after its marks are taken).
    pub fn stage_gap_windows(&mut self, vfs: &str) {
        for name in self.vfs_tracked_names(vfs) {
            let _ = self.tracker.stage_window(&name);
        }
    }

    /// The cycle of `vfs` failed: the windows of the previous point go on.
    pub fn abort_gap_windows(&mut self, vfs: &str) {
        for name in self.vfs_tracked_names(vfs) {
            let _ = self.tracker.abort_window(&name);
        }
    }

    fn vfs_tracked_names(&self, vfs: &str) -> Vec<String> {
        let prefix = format!("{vfs}/");
        self.tracker
            .volume_names()
            .filter(|n| n.starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    }

    /// Checks an acknowledged cycle's changed blocks against the tracker, puts the result in its
    /// report, logs gaps, and makes the staged windows the base of the next check.
    pub fn check_tracker_gaps(&mut self, outcome: &mut CycleOutcome) {
        // Everything queued up to now: the writes before the point are in.
        let _ = self.poll();
        let r = &mut outcome.report;
        let mut checks = Vec::new();
        for (volume, changed) in &outcome.changed {
            let name = tracked_name(&r.vfs, volume);
            let check = if r.full {
                GapResult::NotChecked {
                    reason: "a full copy: there is no previous point".into(),
                }
            } else if !self.tracker.volume_names().any(|n| n == name) {
                GapResult::NotChecked {
                    reason: format!("volume {name} is not tracked"),
                }
            } else {
                match self.tracker.window(&name) {
                    Err(reason) => GapResult::NotChecked { reason },
                    Ok(w) if w.cycle + 1 != r.cycle => GapResult::NotChecked {
                        reason: format!(
                            "the tracker's window starts at cycle {}, the delta at cycle {}",
                            w.cycle,
                            r.cycle - 1
                        ),
                    },
                    Ok(w) => gap::check(changed, &w.blocks),
                }
            };
            let _ = self.tracker.commit_window(&name, r.cycle);
            let site = &self.config().site.name;
            match &check {
                GapResult::Gap {
                    missing_blocks,
                    first_missing,
                    changed_blocks,
                    ..
                } => {
                    tracing::error!(site = %site, vfs = %r.vfs, volume = %volume, event = "tracker_gap",
                    cycle = r.cycle, missing_blocks, changed_blocks, first_missing = ?first_missing,
                    "blocks FIEMAP found changed were not seen by the eBPF tracker (they were shipped)")
                }
                GapResult::Ok {
                    changed_blocks,
                    extra_blocks,
                } => tracing::debug!(site = %site, vfs = %r.vfs,
                    volume = %volume, event = "tracker_checked", cycle = r.cycle, changed_blocks, extra_blocks,
                    "every changed block was tracked"),
                GapResult::NotChecked { reason } => tracing::debug!(site = %site, vfs = %r.vfs,
                    volume = %volume, event = "tracker_not_checked", cycle = r.cycle, reason = %reason,
                    "tracker-gap check skipped"),
            }
            checks.push(VolumeGap {
                volume: volume.clone(),
                check,
            });
        }
        r.tracker_check = checks;
    }
}
