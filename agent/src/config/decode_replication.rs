//! The replication and snapshot sections of a VFS definition.

use super::decode::{Decoder, Fields};
use super::decode_vfs::VfsContext;
use super::scalars;
use super::units;
use super::values;
use super::{Compression, Replication, Retention, RetentionRule};

const REPLICATION_FIELDS: &[&str] = &[
    "peer",
    "interval",
    "compression",
    "bandwidth_limit",
    "trigger",
];
const SNAPSHOTS_FIELDS: &[&str] = &["retention"];
const RULE_FIELDS: &[&str] = &["every", "for"];
const COMPRESSIONS: &[(&str, Compression)] = &[
    ("zstd", Compression::Zstd),
    ("lz4", Compression::Lz4),
    ("none", Compression::None),
];

impl Decoder {
    pub(super) fn replication(
        &mut self,
        vfs: &Fields,
        context: &VfsContext,
    ) -> Option<Replication> {
        let node = self.required(vfs, "replication")?;
        let fields = self.fields(node, &vfs.path("replication"), REPLICATION_FIELDS)?;
        let peer = self.check_required(&fields, "peer", scalars::name);
        if let (Some(peer), Some(node)) = (&peer, fields.get("peer")) {
            let field = fields.path("peer");
            self.check(node, &field, |_| replication_peer(peer, context));
        }
        let interval = self.check_required(&fields, "interval", |node| {
            let seconds = scalars::duration(node)?;
            units::interval(seconds).map(|()| seconds)
        });
        let compression = self
            .check_optional(&fields, "compression", |node| {
                scalars::choice(node, COMPRESSIONS)
            })
            .unwrap_or(Some(Compression::Zstd));
        let bandwidth = self.check_optional(&fields, "bandwidth_limit", scalars::bandwidth);
        let trigger = self.check_optional(&fields, "trigger", |node| {
            let bytes = scalars::size(node)?;
            units::trigger(bytes).map(|()| bytes)
        });
        Some(Replication {
            peer: peer?,
            interval_s: interval?,
            compression: compression?,
            bandwidth_limit_bytes_per_s: bandwidth.map_or(Some(None), |b| b.map(Some))?,
            trigger_at_risk_bytes: trigger.map_or(Some(None), |t| t.map(Some))?,
        })
    }

    pub(super) fn snapshots(&mut self, vfs: &Fields) -> Option<Retention> {
        let Some(node) = vfs.optional("snapshots") else {
            return Some(Retention::default());
        };
        let fields = self.fields(node, &vfs.path("snapshots"), SNAPSHOTS_FIELDS)?;
        if fields.optional("retention").is_none() {
            return Some(Retention::default());
        }
        let items = self.non_empty_items(&fields, "retention", ("rule", "retention rules"));
        let mut rules = Some(Vec::new());
        for (index, item) in items.iter().enumerate() {
            let path = format!("{}[{index}]", fields.path("retention"));
            let rule = self
                .fields(item, &path, RULE_FIELDS)
                .and_then(|rule| self.retention_rule(&rule));
            match (rule, &mut rules) {
                (Some(rule), Some(list)) => list.push(rule),
                _ => rules = None,
            }
        }
        Some(Retention {
            rules: rules.filter(|rules| !rules.is_empty())?,
        })
    }

    fn retention_rule(&mut self, fields: &Fields) -> Option<RetentionRule> {
        let every = self.check_required(fields, "every", |node| match node.as_str() {
            Some("all") => Ok(0),
            _ => scalars::duration(node).map_err(|problem| format!("{problem}, or `all`")),
        });
        let for_s = self.check_required(fields, "for", |node| {
            let seconds = scalars::duration(node)?;
            units::retention_for(seconds).map(|()| seconds)
        });
        if let (Some(every), Some(for_s), Some(node)) = (every, for_s, fields.get("every")) {
            self.check(node, &fields.path("every"), |_| {
                units::retention_every(every, for_s)
            });
        }
        Some(RetentionRule {
            every_s: every?,
            for_s: for_s?,
        })
    }
}

/// The replication peer must be another site, one of `peers` (when they are known).
fn replication_peer(peer: &str, context: &VfsContext) -> Result<(), String> {
    let peers = context.peers.as_deref();
    let expected = match peers {
        Some([]) => "another site, listed in `peers`".to_owned(),
        Some(peers) => format!(
            "one of `peers` ({})",
            values::listing(peers.iter().map(String::as_str))
        ),
        None => "another site".to_owned(),
    };
    if context.site.as_deref() == Some(peer) {
        return Err(format!(
            "`{peer}` is this site, expected the DR site: {expected}"
        ));
    }
    match peers {
        Some([]) => Err(format!(
            "unknown peer `{peer}`: no `peers` are defined, expected the DR site among them"
        )),
        Some(peers) if !peers.iter().any(|p| p == peer) => Err(format!(
            "unknown peer `{peer}`, expected the DR site: {expected}"
        )),
        _ => Ok(()),
    }
}
