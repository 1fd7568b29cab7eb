//! Data connections over loopback: `OpenData`, the handover to the agent, and the frames of
//! `replication::wire` on the stream handed over.
use std::sync::Arc;

use tokio::{io::AsyncWriteExt as _, sync::mpsc, task::JoinHandle};

use super::{test_support::*, *};
use crate::replication::{
    codec::Codec,
    wire::{Begin, Frame, FrameReader, FrameWriter, VolumeInfo},
};

/// A server at `site-b` that takes data connections; `site-a` is its peer.
async fn start_with_data(
    pki: &Pki,
) -> (
    std::net::SocketAddr,
    JoinHandle<()>,
    mpsc::Receiver<PeerRequest>,
    mpsc::Receiver<DataConn>,
) {
    let ctx = context(
        &pki.site("site-b"),
        "site-b",
        vec![peer("site-a", nowhere())],
    );
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr().unwrap();
    let (requests_tx, requests) = mpsc::channel(8);
    let (data_tx, data) = mpsc::channel(2);
    let server = tokio::spawn(serve_with_data(listener, ctx, requests_tx, data_tx));
    (address, server, requests, data)
}

fn client(pki: &Pki, site: &str, address: std::net::SocketAddr) -> PeerClient {
    context(&pki.site(site), site, vec![peer("site-b", address)])
        .client("site-b")
        .unwrap()
        .with_timeouts(fast())
}

fn replicate(vfs: &str) -> DataPurpose {
    DataPurpose::Replication { vfs: vfs.into() }
}

#[tokio::test]
async fn a_data_connection_is_handed_to_the_agent_and_carries_a_cycle() {
    let (logs, _guard) = Logs::capture();
    let pki = Pki::new();
    let (address, server, mut requests, mut data) = start_with_data(&pki).await;
    let begin = Begin {
        vfs: "fs1".into(),
        cycle: 1,
        epoch: 2,
        base: None,
        volumes: vec![VolumeInfo {
            name: "data".into(),
            size: 1 << 20,
            write_bytes: None,
        }],
        point: None,
    };
    // The DR site's side: takes the connection, reads the cycle, answers Committed.
    let receiver = tokio::spawn({
        let begin = begin.clone();
        async move {
            let conn = data.recv().await.unwrap();
            assert_eq!((conn.from.as_str(), conn.vfs.as_str()), ("site-a", "fs1"));
            assert!(conn.remote.ip().is_loopback());
            let (read, write) = tokio::io::split(conn.stream);
            let (mut reader, mut writer) = (
                FrameReader::new(read),
                FrameWriter::new(write, Codec::None, None),
            );
            assert_eq!(reader.next().await.unwrap(), Frame::Begin(begin));
            let mut blocks = Vec::new();
            loop {
                match reader.next().await.unwrap() {
                    Frame::Data { offset, data, .. } => blocks.push((offset, data)),
                    Frame::VolumeEnd { blocks: n, .. } => assert_eq!(n, 2),
                    Frame::Commit { cycle } => {
                        writer.committed(cycle, 100).await.unwrap();
                        break;
                    }
                    other => panic!("unexpected {}", other.kind()),
                }
            }
            blocks
        }
    });

    let client = client(&pki, "site-a", address);
    let stream = client.open_data(replicate("fs1")).await.unwrap();
    let (read, write) = tokio::io::split(stream);
    let (mut reader, mut writer) = (
        FrameReader::new(read),
        FrameWriter::new(write, Codec::Zstd, None),
    );
    writer.begin(&begin).await.unwrap();
    writer.data(0, 0, &[7; 65536]).await.unwrap();
    writer.data(0, 65536, b"tail").await.unwrap();
    writer.volume_end(0).await.unwrap();
    writer.commit(1).await.unwrap();
    assert_eq!(
        reader.next().await.unwrap(),
        Frame::Committed {
            cycle: 1,
            snapshot: 100
        }
    );
    assert_eq!(
        receiver.await.unwrap(),
        vec![(0, vec![7; 65536]), (65536, b"tail".to_vec())]
    );
    // Calls still go over the client's own connection, not the data connection.
    let answer = client
        .call(Message::Heartbeat {
            site: "site-a".into(),
            unix_ms: 1,
        })
        .await
        .unwrap();
    assert_eq!(answer.kind(), "heartbeat_ack");
    assert!(
        requests.try_recv().is_err(),
        "OpenData never reaches the agent as a request"
    );
    let opened = logs.events("peer_data_opened");
    assert_eq!(opened.len(), 1, "{}", logs.text());
    assert!(
        opened[0].contains("vfs=fs1") && opened[0].contains("peer=site-a"),
        "{opened:?}"
    );
    writer.into_inner().shutdown().await.unwrap();
    server.abort();
}

#[tokio::test]
async fn serve_without_a_data_channel_refuses_open_data() {
    let pki = Pki::new();
    let ctx = context(
        &pki.site("site-b"),
        "site-b",
        vec![peer("site-a", nowhere())],
    );
    let (address, server, _requests) = start(ctx).await;
    let error = client(&pki, "site-a", address)
        .open_data(replicate("fs1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PeerError::Remote { peer, sent: "open_data", message }
            if peer == "site-b" && message == "site-b does not take data connections"),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "peer site-b answered open_data with an error: site-b does not take data connections"
    );
    server.abort();
}

#[tokio::test]
async fn a_site_that_is_not_a_peer_cannot_open_a_data_connection() {
    let pki = Pki::new();
    let (address, server, _requests, mut data) = start_with_data(&pki).await;
    let error = client(&pki, "site-c", address)
        .open_data(replicate("fs1"))
        .await
        .unwrap_err();
    assert!(matches!(&error, PeerError::Refused { .. }), "{error}");
    assert!(error.to_string().contains("not a listed peer"), "{error}");
    assert!(data.try_recv().is_err(), "nothing may reach the agent");
    server.abort();
}

#[tokio::test]
async fn open_data_is_refused_when_the_agent_takes_no_more_data_connections() {
    let pki = Pki::new();
    let (address, server, _requests, data) = start_with_data(&pki).await;
    drop(data);
    let error = client(&pki, "site-a", address)
        .open_data(replicate("fs1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PeerError::Remote { message, .. } if message == "site-b is shutting down"),
        "{error}"
    );
    server.abort();
}

#[tokio::test]
async fn open_data_waits_for_the_agent_and_times_out_with_the_call_timeout() {
    let pki = Pki::new();
    let (address, server, _requests, mut data) = start_with_data(&pki).await;
    let client = Arc::new(client(&pki, "site-a", address).with_timeouts(Timeouts {
        connect: std::time::Duration::from_secs(5),
        call: std::time::Duration::from_millis(300),
    }));
    // The channel holds two; the third waits for the agent, here past the call timeout.
    let first = client.open_data(replicate("fs1")).await.unwrap();
    let second = client.open_data(replicate("fs2")).await.unwrap();
    let error = client.open_data(replicate("fs3")).await.unwrap_err();
    assert!(
        matches!(
            &error,
            PeerError::Timeout {
                sent: "open_data",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(data.recv().await.unwrap().vfs, "fs1");
    assert_eq!(data.recv().await.unwrap().vfs, "fs2");
    drop((first, second));
    server.abort();
}
