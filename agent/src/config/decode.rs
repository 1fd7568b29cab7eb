//! Walks the YAML tree into a [`Config`], collecting every problem with its place and field.
//!
//! The walk goes on after a problem so that one run reports them all; a value with a problem is
//! left out, and the [`Config`] is returned only when no problem was found.

use std::collections::HashMap;
use std::path::PathBuf;

use super::values;
use super::yaml::{Node, Pos, Scalar, Value};
use super::{
    Config, DEFAULT_POLL_INTERVAL_MS, DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR, DEFAULT_TOP_WRITERS,
    POLL_INTERVAL_MS, Problem, Site, TOP_WRITERS, Tracking, VERSION, Volume, VolumeSource,
};

const TOP_FIELDS: &[&str] = &[
    "version",
    "site",
    "state_dir",
    "runtime_dir",
    "tracking",
    "volumes",
];
const SITE_FIELDS: &[&str] = &["name"];
const TRACKING_FIELDS: &[&str] = &["poll_interval_ms", "top_writers"];
const VOLUME_FIELDS: &[&str] = &["name", "device", "image"];

/// Decodes the document's root node (`None`: the file holds no document).
pub(super) fn decode(root: Option<&Node>) -> Result<Config, Vec<Problem>> {
    let mut d = Decoder::default();
    let config = d.config(root);
    d.problems.sort_by_key(|p| (p.line, p.column));
    match config {
        Some(config) if d.problems.is_empty() => Ok(config),
        _ => Err(d.problems),
    }
}

#[derive(Default)]
struct Decoder {
    problems: Vec<Problem>,
}

/// The entries of one mapping, each field once, all of them known to its section.
struct Fields<'a> {
    path: String,
    pos: Pos,
    entries: Vec<(&'a str, &'a Node, &'a Node)>,
}

impl<'a> Fields<'a> {
    /// The key and value of field `name`.
    fn entry(&self, name: &str) -> Option<(&'a Node, &'a Node)> {
        self.entries
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|&(_, key, value)| (key, value))
    }

    fn get(&self, name: &str) -> Option<&'a Node> {
        self.entry(name).map(|(_, value)| value)
    }

    /// A field that has a default: left out and set to null (left empty) both mean the default.
    fn optional(&self, name: &str) -> Option<&'a Node> {
        self.get(name).filter(|value| !value.is_null())
    }

    fn path(&self, name: &str) -> String {
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
    fn push(&mut self, pos: Pos, field: impl Into<String>, message: impl Into<String>) {
        let (line, column, field, message) = (pos.line, pos.column, field.into(), message.into());
        self.problems.push(Problem {
            line,
            column,
            field,
            message,
        });
    }

    /// Applies a rule of [`values`] to `node`, reporting its problem as one of `field`.
    fn check<T>(
        &mut self,
        node: &Node,
        field: &str,
        rule: impl FnOnce(&Node) -> Result<T, String>,
    ) -> Option<T> {
        rule(node)
            .map_err(|message| self.push(node.pos, field, message))
            .ok()
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
                self.check(node, "version", |node| values::int(node, version..=version));
            }
        }
        let site = self.site(&top);
        let state_dir = self.dir(&top, "state_dir", DEFAULT_STATE_DIR);
        let runtime_dir = self.dir(&top, "runtime_dir", DEFAULT_RUNTIME_DIR);
        let tracking = self.tracking(&top);
        let volumes = self.volumes(&top);
        Some(Config {
            version: VERSION,
            site: site?,
            state_dir,
            runtime_dir,
            tracking,
            peers: Vec::new(),
            resources: crate::config::Resources {
                mount_root: "/srv/vfsdr/mnt".into(),
                ..Default::default()
            },
            volumes,
            vfs: Vec::new(),
        })
    }

    /// Checks that `node` is a mapping whose fields are in `allowed`, each set once.
    fn fields<'a>(&mut self, node: &'a Node, path: &str, allowed: &[&str]) -> Option<Fields<'a>> {
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
    fn required<'a>(&mut self, fields: &Fields<'a>, name: &str) -> Option<&'a Node> {
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

    fn site(&mut self, top: &Fields) -> Option<Site> {
        let node = self.required(top, "site")?;
        let site = self.fields(node, "site", SITE_FIELDS)?;
        let name = self.required(&site, "name")?;
        Some(Site {
            name: self.check(name, &site.path("name"), values::name)?,
            listen: None,
            tls: None,
        })
    }

    fn dir(&mut self, top: &Fields, field: &str, default: &str) -> PathBuf {
        match top.optional(field) {
            Some(node) => self
                .check(node, field, values::absolute_path)
                .unwrap_or_default(),
            None => PathBuf::from(default),
        }
    }

    fn tracking(&mut self, top: &Fields) -> Tracking {
        let mut tracking = Tracking {
            poll_interval_ms: DEFAULT_POLL_INTERVAL_MS,
            top_writers: DEFAULT_TOP_WRITERS,
        };
        let Some(node) = top.optional("tracking") else {
            return tracking;
        };
        let Some(fields) = self.fields(node, "tracking", TRACKING_FIELDS) else {
            return tracking;
        };
        if let Some(node) = fields.optional("poll_interval_ms") {
            let field = fields.path("poll_interval_ms");
            let value = self.check(node, &field, |node| values::int(node, POLL_INTERVAL_MS));
            tracking.poll_interval_ms = value.unwrap_or_default();
        }
        if let Some(node) = fields.optional("top_writers") {
            let field = fields.path("top_writers");
            let value = self.check(node, &field, |node| values::int(node, TOP_WRITERS));
            tracking.top_writers = value.map_or(0, |v| usize::try_from(v).unwrap_or_default());
        }
        tracking
    }

    fn volumes(&mut self, top: &Fields) -> Vec<Volume> {
        let Some(node) = top.optional("volumes") else {
            return Vec::new();
        };
        let Value::Seq(items) = &node.value else {
            self.push(
                node.pos,
                "volumes",
                format!("expected a sequence of volumes, found {}", node.describe()),
            );
            return Vec::new();
        };
        let mut volumes = Vec::new();
        let mut seen: HashMap<String, (usize, Pos)> = HashMap::new();
        for (index, item) in items.iter().enumerate() {
            let path = format!("volumes[{index}]");
            let Some(fields) = self.fields(item, &path, VOLUME_FIELDS) else {
                continue;
            };
            let name_node = self.required(&fields, "name");
            let name =
                name_node.and_then(|node| self.check(node, &fields.path("name"), values::name));
            if let (Some(name), Some(node)) = (&name, name_node) {
                if let Some((first, at)) = seen.get(name) {
                    let message = format!(
                        "duplicate volume name `{name}`, already used by volumes[{first}] on line {}",
                        at.line
                    );
                    self.push(node.pos, fields.path("name"), message);
                } else {
                    seen.insert(name.clone(), (index, node.pos));
                }
            }
            let source = self.source(&fields);
            if let (Some(name), Some(source)) = (name, source) {
                volumes.push(Volume { name, source });
            }
        }
        volumes
    }

    /// The volume's `device` or `image`: exactly one of them.
    fn source(&mut self, fields: &Fields) -> Option<VolumeSource> {
        let device = fields.entry("device");
        let image = fields.entry("image");
        let mut path = |name: &str, entry: Option<(&Node, &Node)>| {
            let (_, node) = entry?;
            self.check(node, &fields.path(name), values::absolute_path)
        };
        let (device_path, image_path) = (path("device", device), path("image", image));
        match (device, image) {
            (Some((device_key, _)), Some((image_key, _))) => {
                let ((second, at), (first, first_key)) = if image_key.pos > device_key.pos {
                    (("image", image_key.pos), ("device", device_key))
                } else {
                    (("device", device_key.pos), ("image", image_key))
                };
                let message = format!(
                    "cannot be set together with `{first}` (line {}), expected exactly one of `device` and `image`",
                    first_key.pos.line
                );
                self.push(at, fields.path(second), message);
                None
            }
            (None, None) => {
                self.push(
                    fields.pos,
                    fields.path.clone(),
                    "missing `device` or `image`, expected exactly one of them",
                );
                None
            }
            _ => device_path
                .map(VolumeSource::Device)
                .or(image_path.map(VolumeSource::Image)),
        }
    }
}
