//! The sections about this site and the others: `site`, `peers`, `resources`, and the
//! `volumes` tracked outside any VFS.

use std::path::PathBuf;

use super::decode::{Decoder, Fields};
use super::scalars;
use super::values::Seen;
use super::yaml::{Node, Pos, Value};
use super::{DEFAULT_MOUNT_ROOT, Link, Peer, Pool, Resources, Site, Tls, Volume, VolumeSource};

const SITE_FIELDS: &[&str] = &["name", "listen", "tls"];
const TLS_FIELDS: &[&str] = &["ca", "cert", "key"];
const PEER_FIELDS: &[&str] = &["name", "address"];
const RESOURCES_FIELDS: &[&str] = &["links", "pool", "mount_root"];
const LINK_FIELDS: &[&str] = &["name", "networks"];
const POOL_FIELDS: &[&str] = &["path", "reserve"];
const VOLUME_FIELDS: &[&str] = &["name", "device", "image"];

/// The `site` section, and what the checks across sections need to know about it.
pub(super) struct SiteSection {
    pub site: Site,
    /// Where the `site` mapping is; `None` when there is none (that is reported).
    pub pos: Option<Pos>,
    pub listen_set: bool,
    pub tls_set: bool,
}

/// The `peers` section.
pub(super) struct PeersSection {
    pub peers: Vec<Peer>,
    /// The peer names; `None` when some name has a problem (a name cannot be looked up then).
    pub names: Option<Vec<String>>,
    /// Whether at least one peer is listed.
    pub any: bool,
}

impl Decoder {
    pub(super) fn site(&mut self, top: &Fields) -> SiteSection {
        let mut section = SiteSection {
            site: Site {
                name: String::new(),
                listen: None,
                tls: None,
            },
            pos: None,
            listen_set: false,
            tls_set: false,
        };
        let Some(node) = self.required(top, "site") else {
            return section;
        };
        let Some(fields) = self.fields(node, "site", SITE_FIELDS) else {
            return section;
        };
        section.pos = Some(fields.pos);
        section.site.name = self
            .check_required(&fields, "name", scalars::name)
            .unwrap_or_default();
        let listen = self.check_optional(&fields, "listen", |node| {
            scalars::socket_address(node, false)
        });
        section.listen_set = listen.is_some();
        section.site.listen = listen.flatten();
        if let Some(node) = fields.optional("tls") {
            section.tls_set = true;
            section.site.tls = self.tls(node, &fields.path("tls"));
        }
        section
    }

    fn tls(&mut self, node: &Node, path: &str) -> Option<Tls> {
        let fields = self.fields(node, path, TLS_FIELDS)?;
        let mut file = |name| self.check_required(&fields, name, scalars::absolute_path);
        let (ca, cert, key) = (file("ca"), file("cert"), file("key"));
        Some(Tls {
            ca: ca?,
            cert: cert?,
            key: key?,
        })
    }

    pub(super) fn peers(&mut self, top: &Fields, site: &SiteSection) -> PeersSection {
        let items = self.optional_items(top, "peers", "peers");
        // Peers that are not a sequence (reported) are not known either.
        let listed = top
            .optional("peers")
            .is_none_or(|node| matches!(node.value, Value::Seq(_)));
        let mut section = PeersSection {
            peers: Vec::new(),
            names: listed.then(Vec::new),
            any: !items.is_empty(),
        };
        let mut seen = Seen::new();
        for (index, item) in items.iter().enumerate() {
            let path = format!("peers[{index}]");
            let Some(fields) = self.fields(item, &path, PEER_FIELDS) else {
                section.names = None;
                continue;
            };
            let name = self.check_required(&fields, "name", scalars::name);
            if let (Some(name), Some(node)) = (&name, fields.get("name")) {
                let field = fields.path("name");
                if *name == site.site.name {
                    let message =
                        format!("`{name}` is this site's name (site.name), expected another site");
                    self.push(node.pos, field, message);
                } else {
                    self.unique(&mut seen, ("peer name", name), &path, node, field);
                }
            }
            let address = self.check_required(&fields, "address", |node| {
                scalars::socket_address(node, true)
            });
            match (&name, &mut section.names) {
                (Some(name), Some(names)) => names.push(name.clone()),
                _ => section.names = None,
            }
            if let (Some(name), Some(address)) = (name, address) {
                section.peers.push(Peer { name, address });
            }
        }
        section
    }

    /// The peer link needs an address to listen on when there are peers, and certificates.
    pub(super) fn peer_link(&mut self, site: &SiteSection, peers: &PeersSection) {
        let Some(pos) = site.pos else {
            return;
        };
        if peers.any && !site.listen_set {
            let message = "missing field `listen`, required when `peers` is set (the address \
                           where this site's peer link listens)";
            self.push(pos, "site.listen", message);
        }
        if (site.listen_set || peers.any) && !site.tls_set {
            let message = "missing field `tls`, required when `listen` or `peers` is set (the \
                           certificates of the peer link)";
            self.push(pos, "site.tls", message);
        }
    }

    /// The `resources` section, and whether a pool is set (even with a problem).
    pub(super) fn resources(&mut self, top: &Fields) -> (Resources, bool) {
        let mut resources = Resources {
            links: Vec::new(),
            pool: None,
            mount_root: PathBuf::from(DEFAULT_MOUNT_ROOT),
        };
        let Some(node) = top.optional("resources") else {
            return (resources, false);
        };
        let Some(fields) = self.fields(node, "resources", RESOURCES_FIELDS) else {
            return (resources, true);
        };
        resources.links = self.links(&fields);
        let pool = fields.optional("pool");
        if let Some(node) = pool {
            resources.pool = self.pool(node, &fields.path("pool"));
        }
        if let Some(root) = self.check_optional(&fields, "mount_root", scalars::mount_path) {
            resources.mount_root = root.unwrap_or_default();
        }
        (resources, pool.is_some())
    }

    fn links(&mut self, fields: &Fields) -> Vec<Link> {
        let items = self.optional_items(fields, "links", "links");
        let mut links = Vec::new();
        let (mut seen, mut networks_seen) = (Seen::new(), Seen::new());
        for (index, item) in items.iter().enumerate() {
            let path = format!("{}[{index}]", fields.path("links"));
            let Some(link) = self.fields(item, &path, LINK_FIELDS) else {
                continue;
            };
            let name = self.check_required(&link, "name", scalars::link_name);
            if let (Some(name), Some(node)) = (&name, link.get("name")) {
                self.unique(
                    &mut seen,
                    ("link name", name),
                    &path,
                    node,
                    link.path("name"),
                );
            }
            let items = self.non_empty_items(&link, "networks", ("network", "network names"));
            let mut networks = Vec::new();
            for (n, node) in items.iter().enumerate() {
                let field = format!("{}[{n}]", link.path("networks"));
                if let Some(network) = self.check(node, &field, scalars::name) {
                    // A network is reached through one link: an interface goes on that link.
                    let what = ("network", network.as_str());
                    self.unique(&mut networks_seen, what, &field, node, field.clone());
                    networks.push(network);
                }
            }
            if let Some(name) = name
                && !networks.is_empty()
            {
                links.push(Link { name, networks });
            }
        }
        links
    }

    fn pool(&mut self, node: &Node, path: &str) -> Option<Pool> {
        let fields = self.fields(node, path, POOL_FIELDS)?;
        let path = self.check_required(&fields, "path", scalars::absolute_path);
        let reserve = self.check_optional(&fields, "reserve", scalars::size);
        Some(Pool {
            path: path?,
            reserve_bytes: reserve.unwrap_or(Some(0))?,
        })
    }

    /// The tracked volumes outside any VFS.
    pub(super) fn volumes(&mut self, top: &Fields) -> Vec<Volume> {
        let items = self.optional_items(top, "volumes", "volumes");
        let mut volumes = Vec::new();
        let mut seen = Seen::new();
        for (index, item) in items.iter().enumerate() {
            let path = format!("volumes[{index}]");
            let Some(fields) = self.fields(item, &path, VOLUME_FIELDS) else {
                continue;
            };
            let name = self.check_required(&fields, "name", scalars::name);
            if let (Some(name), Some(node)) = (&name, fields.get("name")) {
                self.unique(
                    &mut seen,
                    ("volume name", name),
                    &path,
                    node,
                    fields.path("name"),
                );
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
            self.check(node, &fields.path(name), scalars::absolute_path)
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
