//! A peer that vanishes without a DELETE is detected, the others hear it
//! left, and its resources are freed.

use std::time::Duration;

use crate::common::{TOKEN, join, next_matching, stack_with};
use deltamesh_worker::PeerEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_peer_is_detected_and_the_others_hear_it_left() {
    let stack = stack_with(|relay| relay.idle_timeout = Duration::from_secs(2)).await;
    let mut stayer = join(&stack, "room").await;
    let leaver = join(&stack, "room").await;
    let leaver_id = leaver.peer_id();
    let joined = next_matching(&mut stayer, Duration::from_secs(5), |e| match e {
        PeerEvent::PeerJoined(id) => Some(id),
        _ => None,
    })
    .await;
    assert_eq!(joined, leaver_id);
    assert_eq!(stack.relays[0].peer_count(), 2);

    leaver.vanish().await;
    let left = next_matching(&mut stayer, Duration::from_secs(10), |e| match e {
        PeerEvent::PeerLeft(id) => Some(id),
        _ => None,
    })
    .await;
    assert_eq!(left, leaver_id);
    assert_eq!(stack.relays[0].peer_count(), 1, "the relay freed the peer");

    let listed = reqwest::Client::new()
        .get(format!("{}/v1/sessions/room/peers", stack.signal_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![stayer.peer_id().to_string()]);
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_peer_leaves_at_once() {
    let stack = stack_with(|_| {}).await;
    let mut stayer = join(&stack, "room").await;
    let leaver = join(&stack, "room").await;
    let leaver_id = leaver.peer_id();
    leaver.close().await;
    let left = next_matching(&mut stayer, Duration::from_secs(2), |e| match e {
        PeerEvent::PeerLeft(id) => Some(id),
        _ => None,
    })
    .await;
    assert_eq!(left, leaver_id);
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_peer_stays_connected_past_the_idle_timeout() {
    let stack = stack_with(|relay| relay.idle_timeout = Duration::from_secs(3)).await;
    let mut idle = join(&stack, "quiet").await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    idle.ping(1).await;
    let pong = next_matching(&mut idle, Duration::from_secs(5), |e| match e {
        PeerEvent::Pong(n) => Some(n),
        _ => None,
    })
    .await;
    assert_eq!(pong, 1, "ICE keepalives kept the idle peer connected");
    assert_eq!(stack.relays[0].peer_count(), 1);
    stack.shutdown().await.unwrap();
}
