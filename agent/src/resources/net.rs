//! The network seam: links and addresses of the site's network namespace, and the links the
//! agent creates for VFS interfaces. `RtnlLinks` (rtnetlink) is the real one, `FakeLinks` the
//! one for tests.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Lower layer up (IFF_LOWER_UP): the link has a carrier.
    pub carrier: bool,
    /// `macvlan`, `veth`, … (IFLA_INFO_KIND), if any.
    pub kind: Option<String>,
    /// The link this one sits on (IFLA_LINK), for macvlans.
    pub parent: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrInfo {
    pub link: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink: {op}: {reason}")]
    Netlink { op: String, reason: String },
    #[error("no link named {0}")]
    NoSuchLink(String),
}

/// The kernel surface for links and addresses.
pub trait Links: Send {
    fn links(&mut self) -> Result<Vec<LinkInfo>, NetError>;
    fn addresses(&mut self) -> Result<Vec<AddrInfo>, NetError>;
    /// Creates a macvlan (bridge mode) named `name` on `parent`, administratively down.
    fn create_macvlan(&mut self, parent: &str, name: &str) -> Result<(), NetError>;
    fn delete_link(&mut self, name: &str) -> Result<(), NetError>;
}

/// Links in memory.
#[derive(Debug, Default, Clone)]
pub struct FakeLinks {
    pub links: BTreeMap<String, LinkInfo>,
    pub addresses: Vec<AddrInfo>,
    next_index: u32,
}

impl FakeLinks {
    /// Adds a physical-like link.
    pub fn with_link(mut self, name: &str, up: bool, carrier: bool) -> Self {
        self.add(name, up, carrier, None, None);
        self
    }

    pub fn with_address(mut self, link: &str, address: Ipv4Addr, prefix_len: u8) -> Self {
        self.addresses.push(AddrInfo {
            link: link.into(),
            address,
            prefix_len,
        });
        self
    }

    fn add(
        &mut self,
        name: &str,
        up: bool,
        carrier: bool,
        kind: Option<&str>,
        parent: Option<u32>,
    ) {
        self.next_index += 1;
        self.links.insert(
            name.into(),
            LinkInfo {
                name: name.into(),
                index: self.next_index,
                up,
                carrier,
                kind: kind.map(Into::into),
                parent,
            },
        );
    }
}

impl Links for FakeLinks {
    fn links(&mut self) -> Result<Vec<LinkInfo>, NetError> {
        Ok(self.links.values().cloned().collect())
    }

    fn addresses(&mut self) -> Result<Vec<AddrInfo>, NetError> {
        Ok(self.addresses.clone())
    }

    fn create_macvlan(&mut self, parent: &str, name: &str) -> Result<(), NetError> {
        let parent = self
            .links
            .get(parent)
            .ok_or_else(|| NetError::NoSuchLink(parent.into()))?
            .index;
        if self.links.contains_key(name) {
            return Err(NetError::Netlink {
                op: format!("create {name}"),
                reason: "File exists (os error 17)".into(),
            });
        }
        self.add(name, false, false, Some("macvlan"), Some(parent));
        Ok(())
    }

    fn delete_link(&mut self, name: &str) -> Result<(), NetError> {
        self.links
            .remove(name)
            .map(drop)
            .ok_or_else(|| NetError::NoSuchLink(name.into()))
    }
}
