//! `deploy/local-stack` runs a working fleet and stops all of it on SIGTERM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_testkit::terminate;

use crate::common::{TOKEN, TestPeer, lines};

/// The pids of `pid`'s children (from /proc), with their command names.
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in list.split_whitespace().filter_map(|c| c.parse().ok()) {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            found.push((child, comm.trim().to_owned()));
        }
    }
    found
}

/// Whether `pid` still runs (a zombie does not).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_stack_runs_a_fleet_and_stops_it_on_sigterm() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local-stack");
    let logs = std::env::var_os("DELTAMESH_TEST_LOGS").is_some();
    let mut stack = Command::new(&script)
        .args(["--relays", "2", "--port", "0"])
        .env("DELTAMESH_BIN", env!("CARGO_BIN_EXE_deltamesh"))
        .env("DELTAMESH_DEV_TOKEN", TOKEN)
        .env("DELTAMESH_ADDRESS_RATE", "0")
        .env("DELTAMESH_TOKEN_RATE", "0")
        .stdout(Stdio::piped())
        .stderr(if logs {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("deploy/local-stack starts");
    let lines = lines(stack.stdout.take().expect("piped stdout"));
    let first = lines.recv_timeout(Duration::from_secs(90));
    let signal = match first {
        Ok(line) => line
            .strip_prefix("signal: ")
            .unwrap_or_else(|| panic!("the first stdout line is `signal: URL`, not {line:?}"))
            .to_owned(),
        Err(_) => {
            let _ = stack.kill();
            panic!("deploy/local-stack never printed its signal line");
        }
    };
    // Signal binds a free port itself (--port 0) and the line names it.
    let port = signal
        .strip_prefix("http://127.0.0.1:")
        .and_then(|port| port.parse::<u16>().ok());
    assert!(
        port.is_some_and(|port| port != 0),
        "signal serves on the loopback port it bound: {signal}"
    );

    let services = children(stack.id());
    let names: Vec<&str> = services.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "deltamesh").count(),
        4,
        "registry, two relays and signal run: {names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == "nats-server").count(),
        1,
        "one nats-server runs: {names:?}"
    );

    let mut alice = TestPeer::join(&signal, "local-stack").await;
    let mut bob = TestPeer::join(&signal, "local-stack").await;
    alice
        .peer
        .send(1, Id::default(), b"hello over the local stack".to_vec())
        .await
        .expect("send queued");
    let arrived = bob
        .pump_until(Duration::from_secs(20), |p| !p.received.is_empty())
        .await;
    assert!(arrived, "bob receives alice's delta");
    assert_eq!(
        bob.received.values().next().map(Vec::as_slice),
        Some(&b"hello over the local stack"[..])
    );
    assert!(
        alice
            .pump_until(Duration::from_secs(10), |p| !p.acked.is_empty())
            .await,
        "alice's delta is acknowledged"
    );
    assert!(
        lines.try_recv().is_err(),
        "local-stack prints exactly one stdout line"
    );

    // SIGTERM with the peers still connected: the relays drain, then
    // everything stops and the script exits 0.
    terminate(&stack);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = stack.try_wait().expect("wait for local-stack") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = stack.kill();
            for (pid, _) in &services {
                // SAFETY: kill(2) has no memory effects; these were the
                // script's children a moment ago.
                unsafe {
                    libc::kill(*pid as libc::pid_t, libc::SIGKILL);
                }
            }
            panic!("deploy/local-stack did not exit within 15 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "local-stack exits 0 on SIGTERM: {status}");
    let left: Vec<&(u32, String)> = services.iter().filter(|(pid, _)| running(*pid)).collect();
    assert!(left.is_empty(), "processes left running: {left:?}");
    drop((alice, bob));
}
