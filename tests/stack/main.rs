//! End-to-end tests of the one-process stack: real HTTP signaling, real UDP,
//! real WebRTC (str0m on both sides), native peers.

mod common;
mod delta_flow;
mod disconnect;
mod ice_restart;
mod ice_servers;
mod ice_tcp;
mod lanes;
mod resume;
mod security;
mod signaling;
mod slow_consumer;
mod v1_1;
mod websocket;
