//! The messages sites exchange. Every frame is an [`Envelope`]: a request carries an id, its reply
//! carries the same id. A connection starts with a [`Message::Hello`] each way (id 0).
//!
//! Adding a message is adding a variant to [`Message`] (and a line to [`Message::kind`]): it is
//! tagged by `type` in snake case, so `PushDefinition { vfs, epoch }` travels as
//! `{"type":"push_definition","vfs":{...},"epoch":7}`. A site that does not know a variant
//! answers with an `Error` naming it and closes the connection.
use serde::{Deserialize, Serialize};

use crate::{
    config::VfsDef,
    resources::{Outcome, Purpose, Report, Step},
};

/// Version of this protocol, exchanged in `Hello`; both sides must speak the same.
/// `Hello` itself keeps its shape in every version, so a mismatch is always reported as such.
pub const PROTOCOL: u32 = 1;

/// Id of the `Hello` exchange that opens every connection.
pub const HELLO_ID: u64 = 0;

/// One frame: a request, or the reply to the request with the same id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: u64,
    pub body: Message,
}

/// Everything that travels over the peer link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// First frame each way: who is speaking (must be a name its certificate carries) and which
    /// protocol version it speaks.
    Hello {
        site: String,
        protocol: u32,
    },
    /// Liveness probe; answered by the peer link itself, not by the agent.
    Heartbeat {
        site: String,
        unix_ms: u64,
    },
    /// Reply to `Heartbeat`: the answering site and its clock.
    HeartbeatAck {
        site: String,
        unix_ms: u64,
    },
    /// The active site sends a VFS definition to its DR site, with the VFS's epoch.
    PushDefinition {
        vfs: VfsDef,
        epoch: u64,
    },
    /// Success without data.
    Ack,
    /// The active site asks its DR site for a precheck of `vfs` (of `change` for a change).
    Precheck {
        vfs: String,
        purpose: Purpose,
        change: Option<VfsDef>,
    },
    PrecheckReport {
        report: Report,
    },
    /// Precheck and reserve at the DR site; with shortages only when `proceed`.
    Reserve {
        vfs: String,
        change: Option<VfsDef>,
        proceed: bool,
    },
    Reserved {
        outcome: Outcome,
    },
    /// Remove what is reserved for `vfs` at the DR site.
    Release {
        vfs: String,
    },
    Released {
        vfs: String,
        steps: Vec<Step>,
    },
    /// The request failed; `message` says why (shown to the operator as is).
    Error {
        message: String,
    },
    /// Turns this connection into a data connection for the blocks of `vfs`
    /// ([`crate::replication::wire`]): answered with `Ack`, after which neither side sends
    /// another message on it. Sent by [`super::PeerClient::open_data`] on a connection of its own.
    OpenData {
        vfs: String,
    },
    /// The active site asks its DR site for the SHA-256 digests of a volume of the snapshot of
    /// a cycle (`vfsdr verify`), hashed on a thread of its own at the DR site.
    VerifyDigests {
        request: crate::replication::verify::DigestRequest,
    },
    /// Reply to `VerifyDigests`.
    Digests {
        digests: crate::replication::verify::Digests,
    },
}

/// What a data connection is for ([`super::PeerClient::open_data`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataPurpose {
    /// The blocks of a replication cycle of the VFS (the active site sends them to its DR site).
    Replication { vfs: String },
}

impl DataPurpose {
    /// The VFS the connection is for.
    pub fn vfs(&self) -> &str {
        match self {
            DataPurpose::Replication { vfs } => vfs,
        }
    }

    /// The request that opens such a connection.
    pub fn message(&self) -> Message {
        match self {
            DataPurpose::Replication { vfs } => Message::OpenData { vfs: vfs.clone() },
        }
    }
}

impl Message {
    /// The `type` tag of this message, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Heartbeat { .. } => "heartbeat",
            Message::HeartbeatAck { .. } => "heartbeat_ack",
            Message::PushDefinition { .. } => "push_definition",
            Message::Ack => "ack",
            Message::Precheck { .. } => "precheck",
            Message::PrecheckReport { .. } => "precheck_report",
            Message::Reserve { .. } => "reserve",
            Message::Reserved { .. } => "reserved",
            Message::Release { .. } => "release",
            Message::Released { .. } => "released",
            Message::Error { .. } => "error",
            Message::OpenData { .. } => "open_data",
            Message::VerifyDigests { .. } => "verify_digests",
            Message::Digests { .. } => "digests",
        }
    }

    /// A `Hello` from `site` speaking this [`PROTOCOL`].
    pub fn hello(site: &str) -> Message {
        Message::Hello {
            site: site.to_owned(),
            protocol: PROTOCOL,
        }
    }
}

/// Decodes a request frame. When the envelope is readable but its message is not (an unknown
/// `type`, a missing field), the error comes with the request's id so it can be answered.
pub(crate) fn decode_envelope(body: &[u8]) -> Result<Envelope, (Option<u64>, serde_json::Error)> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: u64,
    }
    serde_json::from_slice::<Envelope>(body).map_err(|e| {
        let id = serde_json::from_slice::<IdOnly>(body).ok().map(|r| r.id);
        (id, e)
    })
}
