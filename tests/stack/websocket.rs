//! The WebSocket lane (PROTOCOL §11) through the one-process stack, spoken
//! byte for byte by a raw client: `GET /v1/sessions/{s}/socket`, binary
//! messages of one channel id byte and that channel's message, with
//! native WebRTC peers in the same session.

use std::time::Duration;

use deltamesh_proto::Id;
use deltamesh_proto::channel::Channel;
use deltamesh_proto::command;
use deltamesh_proto::frame::FrameHeader;
use deltamesh_proto::pb::{self, ErrorCode, RejectReason, command::Body};
use deltamesh_proto::security::RelayedFrame;
use deltamesh_worker::PeerEvent;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::{TOKEN, join, next_matching, stack, stack_with};

const WAIT: Duration = Duration::from_secs(10);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The lane URL of `session` on `stack`.
fn socket_url(stack: &deltamesh::RunningStack, session: &str) -> String {
    format!("ws://{}/v1/sessions/{session}/socket", stack.signal_addr)
}

/// Opens the lane with `Authorization: Bearer <token>`.
async fn open(stack: &deltamesh::RunningStack, session: &str) -> Result<Socket, WsError> {
    let mut request = socket_url(stack, session).into_client_request()?;
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap(),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(s, _)| s)
}

/// A raw lane peer: reads what the relay sends, keeps what it needs.
struct LanePeer {
    socket: Socket,
    welcome: pb::Welcome,
}

impl LanePeer {
    /// Opens the lane and waits for `Welcome`.
    async fn join(stack: &deltamesh::RunningStack, session: &str) -> LanePeer {
        let socket = open(stack, session).await.expect("the socket opens");
        let mut peer = LanePeer {
            socket,
            welcome: pb::Welcome::default(),
        };
        peer.welcome = peer
            .next_command(|body| match body {
                Body::Welcome(w) => Some(w),
                _ => None,
            })
            .await;
        peer
    }

    fn id(&self) -> Id {
        Id::from_slice(&self.welcome.peer_id).unwrap()
    }

    async fn send(&mut self, channel: Channel, message: &[u8]) {
        let mut bytes = vec![channel.stream_id() as u8];
        bytes.extend_from_slice(message);
        self.socket
            .send(Message::Binary(bytes.into()))
            .await
            .expect("sent");
    }

    async fn send_delta(&mut self, client_seq: u64, payload: &[u8]) {
        let frame = FrameHeader {
            kind: 1,
            client_seq,
            ..FrameHeader::default()
        }
        .encode(payload)
        .unwrap();
        self.send(Channel::Send, &frame).await;
    }

    /// The next message on any channel.
    async fn next(&mut self) -> (Channel, Vec<u8>) {
        let message = tokio::time::timeout(WAIT, async {
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Binary(bytes))) => return bytes.to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("the socket ended: {other:?}"),
                }
            }
        })
        .await
        .expect("a message in time");
        let channel = Channel::from_stream_id(u16::from(message[0])).expect("a known channel");
        (channel, message[1..].to_vec())
    }

    /// The next command `pick` takes, skipping the rest.
    async fn next_command<T>(&mut self, mut pick: impl FnMut(Body) -> Option<T>) -> T {
        loop {
            let (channel, message) = self.next().await;
            if channel == Channel::Command
                && let Some(found) = pick(command::decode(&message).expect("a command"))
            {
                return found;
            }
        }
    }

    /// The close frame the relay ends the socket with.
    async fn closed(&mut self) -> (CloseCode, String) {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return (frame.code, frame.reason.to_string());
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("no close frame: {other:?}"),
                }
            }
        })
        .await
        .expect("closed in time")
    }
}

/// The relayed delta in `message` (no `batch` in force: one per message).
fn relayed(message: &[u8]) -> Vec<(u64, Id, Vec<u8>)> {
    let frame = RelayedFrame::parse(message).expect("a relayed frame");
    vec![(
        frame.seq(),
        frame.origin(),
        frame.frame().payload().to_vec(),
    )]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_peer_and_webrtc_peers_share_one_order_and_lose_nothing() {
    let stack = stack().await;
    let rtc_sender = join(&stack, "lanes").await;
    let mut rtc_reader = join(&stack, "lanes").await;
    let mut lane = LanePeer::join(&stack, "lanes").await;
    let lane_id = lane.id();
    assert!(
        lane.welcome
            .peers
            .contains(&rtc_sender.peer_id().0.to_vec()),
        "the peer list names the WebRTC peers"
    );
    next_matching(&mut rtc_reader, WAIT, |e| {
        (e == PeerEvent::PeerJoined(lane_id)).then_some(())
    })
    .await;

    const EACH: u64 = 200;
    for i in 1..=EACH {
        lane.send_delta(i, format!("lane {i}").as_bytes()).await;
        rtc_sender
            .send(1, Id::default(), format!("rtc {i}").into_bytes())
            .await
            .unwrap();
    }
    // The reader sees all of both, in one order.
    let mut order = Vec::new();
    while order.len() < 2 * EACH as usize {
        let delta = next_matching(&mut rtc_reader, WAIT, |e| match e {
            PeerEvent::Delta(d) => Some(d),
            _ => None,
        })
        .await;
        order.push((
            delta.seq,
            String::from_utf8(delta.payload().to_vec()).unwrap(),
        ));
    }
    let seqs: Vec<u64> = order.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=2 * EACH).collect::<Vec<_>>());
    for who in ["lane", "rtc"] {
        let theirs: Vec<&str> = order
            .iter()
            .map(|(_, p)| p.as_str())
            .filter(|p| p.starts_with(who))
            .collect();
        let sent: Vec<String> = (1..=EACH).map(|i| format!("{who} {i}")).collect();
        assert_eq!(theirs, sent, "{who}'s deltas in the order sent");
    }
    // The lane peer gets the WebRTC sender's, at the same seqs, and an
    // ack for each of its own.
    let mut seen = Vec::new();
    let mut acked = 0;
    while seen.len() < EACH as usize || acked < EACH {
        match lane.next().await {
            (Channel::Receive, message) => {
                for (seq, origin, payload) in relayed(&message) {
                    assert_ne!(origin, lane_id, "no echo");
                    seen.push((seq, String::from_utf8(payload).unwrap()));
                }
            }
            (Channel::Command, message) => match command::decode(&message).unwrap() {
                Body::Ack(_) => acked += 1,
                Body::Acks(acks) => acked += acks.acks.len() as u64,
                Body::Reject(r) => panic!("rejected: {r:?}"),
                _ => {}
            },
            _ => {}
        }
    }
    let expected: Vec<(u64, String)> = order
        .iter()
        .filter(|(_, p)| p.starts_with("rtc"))
        .cloned()
        .collect();
    assert_eq!(seen, expected, "the same seqs as the WebRTC reader");

    // Closing the socket leaves the session.
    lane.socket.close(None).await.unwrap();
    next_matching(&mut rtc_reader, WAIT, |e| {
        (e == PeerEvent::PeerLeft(lane_id)).then_some(())
    })
    .await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_unknown_channels_and_empty_messages_close_the_socket_with_1003() {
    let stack = stack().await;
    let cases: [(Message, &str); 3] = [
        (Message::Text("hello".into()), "text message"),
        (
            Message::Binary(vec![7, 1, 2].into()),
            "unknown channel id 7",
        ),
        (Message::Binary(Vec::new().into()), "empty message"),
    ];
    for (message, reason) in cases {
        let mut lane = LanePeer::join(&stack, "bad-lane").await;
        lane.socket.send(message).await.unwrap();
        let (code, said) = lane.closed().await;
        assert_eq!(code, CloseCode::Unsupported);
        assert!(said.contains(reason), "{said:?} names {reason:?}");
    }
    // Still serving, and none of them is left behind.
    let mut lane = LanePeer::join(&stack, "bad-lane").await;
    assert!(lane.welcome.peers.is_empty(), "{:?}", lane.welcome.peers);
    lane.send_delta(1, b"still here").await;
    lane.next_command(|b| matches!(b, Body::Ack(_)).then_some(()))
        .await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_a_channel_does_not_take_get_what_webrtc_gives_them() {
    let stack = stack().await;
    let mut lane = LanePeer::join(&stack, "wrong-lane").await;
    // Over-size on `send`: Reject{TOO_LARGE}, the socket stays.
    let too_big = vec![0u8; lane.welcome.max_frame_size as usize];
    lane.send_delta(1, &too_big).await;
    let reject = lane
        .next_command(|b| match b {
            Body::Reject(r) => Some(r),
            _ => None,
        })
        .await;
    assert_eq!(reject.reason(), RejectReason::TooLarge);
    // Data on `receive`: Error{WRONG_CHANNEL}.
    lane.send(Channel::Receive, b"not for you").await;
    let error = lane
        .next_command(|b| match b {
            Body::Error(e) => Some(e),
            _ => None,
        })
        .await;
    assert_eq!(error.code(), ErrorCode::WrongChannel);
    // Presence without `presence` in force: dropped; a ping still answers.
    lane.send(Channel::Presence, b"state").await;
    let ping = command::encode(Body::Ping(pb::Ping { nonce: 42 }));
    lane.send(Channel::Command, &ping).await;
    let pong = lane
        .next_command(|b| match b {
            Body::Pong(p) => Some(p.nonce),
            Body::Error(e) => panic!("presence was not dropped: {e:?}"),
            _ => None,
        })
        .await;
    assert_eq!(pong, 42);
    lane.send_delta(1, b"fine").await;
    lane.next_command(|b| matches!(b, Body::Ack(_)).then_some(()))
        .await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_problems_answered_before_the_upgrade() {
    let stack = stack().await;
    let status_of = |result: Result<Socket, WsError>| match result {
        Err(WsError::Http(response)) => {
            let kind = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status().as_u16(), kind)
        }
        Ok(_) => (101, None),
        Err(other) => panic!("not an HTTP refusal: {other}"),
    };
    let problem = Some("application/problem+json".to_owned());
    // No token.
    let anonymous = tokio_tungstenite::connect_async(socket_url(&stack, "auth-lane"))
        .await
        .map(|(s, _)| s);
    assert_eq!(status_of(anonymous), (401, problem.clone()));
    // A wrong token, in the query.
    let wrong = format!("{}?access_token=nope", socket_url(&stack, "auth-lane"));
    let wrong = tokio_tungstenite::connect_async(wrong)
        .await
        .map(|(s, _)| s);
    assert_eq!(status_of(wrong), (401, problem.clone()));
    // A bad session id.
    assert_eq!(
        status_of(open(&stack, "bad%20id").await),
        (400, problem.clone())
    );
    // Not an upgrade at all.
    let plain = reqwest::Client::new()
        .get(format!(
            "{}/v1/sessions/auth-lane/socket",
            stack.signal_url()
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    assert_eq!(plain.headers()["content-type"], "application/problem+json");
    // The token in the query, as a browser sends it, opens the lane.
    let url = format!("{}?access_token={TOKEN}", socket_url(&stack, "auth-lane"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("opens");
    let welcome = tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Ping(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    let Some(Ok(Message::Binary(bytes))) = welcome else {
        panic!("{welcome:?}")
    };
    assert_eq!(bytes[0], 0);
    assert!(matches!(command::decode(&bytes[1..]), Ok(Body::Welcome(_))));
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_relay_refuses_a_socket_with_503_before_the_upgrade() {
    let stack = stack_with(|relay| relay.max_peers = 1).await;
    let _first = LanePeer::join(&stack, "full-lane").await;
    match open(&stack, "full-lane").await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        other => panic!("not refused: {:?}", other.map(|_| ())),
    }
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_never_reads_is_disconnected_as_a_slow_consumer() {
    let stack = stack_with(|relay| {
        relay.stall_timeout = Duration::from_secs(2);
        relay.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let mut sender = join(&stack, "deaf-lane").await;
    let deaf = LanePeer::join(&stack, "deaf-lane").await;
    let deaf_id = deaf.id();
    // It keeps its socket open and never reads again.
    let payload = vec![7u8; 32 * 1024];
    let mut sent = 0;
    let left = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            tokio::select! {
                event = sender.next_event() => {
                    if event == Some(PeerEvent::PeerLeft(deaf_id)) {
                        return;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(2)), if sent < 4000 => {
                    sender.send(1, Id::default(), payload.clone()).await.unwrap();
                    sent += 1;
                }
            }
        }
    })
    .await;
    assert!(
        left.is_ok(),
        "the deaf socket was cut off ({sent} deltas sent)"
    );
    assert_eq!(stack.relays[0].peer_count(), 1, "only the sender is left");
    drop(deaf);
    stack.shutdown().await.unwrap();
}
