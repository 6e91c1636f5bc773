//! `deltamesh signal`: the flags of a fleet's signal instance, the signal
//! flags the one-process stack shares, and the configuration they describe.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use deltamesh_signal::token::TokenVerifier;
use deltamesh_signal::{IceServers, RateLimit, SignalConfig};

use super::{FleetArgs, ProductionArgs};
use crate::production;
use crate::service::SignalService;
use crate::token::key_id_and_value;

/// `deltamesh signal`.
#[derive(Debug, Args)]
pub struct SignalServiceArgs {
    #[command(flatten)]
    pub(crate) fleet: FleetArgs,
    #[command(flatten)]
    pub(crate) signal: SignalArgs,
    /// Development mode without token keys (the development token opens
    /// every session). Without it, signal refuses to start keyless.
    #[arg(long, env = "DELTAMESH_DEV")]
    pub(crate) dev: bool,
}

impl SignalServiceArgs {
    /// The signal service these flags describe, refused if `--production`
    /// is not met or (without `--dev`) there are no token keys; key files
    /// are read now.
    pub fn to_config(&self) -> anyhow::Result<SignalService> {
        production::check_signal(self)?;
        let (config, dev_mode) = self.signal.to_config(self.dev)?;
        Ok(SignalService {
            fleet: self.fleet.to_config()?,
            listen: self.signal.listen(),
            config,
            dev_mode,
        })
    }
}

/// Signal's HTTP side.
#[derive(Debug, Args)]
pub(crate) struct SignalArgs {
    /// Address signal's HTTP server binds to.
    #[arg(long, env = "DELTAMESH_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port signal's HTTP server listens on.
    #[arg(long, short, env = "PORT", default_value_t = 8080)]
    port: u16,
    #[command(flatten)]
    pub(crate) auth: AuthArgs,
    #[command(flatten)]
    limits: HttpLimitArgs,
    #[command(flatten)]
    ice_servers: IceServerArgs,
    /// The browser bundle (demo page and wasm) that `scripts/build-web` makes.
    #[arg(long, env = "DELTAMESH_WEB_DIR", default_value = "target/web")]
    web_dir: PathBuf,
}

impl SignalArgs {
    /// Where signal's HTTP server listens.
    pub(crate) fn listen(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Signal's configuration, and whether it runs in development mode (no
    /// token keys; only when `dev_allowed`).
    pub(crate) fn to_config(&self, dev_allowed: bool) -> anyhow::Result<(SignalConfig, bool)> {
        let limits = &self.limits;
        let verifier = self.auth.token_verifier()?;
        let dev_mode = verifier.is_empty();
        if dev_mode && self.auth.production.production {
            bail!(
                "--production needs token keys: pass --hs256-key KEY_ID=SECRET or --eddsa-key KEY_ID=PEM_PATH"
            );
        }
        if dev_mode && !dev_allowed {
            bail!(
                "no token keys: pass --hs256-key KEY_ID=SECRET or --eddsa-key KEY_ID=PEM_PATH, or --dev for development mode"
            );
        }
        if !self.web_dir.join("index.html").is_file() {
            tracing::warn!(
                target: crate::LOG_TARGET,
                "no demo bundle in {}; run scripts/build-web (scripts/run does it for you)",
                self.web_dir.display()
            );
        }
        let config = SignalConfig {
            tokens: Arc::new(verifier),
            address_rate: RateLimit {
                per_second: limits.address_rate,
                burst: limits.address_burst,
            },
            token_rate: RateLimit {
                per_second: limits.token_rate,
                burst: limits.token_burst,
            },
            web_dir: Some(self.web_dir.clone()),
            ice_servers: self.ice_servers.to_config()?,
            ..SignalConfig::new(if dev_mode {
                self.auth.dev_token.clone()
            } else {
                String::new()
            })
        };
        Ok((config, dev_mode))
    }
}

/// Who may connect.
#[derive(Debug, Args)]
#[command(mut_arg("production", |arg| arg.help(
    "Refuse to start without token keys (and, in a fleet, without NATS security and registry TLS), and accept no development token"
)))]
pub(crate) struct AuthArgs {
    /// An HS256 key for signed tokens, as KEY_ID=SECRET (at least 32 bytes).
    /// Repeat it (or separate with commas) to accept several keys while
    /// rotating.
    #[arg(
        long = "hs256-key",
        env = "DELTAMESH_HS256_KEYS",
        value_delimiter = ','
    )]
    hs256_keys: Vec<String>,
    /// An EdDSA key for signed tokens, as KEY_ID=PATH to an Ed25519 public
    /// key in PEM. Repeatable.
    #[arg(
        long = "eddsa-key",
        env = "DELTAMESH_EDDSA_KEYS",
        value_delimiter = ','
    )]
    eddsa_keys: Vec<String>,
    /// The issuer (`iss`) every token must name.
    #[arg(long, env = "DELTAMESH_TOKEN_ISSUER")]
    token_issuer: Option<String>,
    #[command(flatten)]
    pub(crate) production: ProductionArgs,
    /// The development token that opens every session with every grant.
    /// Development mode is on when no token key is configured.
    #[arg(
        long,
        env = "DELTAMESH_DEV_TOKEN",
        default_value = "deltamesh-dev-token"
    )]
    dev_token: String,
}

impl AuthArgs {
    /// The verifier for the configured token keys (empty when there are
    /// none); key files are read now.
    fn token_verifier(&self) -> anyhow::Result<TokenVerifier> {
        let mut verifier = TokenVerifier::default();
        for key in &self.hs256_keys {
            let (kid, secret) = key_id_and_value(key, "--hs256-key")?;
            verifier.add_hs256(kid, secret.as_bytes())?;
        }
        for key in &self.eddsa_keys {
            let (kid, path) = key_id_and_value(key, "--eddsa-key")?;
            let pem = std::fs::read(path).with_context(|| format!("reading {path}"))?;
            verifier.add_eddsa_pem(kid, &pem)?;
        }
        if let Some(issuer) = &self.token_issuer {
            verifier.require_issuer(issuer.clone());
        }
        Ok(verifier)
    }
}

/// What one HTTP client and token may use. 0 turns a rate off.
#[derive(Debug, Args)]
struct HttpLimitArgs {
    /// HTTP requests per second per client address (IPv6: per /64).
    #[arg(long, env = "DELTAMESH_ADDRESS_RATE", default_value_t = deltamesh_signal::DEFAULT_ADDRESS_RATE.per_second)]
    address_rate: u32,
    /// HTTP requests in one burst per client address.
    #[arg(long, env = "DELTAMESH_ADDRESS_BURST", default_value_t = deltamesh_signal::DEFAULT_ADDRESS_RATE.burst)]
    address_burst: u32,
    /// HTTP requests per second per token.
    #[arg(long, env = "DELTAMESH_TOKEN_RATE", default_value_t = deltamesh_signal::DEFAULT_TOKEN_RATE.per_second)]
    token_rate: u32,
    /// HTTP requests in one burst per token.
    #[arg(long, env = "DELTAMESH_TOKEN_BURST", default_value_t = deltamesh_signal::DEFAULT_TOKEN_RATE.burst)]
    token_burst: u32,
}

/// The ICE servers handed to peers as `Link` headers (PROTOCOL.md §10).
#[derive(Debug, Args)]
struct IceServerArgs {
    /// A STUN server URL (`stun:host:port`) for peers. Repeatable, or
    /// separate with commas.
    #[arg(long = "stun-url", env = "DELTAMESH_STUN_URLS", value_delimiter = ',')]
    stun_urls: Vec<String>,
    /// A TURN server URL (`turn:host:port?transport=udp`, `turns:…`) for
    /// peers, with credentials made from --turn-secret. Repeatable, or
    /// separate with commas.
    #[arg(long = "turn-url", env = "DELTAMESH_TURN_URLS", value_delimiter = ',')]
    turn_urls: Vec<String>,
    /// The TURN server's shared secret (coturn's `static-auth-secret`), that
    /// TURN REST credentials are made with.
    #[arg(long, env = "DELTAMESH_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
    /// The longest life of a TURN credential (never past the token's expiry).
    #[arg(long, env = "DELTAMESH_TURN_CREDENTIAL_LIFETIME", default_value = "1h", value_parser = humantime::parse_duration)]
    turn_credential_lifetime: Duration,
}

impl IceServerArgs {
    fn to_config(&self) -> anyhow::Result<IceServers> {
        IceServers::new(
            self.stun_urls.clone(),
            self.turn_urls.clone(),
            self.turn_secret.as_deref().map(str::as_bytes),
            self.turn_credential_lifetime,
        )
        .context("--stun-url/--turn-url/--turn-secret")
    }
}
