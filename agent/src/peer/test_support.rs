//! Helpers of the peer link tests: certificates made by `vfsdr cert` in temp dirs, servers on
//! loopback, captured logs.
use std::{
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use rustls_pki_types::ServerName;
use tempfile::TempDir;
use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    frame::{self, FrameError},
    *,
};
use crate::{
    cert,
    config::{
        Compression, FsType, Peer, Replication, Retention, Share, Smb, Tls, VfsDef, VfsInterface,
        VfsVolume,
    },
};

/// A CA in a temp dir and certificates of sites signed by it.
pub(super) struct Pki {
    pub(super) dir: TempDir,
}

impl Pki {
    pub(super) fn new() -> Pki {
        Pki::named("test CA")
    }

    pub(super) fn named(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        cert::create_ca(&dir.path().join("ca"), name).unwrap();
        Pki { dir }
    }

    pub(super) fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca").join(cert::CA_CERT)
    }

    /// The TLS files of `site`, created on first use.
    pub(super) fn site(&self, site: &str) -> Tls {
        let out = self.dir.path().join("sites");
        if !out.join(format!("{site}.pem")).exists() {
            cert::create_site(&self.dir.path().join("ca"), site, &out).unwrap();
        }
        Tls {
            ca: self.ca(),
            cert: out.join(format!("{site}.pem")),
            key: out.join(format!("{site}.key")),
        }
    }
}

pub(super) fn peer(name: &str, address: SocketAddr) -> Peer {
    Peer {
        name: name.to_owned(),
        address,
    }
}

pub(super) fn context(tls: &Tls, site: &str, peers: Vec<Peer>) -> Arc<PeerContext> {
    Arc::new(PeerContext::new(site, peers, PeerTls::load(tls).unwrap()).unwrap())
}

/// A peer link server on 127.0.0.1 (port 0); stops when the handle is aborted.
pub(super) async fn start(
    ctx: Arc<PeerContext>,
) -> (SocketAddr, JoinHandle<()>, mpsc::Receiver<PeerRequest>) {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(8);
    (address, tokio::spawn(serve(listener, ctx, tx)), rx)
}

/// An address nothing listens on, for peers that are only there to be listed.
pub(super) fn nowhere() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

pub(super) fn fast() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(5),
        call: Duration::from_secs(5),
    }
}

/// Log events written while the returned guard lives (this thread: `#[tokio::test]` runs
/// every task on the test's thread).
#[derive(Clone, Default)]
pub(super) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub(super) fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The lines of events with that `event` field.
    pub(super) fn events(&self, event: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains(&format!("event=\"{event}\"")))
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// Waits up to 10 s for `condition`.
pub(super) async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

pub(super) fn vfs_def() -> VfsDef {
    VfsDef {
        name: "fs1".into(),
        volumes: vec![VfsVolume {
            name: "data".into(),
            size_bytes: 1 << 30,
            filesystem: FsType::Xfs,
            mount: "/srv/vfsdr/mnt/fs1/data".into(),
        }],
        interfaces: vec![VfsInterface {
            name: "smb0".into(),
            address: "198.18.0.100".parse().unwrap(),
            prefix_len: 24,
            network: "lan".into(),
        }],
        smb: Smb {
            netbios_name: "FS1".into(),
            shares: vec![Share {
                name: "data".into(),
                volume: "data".into(),
                path: String::new(),
            }],
        },
        replication: Replication {
            peer: "site-b".into(),
            interval_s: 60,
            compression: Compression::Zstd,
            bandwidth_limit_bytes_per_s: None,
            trigger_at_risk_bytes: None,
        },
        snapshots: Retention::default(),
    }
}

/// A TLS connection with `tls`'s certificate to `address`, expecting a server named `name`,
/// on which the test writes frames itself.
pub(super) async fn raw(
    tls: &Tls,
    address: SocketAddr,
    name: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    PeerTls::load(tls)
        .unwrap()
        .connector()
        .connect(name, tcp)
        .await
        .unwrap()
}

pub(super) async fn send(stream: &mut (impl tokio::io::AsyncWrite + Unpin), message: Message) {
    frame::write_json(
        stream,
        &Envelope {
            id: HELLO_ID,
            body: message,
        },
    )
    .await
    .unwrap();
}

pub(super) async fn receive(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Envelope, FrameError> {
    frame::read_json(stream).await
}
