//! The accepting side: TLS, the `Hello` checks, then requests handed to the agent, or the whole
//! connection when it asks to become a data connection (`OpenData`).
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    task::JoinSet,
};

use super::{
    Envelope, FrameError, HELLO_ID, Message, PROTOCOL, PeerContext, PeerError,
    frame::{read_frame, read_json, write_json},
    protocol::decode_envelope,
    tls::{certificate_is_for, certificate_names},
    unix_ms,
};

/// How long a connecting peer has for TLS and its `Hello`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request from a peer for the agent. `from` is the peer's site name, authenticated by its
/// certificate; answer through `reply` (or [`PeerRequest::respond`]).
#[derive(Debug)]
pub struct PeerRequest {
    pub from: String,
    pub message: Message,
    pub reply: oneshot::Sender<Message>,
}

impl PeerRequest {
    /// Sends the answer; a peer that has gone away meanwhile is not an error.
    pub fn respond(self, answer: Message) {
        let _ = self.reply.send(answer);
    }
}

/// The server side of a data connection: TLS over TCP.
pub type ServerDataStream = tokio_rustls::server::TlsStream<TcpStream>;

/// A data connection a peer opened with `OpenData` ([`super::PeerClient::open_data`]), after the
/// same TLS and `Hello` checks as any connection and answered with `Ack`. From here on the
/// stream is the agent's, for the frames of [`crate::replication::wire`]; the peer link neither
/// reads it nor closes it (not even when [`serve_with_data`] stops). `from` is the peer's site
/// name, authenticated by its certificate; `vfs` is as the peer sent it (unchecked).
#[derive(Debug)]
pub struct DataConn {
    pub from: String,
    pub vfs: String,
    pub remote: SocketAddr,
    pub stream: ServerDataStream,
}

/// Binds the peer link's listening socket.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, PeerError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| PeerError::Listen { address, source })
}

/// Accepts peer connections until dropped (or aborted), which also closes every connection it
/// accepted. Heartbeats are answered here; every other request goes to `requests`. `OpenData`
/// is answered with an `Error`: see [`serve_with_data`].
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<PeerContext>,
    requests: mpsc::Sender<PeerRequest>,
) {
    serve_inner(listener, ctx, requests, None).await
}

/// [`serve`], and data connections: a connection whose request is `OpenData` is answered with
/// `Ack` and handed to `data` as a [`DataConn`]. When the agent has dropped `data`'s receiver,
/// `OpenData` is answered with an `Error`; while its channel is full, the `Ack` waits.
pub async fn serve_with_data(
    listener: TcpListener,
    ctx: Arc<PeerContext>,
    requests: mpsc::Sender<PeerRequest>,
    data: mpsc::Sender<DataConn>,
) {
    serve_inner(listener, ctx, requests, Some(data)).await
}

async fn serve_inner(
    listener: TcpListener,
    ctx: Arc<PeerContext>,
    requests: mpsc::Sender<PeerRequest>,
    data: Option<mpsc::Sender<DataConn>>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    connections.spawn(connection(
                        stream,
                        remote,
                        ctx.clone(),
                        requests.clone(),
                        data.clone(),
                    ));
                }
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(site = %ctx.site(), event = "peer_accept_failed", error = %error,
                        "accepting a peer connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

/// One connection, from TLS to close.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    ctx: Arc<PeerContext>,
    requests: mpsc::Sender<PeerRequest>,
    data: Option<mpsc::Sender<DataConn>>,
) {
    let _ = stream.set_nodelay(true);
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, &ctx)).await;
    let (mut tls, peer) = match handshake {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(refusal)) => {
            tracing::warn!(site = %ctx.site(), event = "peer_refused", remote = %remote,
                peer = refusal.peer.as_deref().unwrap_or("-"), reason = %refusal.reason,
                "refused a peer link connection");
            return;
        }
        Err(_) => {
            tracing::warn!(site = %ctx.site(), event = "peer_refused", remote = %remote,
                reason = %format_args!("no TLS handshake and hello within {HANDSHAKE_TIMEOUT:?}"),
                "refused a peer link connection");
            return;
        }
    };
    tracing::debug!(site = %ctx.site(), event = "peer_connected", peer = %peer, remote = %remote,
        "peer link connection accepted");
    match requests_loop(&mut tls, &peer, &ctx, &requests, data.as_ref()).await {
        Ok(Ended::Closed) => {
            tracing::debug!(site = %ctx.site(), event = "peer_disconnected", peer = %peer,
            remote = %remote, "peer closed the link connection")
        }
        Ok(Ended::Data { vfs, permit }) => {
            tracing::info!(site = %ctx.site(), event = "peer_data_opened", peer = %peer, vfs = %vfs,
                remote = %remote, "peer opened a data connection");
            permit.send(DataConn {
                from: peer,
                vfs,
                remote,
                stream: tls,
            });
        }
        Err(error) => tracing::warn!(site = %ctx.site(), event = "peer_bad_frame", peer = %peer,
            remote = %remote, error = %error, "closing the peer link connection"),
    }
}

/// Why a connection was refused; `peer` is the name it claimed or its certificate carries.
struct Refusal {
    peer: Option<String>,
    reason: String,
}

type Stream = tokio_rustls::server::TlsStream<TcpStream>;

/// TLS, then the `Hello` checks; returns the stream and the peer's site name.
async fn handshake(stream: TcpStream, ctx: &PeerContext) -> Result<(Stream, String), Refusal> {
    // A rustls failure (certificate from another CA, none at all, expired...) is its reason.
    let mut tls = ctx
        .tls()
        .acceptor()
        .accept(stream)
        .await
        .map_err(|e| Refusal {
            peer: None,
            reason: format!("TLS handshake failed: {e}"),
        })?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned();
    let Some(cert) = cert else {
        return Err(Refusal {
            peer: None,
            reason: "no client certificate".into(),
        });
    };
    let names = certificate_names(&cert);
    let listed = |name: &str| ctx.peer(name).is_some();
    let refuse = |peer: Option<&str>, reason: String| Refusal {
        peer: peer.map(str::to_owned),
        reason,
    };

    let result = async {
        if !names.iter().any(|n| listed(n)) {
            return Err(refuse(
                names.first().map(String::as_str),
                format!(
                    "certificate names {names:?}: not a listed peer ({})",
                    listed_peers(ctx)
                ),
            ));
        }
        let hello = read_json::<Envelope, _>(&mut tls)
            .await
            .map_err(|e| refuse(names.first().map(String::as_str), format!("no hello: {e}")))?;
        let (site, protocol) = match hello {
            Envelope {
                body: Message::Hello { site, protocol },
                ..
            } => (site, protocol),
            Envelope { body, .. } => {
                return Err(refuse(
                    names.first().map(String::as_str),
                    format!("expected hello, got {}", body.kind()),
                ));
            }
        };
        if !listed(&site) {
            return Err(refuse(
                Some(&site),
                format!("site {site:?} is not a listed peer ({})", listed_peers(ctx)),
            ));
        }
        if !certificate_is_for(&cert, &site) {
            return Err(refuse(
                Some(&site),
                format!("says it is site {site:?} but its certificate names {names:?}"),
            ));
        }
        if protocol != PROTOCOL {
            return Err(refuse(
                Some(&site),
                format!(
                    "protocol version mismatch: {site} speaks {protocol}, {} speaks {PROTOCOL}",
                    ctx.site()
                ),
            ));
        }
        Ok(site)
    }
    .await;
    match result {
        Ok(site) => {
            write_json(
                &mut tls,
                &Envelope {
                    id: HELLO_ID,
                    body: Message::hello(ctx.site()),
                },
            )
            .await
            .map_err(|e| refuse(Some(&site), format!("sending hello failed: {e}")))?;
            Ok((tls, site))
        }
        Err(refusal) => {
            // Tell the peer why, best effort: it may have gone already.
            let answer = Message::Error {
                message: format!("{} refuses: {}", ctx.site(), refusal.reason),
            };
            let _ = write_json(
                &mut tls,
                &Envelope {
                    id: HELLO_ID,
                    body: answer,
                },
            )
            .await;
            Err(refusal)
        }
    }
}

fn listed_peers(ctx: &PeerContext) -> String {
    match ctx.peers() {
        [] => "no peers are listed".to_owned(),
        peers => format!(
            "listed: {}",
            peers
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// How a connection's requests ended, short of a bad frame.
enum Ended {
    /// The peer closed the connection.
    Closed,
    /// The connection became a data connection (`Ack` sent); `permit` hands it to the agent.
    Data {
        vfs: String,
        permit: mpsc::OwnedPermit<DataConn>,
    },
}

/// Answers requests in order until the peer closes the connection, it becomes a data connection,
/// or the peer sends a bad frame.
async fn requests_loop<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    peer: &str,
    ctx: &PeerContext,
    requests: &mpsc::Sender<PeerRequest>,
    data: Option<&mpsc::Sender<DataConn>>,
) -> Result<Ended, FrameError> {
    loop {
        let body = match read_frame(stream).await {
            Ok(body) => body,
            Err(FrameError::Closed) => return Ok(Ended::Closed),
            Err(error) => return Err(error),
        };
        let request = match decode_envelope(&body) {
            Ok(request) => request,
            Err((id, error)) => {
                if let Some(id) = id {
                    let message = format!("{} cannot decode the request: {error}", ctx.site());
                    let _ = write_json(
                        stream,
                        &Envelope {
                            id,
                            body: Message::Error { message },
                        },
                    )
                    .await;
                }
                return Err(FrameError::Json(error));
            }
        };
        if let Message::OpenData { vfs } = request.body {
            // A slot in the agent's channel first, so an `Ack` is never sent for a connection
            // nobody takes.
            let permit = match data {
                Some(data) => data
                    .clone()
                    .reserve_owned()
                    .await
                    .map_err(|_| format!("{} is shutting down", ctx.site())),
                None => Err(format!("{} does not take data connections", ctx.site())),
            };
            let answer = match &permit {
                Ok(_) => Message::Ack,
                Err(message) => Message::Error {
                    message: message.clone(),
                },
            };
            write_json(
                stream,
                &Envelope {
                    id: request.id,
                    body: answer,
                },
            )
            .await?;
            match permit {
                Ok(permit) => return Ok(Ended::Data { vfs, permit }),
                Err(_) => continue,
            }
        }
        let answer = answer(request.body, peer, ctx, requests).await;
        write_json(
            stream,
            &Envelope {
                id: request.id,
                body: answer,
            },
        )
        .await?;
    }
}

/// The answer to one request: heartbeats here, the rest from the agent.
async fn answer(
    message: Message,
    peer: &str,
    ctx: &PeerContext,
    requests: &mpsc::Sender<PeerRequest>,
) -> Message {
    match message {
        Message::Heartbeat { .. } => Message::HeartbeatAck {
            site: ctx.site().to_owned(),
            unix_ms: unix_ms(),
        },
        Message::Hello { .. } => Message::Error {
            message: "hello was already exchanged".into(),
        },
        message => {
            let (reply, answer) = oneshot::channel();
            let request = PeerRequest {
                from: peer.to_owned(),
                message,
                reply,
            };
            if requests.send(request).await.is_err() {
                return Message::Error {
                    message: format!("{} is shutting down", ctx.site()),
                };
            }
            answer.await.unwrap_or_else(|_| Message::Error {
                message: format!("{} did not answer the request", ctx.site()),
            })
        }
    }
}
