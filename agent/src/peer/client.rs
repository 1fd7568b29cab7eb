//! The calling side: one connection per peer, calls serialized on it, reconnected when needed;
//! and data connections, each on a connection of its own.
use std::{sync::Arc, time::Duration};

use rustls_pki_types::ServerName;
use tokio::{io::AsyncWriteExt as _, net::TcpStream, sync::Mutex};

use super::{
    Envelope, FrameError, HELLO_ID, Message, PROTOCOL, PeerContext, PeerError,
    frame::{read_json, write_json},
    protocol::DataPurpose,
};
use crate::config::Peer;

/// How long connecting (TCP, TLS and `Hello`) and a call (request to reply) may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub call: Duration,
}

impl Default for Timeouts {
    /// Connect 5 s, call 30 s.
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            call: Duration::from_secs(30),
        }
    }
}

type Stream = tokio_rustls::client::TlsStream<TcpStream>;

/// The client side of a data connection ([`PeerClient::open_data`]): TLS over TCP.
pub type DataStream = Stream;

struct Connection {
    stream: Stream,
    next_id: u64,
}

/// Calls to one peer. Cheap to keep for the agent's lifetime; not connected until the first call.
pub struct PeerClient {
    ctx: Arc<PeerContext>,
    peer: Peer,
    server_name: ServerName<'static>,
    timeouts: Timeouts,
    connection: Mutex<Option<Connection>>,
}

impl PeerClient {
    /// A client for `peer`, whose certificate must carry its name.
    pub fn new(ctx: Arc<PeerContext>, peer: Peer) -> Result<PeerClient, PeerError> {
        let server_name =
            ServerName::try_from(peer.name.clone()).map_err(|_| PeerError::InvalidName {
                peer: peer.name.clone(),
            })?;
        Ok(PeerClient {
            ctx,
            peer,
            server_name,
            timeouts: Timeouts::default(),
            connection: Mutex::new(None),
        })
    }

    /// The same client with other timeouts.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> PeerClient {
        self.timeouts = timeouts;
        self
    }

    /// The peer this client calls.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// This site's name.
    pub fn site(&self) -> &str {
        self.ctx.site()
    }

    /// Sends `message` and returns the peer's answer. An `Error` answer is returned as
    /// [`PeerError::Remote`]. Connects first if needed; when a kept connection turns out to be
    /// dead (the peer restarted), reconnects and sends once more: requests are idempotent.
    pub async fn call(&self, message: Message) -> Result<Message, PeerError> {
        let mut connection = self.connection.lock().await;
        let reused = connection.is_some();
        let answer = match self.call_once(&mut connection, &message).await {
            Err(PeerError::Frame {
                source: FrameError::Closed | FrameError::Io(_),
                ..
            }) if reused => self.call_once(&mut connection, &message).await,
            answer => answer,
        }?;
        match answer {
            Message::Error { message: error } => Err(PeerError::Remote {
                peer: self.peer.name.clone(),
                sent: message.kind(),
                message: error,
            }),
            answer => Ok(answer),
        }
    }

    /// Opens a data connection for `purpose`: a new connection (TCP, TLS, `Hello` as for calls,
    /// within the connect timeout), then `OpenData` answered with `Ack` within the call timeout.
    /// Returns the TLS stream, now carrying only the frames of [`crate::replication::wire`]; the
    /// client's own connection for calls is not touched. A refusal (`Error`) is
    /// [`PeerError::Remote`]; nothing is retried.
    pub async fn open_data(&self, purpose: DataPurpose) -> Result<DataStream, PeerError> {
        let mut connection = self.connect().await?;
        match self.request(&mut connection, &purpose.message()).await? {
            Message::Ack => Ok(connection.stream),
            Message::Error { message } => Err(PeerError::Remote {
                peer: self.peer.name.clone(),
                sent: "open_data",
                message,
            }),
            other => Err(PeerError::UnexpectedReply {
                peer: self.peer.name.clone(),
                address: self.peer.address,
                sent: "open_data",
                sent_id: connection.next_id - 1,
                got: other.kind(),
                got_id: connection.next_id - 1,
            }),
        }
    }

    /// Closes the connection (with a TLS `close_notify`), if any; the next call opens a new one.
    pub async fn disconnect(&self) {
        if let Some(mut connection) = self.connection.lock().await.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), connection.stream.shutdown()).await;
        }
    }

    /// One attempt; any failure drops the connection.
    async fn call_once(
        &self,
        slot: &mut Option<Connection>,
        message: &Message,
    ) -> Result<Message, PeerError> {
        let result = self.exchange(slot, message).await;
        if result.is_err() {
            *slot = None;
        }
        result
    }

    async fn exchange(
        &self,
        slot: &mut Option<Connection>,
        message: &Message,
    ) -> Result<Message, PeerError> {
        if slot.is_none() {
            *slot = Some(self.connect().await?);
        }
        let connection = slot.as_mut().expect("connected above");
        self.request(connection, message).await
    }

    /// One request and its reply on `connection`, within the call timeout.
    async fn request(
        &self,
        connection: &mut Connection,
        message: &Message,
    ) -> Result<Message, PeerError> {
        let id = connection.next_id;
        connection.next_id += 1;
        let after = self.timeouts.call;
        let request = Envelope {
            id,
            body: message.clone(),
        };
        let reply = tokio::time::timeout(after, async {
            write_json(&mut connection.stream, &request).await?;
            read_json::<Envelope, _>(&mut connection.stream).await
        })
        .await
        .map_err(|_| PeerError::Timeout {
            peer: self.peer.name.clone(),
            address: self.peer.address,
            sent: message.kind(),
            after,
        })?
        .map_err(|source| self.frame_error(source))?;
        if reply.id != id {
            return Err(PeerError::UnexpectedReply {
                peer: self.peer.name.clone(),
                address: self.peer.address,
                sent: message.kind(),
                sent_id: id,
                got: reply.body.kind(),
                got_id: reply.id,
            });
        }
        Ok(reply.body)
    }

    /// TCP, TLS and the `Hello` exchange, within the connect timeout.
    async fn connect(&self) -> Result<Connection, PeerError> {
        let after = self.timeouts.connect;
        tokio::time::timeout(after, self.connect_inner())
            .await
            .unwrap_or(Err(PeerError::ConnectTimeout {
                peer: self.peer.name.clone(),
                address: self.peer.address,
                after,
            }))
    }

    async fn connect_inner(&self) -> Result<Connection, PeerError> {
        let (peer, address) = (&self.peer.name, self.peer.address);
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|source| PeerError::Connect {
                peer: peer.clone(),
                address,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let mut stream = self
            .ctx
            .tls()
            .connector()
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| PeerError::Tls {
                peer: peer.clone(),
                address,
                source,
            })?;
        let hello = Envelope {
            id: HELLO_ID,
            body: Message::hello(self.ctx.site()),
        };
        // With TLS 1.3 the server checks our certificate after our side of the handshake is
        // done, so a rejected certificate shows up here, as the TLS alert it sent.
        let reply = async {
            write_json(&mut stream, &hello).await?;
            read_json::<Envelope, _>(&mut stream).await
        }
        .await
        .map_err(|source| match source {
            FrameError::Io(source) => PeerError::Tls {
                peer: peer.clone(),
                address,
                source,
            },
            source => self.frame_error(source),
        })?;
        match reply.body {
            Message::Hello { protocol, .. } if protocol != PROTOCOL => {
                Err(PeerError::ProtocolMismatch {
                    peer: peer.clone(),
                    address,
                    ours: PROTOCOL,
                    theirs: protocol,
                })
            }
            Message::Hello { site, .. } if site != *peer => Err(PeerError::WrongSite {
                peer: peer.clone(),
                address,
                said: site,
            }),
            Message::Hello { .. } => Ok(Connection {
                stream,
                next_id: HELLO_ID + 1,
            }),
            Message::Error { message } => Err(PeerError::Refused {
                peer: peer.clone(),
                address,
                reason: message,
            }),
            other => Err(PeerError::UnexpectedReply {
                peer: peer.clone(),
                address,
                sent: "hello",
                sent_id: HELLO_ID,
                got: other.kind(),
                got_id: reply.id,
            }),
        }
    }

    fn frame_error(&self, source: FrameError) -> PeerError {
        PeerError::Frame {
            peer: self.peer.name.clone(),
            address: self.peer.address,
            source,
        }
    }
}
