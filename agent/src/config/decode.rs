//! Walks the YAML tree into a [`Config`], collecting every problem with its place and field.
//!
//! The walk goes on after a problem so that one run reports them all; a value with a problem is
//! left out (or replaced by its default), and the [`Config`] is returned only when no problem was
//! found. The sections have their own files: `decode_site.rs` (site, peers, resources) and
//! `decode_vfs.rs` (the VFS definitions).

use std::path::PathBuf;

use super::decode_vfs::VfsContext;
use super::scalars;
use super::values::{self, Seen};
use super::yaml::{Node, Pos, Scalar, Value};
use super::{
    Config, DEFAULT_POLL_INTERVAL_MS, DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, DEFAULT_TOP_WRITERS,
    POLL_INTERVAL_MS, Problem, TOP_WRITERS, Tracking, VERSION,
};

const TOP_FIELDS: &[&str] = &[
    "version",
    "site",
    "peers",
    "state_dir",
    "runtime_dir",
    "tracking",
    "resources",
    "volumes",
    "vfs",
];
const TRACKING_FIELDS: &[&str] = &["poll_interval_ms", "top_writers", "writers"];

/// Decodes the document's root node (`None`: the file holds no document).
pub(super) fn decode(root: Option<&Node>) -> Result<Config, Vec<Problem>> {
    let mut d = Decoder::default();
    let config = d.config(root);
    d.finish(config)
}

#[derive(Default)]
pub(super) struct Decoder {
    problems: Vec<Problem>,
}

/// The entries of one mapping, each field once, all of them known to its section.
pub(super) struct Fields<'a> {
    pub path: String,
    pub pos: Pos,
    entries: Vec<(&'a str, &'a Node, &'a Node)>,
}

impl<'a> Fields<'a> {
    /// The key and value of field `name`.
    pub fn entry(&self, name: &str) -> Option<(&'a Node, &'a Node)> {
        self.entries
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|&(_, key, value)| (key, value))
    }

    pub fn get(&self, name: &str) -> Option<&'a Node> {
        self.entry(name).map(|(_, value)| value)
    }

    /// A field that has a default: left out and set to null (left empty) both mean the default.
    pub fn optional(&self, name: &str) -> Option<&'a Node> {
        self.get(name).filter(|value| !value.is_null())
    }

    pub fn path(&self, name: &str) -> String {
        join(&self.path, name)
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn one_of(names: &[&str]) -> String {
    match names {
        [name] => format!("`{name}`"),
        _ => format!("one of {}", quoted_list(names)),
    }
}

impl Decoder {
    /// The decoded value when no problem was found, else every problem in file order.
    pub fn finish<T>(mut self, value: Option<T>) -> Result<T, Vec<Problem>> {
        self.problems.sort_by_key(|p| (p.line, p.column));
        match value {
            Some(value) if self.problems.is_empty() => Ok(value),
            _ => Err(self.problems),
        }
    }

    pub fn push(&mut self, pos: Pos, field: impl Into<String>, message: impl Into<String>) {
        let (line, column, field, message) = (pos.line, pos.column, field.into(), message.into());
        self.problems.push(Problem {
            line,
            column,
            field,
            message,
        });
    }

    /// Applies a rule of [`scalars`] to `node`, reporting its problem as one of `field`.
    pub fn check<T>(
        &mut self,
        node: &Node,
        field: &str,
        rule: impl FnOnce(&Node) -> Result<T, String>,
    ) -> Option<T> {
        rule(node)
            .map_err(|message| self.push(node.pos, field, message))
            .ok()
    }

    /// Optional field `name` of `fields` read by `rule`: `None` when left out or empty (the
    /// default applies), `Some(None)` when it has a problem.
    pub fn check_optional<T>(
        &mut self,
        fields: &Fields,
        name: &str,
        rule: impl FnOnce(&Node) -> Result<T, String>,
    ) -> Option<Option<T>> {
        let node = fields.optional(name)?;
        Some(self.check(node, &fields.path(name), rule))
    }

    /// Field `name` of `fields`, which must be present, read by `rule`.
    pub fn check_required<T>(
        &mut self,
        fields: &Fields,
        name: &str,
        rule: impl FnOnce(&Node) -> Result<T, String>,
    ) -> Option<T> {
        let node = self.required(fields, name)?;
        self.check(node, &fields.path(name), rule)
    }

    /// Reports `name` as a duplicate in `seen` (where it was first used by `item`).
    pub fn unique(
        &mut self,
        seen: &mut Seen<Pos>,
        (what, name): (&str, &str),
        item: &str,
        node: &Node,
        field: String,
    ) {
        if let Some((message, first)) = seen.add(what, name, item, node.pos) {
            let message = format!("{message} on line {}", first.line);
            self.push(node.pos, field, message);
        }
    }

    /// The items of a sequence of `what` (none when it is not a sequence: that is reported).
    pub fn items<'a>(&mut self, node: &'a Node, path: &str, what: &str) -> &'a [Node] {
        match &node.value {
            Value::Seq(items) => items,
            _ => {
                let message = format!("expected a sequence of {what}, found {}", node.describe());
                self.push(node.pos, path, message);
                &[]
            }
        }
    }

    /// The items of optional sequence field `name` (none when left out or empty).
    pub fn optional_items<'a>(
        &mut self,
        fields: &Fields<'a>,
        name: &str,
        what: &str,
    ) -> &'a [Node] {
        match fields.optional(name) {
            Some(node) => self.items(node, &fields.path(name), what),
            None => &[],
        }
    }

    /// The items of sequence field `name`, which must hold at least one `one`.
    pub fn non_empty_items<'a>(
        &mut self,
        fields: &Fields<'a>,
        name: &str,
        (one, what): (&str, &str),
    ) -> &'a [Node] {
        let Some(node) = self.required(fields, name) else {
            return &[];
        };
        let items = self.items(node, &fields.path(name), what);
        if items.is_empty() && matches!(node.value, Value::Seq(_)) {
            let message = format!("expected at least one {one}, found an empty sequence");
            self.push(node.pos, fields.path(name), message);
        }
        items
    }

    fn config(&mut self, root: Option<&Node>) -> Option<Config> {
        let root = match root {
            Some(node) if !node.is_null() => node,
            _ => {
                let message = format!(
                    "the file holds no settings, expected a mapping starting with `version: {VERSION}`"
                );
                self.push(Pos::START, "(document)", message);
                return None;
            }
        };
        // The version says how to read the rest, so a version this vfsdr does not read is the
        // only problem reported: the other fields may be right for that version.
        if let Value::Map(entries) = &root.value
            && let Some((_, node)) = entries
                .iter()
                .find(|(key, _)| key.as_str() == Some("version"))
            && let Value::Scalar(text, Scalar::Int(found)) = &node.value
            && *found != Some(VERSION.into())
        {
            self.problems.clear();
            let message = values::unsupported_version(text, *found, VERSION);
            self.push(node.pos, "version", message);
            return None;
        }
        let top = self.fields(root, "", TOP_FIELDS)?;
        match top.get("version") {
            None => self.push(
                top.pos,
                "version",
                format!("missing field `version`, expected `version: {VERSION}`"),
            ),
            Some(node) => {
                let version = u64::from(VERSION);
                self.check(node, "version", |node| {
                    scalars::int(node, version..=version)
                });
            }
        }
        let site = self.site(&top);
        let peers = self.peers(&top, &site);
        self.peer_link(&site, &peers);
        let state_dir = self.dir(&top, "state_dir", DEFAULT_STATE_DIR);
        let runtime_dir = self.dir(&top, "runtime_dir", DEFAULT_RUNTIME_DIR);
        let tracking = self.tracking(&top);
        let (resources, pool_set) = self.resources(&top);
        let volumes = self.volumes(&top);
        let reserved = [("state_dir", &state_dir), ("runtime_dir", &runtime_dir)]
            .into_iter()
            .chain(
                resources
                    .pool
                    .iter()
                    .map(|p| ("resources.pool.path", &p.path)),
            )
            .filter(|(_, path)| !path.as_os_str().is_empty())
            .map(|(field, path)| (field, path.clone()))
            .collect();
        let mut context = VfsContext::new(
            Some(site.site.name.clone()).filter(|name| !name.is_empty()),
            peers.names.clone(),
            resources.mount_root.clone(),
            reserved,
        );
        let vfs = self.vfs_list(&top, &mut context);
        if let Some(node) = top.optional("vfs")
            && matches!(&node.value, Value::Seq(items) if !items.is_empty())
            && !pool_set
        {
            let message = "VFSs are defined but `resources.pool` is not, expected the pool that \
                           holds their volumes";
            self.push(node.pos, "vfs", message);
        }
        Some(Config {
            version: VERSION,
            site: site.site,
            state_dir,
            runtime_dir,
            tracking,
            peers: peers.peers,
            resources,
            volumes,
            vfs,
        })
    }

    /// Checks that `node` is a mapping whose fields are in `allowed`, each set once.
    pub fn fields<'a>(
        &mut self,
        node: &'a Node,
        path: &str,
        allowed: &[&str],
    ) -> Option<Fields<'a>> {
        let Value::Map(entries) = &node.value else {
            let field = if path.is_empty() { "(document)" } else { path };
            let message = format!(
                "expected a mapping with fields {}, found {}",
                quoted_list(allowed),
                node.describe()
            );
            self.push(node.pos, field, message);
            return None;
        };
        let mut fields = Fields {
            path: path.to_owned(),
            pos: node.pos,
            entries: Vec::new(),
        };
        for (key, value) in entries {
            let Some(name) = (match &key.value {
                Value::Scalar(text, _) => Some(text.as_str()),
                _ => None,
            }) else {
                let field = if path.is_empty() { "(document)" } else { path };
                self.push(
                    key.pos,
                    field,
                    format!("expected a field name, found {} as a key", key.describe()),
                );
                continue;
            };
            if !allowed.contains(&name) {
                let message = format!("unknown field `{name}`, expected {}", one_of(allowed));
                self.push(key.pos, join(path, name), message);
            } else if let Some((first, _)) = fields.entry(name) {
                let message = format!(
                    "duplicate field `{name}`, already set on line {}",
                    first.pos.line
                );
                self.push(key.pos, join(path, name), message);
            } else {
                fields.entries.push((name, key, value));
            }
        }
        Some(fields)
    }

    /// A field that must be present (it may still be null: its type check reports that).
    pub fn required<'a>(&mut self, fields: &Fields<'a>, name: &str) -> Option<&'a Node> {
        let value = fields.get(name);
        if value.is_none() {
            self.push(
                fields.pos,
                fields.path(name),
                format!("missing field `{name}`"),
            );
        }
        value
    }

    fn dir(&mut self, top: &Fields, field: &str, default: &str) -> PathBuf {
        match top.optional(field) {
            Some(node) => self
                .check(node, field, scalars::absolute_path)
                .unwrap_or_default(),
            None => PathBuf::from(default),
        }
    }

    fn tracking(&mut self, top: &Fields) -> Tracking {
        let mut tracking = Tracking {
            poll_interval_ms: DEFAULT_POLL_INTERVAL_MS,
            top_writers: DEFAULT_TOP_WRITERS,
            writers: false,
        };
        let Some(node) = top.optional("tracking") else {
            return tracking;
        };
        let Some(fields) = self.fields(node, "tracking", TRACKING_FIELDS) else {
            return tracking;
        };
        if let Some(value) = self.check_optional(&fields, "poll_interval_ms", |node| {
            scalars::int(node, POLL_INTERVAL_MS)
        }) {
            tracking.poll_interval_ms = value.unwrap_or_default();
        }
        if let Some(value) = self.check_optional(&fields, "top_writers", |node| {
            scalars::int(node, TOP_WRITERS)
        }) {
            tracking.top_writers = value.map_or(0, |v| usize::try_from(v).unwrap_or_default());
        }
        if let Some(value) = self.check_optional(&fields, "writers", scalars::boolean) {
            tracking.writers = value.unwrap_or(false);
        }
        tracking
    }
}
