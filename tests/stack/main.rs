//! End-to-end tests of the one-process stack: real HTTP signaling, real UDP,
//! real WebRTC (str0m on both sides), native peers.

mod blocked_networks;
mod common;
mod delta_flow;
mod disconnect;
mod ice_restart;
mod ice_servers;
mod ice_tcp;
mod lanes;
#[allow(dead_code)] // shared with tests/browser, which uses all of it
#[path = "../support/netns.rs"]
mod netns;
mod resume;
mod security;
mod signaling;
mod slow_consumer;
mod v1_1;
mod websocket;
