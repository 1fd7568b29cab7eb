//! Peer link tests: real TLS over loopback, certificates made by `vfsdr cert` in temp dirs.
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use super::{
    frame::{self, FrameError, MAX_FRAME},
    protocol::decode_envelope,
    test_support::*,
    *,
};
use crate::config::Tls;

#[tokio::test]
async fn two_sites_exchange_hello_heartbeat_and_a_definition() {
    let (logs, _guard) = Logs::capture();
    let pki = Pki::new();
    let (a, b) = (pki.site("site-a"), pki.site("site-b"));
    let server = context(&b, "site-b", vec![peer("site-a", nowhere())]);
    let (address, server, mut requests) = start(server).await;
    let agent_b = tokio::spawn(async move {
        // The agent's main loop at site-b: the definition, then a request it refuses.
        let request = requests.recv().await.unwrap();
        assert_eq!(request.from, "site-a");
        assert_eq!(
            request.message,
            Message::PushDefinition {
                vfs: vfs_def(),
                epoch: 7
            }
        );
        request.respond(Message::Ack);
        let request = requests.recv().await.unwrap();
        request.respond(Message::Error {
            message: "epoch 3 is older than 7".into(),
        });
    });

    let client = context(&a, "site-a", vec![peer("site-b", address)])
        .client("site-b")
        .unwrap();
    let answer = client
        .call(Message::Heartbeat {
            site: "site-a".into(),
            unix_ms: unix_ms(),
        })
        .await
        .unwrap();
    assert!(
        matches!(answer, Message::HeartbeatAck { ref site, unix_ms } if site == "site-b" && unix_ms > 0)
    );
    let answer = client
        .call(Message::PushDefinition {
            vfs: vfs_def(),
            epoch: 7,
        })
        .await
        .unwrap();
    assert_eq!(answer, Message::Ack);
    let refused = client
        .call(Message::PushDefinition {
            vfs: vfs_def(),
            epoch: 3,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, PeerError::Remote { peer, sent: "push_definition", message }
            if peer == "site-b" && message == "epoch 3 is older than 7"),
        "{refused}"
    );
    agent_b.await.unwrap();
    // A reconnect after the client dropped its connection works the same.
    client.disconnect().await;
    let answer = client
        .call(Message::Heartbeat {
            site: "site-a".into(),
            unix_ms: 1,
        })
        .await
        .unwrap();
    assert_eq!(answer.kind(), "heartbeat_ack");
    // Closing, or dropping the client without closing TLS, is no error at the server.
    drop(client);
    eventually("two disconnections", || {
        logs.events("peer_disconnected").len() == 2
    })
    .await;
    assert!(logs.events("peer_bad_frame").is_empty(), "{}", logs.text());
    assert_eq!(logs.events("peer_connected").len(), 2);
    server.abort();
}

#[tokio::test]
async fn a_client_with_a_certificate_from_another_ca_is_refused() {
    let (logs, _guard) = Logs::capture();
    let (pki, other) = (Pki::new(), Pki::named("other CA"));
    let b = pki.site("site-b");
    let (address, server, mut requests) =
        start(context(&b, "site-b", vec![peer("site-a", nowhere())])).await;

    // site-a's certificate comes from the other CA; it trusts both CAs, so it accepts site-b.
    let mut a = other.site("site-a");
    let both = other.dir.path().join("both-cas.pem");
    let pems = [
        std::fs::read(pki.ca()).unwrap(),
        std::fs::read(other.ca()).unwrap(),
    ]
    .concat();
    std::fs::write(&both, pems).unwrap();
    a.ca = both;
    let client = context(&a, "site-a", vec![peer("site-b", address)])
        .client("site-b")
        .unwrap();
    let error = client.call(Message::Ack).await.unwrap_err();
    assert!(
        matches!(&error, PeerError::Tls { peer, .. } if peer == "site-b"),
        "{error}"
    );

    eventually("peer_refused logged", || {
        !logs.events("peer_refused").is_empty()
    })
    .await;
    let refused = logs.events("peer_refused").join("\n");
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    assert!(refused.contains("remote=127.0.0.1:"), "{refused}");
    assert!(requests.try_recv().is_err(), "nothing may reach the agent");
    server.abort();
}

#[tokio::test]
async fn a_client_whose_name_is_not_a_listed_peer_is_refused() {
    let (logs, _guard) = Logs::capture();
    let pki = Pki::new();
    let (b, c) = (pki.site("site-b"), pki.site("site-c"));
    let (address, server, _requests) =
        start(context(&b, "site-b", vec![peer("site-a", nowhere())])).await;

    let client = context(&c, "site-c", vec![peer("site-b", address)])
        .client("site-b")
        .unwrap();
    let error = client.call(Message::Ack).await.unwrap_err();
    assert!(
        matches!(&error, PeerError::Refused { peer, reason, .. }
            if peer == "site-b" && reason.contains("site-c") && reason.contains("not a listed peer")),
        "{error}"
    );
    eventually("peer_refused logged", || {
        !logs.events("peer_refused").is_empty()
    })
    .await;
    let refused = logs.events("peer_refused").join("\n");
    assert!(
        refused.contains("site-c") && refused.contains("listed: site-a"),
        "{refused}"
    );
    server.abort();
}

#[tokio::test]
async fn a_hello_must_match_the_certificate_and_the_protocol() {
    let (logs, _guard) = Logs::capture();
    let pki = Pki::new();
    let (a, b, c) = (pki.site("site-a"), pki.site("site-b"), pki.site("site-c"));
    let peers = vec![peer("site-a", nowhere()), peer("site-c", nowhere())];
    let (address, server, _requests) = start(context(&b, "site-b", peers)).await;

    // site-c's certificate, claiming to be site-a.
    let mut stream = raw(&c, address, "site-b").await;
    send(&mut stream, Message::hello("site-a")).await;
    let reply = receive(&mut stream).await.unwrap();
    assert!(
        matches!(&reply.body, Message::Error { message }
            if message.contains("says it is site \"site-a\"") && message.contains("site-c")),
        "{reply:?}"
    );
    assert!(matches!(
        receive(&mut stream).await,
        Err(FrameError::Closed | FrameError::Io(_))
    ));

    // Another protocol version: refused, naming both.
    let mut stream = raw(&a, address, "site-b").await;
    send(
        &mut stream,
        Message::Hello {
            site: "site-a".into(),
            protocol: PROTOCOL + 1,
        },
    )
    .await;
    let reply = receive(&mut stream).await.unwrap();
    let expected = format!("site-a speaks {}, site-b speaks {PROTOCOL}", PROTOCOL + 1);
    assert!(
        matches!(&reply.body, Message::Error { message } if message.contains(&expected)),
        "{reply:?}"
    );
    eventually("two refusals", || logs.events("peer_refused").len() == 2).await;
    server.abort();
}

#[tokio::test]
async fn a_server_whose_name_is_not_the_expected_peer_is_refused_by_the_client() {
    let pki = Pki::new();
    let (a, c) = (pki.site("site-a"), pki.site("site-c"));
    // site-c answers at the address site-a has for site-b.
    let (address, server, _requests) =
        start(context(&c, "site-c", vec![peer("site-a", nowhere())])).await;
    let client = context(&a, "site-a", vec![peer("site-b", address)])
        .client("site-b")
        .unwrap();
    let error = client.call(Message::Ack).await.unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(&error, PeerError::Tls { peer, .. } if peer == "site-b"),
        "{text}"
    );
    assert!(
        text.contains("site-b") && text.contains("not valid for name"),
        "{text}"
    );
    server.abort();
}

#[tokio::test]
async fn a_frame_declaring_1_gib_is_refused_without_reading_it() {
    // Only the header exists: reading any of the body would report a truncated frame instead.
    let mut header: &[u8] = &(1u32 << 30).to_be_bytes();
    let error = frame::read_frame(&mut header).await.unwrap_err();
    assert!(
        matches!(error, FrameError::TooLarge { len, max } if len == 1 << 30 && max == MAX_FRAME),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        format!("frame of 1073741824 bytes refused: larger than the {MAX_FRAME} byte limit")
    );
    // The largest allowed length is accepted (and then found truncated here).
    let mut header: &[u8] = &(MAX_FRAME as u32).to_be_bytes();
    let error = frame::read_frame(&mut header).await.unwrap_err();
    assert!(
        matches!(
            error,
            FrameError::Truncated {
                part: "body",
                got: 0,
                ..
            }
        ),
        "{error}"
    );
    // Nor is one sent.
    let mut sink = Vec::new();
    let error = frame::write_frame(&mut sink, &vec![b' '; MAX_FRAME + 1])
        .await
        .unwrap_err();
    assert!(matches!(error, FrameError::TooLarge { .. }) && sink.is_empty());
}

#[tokio::test]
async fn truncated_frames_and_garbage_are_clear_errors() {
    let mut short: &[u8] = &[0, 0];
    let error = frame::read_frame(&mut short).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "truncated frame: header ended after 2 of 4 bytes"
    );
    let mut short: &[u8] = &[0, 0, 0, 10, b'{', b'"', b'i'];
    let error = frame::read_frame(&mut short).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "truncated frame: body ended after 3 of 10 bytes"
    );
    let mut empty: &[u8] = &[];
    assert!(matches!(
        frame::read_frame(&mut empty).await,
        Err(FrameError::Closed)
    ));

    let mut garbage: &[u8] = &[0, 0, 0, 8, b'n', b'o', b't', b' ', b'j', b's', b'o', b'n'];
    let error = frame::read_json::<Envelope, _>(&mut garbage)
        .await
        .unwrap_err();
    assert!(
        error.to_string().starts_with("bad frame: expected"),
        "{error}"
    );
    // An unknown message still yields its id, so it can be answered.
    let (id, error) = decode_envelope(br#"{"id":5,"body":{"type":"frobnicate"}}"#).unwrap_err();
    assert_eq!(id, Some(5));
    assert!(
        error.to_string().contains("unknown variant `frobnicate`"),
        "{error}"
    );
}

#[tokio::test]
async fn a_bad_frame_closes_that_connection_only() {
    let (logs, _guard) = Logs::capture();
    let pki = Pki::new();
    let (a, b) = (pki.site("site-a"), pki.site("site-b"));
    let (address, server, _requests) =
        start(context(&b, "site-b", vec![peer("site-a", nowhere())])).await;
    let handshake = async |stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        send(stream, Message::hello("site-a")).await;
        assert_eq!(
            receive(stream).await.unwrap().body,
            Message::hello("site-b")
        );
    };
    let client = context(&a, "site-a", vec![peer("site-b", address)])
        .client("site-b")
        .unwrap();
    assert_eq!(
        client
            .call(Message::Heartbeat {
                site: "site-a".into(),
                unix_ms: 1
            })
            .await
            .unwrap()
            .kind(),
        "heartbeat_ack"
    );

    // An unknown message: answered with an error for its id, then closed.
    let mut stream = raw(&a, address, "site-b").await;
    handshake(&mut stream).await;
    frame::write_frame(&mut stream, br#"{"id":5,"body":{"type":"frobnicate"}}"#)
        .await
        .unwrap();
    let reply = receive(&mut stream).await.unwrap();
    assert_eq!(reply.id, 5);
    assert!(
        matches!(&reply.body, Message::Error { message } if message.contains("frobnicate")),
        "{reply:?}"
    );
    assert!(receive(&mut stream).await.is_err());

    // A frame declaring 1 GiB, then garbage, then a truncated frame: each closes its connection.
    for (bytes, then_close) in [
        ((1u32 << 30).to_be_bytes().to_vec(), false),
        ([&[0, 0, 0, 3][..], b"{{{"].concat(), false),
        (vec![0, 0, 0, 100, b'{'], true),
    ] {
        let mut stream = raw(&a, address, "site-b").await;
        handshake(&mut stream).await;
        stream.write_all(&bytes).await.unwrap();
        stream.flush().await.unwrap();
        if then_close {
            stream.shutdown().await.unwrap();
        }
        assert!(receive(&mut stream).await.is_err());
    }
    eventually("four bad frames logged", || {
        logs.events("peer_bad_frame").len() == 4
    })
    .await;
    let bad = logs.events("peer_bad_frame").join("\n");
    for expected in [
        "frobnicate",
        "larger than the 16777216 byte limit",
        "bad frame",
        "truncated frame",
    ] {
        assert!(bad.contains(expected), "{expected} in {bad}");
    }
    assert!(bad.lines().all(|l| l.contains("peer=site-a")), "{bad}");

    // The other connection still works.
    assert_eq!(
        client
            .call(Message::Heartbeat {
                site: "site-a".into(),
                unix_ms: 2
            })
            .await
            .unwrap()
            .kind(),
        "heartbeat_ack"
    );
    server.abort();
}

#[tokio::test]
async fn peer_status_goes_unreachable_when_the_server_stops() {
    let (logs, _guard) = Logs::capture();
    let pki = Pki::new();
    let (a, b) = (pki.site("site-a"), pki.site("site-b"));
    let (address, server, _requests) =
        start(context(&b, "site-b", vec![peer("site-a", nowhere())])).await;
    let ctx = context(&a, "site-a", vec![peer("site-b", address)]);
    let status = PeerStatus::new(["site-b"]);
    assert_eq!(status.get("site-b"), Some(PeerHealth::default()));
    let client = ctx.client("site-b").unwrap().with_timeouts(fast());
    let beating = tokio::spawn(heartbeat(client, status.clone(), Duration::from_millis(50)));

    eventually("site-b reachable", || {
        status.get("site-b").unwrap().reachable
    })
    .await;
    let up = status.get("site-b").unwrap();
    assert!(
        up.last_ok_unix_ms.is_some() && up.rtt_ms.is_some() && up.last_error.is_none(),
        "{up:?}"
    );

    server.abort();
    eventually("site-b unreachable", || {
        !status.get("site-b").unwrap().reachable
    })
    .await;
    let down = status.get("site-b").unwrap();
    assert_eq!(
        down.last_ok_unix_ms,
        up.last_ok_unix_ms.max(down.last_ok_unix_ms)
    );
    let error = down.last_error.unwrap();
    assert!(
        error.contains("site-b") && error.contains(&address.to_string()),
        "{error}"
    );

    // A few more failed beats: still one peer_down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    beating.abort();
    assert_eq!(logs.events("peer_up").len(), 1, "{}", logs.text());
    assert_eq!(logs.events("peer_down").len(), 1, "{}", logs.text());
    assert!(logs.events("peer_down")[0].contains("peer=site-b"));
}

#[test]
fn loading_tls_files_names_the_file_and_the_problem() {
    let pki = Pki::new();
    let (a, b) = (pki.site("site-a"), pki.site("site-b"));
    let check = |tls: &Tls, expected: &str| {
        let error = PeerTls::load(tls).unwrap_err().to_string();
        assert!(error.contains(expected), "{expected:?} in {error:?}");
    };
    let missing = Tls {
        ca: pki.dir.path().join("nope.pem"),
        ..a.clone()
    };
    check(&missing, &format!("cannot read {}", missing.ca.display()));
    let not_a_cert = Tls {
        cert: a.key.clone(),
        ..a.clone()
    };
    check(
        &not_a_cert,
        &format!("{}: no certificate in it", a.key.display()),
    );
    let not_a_key = Tls {
        key: a.cert.clone(),
        ..a.clone()
    };
    check(
        &not_a_key,
        &format!("{}: no private key in it", a.cert.display()),
    );
    let mismatch = Tls {
        key: b.key.clone(),
        ..a.clone()
    };
    check(
        &mismatch,
        &format!(
            "the key in {} does not match the certificate in {}",
            b.key.display(),
            a.cert.display()
        ),
    );
    let broken = pki.dir.path().join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n").unwrap();
    check(
        &Tls {
            cert: broken.clone(),
            ..a.clone()
        },
        &format!("{}: not valid PEM", broken.display()),
    );

    // Loads, but is not site-b's certificate, or not from this CA.
    let tls = PeerTls::load(&a).unwrap();
    let error = PeerContext::new("site-b", vec![], tls)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("is not a valid certificate for site site-b"),
        "{error}"
    );
    let other = Pki::named("other CA");
    let foreign = Tls {
        ca: other.ca(),
        ..a.clone()
    };
    let error = PeerContext::new("site-a", vec![], PeerTls::load(&foreign).unwrap())
        .unwrap_err()
        .to_string();
    assert!(error.contains("UnknownIssuer"), "{error}");
    // Another CA of the same name is found as the issuer, and its signature does not match.
    let namesake = Pki::new();
    let namesake = Tls {
        ca: namesake.ca(),
        ..a.clone()
    };
    let error = PeerContext::new("site-a", vec![], PeerTls::load(&namesake).unwrap())
        .unwrap_err()
        .to_string();
    assert!(error.contains("BadSignature"), "{error}");
}
