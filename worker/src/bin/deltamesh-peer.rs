//! `deltamesh-peer`: join a session from the command line, send deltas,
//! listen to them.

use std::io::BufRead;

use anyhow::Context;
use clap::{Parser, Subcommand};
use deltamesh_proto::Id;
use deltamesh_worker::{ConnectOptions, NativePeer, PeerEvent};

#[derive(Parser)]
#[command(about = "A native deltamesh peer")]
struct Cli {
    /// Signal service base URL.
    #[arg(long, env = "DELTAMESH_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token (the stack prints its development token at start).
    #[arg(long, env = "DELTAMESH_TOKEN")]
    token: String,
    /// Session to join.
    #[arg(long, short, env = "DELTAMESH_SESSION", default_value = "demo")]
    session: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join and print membership changes until interrupted.
    Join,
    /// Send each argument (or each stdin line) as one delta and wait for acks.
    Send {
        /// Application kind of the deltas.
        #[arg(long, default_value_t = 1)]
        kind: u16,
        /// Document id (UUID text).
        #[arg(long, default_value = "00000000-0000-0000-0000-000000000000")]
        doc: Id,
        /// Payloads; read from stdin, one per line, when none are given.
        payloads: Vec<String>,
    },
    /// Print every delta received, with its seq, until interrupted.
    Listen,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut peer = NativePeer::connect(ConnectOptions::new(&cli.url, &cli.session, &cli.token))
        .await
        .context("connecting")?;
    eprintln!(
        "joined session {} as {} (session at seq {}, {} other peers)",
        cli.session,
        peer.peer_id(),
        peer.welcome().last_seq,
        peer.welcome().peers.len()
    );
    match cli.command {
        Command::Join | Command::Listen => loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                event = peer.next_event() => match event {
                    Some(PeerEvent::Delta(d)) => println!(
                        "seq={} origin={} kind={} doc={} len={} payload={}",
                        d.seq, d.origin, d.kind, d.doc_id, d.payload().len(), String::from_utf8_lossy(d.payload())
                    ),
                    Some(PeerEvent::PeerJoined(id)) => println!("joined {id}"),
                    Some(PeerEvent::PeerLeft(id)) => println!("left {id}"),
                    Some(other) => eprintln!("{other:?}"),
                    None => anyhow::bail!("connection closed"),
                },
            }
        },
        Command::Send {
            kind,
            doc,
            payloads,
        } => {
            let payloads = if payloads.is_empty() {
                std::io::stdin()
                    .lock()
                    .lines()
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                payloads
            };
            let mut pending = payloads.len();
            for payload in payloads {
                peer.send(kind, doc, payload.into_bytes()).await?;
            }
            while pending > 0 {
                match peer.next_event().await {
                    Some(PeerEvent::Acked { client_seq, seq }) => {
                        println!("ack client_seq={client_seq} seq={seq}");
                        pending -= 1;
                    }
                    Some(PeerEvent::Rejected(r)) => {
                        println!(
                            "reject client_seq={} reason={:?} {}",
                            r.client_seq,
                            r.reason(),
                            r.detail
                        );
                        pending -= 1;
                    }
                    Some(_) => {}
                    None => anyhow::bail!("connection closed with {pending} deltas unacknowledged"),
                }
            }
        }
    }
    peer.close().await;
    Ok(())
}
