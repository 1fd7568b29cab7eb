//! The peer link: how sites talk to each other. TCP, TLS with mutual certificates, and a small
//! framed protocol of our own.
//!
//! # Why not gRPC
//!
//! The link carries a handful of request/reply messages between two copies of this same agent.
//! gRPC would bring protoc and code generation into the build, an HTTP/2 stack, and a second set
//! of message types to convert from and to. Instead every frame is a 4-byte big-endian length and
//! a JSON body ([`frame`], no dependency beyond serde_json), and the messages are plain Rust enums
//! ([`Message`]) shared with the agent: adding one is adding a variant. JSON is also what the
//! agent already stores and logs, so a frame can be read by a human.
//!
//! # Connection
//!
//! 1. TLS 1.3. The server requires a client certificate signed by the configured CA; the client
//!    checks the server's certificate against the same CA with the peer's site name as the
//!    expected DNS name. Certificates come from `vfsdr cert` ([`crate::cert`]): one CA for all
//!    sites, one certificate per site whose DNS SAN is the site name.
//! 2. The client sends `Hello { site, protocol }` (id 0); the server checks that the site is one
//!    of its `peers`, that the client certificate carries that name, and that the protocol
//!    version is [`PROTOCOL`], then answers with its own `Hello`. A refusal is answered with
//!    `Error { message }`, logged with `event = "peer_refused"`, and the connection is closed.
//! 3. Requests, each answered in order: [`Envelope`] `{ id, body }`, the reply carrying the id.
//!
//! A frame larger than [`frame::MAX_FRAME`] (16 MiB), a truncated frame or a body that does not
//! decode ends that connection only, with an error naming the peer.
//!
//! # How the agent receives requests
//!
//! [`serve`] answers `Heartbeat` itself and hands every other request to the agent through a
//! channel of [`PeerRequest`]s: the agent keeps its state in one place and one task, and already
//! reads its local API calls from a channel in its main loop, so a peer request is one more arm of
//! that `select!` (answer with [`PeerRequest::respond`]). A request the agent drops unanswered is
//! answered with an `Error`.
//!
//! Requests to a peer go through a [`PeerClient`] (one connection, calls serialized, reconnected
//! when needed). [`spawn_heartbeats`] probes every peer every two seconds on connections of its
//! own, so a long call never delays a heartbeat, and keeps a [`PeerStatus`] for `vfsdr status`.
//!
//! # Data connections
//!
//! The blocks of a replication cycle do not travel as messages: [`PeerClient::open_data`] opens
//! a connection of its own (same TLS, same `Hello`), sends `OpenData { vfs }`, and once answered
//! with `Ack` the connection carries only the binary frames of [`crate::replication::wire`].
//! On the accepting side, [`serve_with_data`] hands such a connection to the agent as a
//! [`DataConn`] through a second channel and stops reading it; [`serve`] refuses `OpenData`.
mod client;
pub mod frame;
mod protocol;
mod server;
mod status;
mod tls;

#[cfg(test)]
mod data_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

pub use client::{DataStream, PeerClient, Timeouts};
pub use frame::FrameError;
pub use protocol::{DataPurpose, Envelope, HELLO_ID, Message, PROTOCOL};
pub use server::{DataConn, PeerRequest, ServerDataStream, bind, serve, serve_with_data};
pub use status::{
    HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, PeerHealth, PeerStatus, heartbeat, spawn_heartbeats,
};
pub use tls::PeerTls;
pub(crate) use tls::verify_site_certificate;

use crate::config::{Config, Peer};

/// Errors of the peer link. Each names the peer (and its address) or the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid PEM: {source}", file.display())]
    BadPem {
        file: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no certificate in it (expected a PEM \"BEGIN CERTIFICATE\" block)", file.display())]
    NoCertificate { file: PathBuf },
    #[error("{}: no private key in it (expected a PEM \"BEGIN PRIVATE KEY\" block)", file.display())]
    NoKey { file: PathBuf },
    #[error("{}: unusable private key: {source}", file.display())]
    BadKey {
        file: PathBuf,
        source: rustls::Error,
    },
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: not a usable CA certificate: {source}", file.display())]
    BadCa {
        file: PathBuf,
        source: rustls::Error,
    },
    #[error("{}: cannot verify client certificates with this CA: {source}", file.display())]
    CaVerifier {
        file: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("TLS setup failed: {0}")]
    TlsSetup(#[source] rustls::Error),
    #[error("{} is not a valid certificate for site {site} with the CA {}: {source}",
        cert.display(), ca.display())]
    OwnCertificate {
        cert: PathBuf,
        ca: PathBuf,
        site: String,
        source: Box<rustls::Error>,
    },
    #[error("{peer:?} cannot be a TLS server name (site names are DNS names)")]
    InvalidName { peer: String },
    #[error("cannot listen for peers on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to peer {peer} at {address}: {source}")]
    Connect {
        peer: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to peer {peer} at {address} timed out after {after:?}")]
    ConnectTimeout {
        peer: String,
        address: SocketAddr,
        after: Duration,
    },
    #[error("TLS handshake with peer {peer} at {address} failed: {source}")]
    Tls {
        peer: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer {peer} at {address} refused the link: {reason}")]
    Refused {
        peer: String,
        address: SocketAddr,
        reason: String,
    },
    #[error("peer {peer} at {address} speaks protocol version {theirs}, this site speaks {ours}")]
    ProtocolMismatch {
        peer: String,
        address: SocketAddr,
        ours: u32,
        theirs: u32,
    },
    #[error("peer at {address} says it is site {said:?}, expected {peer}")]
    WrongSite {
        peer: String,
        address: SocketAddr,
        said: String,
    },
    #[error("peer {peer} at {address}: {source}")]
    Frame {
        peer: String,
        address: SocketAddr,
        source: FrameError,
    },
    #[error("peer {peer} at {address} answered {got} (id {got_id}) to {sent} (id {sent_id})")]
    UnexpectedReply {
        peer: String,
        address: SocketAddr,
        sent: &'static str,
        sent_id: u64,
        got: &'static str,
        got_id: u64,
    },
    #[error("peer {peer} at {address} did not answer {sent} within {after:?}")]
    Timeout {
        peer: String,
        address: SocketAddr,
        sent: &'static str,
        after: Duration,
    },
    #[error("peer {peer} answered {sent} with an error: {message}")]
    Remote {
        peer: String,
        sent: &'static str,
        message: String,
    },
    #[error("{peer} is not a peer of this site")]
    UnknownPeer { peer: String },
}

/// What both sides of the link need: this site's name, its peers, and its TLS material.
#[derive(Debug)]
pub struct PeerContext {
    site: String,
    peers: Vec<Peer>,
    tls: PeerTls,
}

impl PeerContext {
    /// Checks that the certificate is signed by the CA and carries `site` as its DNS name (so a
    /// misconfigured site fails at start, not at its peers).
    pub fn new(site: &str, peers: Vec<Peer>, tls: PeerTls) -> Result<Self, PeerError> {
        tls.verify_own_certificate(site)?;
        Ok(PeerContext {
            site: site.to_owned(),
            peers,
            tls,
        })
    }

    /// The context of a configuration: `None` when it has no `site.tls` (no peer link).
    pub fn from_config(config: &Config) -> Result<Option<Self>, PeerError> {
        let Some(files) = &config.site.tls else {
            return Ok(None);
        };
        let tls = PeerTls::load(files)?;
        PeerContext::new(&config.site.name, config.peers.clone(), tls).map(Some)
    }

    /// This site's name.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The configured peers.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// The configured peer of that name.
    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// A client for the configured peer of that name.
    pub fn client(self: &Arc<Self>, name: &str) -> Result<PeerClient, PeerError> {
        let peer = self.peer(name).ok_or_else(|| PeerError::UnknownPeer {
            peer: name.to_owned(),
        })?;
        PeerClient::new(self.clone(), peer.clone())
    }

    pub(crate) fn tls(&self) -> &PeerTls {
        &self.tls
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
