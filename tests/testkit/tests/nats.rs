//! `NatsServer` takes the port nats-server picked and keeps it across
//! restarts, and what answers there is the server it started.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::Duration;

use deltamesh_testkit::NatsServer;

/// The `server_id` in the INFO line the server on `port` greets with.
fn server_id(port: u16) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("nats-server accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let mut info = String::new();
    BufReader::new(stream)
        .read_line(&mut info)
        .expect("an INFO line");
    let json = info.strip_prefix("INFO ").expect("the greeting is INFO");
    let info: serde_json::Value = serde_json::from_str(json).expect("INFO is JSON");
    info["server_id"]
        .as_str()
        .expect("INFO names the server")
        .to_owned()
}

#[test]
fn a_restart_binds_the_port_the_first_start_reported() {
    let mut nats = NatsServer::start();
    let port = nats.port();
    assert_ne!(port, 0);
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
    let first = server_id(port);
    // A client still connected when the server dies leaves its side of the
    // connection behind; the restart binds the port regardless.
    let _open = TcpStream::connect(("127.0.0.1", port)).expect("a second client");
    nats.kill();
    nats.restart();
    assert_eq!(nats.port(), port, "restarted on the same port");
    let second = server_id(port);
    assert_ne!(first, second, "a new process answers after the restart");
    nats.stop();
    nats.restart();
    assert_eq!(nats.port(), port);
}

#[test]
fn servers_started_together_get_their_own_ports() {
    let servers: Vec<NatsServer> = (0..4).map(|_| NatsServer::start()).collect();
    let mut ports: Vec<u16> = servers.iter().map(NatsServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len(), "{ports:?}");
}
