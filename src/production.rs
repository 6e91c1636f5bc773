//! What `--production` requires of each command before it starts: NATS
//! secured, gRPC over TLS, deltas signed, the registry verified (signal's
//! token keys are checked with the rest of its configuration, in
//! [`crate::cli`]).

use anyhow::bail;

use crate::cli::{FleetArgs, RegistryArgs, RelayServiceArgs, RunArgs, SignalServiceArgs};
use crate::fleet::NatsSecurity;

/// `deltamesh --production`: with `--nats`, NATS must be secured, and the
/// registry (plaintext gRPC in this mode) must listen on loopback only.
pub(crate) fn check_run(args: &RunArgs) -> anyhow::Result<()> {
    let Some(url) = args
        .nats
        .as_deref()
        .filter(|_| args.signal.auth.production.production)
    else {
        return Ok(());
    };
    require_secure_nats(url, &args.nats_security)?;
    if !args.registry_listen.ip().is_loopback() {
        bail!(
            "--production needs a loopback --registry-listen (the in-process registry has no TLS)"
        );
    }
    Ok(())
}

/// `deltamesh registry --production`: NATS secured, gRPC over TLS.
pub(crate) fn check_registry(args: &RegistryArgs) -> anyhow::Result<()> {
    if !args.production.production {
        return Ok(());
    }
    require_secure_nats(&args.nats.nats, &args.nats.nats_security)?;
    if args.grpc_tls_cert.is_none() {
        bail!("--production needs --grpc-tls-cert and --grpc-tls-key");
    }
    Ok(())
}

/// `deltamesh relay --production`: deltas signed, NATS secured, the
/// registry over TLS.
pub(crate) fn check_relay(args: &RelayServiceArgs) -> anyhow::Result<()> {
    if !args.production.production {
        return Ok(());
    }
    if args.relay.signing_key.is_none() {
        bail!("--production needs --signing-key");
    }
    require_secure_fleet(&args.fleet)
}

/// `deltamesh signal --production`: NATS secured, the registry over TLS
/// (token keys are checked with the rest of signal's configuration).
pub(crate) fn check_signal(args: &SignalServiceArgs) -> anyhow::Result<()> {
    if !args.signal.auth.production.production {
        return Ok(());
    }
    require_secure_fleet(&args.fleet)
}

/// In production, a fleet client secures NATS and verifies the registry.
fn require_secure_fleet(fleet: &FleetArgs) -> anyhow::Result<()> {
    require_secure_nats(&fleet.nats.nats, &fleet.nats.nats_security)?;
    if fleet.registry_ca.is_none() {
        bail!("--production needs --registry-ca");
    }
    if !fleet.registry.starts_with("https://") {
        bail!("--production needs an https:// --registry URL");
    }
    Ok(())
}

/// In production, NATS is authenticated or verified over TLS.
fn require_secure_nats(url: &str, security: &NatsSecurity) -> anyhow::Result<()> {
    if !security.is_secured(url) {
        bail!(
            "--production needs NATS security: pass --nats-creds, --nats-nkey-seed or --nats-tls-ca"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    /// What the production check of the service `args` start refuses ("" if nothing).
    fn refusal(args: &[&str]) -> String {
        let cli =
            Cli::try_parse_from(std::iter::once("deltamesh").chain(args.iter().copied())).unwrap();
        let checked = match cli.command {
            Some(Command::Registry(args)) => check_registry(&args),
            Some(Command::Relay(args)) => check_relay(&args),
            Some(Command::Signal(args)) => check_signal(&args),
            Some(Command::Token(_)) => unreachable!("not a service"),
            None => check_run(&cli.run),
        };
        checked.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn production_refuses_to_start_insecure_services() {
        let registry = ["registry", "--production"];
        assert!(refusal(&registry).contains("--nats-creds"));
        let registry = [&registry[..], &["--nats-nkey-seed", "seed"]].concat();
        assert_eq!(
            refusal(&registry),
            "--production needs --grpc-tls-cert and --grpc-tls-key"
        );
        let registry = [
            &registry[..],
            &["--grpc-tls-cert", "c", "--grpc-tls-key", "k"],
        ]
        .concat();
        assert_eq!(refusal(&registry), "");

        let relay = ["relay", "--production"];
        assert_eq!(refusal(&relay), "--production needs --signing-key");
        let relay = [&relay[..], &["--signing-key", "relay.pem"]].concat();
        assert!(refusal(&relay).contains("NATS security"));
        let relay = [&relay[..], &["--nats-tls-ca", "ca.pem"]].concat();
        assert_eq!(refusal(&relay), "--production needs --registry-ca");
        let relay = [&relay[..], &["--registry-ca", "ca.pem"]].concat();
        assert_eq!(
            refusal(&relay),
            "--production needs an https:// --registry URL"
        );
        let relay = [&relay[..], &["--registry", "https://registry:50051"]].concat();
        assert_eq!(refusal(&relay), "");

        let signal = ["signal", "--production", "--nats", "tls://nats:4222"];
        assert_eq!(refusal(&signal), "--production needs --registry-ca");
        let signal = [
            &signal[..],
            &["--registry-ca", "ca.pem", "--registry", "https://r:1"],
        ]
        .concat();
        assert_eq!(refusal(&signal), "");

        let one_process = ["--production", "--nats", "nats://nats:4222"];
        assert!(refusal(&one_process).contains("NATS security"));
        let one_process = [&one_process[..], &["--nats-creds", "user.creds"]].concat();
        assert_eq!(refusal(&one_process), "");
        let one_process = [&one_process[..], &["--registry-listen", "0.0.0.0:50051"]].concat();
        assert!(refusal(&one_process).contains("loopback --registry-listen"));

        // Without --production, anything goes.
        for service in [&["registry"][..], &["relay"], &["signal"], &["--nats", "x"]] {
            assert_eq!(refusal(service), "");
        }
    }
}
