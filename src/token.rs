//! Minting a signed token (`deltamesh token`), and reading the
//! `KEY_ID=VALUE` form every token key flag takes.

use anyhow::{Context, bail};
use deltamesh_proto::Grants;
use deltamesh_signal::token::{Claims, TokenSigner, unix_now};

use crate::cli::TokenArgs;

/// Signs the token `args` describe.
pub fn mint(args: TokenArgs) -> anyhow::Result<String> {
    let signer = match (&args.hs256_key, &args.eddsa_private_key) {
        (Some(key), _) => {
            let (kid, secret) = key_id_and_value(key, "--hs256-key")?;
            TokenSigner::hs256(kid, secret.as_bytes())?
        }
        (None, Some(key)) => {
            let (kid, path) = key_id_and_value(key, "--eddsa-private-key")?;
            let pem = std::fs::read(path).with_context(|| format!("reading {path}"))?;
            TokenSigner::eddsa_pem(kid, &pem)?
        }
        (None, None) => bail!("pass --hs256-key or --eddsa-private-key"),
    };
    if !deltamesh_proto::session::is_valid_session(&args.session) {
        bail!("{:?} is not a valid session name", args.session);
    }
    let mut grants = Grants::default();
    for grant in &args.grants {
        match grant.trim() {
            "publish" => grants.publish = true,
            "subscribe" => grants.subscribe = true,
            "signal" => grants.signal = true,
            "" => {}
            other => bail!("unknown grant {other:?}: use publish, subscribe or signal"),
        }
    }
    let now = unix_now();
    Ok(signer.sign(&Claims {
        iss: args.issuer,
        sub: args.subject,
        session: args.session,
        grants: grants.into(),
        exp: now + args.ttl.as_secs(),
        nbf: Some(now),
        iat: Some(now),
    }))
}

/// Splits the `KEY_ID=VALUE` that `flag` takes.
pub(crate) fn key_id_and_value<'a>(
    text: &'a str,
    flag: &str,
) -> anyhow::Result<(&'a str, &'a str)> {
    match text.split_once('=') {
        Some((kid, value)) if !kid.is_empty() && !value.is_empty() => Ok((kid, value)),
        _ => bail!("{flag} takes KEY_ID=VALUE"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use deltamesh_signal::token::TokenVerifier;

    use super::*;

    #[test]
    fn key_flags_need_a_key_id_and_a_value() {
        assert_eq!(
            key_id_and_value("k1=s=cret", "--x").unwrap(),
            ("k1", "s=cret")
        );
        for bad in ["k1", "=secret", "k1=", ""] {
            let error = key_id_and_value(bad, "--hs256-key")
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("--hs256-key takes KEY_ID=VALUE"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn minting_refuses_unknown_grants_bad_sessions_and_weak_secrets() {
        let args = |session: &str, grants: &[&str], secret: &str| TokenArgs {
            session: session.into(),
            subject: "alice".into(),
            grants: grants.iter().map(|g| g.to_string()).collect(),
            ttl: Duration::from_secs(60),
            issuer: None,
            hs256_key: Some(format!("k={secret}")),
            eddsa_private_key: None,
        };
        let secret = "0123456789abcdef0123456789abcdef";
        let token = mint(args("doc-1", &["publish"], secret)).unwrap();
        let mut verifier = TokenVerifier::default();
        verifier.add_hs256("k", secret.as_bytes()).unwrap();
        let access = verifier.verify(&token).unwrap();
        assert!(access.grants.publish && !access.grants.subscribe);
        let error = mint(args("doc-1", &["admin"], secret))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown grant"), "{error}");
        let error = mint(args("a/b", &["publish"], secret))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a valid session name"), "{error}");
        let error = mint(args("doc-1", &["publish"], "short"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("shorter than 32 bytes"), "{error}");
    }
}
