//! The real `Links`, through rtnetlink, in the network namespace the agent runs in.
//!
//! rtnetlink is async; the agent's actions are synchronous steps of its event loop. So the
//! connection lives on a thread of its own with a small runtime, and each call is a request
//! sent to it and answered over a channel (calls take well under a millisecond).
use std::{sync::mpsc, thread};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo as NlInfo, LinkMessage, MacVlanMode},
};
use rtnetlink::{Handle, LinkMacVlan};

use super::net::{AddrInfo, LinkInfo, Links, NetError};

enum Op {
    Links,
    Addresses,
    CreateMacvlan { parent: String, name: String },
    Delete(String),
}

enum Answer {
    Links(Vec<LinkInfo>),
    Addresses(Vec<AddrInfo>),
    Done,
}

type Call = (Op, mpsc::Sender<Result<Answer, NetError>>);

pub struct RtnlLinks {
    calls: mpsc::Sender<Call>,
}

fn nl(op: &str) -> impl FnOnce(rtnetlink::Error) -> NetError + '_ {
    move |e| NetError::Netlink {
        op: op.to_owned(),
        reason: e.to_string(),
    }
}

impl RtnlLinks {
    /// Opens a netlink connection in the current network namespace.
    pub fn new() -> Result<Self, NetError> {
        let (tx, rx) = mpsc::channel::<Call>();
        let (ready_tx, ready_rx) = mpsc::channel();
        thread::Builder::new()
            .name("netlink".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    let (conn, handle, _) = match rtnetlink::new_connection() {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    tokio::spawn(conn);
                    let _ = ready_tx.send(Ok(()));
                    // Blocking here is fine: nothing else runs on this thread between calls.
                    while let Ok((op, reply)) = rx.recv() {
                        let _ = reply.send(run(&handle, op).await);
                    }
                });
            })
            .map_err(|e| NetError::Netlink {
                op: "start the netlink thread".into(),
                reason: e.to_string(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(RtnlLinks { calls: tx }),
            Ok(Err(reason)) => Err(NetError::Netlink {
                op: "open a netlink socket".into(),
                reason,
            }),
            Err(_) => Err(NetError::Netlink {
                op: "open a netlink socket".into(),
                reason: "the netlink thread ended".into(),
            }),
        }
    }

    fn call(&mut self, op: Op) -> Result<Answer, NetError> {
        let (tx, rx) = mpsc::channel();
        let gone = || NetError::Netlink {
            op: "call".into(),
            reason: "the netlink thread ended".into(),
        };
        self.calls.send((op, tx)).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }
}

fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        name: String::new(),
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        carrier: m.header.flags.contains(LinkFlags::LowerUp),
        kind: None,
        parent: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Link(p) => info.parent = Some(*p),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlInfo::Kind(k) = i {
                        info.kind = Some(kind_name(k));
                    }
                }
            }
            _ => {}
        }
    }
    info
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::MacVlan => "macvlan".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Bridge => "bridge".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32, NetError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(m.header.index),
        Ok(None) => Err(NetError::NoSuchLink(name.to_owned())),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
            Err(NetError::NoSuchLink(name.to_owned()))
        }
        Err(e) => Err(nl("get link")(e)),
    }
}

async fn run(handle: &Handle, op: Op) -> Result<Answer, NetError> {
    match op {
        Op::Links => {
            let msgs: Vec<LinkMessage> = handle
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(nl("list links"))?;
            Ok(Answer::Links(msgs.iter().map(link_info).collect()))
        }
        Op::Addresses => {
            let links: Vec<LinkMessage> = handle
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(nl("list links"))?;
            let names: std::collections::HashMap<u32, String> = links
                .iter()
                .map(|m| (m.header.index, link_info(m).name))
                .collect();
            let msgs: Vec<AddressMessage> = handle
                .address()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(nl("list addresses"))?;
            let mut out = Vec::new();
            for m in msgs {
                for a in &m.attributes {
                    if let AddressAttribute::Address(std::net::IpAddr::V4(ip)) = a {
                        out.push(AddrInfo {
                            link: names.get(&m.header.index).cloned().unwrap_or_default(),
                            address: *ip,
                            prefix_len: m.header.prefix_len,
                        });
                    }
                }
            }
            Ok(Answer::Addresses(out))
        }
        Op::CreateMacvlan { parent, name } => {
            let index = index_of(handle, &parent).await?;
            let msg = LinkMacVlan::new(&name, index, MacVlanMode::Bridge)
                .down()
                .build();
            handle
                .link()
                .add(msg)
                .execute()
                .await
                .map_err(nl(&format!("create macvlan {name} on {parent}")))?;
            Ok(Answer::Done)
        }
        Op::Delete(name) => {
            let index = index_of(handle, &name).await?;
            handle
                .link()
                .del(index)
                .execute()
                .await
                .map_err(nl(&format!("delete link {name}")))?;
            Ok(Answer::Done)
        }
    }
}

impl Links for RtnlLinks {
    fn links(&mut self) -> Result<Vec<LinkInfo>, NetError> {
        match self.call(Op::Links)? {
            Answer::Links(l) => Ok(l),
            _ => unreachable!("answer matches the call"),
        }
    }

    fn addresses(&mut self) -> Result<Vec<AddrInfo>, NetError> {
        match self.call(Op::Addresses)? {
            Answer::Addresses(a) => Ok(a),
            _ => unreachable!("answer matches the call"),
        }
    }

    fn create_macvlan(&mut self, parent: &str, name: &str) -> Result<(), NetError> {
        self.call(Op::CreateMacvlan {
            parent: parent.into(),
            name: name.into(),
        })
        .map(drop)
    }

    fn delete_link(&mut self, name: &str) -> Result<(), NetError> {
        self.call(Op::Delete(name.into())).map(drop)
    }
}
