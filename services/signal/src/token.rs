//! Signed access tokens: JWTs naming a subject (the peer's identity), one
//! session and the connection's grants. [`TokenVerifier`] checks them with
//! named keys (the `kid` header picks the key, so several keys are valid at
//! once while they rotate), HS256 or EdDSA; [`TokenSigner`] mints them for
//! development, tests and backends.
//!
//! A key fixes its algorithm: a token whose `alg` is not its key's is
//! refused, so an HS256 token cannot be checked against an EdDSA public key
//! used as an HMAC secret, and `none` is never accepted.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use deltamesh_proto::Grants;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The shortest HS256 secret accepted: 32 bytes, the HMAC-SHA-256 output.
pub const HS256_MIN_SECRET: usize = 32;
/// The clock skew allowed on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// The claims of a deltamesh token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who issued it; checked when the verifier names an issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The peer's identity.
    pub sub: String,
    /// The one session the token opens.
    pub session: String,
    /// What the connection may do; a grant left out is not given.
    #[serde(default)]
    pub grants: GrantClaims,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// The `grants` claim: `{"publish": bool, "subscribe": bool, "signal": bool}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantClaims {
    /// May send deltas.
    #[serde(default)]
    pub publish: bool,
    /// May receive deltas.
    #[serde(default)]
    pub subscribe: bool,
    /// May exchange peer-to-peer signals.
    #[serde(default)]
    pub signal: bool,
}

impl From<GrantClaims> for Grants {
    fn from(claims: GrantClaims) -> Self {
        Grants {
            publish: claims.publish,
            subscribe: claims.subscribe,
            signal: claims.signal,
        }
    }
}

impl From<Grants> for GrantClaims {
    fn from(grants: Grants) -> Self {
        GrantClaims {
            publish: grants.publish,
            subscribe: grants.subscribe,
            signal: grants.signal,
        }
    }
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The peer's identity (`sub`).
    pub subject: String,
    /// The session it opens.
    pub session: String,
    /// The connection's grants.
    pub grants: Grants,
    /// The token's expiry (`exp`), seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or its header or claims do not decode.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names no key (`kid`).
    #[error("the token header has no key id (kid)")]
    MissingKeyId,
    /// The header names a key this service does not have.
    #[error("unknown key id {0:?}")]
    UnknownKey(String),
    /// The header's `alg` is not the named key's algorithm.
    #[error("key {kid:?} is {expected:?}; the token says {found}")]
    WrongAlgorithm {
        /// The key id.
        kid: String,
        /// The key's algorithm.
        expected: Algorithm,
        /// What the header says.
        found: String,
    },
    /// The signature does not verify with the named key.
    #[error("the signature does not verify")]
    BadSignature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still ahead.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the token was not issued by {0:?}")]
    WrongIssuer(String),
    /// A required claim is missing or has the wrong type.
    #[error("invalid claims: {0}")]
    InvalidClaims(String),
}

/// Why a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Two keys share a key id.
    #[error("key id {0:?} is configured twice")]
    DuplicateKeyId(String),
    /// An empty key id.
    #[error("a key id must not be empty")]
    EmptyKeyId,
    /// An HS256 secret under [`HS256_MIN_SECRET`] bytes.
    #[error("the HS256 secret of key {0:?} is shorter than {HS256_MIN_SECRET} bytes")]
    WeakSecret(String),
    /// A PEM that is not an Ed25519 key of the expected kind.
    #[error("key {kid:?}: {detail}")]
    BadPem {
        /// The key id.
        kid: String,
        /// What is wrong.
        detail: String,
    },
}

/// Checks tokens against named keys, allowing [`LEEWAY`] of clock skew.
#[derive(Clone, Default)]
pub struct TokenVerifier {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    issuer: Option<String>,
}

impl fmt::Debug for TokenVerifier {
    /// Key ids and algorithms only, never key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self
            .keys
            .iter()
            .map(|(kid, (alg, _))| format!("{kid} ({alg:?})"))
            .collect();
        keys.sort();
        f.debug_struct("TokenVerifier")
            .field("keys", &keys)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl TokenVerifier {
    /// Whether no key is configured (then no token verifies).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Requires `iss` to be `issuer`.
    pub fn require_issuer(&mut self, issuer: impl Into<String>) {
        self.issuer = Some(issuer.into());
    }

    /// Adds an HS256 key.
    pub fn add_hs256(&mut self, kid: &str, secret: &[u8]) -> Result<(), KeyError> {
        if secret.len() < HS256_MIN_SECRET {
            return Err(KeyError::WeakSecret(kid.to_owned()));
        }
        self.add(kid, Algorithm::HS256, DecodingKey::from_secret(secret))
    }

    /// Adds an EdDSA (Ed25519) public key in PEM (`BEGIN PUBLIC KEY`).
    pub fn add_eddsa_pem(&mut self, kid: &str, pem: &[u8]) -> Result<(), KeyError> {
        let key = DecodingKey::from_ed_pem(pem).map_err(|e| KeyError::BadPem {
            kid: kid.to_owned(),
            detail: format!("not an Ed25519 public key in PEM: {e}"),
        })?;
        self.add(kid, Algorithm::EdDSA, key)
    }

    fn add(&mut self, kid: &str, alg: Algorithm, key: DecodingKey) -> Result<(), KeyError> {
        if kid.is_empty() {
            return Err(KeyError::EmptyKeyId);
        }
        if self.keys.contains_key(kid) {
            return Err(KeyError::DuplicateKeyId(kid.to_owned()));
        }
        self.keys.insert(kid.to_owned(), (alg, key));
        Ok(())
    }

    /// Verifies `token` and returns what it allows.
    pub fn verify(&self, token: &str) -> Result<Access, TokenError> {
        let header = decode_header(token)?;
        let kid = header.kid.ok_or(TokenError::MissingKeyId)?;
        let (alg, key) = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
        if header.alg != *alg {
            return Err(TokenError::WrongAlgorithm {
                kid,
                expected: *alg,
                found: format!("{:?}", header.alg),
            });
        }
        let mut validation = Validation::new(*alg);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.required_spec_claims = ["exp", "sub"].map(String::from).into();
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|error| match error
                .into_kind()
            {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidIssuer => {
                    TokenError::WrongIssuer(self.issuer.clone().unwrap_or_default())
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    TokenError::InvalidClaims(format!("missing {claim}"))
                }
                ErrorKind::Json(error) => TokenError::InvalidClaims(error.to_string()),
                other => TokenError::Malformed(format!("{other:?}")),
            })?;
        let claims = data.claims;
        if !deltamesh_proto::session::is_valid_session(&claims.session) {
            return Err(TokenError::InvalidClaims(
                "session is not a valid session name".into(),
            ));
        }
        Ok(Access {
            subject: claims.sub,
            session: claims.session,
            grants: claims.grants.into(),
            expires_at: claims.exp,
        })
    }
}

/// Decodes the header, naming an unknown `alg` (such as `none`) plainly.
fn decode_header(token: &str) -> Result<Header, TokenError> {
    jsonwebtoken::decode_header(token).map_err(|error| match error.into_kind() {
        ErrorKind::Json(error) if error.to_string().contains("unknown variant") => {
            TokenError::Malformed(format!("unsupported algorithm: {error}"))
        }
        other => TokenError::Malformed(format!("{other:?}")),
    })
}

/// Mints tokens with one named key.
pub struct TokenSigner {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
}

impl TokenSigner {
    /// An HS256 signer.
    pub fn hs256(kid: &str, secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < HS256_MIN_SECRET {
            return Err(KeyError::WeakSecret(kid.to_owned()));
        }
        Ok(TokenSigner {
            kid: kid.to_owned(),
            alg: Algorithm::HS256,
            key: EncodingKey::from_secret(secret),
        })
    }

    /// An EdDSA signer from an Ed25519 private key in PEM (`BEGIN PRIVATE KEY`).
    pub fn eddsa_pem(kid: &str, pem: &[u8]) -> Result<Self, KeyError> {
        let key = EncodingKey::from_ed_pem(pem).map_err(|e| KeyError::BadPem {
            kid: kid.to_owned(),
            detail: format!("not an Ed25519 private key in PEM: {e}"),
        })?;
        let signer = TokenSigner {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            key,
        };
        // The PEM parser checks the shape only; signing once checks the key.
        jsonwebtoken::encode(&Header::new(signer.alg), &(), &signer.key).map_err(|e| {
            KeyError::BadPem {
                kid: kid.to_owned(),
                detail: format!("unusable Ed25519 private key: {e}"),
            }
        })?;
        Ok(signer)
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
            .expect("a checked key signs claims of plain strings and numbers")
    }
}

/// Seconds since the Unix epoch, now: the shared clock, under the name
/// token makers know it by.
pub use deltamesh_proto::time::unix_secs as unix_now;

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OTHER_SECRET: &[u8] = b"fedcba9876543210fedcba9876543210";
    const ED_PRIVATE: &[u8] = include_bytes!("../tests/keys/ed25519-a.pem");
    const ED_PUBLIC: &[u8] = include_bytes!("../tests/keys/ed25519-a.pub.pem");
    const OTHER_ED_PRIVATE: &[u8] = include_bytes!("../tests/keys/ed25519-b.pem");

    fn verifier() -> TokenVerifier {
        let mut verifier = TokenVerifier::default();
        verifier.add_hs256("hs", SECRET).unwrap();
        verifier.add_eddsa_pem("ed", ED_PUBLIC).unwrap();
        verifier
    }

    fn claims() -> Claims {
        let now = unix_now();
        Claims {
            iss: Some("tests".into()),
            sub: "alice".into(),
            session: "doc-1".into(),
            grants: GrantClaims {
                publish: false,
                subscribe: true,
                signal: false,
            },
            exp: now + 60,
            nbf: Some(now),
            iat: Some(now),
        }
    }

    /// A token with any header, claims and key, for the cases a signer refuses.
    fn forge(
        alg: Algorithm,
        kid: Option<&str>,
        claims: &impl Serialize,
        key: &EncodingKey,
    ) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    #[test]
    fn hs256_and_eddsa_tokens_verify_with_their_named_keys() {
        let verifier = verifier();
        let hs = TokenSigner::hs256("hs", SECRET).unwrap().sign(&claims());
        let ed = TokenSigner::eddsa_pem("ed", ED_PRIVATE)
            .unwrap()
            .sign(&claims());
        for token in [hs, ed] {
            let access = verifier.verify(&token).unwrap();
            assert_eq!(access.subject, "alice");
            assert_eq!(access.session, "doc-1");
            assert_eq!(
                access.grants,
                Grants {
                    publish: false,
                    subscribe: true,
                    signal: false
                }
            );
        }
    }

    #[test]
    fn several_keys_are_valid_at_once_for_rotation() {
        let mut verifier = verifier();
        verifier.add_hs256("hs-next", OTHER_SECRET).unwrap();
        for (kid, secret) in [("hs", SECRET), ("hs-next", OTHER_SECRET)] {
            let token = TokenSigner::hs256(kid, secret).unwrap().sign(&claims());
            assert!(verifier.verify(&token).is_ok(), "{kid}");
        }
    }

    #[test]
    fn expired_and_not_yet_valid_tokens_are_refused_beyond_the_leeway() {
        let verifier = verifier();
        let signer = TokenSigner::hs256("hs", SECRET).unwrap();
        let now = unix_now();
        let leeway = LEEWAY.as_secs();
        let expired = Claims {
            exp: now - leeway - 5,
            ..claims()
        };
        assert_eq!(
            verifier.verify(&signer.sign(&expired)),
            Err(TokenError::Expired)
        );
        let just_expired = Claims {
            exp: now - leeway + 5,
            ..claims()
        };
        assert!(verifier.verify(&signer.sign(&just_expired)).is_ok());
        let early = Claims {
            nbf: Some(now + leeway + 5),
            ..claims()
        };
        assert_eq!(
            verifier.verify(&signer.sign(&early)),
            Err(TokenError::NotYetValid)
        );
        let slightly_early = Claims {
            nbf: Some(now + leeway - 5),
            ..claims()
        };
        assert!(verifier.verify(&signer.sign(&slightly_early)).is_ok());
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let verifier = verifier();
        let wrong_secret = TokenSigner::hs256("hs", OTHER_SECRET)
            .unwrap()
            .sign(&claims());
        assert_eq!(
            verifier.verify(&wrong_secret),
            Err(TokenError::BadSignature)
        );
        let wrong_ed = TokenSigner::eddsa_pem("ed", OTHER_ED_PRIVATE)
            .unwrap()
            .sign(&claims());
        assert_eq!(verifier.verify(&wrong_ed), Err(TokenError::BadSignature));
        let unknown = TokenSigner::hs256("nope", SECRET).unwrap().sign(&claims());
        assert_eq!(
            verifier.verify(&unknown),
            Err(TokenError::UnknownKey("nope".into()))
        );
        let no_kid = forge(
            Algorithm::HS256,
            None,
            &claims(),
            &EncodingKey::from_secret(SECRET),
        );
        assert_eq!(verifier.verify(&no_kid), Err(TokenError::MissingKeyId));
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        let verifier = verifier();
        // The EdDSA public key used as an HMAC secret, under the EdDSA key's id.
        let confused = forge(
            Algorithm::HS256,
            Some("ed"),
            &claims(),
            &EncodingKey::from_secret(ED_PUBLIC),
        );
        assert!(matches!(
            verifier.verify(&confused),
            Err(TokenError::WrongAlgorithm { .. })
        ));
        // An EdDSA token naming the HS256 key.
        let ed = TokenSigner::eddsa_pem("hs", ED_PRIVATE)
            .unwrap()
            .sign(&claims());
        assert!(matches!(
            verifier.verify(&ed),
            Err(TokenError::WrongAlgorithm { .. })
        ));
        // Another HMAC size under the HS256 key.
        let hs512 = forge(
            Algorithm::HS512,
            Some("hs"),
            &claims(),
            &EncodingKey::from_secret(SECRET),
        );
        assert!(matches!(
            verifier.verify(&hs512),
            Err(TokenError::WrongAlgorithm { .. })
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        let verifier = verifier();
        let b64 = |json: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        };
        let header = b64(r#"{"alg":"none","kid":"hs","typ":"JWT"}"#);
        let body = b64(&serde_json::to_string(&claims()).unwrap());
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert!(
                matches!(verifier.verify(&token), Err(TokenError::Malformed(_))),
                "{token}"
            );
        }
    }

    #[test]
    fn malformed_tokens_and_claims_are_refused() {
        let verifier = verifier();
        for token in [
            "",
            "abc",
            "a.b.c",
            "....",
            "eyJhbGciOiJIUzI1NiJ9.e30.",
            "\u{0}",
        ] {
            assert!(verifier.verify(token).is_err(), "{token:?}");
        }
        let key = EncodingKey::from_secret(SECRET);
        let no_session = serde_json::json!({"sub": "a", "exp": unix_now() + 60});
        let no_sub = serde_json::json!({"session": "s", "exp": unix_now() + 60});
        let no_exp = serde_json::json!({"sub": "a", "session": "s"});
        let bad_session = serde_json::json!({"sub": "a", "session": "a/b", "exp": unix_now() + 60});
        let bad_grants = serde_json::json!({"sub": "a", "session": "s", "exp": unix_now() + 60, "grants": {"admin": true}});
        for claims in [no_session, no_sub, no_exp, bad_session, bad_grants] {
            let token = forge(Algorithm::HS256, Some("hs"), &claims, &key);
            assert!(
                matches!(verifier.verify(&token), Err(TokenError::InvalidClaims(_))),
                "{claims}"
            );
        }
    }

    #[test]
    fn a_configured_issuer_is_required() {
        let mut verifier = verifier();
        verifier.require_issuer("tests");
        let signer = TokenSigner::hs256("hs", SECRET).unwrap();
        assert!(verifier.verify(&signer.sign(&claims())).is_ok());
        let other = Claims {
            iss: Some("someone-else".into()),
            ..claims()
        };
        assert_eq!(
            verifier.verify(&signer.sign(&other)),
            Err(TokenError::WrongIssuer("tests".into()))
        );
        let none = Claims {
            iss: None,
            ..claims()
        };
        assert!(verifier.verify(&signer.sign(&none)).is_err());
    }

    #[test]
    fn weak_duplicate_and_unparsable_keys_are_refused() {
        let mut verifier = TokenVerifier::default();
        assert_eq!(
            verifier.add_hs256("k", b"short"),
            Err(KeyError::WeakSecret("k".into()))
        );
        verifier.add_hs256("k", SECRET).unwrap();
        assert_eq!(
            verifier.add_hs256("k", OTHER_SECRET),
            Err(KeyError::DuplicateKeyId("k".into()))
        );
        assert_eq!(verifier.add_hs256("", SECRET), Err(KeyError::EmptyKeyId));
        assert!(verifier.add_eddsa_pem("e", b"not a pem").is_err());
        // A private key where a public one belongs, and the reverse.
        assert!(verifier.add_eddsa_pem("e", ED_PRIVATE).is_err());
        assert!(TokenSigner::eddsa_pem("e", ED_PUBLIC).is_err());
        assert!(TokenSigner::hs256("e", b"short").is_err());
    }

    #[test]
    fn the_debug_form_names_keys_but_shows_no_secret() {
        let printed = format!("{:?}", verifier());
        assert!(
            printed.contains("hs (HS256)") && printed.contains("ed (EdDSA)"),
            "{printed}"
        );
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
    }
}
