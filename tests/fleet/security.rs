//! A fleet started with `--production`: NATS over TLS, the registry's gRPC
//! over TLS, a relay signing deltas, signal with token keys. The test
//! certificate is for 127.0.0.1 (tests/keys/README.md).

use std::time::{Duration, Instant};

use deltamesh_proto::Grants;
use deltamesh_proto::fleet::pb::ListRelaysRequest;
use deltamesh_proto::fleet::pb::registry_client::RegistryClient;
use deltamesh_proto::fleet::registry_endpoint;
use deltamesh_signal::token::{Claims, TokenSigner, unix_now};
use deltamesh_testkit::NatsServer;
use tonic::transport::{Certificate, ClientTlsConfig};

use crate::common::{Service, strings};

/// The test keys.
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
/// Signal's token key.
const SECRET: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_fleet_runs_over_tls() {
    let cert = format!("{KEYS}/localhost.crt");
    let key = format!("{KEYS}/localhost.key");
    let nats = NatsServer::start_with_args(&["--tls", "--tlscert", &cert, "--tlskey", &key]);
    let nats_url = nats.url();
    let secure_nats = ["--production", "--nats", &nats_url, "--nats-tls-ca", &cert];
    let registry_tls = ["--grpc-tls-cert", &cert, "--grpc-tls-key", &key];
    let args = [
        &["registry", "--listen", "127.0.0.1:0"],
        &secure_nats[..],
        &registry_tls,
    ]
    .concat();
    let (_registry, registry) = Service::start(&strings(&args), "registry: ");
    let port = registry
        .strip_prefix("https://127.0.0.1:")
        .and_then(|port| port.parse::<u16>().ok());
    assert!(
        port.is_some_and(|port| port != 0),
        "the registry serves TLS on the loopback port it bound: {registry}"
    );
    let registry_client = ["--registry", &registry, "--registry-ca", &cert];
    let signing_key = format!("{KEYS}/relay-ed25519.pem");
    let relay = ["relay", "--signing-key", &signing_key];
    let args = [&relay[..], &secure_nats, &registry_client].concat();
    let (_relay, _) = Service::start(&strings(&args), "relay: ");
    let hs256_key = format!("k1={SECRET}");
    let signal = ["signal", "--port", "0", "--hs256-key", &hs256_key];
    let args = [&signal[..], &secure_nats, &registry_client].concat();
    let (_signal, signal) = Service::start(&strings(&args), "signal: ");

    // The relay registered over TLS.
    let ca = Certificate::from_pem(std::fs::read_to_string(&cert).unwrap());
    let tls = ClientTlsConfig::new().ca_certificate(ca);
    let mut client = RegistryClient::new(
        registry_endpoint(&registry, Some(tls))
            .unwrap()
            .connect_lazy(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .list_relays(ListRelaysRequest {})
        .await
        .map_or(true, |listed| listed.into_inner().relays.is_empty())
    {
        assert!(Instant::now() < deadline, "the relay never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Signal reaches NATS (connecting in the background) and the registry
    // over TLS.
    while reqwest::get(format!("{signal}/readyz"))
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "signal never got ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = TokenSigner::hs256("k1", SECRET.as_bytes())
        .unwrap()
        .sign(&Claims {
            iss: None,
            sub: "lister".into(),
            session: "doc".into(),
            grants: Grants::default().into(),
            exp: unix_now() + 600,
            nbf: None,
            iat: None,
        });
    let listed = reqwest::Client::new()
        .get(format!("{signal}/v1/sessions/doc/peers"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.text().await.unwrap(), "[]");
}
