//! `deltamesh token`: what goes into the token it mints (see
//! [`crate::token::mint`]).

use std::time::Duration;

use clap::Args;

/// What `deltamesh token` puts in the token.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The session the token opens.
    #[arg(long)]
    pub(crate) session: String,
    /// The peer's identity (`sub`).
    #[arg(long)]
    pub(crate) subject: String,
    /// Grants, comma-separated: publish, subscribe, signal.
    #[arg(long, value_delimiter = ',', default_value = "publish,subscribe")]
    pub(crate) grants: Vec<String>,
    /// How long the token is valid, e.g. `1h`, `15m`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) ttl: Duration,
    /// The issuer (`iss`).
    #[arg(long)]
    pub(crate) issuer: Option<String>,
    /// Sign with HS256, as KEY_ID=SECRET.
    #[arg(
        long,
        conflicts_with = "eddsa_private_key",
        required_unless_present = "eddsa_private_key"
    )]
    pub(crate) hs256_key: Option<String>,
    /// Sign with EdDSA, as KEY_ID=PATH to an Ed25519 private key in PEM.
    #[arg(long)]
    pub(crate) eddsa_private_key: Option<String>,
}
