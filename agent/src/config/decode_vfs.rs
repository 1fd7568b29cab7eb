//! The VFS definitions: items of `vfs:`, or the whole file for [`super::parse_vfs_file`].

use std::path::{Path, PathBuf};

use super::Problem;
use super::decode::{Decoder, Fields};
use super::scalars;
use super::units;
use super::values::{self, Seen};
use super::yaml::{Node, Pos, Value};
use super::{DEFAULT_MOUNT_ROOT, FsType, Share, Smb, VfsDef, VfsInterface, VfsVolume};

const VFS_FIELDS: &[&str] = &[
    "name",
    "volumes",
    "interfaces",
    "smb",
    "replication",
    "snapshots",
];
const VOLUME_FIELDS: &[&str] = &["name", "size", "filesystem", "mount"];
const INTERFACE_FIELDS: &[&str] = &["name", "address", "network"];
const SMB_FIELDS: &[&str] = &["netbios_name", "shares"];
const SHARE_FIELDS: &[&str] = &["name", "volume", "path"];

const FILESYSTEMS: &[(&str, FsType)] = &[
    ("xfs", FsType::Xfs),
    ("ext4", FsType::Ext4),
    ("btrfs", FsType::Btrfs),
];

/// What the VFS definitions are checked against, and what they must not share.
pub(super) struct VfsContext {
    /// This site's name, which cannot be a replication peer; `None` when unknown.
    pub site: Option<String>,
    /// The peers a VFS may replicate to; `None`: not checked (a VFS file, or a peer with a
    /// problem).
    pub peers: Option<Vec<String>>,
    /// Relative mounts (and the default `<vfs>/<volume>`) are checked resolved under it; empty
    /// when it has a problem.
    mount_root: PathBuf,
    /// Directories of the agent no mount may be, be inside of, or contain: (field, path).
    reserved: Vec<(&'static str, PathBuf)>,
    /// The mounts of the volumes decoded so far: (path, volume field, where).
    mounts: Vec<(PathBuf, String, Pos)>,
    names: Seen<Pos>,
    netbios: Seen<Pos>,
    addresses: Seen<Pos>,
}

impl VfsContext {
    pub fn new(
        site: Option<String>,
        peers: Option<Vec<String>>,
        mount_root: PathBuf,
        reserved: Vec<(&'static str, PathBuf)>,
    ) -> Self {
        VfsContext {
            site,
            peers,
            mount_root,
            reserved,
            mounts: Vec::new(),
            names: Seen::new(),
            netbios: Seen::new(),
            addresses: Seen::new(),
        }
    }

    /// For a VFS on its own: mounts default under [`DEFAULT_MOUNT_ROOT`], nothing else known.
    pub fn standalone() -> Self {
        Self::new(None, None, PathBuf::from(DEFAULT_MOUNT_ROOT), Vec::new())
    }
}

/// Decodes a file holding one VFS definition, as an item of `vfs:`; its mounts default to
/// [`super::DEFAULT_MOUNT_ROOT`], and its replication peer is checked by name only.
pub(super) fn decode(root: Option<&Node>) -> Result<VfsDef, Vec<Problem>> {
    let mut d = Decoder::default();
    let vfs = match root {
        // A site configuration where a VFS definition was expected: one problem says so.
        Some(Node {
            value: Value::Map(entries),
            ..
        }) if let Some((key, _)) = entries.iter().find(|(k, _)| k.as_str() == Some("version")) => {
            let message = "this is a site configuration (it has a `version`), expected one VFS \
                           definition: the fields of an item of `vfs:` (`name`, `volumes`, ...)";
            d.push(key.pos, "(document)", message);
            None
        }
        Some(node) if !node.is_null() => {
            let mut context = VfsContext::standalone();
            d.vfs(node, "", &mut context)
        }
        _ => {
            let message = "the file holds no VFS definition, expected a mapping with the fields \
                           of an item of `vfs:` (`name`, `volumes`, ...)";
            d.push(Pos::START, "(document)", message);
            None
        }
    };
    d.finish(vfs)
}

impl Decoder {
    pub(super) fn vfs_list(&mut self, top: &Fields, context: &mut VfsContext) -> Vec<VfsDef> {
        let items = self.optional_items(top, "vfs", "VFS definitions");
        let mut list = Vec::new();
        for (index, item) in items.iter().enumerate() {
            if let Some(vfs) = self.vfs(item, &format!("vfs[{index}]"), context) {
                list.push(vfs);
            }
        }
        list
    }

    /// One VFS definition at `path` (empty: the whole document).
    pub(super) fn vfs(
        &mut self,
        node: &Node,
        path: &str,
        context: &mut VfsContext,
    ) -> Option<VfsDef> {
        let fields = self.fields(node, path, VFS_FIELDS)?;
        let name = self.check_required(&fields, "name", scalars::vfs_name);
        if let (Some(name), Some(node)) = (&name, fields.get("name")) {
            let item = if path.is_empty() { "(document)" } else { path };
            let field = fields.path("name");
            self.unique(&mut context.names, ("VFS name", name), item, node, field);
        }
        let (volumes, volume_names) = self.vfs_volumes(&fields, name.as_deref(), context);
        let interfaces = self.interfaces(&fields, context);
        let smb = self.smb(&fields, volume_names.as_deref(), context);
        let replication = self.replication(&fields, context);
        let snapshots = self.snapshots(&fields);
        Some(VfsDef {
            name: name?,
            volumes: volumes?,
            interfaces: interfaces?,
            smb: smb?,
            replication: replication?,
            snapshots: snapshots?,
        })
    }

    /// The volumes, and their names when every name could be read.
    fn vfs_volumes(
        &mut self,
        vfs: &Fields,
        vfs_name: Option<&str>,
        context: &mut VfsContext,
    ) -> (Option<Vec<VfsVolume>>, Option<Vec<String>>) {
        let items = self.non_empty_items(vfs, "volumes", ("volume", "volumes"));
        let (mut volumes, mut names) = (Some(Vec::new()), Some(Vec::new()));
        let mut seen = Seen::new();
        for (index, item) in items.iter().enumerate() {
            let path = format!("{}[{index}]", vfs.path("volumes"));
            let volume = self.fields(item, &path, VOLUME_FIELDS).and_then(|fields| {
                self.vfs_volume(&fields, &mut seen, (vfs_name, &mut names), context)
            });
            match (volume, &mut volumes) {
                (Some(volume), Some(volumes)) => volumes.push(volume),
                _ => volumes = None,
            }
        }
        if items.len() != names.as_ref().map_or(0, Vec::len) {
            names = None;
        }
        (volumes, names)
    }

    fn vfs_volume(
        &mut self,
        fields: &Fields,
        seen: &mut Seen<Pos>,
        (vfs_name, names): (Option<&str>, &mut Option<Vec<String>>),
        context: &mut VfsContext,
    ) -> Option<VfsVolume> {
        let name = self.check_required(fields, "name", scalars::name);
        if let (Some(name), Some(node)) = (&name, fields.get("name")) {
            self.unique(
                seen,
                ("volume name", name),
                &fields.path,
                node,
                fields.path("name"),
            );
        }
        match (&name, names.as_mut()) {
            (Some(name), Some(names)) => names.push(name.clone()),
            _ => *names = None,
        }
        let filesystem = self
            .check_optional(fields, "filesystem", |node| {
                scalars::choice(node, FILESYSTEMS)
            })
            .unwrap_or(Some(FsType::Xfs));
        let size = self.check_required(fields, "size", scalars::size);
        if let (Some(size), Some(filesystem), Some(node)) = (size, filesystem, fields.get("size")) {
            let field = fields.path("size");
            self.check(node, &field, |_| units::volume_size(size, filesystem));
        }
        let mount = self.mount(fields, vfs_name, name.as_deref(), context);
        Some(VfsVolume {
            name: name?,
            size_bytes: size?,
            filesystem: filesystem?,
            mount: mount?,
        })
    }

    /// The volume's mount path as written (relative to the site's mount root unless absolute),
    /// or `<vfs>/<volume>` by default. Resolved under the mount root, it must not meet another
    /// mount or a directory of the agent.
    fn mount(
        &mut self,
        fields: &Fields,
        vfs_name: Option<&str>,
        name: Option<&str>,
        context: &mut VfsContext,
    ) -> Option<PathBuf> {
        let field = fields.path("mount");
        let (path, pos, what) = match fields.optional("mount") {
            Some(node) => (
                self.check(node, &field, scalars::volume_mount)?,
                node.pos,
                "mount path",
            ),
            None => {
                let path = Path::new(vfs_name?).join(name?);
                (path, fields.pos, "default mount path")
            }
        };
        // Without a usable mount root, a relative path cannot be compared with anything.
        if path.is_relative() && context.mount_root.as_os_str().is_empty() {
            return Some(path);
        }
        let resolved = context.mount_root.join(&path);
        let reserved = context.reserved.iter().find_map(|(other_name, other)| {
            values::mount_conflict(what, &resolved, other_name, other)
        });
        let mounted = context.mounts.iter().find_map(|(other, volume, at)| {
            let other_name = format!("the mount of {volume}");
            let message = values::mount_conflict(what, &resolved, &other_name, other)?;
            Some(format!("{message} on line {}", at.line))
        });
        if let Some(message) = reserved.or(mounted) {
            self.push(pos, field, message);
        }
        context.mounts.push((resolved, fields.path.clone(), pos));
        Some(path)
    }

    fn interfaces(&mut self, vfs: &Fields, context: &mut VfsContext) -> Option<Vec<VfsInterface>> {
        let items = self.non_empty_items(vfs, "interfaces", ("interface", "interfaces"));
        let mut interfaces = Some(Vec::new());
        let mut seen = Seen::new();
        for (index, item) in items.iter().enumerate() {
            let path = format!("{}[{index}]", vfs.path("interfaces"));
            let Some(fields) = self.fields(item, &path, INTERFACE_FIELDS) else {
                interfaces = None;
                continue;
            };
            let name = self.check_required(&fields, "name", scalars::name);
            if let (Some(name), Some(node)) = (&name, fields.get("name")) {
                let field = fields.path("name");
                self.unique(&mut seen, ("interface name", name), &path, node, field);
            }
            let address = self.check_required(&fields, "address", scalars::interface_address);
            if let (Some((ip, _)), Some(node)) = (address, fields.get("address")) {
                let (field, what) = (fields.path("address"), ("address", &*ip.to_string()));
                self.unique(&mut context.addresses, what, &path, node, field);
            }
            let network = self.check_required(&fields, "network", scalars::name);
            let interface = (|| {
                let (address, prefix_len) = address?;
                Some(VfsInterface {
                    name: name?,
                    address,
                    prefix_len,
                    network: network?,
                })
            })();
            match (interface, &mut interfaces) {
                (Some(interface), Some(list)) => list.push(interface),
                _ => interfaces = None,
            }
        }
        interfaces.filter(|list| !list.is_empty())
    }

    fn smb(
        &mut self,
        vfs: &Fields,
        volumes: Option<&[String]>,
        context: &mut VfsContext,
    ) -> Option<Smb> {
        let node = self.required(vfs, "smb")?;
        let fields = self.fields(node, &vfs.path("smb"), SMB_FIELDS)?;
        let netbios_name = self.check_required(&fields, "netbios_name", scalars::netbios_name);
        if let (Some(name), Some(node)) = (&netbios_name, fields.get("netbios_name")) {
            let (item, field) = (vfs.path("smb"), fields.path("netbios_name"));
            self.unique(
                &mut context.netbios,
                ("NetBIOS name", name),
                &item,
                node,
                field,
            );
        }
        let items = self.optional_items(&fields, "shares", "shares");
        let mut shares = Some(Vec::new());
        let mut seen = Seen::ignoring_case();
        for (index, item) in items.iter().enumerate() {
            let path = format!("{}[{index}]", fields.path("shares"));
            let share = self
                .fields(item, &path, SHARE_FIELDS)
                .and_then(|share| self.share(&share, &mut seen, volumes));
            match (share, &mut shares) {
                (Some(share), Some(list)) => list.push(share),
                _ => shares = None,
            }
        }
        Some(Smb {
            netbios_name: netbios_name?,
            shares: shares?,
        })
    }

    fn share(
        &mut self,
        fields: &Fields,
        seen: &mut Seen<Pos>,
        volumes: Option<&[String]>,
    ) -> Option<Share> {
        let name = self.check_required(fields, "name", scalars::share_name);
        if let (Some(name), Some(node)) = (&name, fields.get("name")) {
            self.unique(
                seen,
                ("share name", name),
                &fields.path,
                node,
                fields.path("name"),
            );
        }
        let volume = self.check_required(fields, "volume", scalars::name);
        if let (Some(volume), Some(volumes), Some(node)) = (&volume, volumes, fields.get("volume"))
            && !volumes.contains(volume)
        {
            let known: Vec<&str> = volumes.iter().map(String::as_str).collect();
            let message = values::unknown_share_volume(volume, &known);
            self.push(node.pos, fields.path("volume"), message);
        }
        let path = self
            .check_optional(fields, "path", scalars::share_path)
            .unwrap_or(Some(String::new()));
        Some(Share {
            name: name?,
            volume: volume?,
            path: path?,
        })
    }
}
