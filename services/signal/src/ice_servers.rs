//! The ICE servers signal hands out (PROTOCOL.md §10): STUN and TURN URLs as
//! `Link: <url>; rel="ice-server"` headers (RFC 9725 §4.6), the TURN ones
//! with short-lived credentials in the TURN REST API convention that any
//! TURN server with a shared secret accepts (coturn's `use-auth-secret`):
//! `username` is `<expiry unix time>:<identity>`, `credential` is base64 of
//! HMAC-SHA1(secret, username).

use std::fmt;
use std::time::Duration;

use aws_lc_rs::hmac;
use axum::http::HeaderValue;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The default longest life of a TURN credential: one hour.
pub const DEFAULT_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(3600);

/// The ICE servers of a deployment; empty by default (no `Link` headers).
#[derive(Clone)]
pub struct IceServers {
    stun: Vec<String>,
    turn: Vec<String>,
    secret: Option<hmac::Key>,
    lifetime: Duration,
}

/// Why an ICE server configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceServerError {
    /// A URL that is not `stun:`/`stuns:` (for STUN) or `turn:`/`turns:`
    /// (for TURN), or that cannot sit inside `<…>` in a header.
    #[error("{url:?} is not a {kind} URL ({schemes}) that fits in a Link header")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// `STUN` or `TURN`.
        kind: &'static str,
        /// The schemes allowed.
        schemes: &'static str,
    },
    /// TURN URLs without the shared secret their credentials are made with.
    #[error("TURN URLs need a TURN shared secret (the TURN server's static-auth-secret)")]
    NoSecret,
    /// An empty shared secret.
    #[error("the TURN shared secret must not be empty")]
    EmptySecret,
    /// A lifetime of zero, under which every credential is born expired.
    #[error("the TURN credential lifetime must be at least one second")]
    NoLifetime,
}

/// Who a TURN credential is for: the token's subject and, for a signed
/// token, its expiry, which the credential's may not outlive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Holder<'a> {
    /// The token's `sub` (`dev` for the development token).
    pub(crate) identity: &'a str,
    /// The token's `exp`, seconds since the Unix epoch; `None` for the
    /// development token, which does not expire.
    pub(crate) expires_at: Option<u64>,
}

impl IceServers {
    /// `stun` and `turn` URLs, TURN credentials made with `secret` and
    /// valid for `lifetime` at most.
    pub fn new(
        stun: Vec<String>,
        turn: Vec<String>,
        secret: Option<&[u8]>,
        lifetime: Duration,
    ) -> Result<Self, IceServerError> {
        for url in &stun {
            check_url(url, "STUN", &["stun:", "stuns:"])?;
        }
        for url in &turn {
            check_url(url, "TURN", &["turn:", "turns:"])?;
        }
        let secret = match secret {
            Some([]) => return Err(IceServerError::EmptySecret),
            Some(secret) => Some(hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret)),
            None if !turn.is_empty() => return Err(IceServerError::NoSecret),
            None => None,
        };
        if lifetime < Duration::from_secs(1) {
            return Err(IceServerError::NoLifetime);
        }
        Ok(IceServers {
            stun,
            turn,
            secret,
            lifetime,
        })
    }

    /// Whether there is nothing to hand out.
    pub fn is_empty(&self) -> bool {
        self.stun.is_empty() && self.turn.is_empty()
    }

    /// The `Link` header values for `holder` at `now_unix` (seconds since
    /// the Unix epoch): every STUN server, and every TURN server with a
    /// credential expiring at the earlier of `now_unix + lifetime` and the
    /// token's expiry. Without a holder (a CORS preflight, which carries no
    /// token), or when the token expires before `now_unix`, STUN only.
    pub(crate) fn links(&self, holder: Option<Holder<'_>>, now_unix: u64) -> Vec<HeaderValue> {
        let mut links: Vec<HeaderValue> = self
            .stun
            .iter()
            .filter_map(|url| header(format!("<{url}>; rel=\"ice-server\"")))
            .collect();
        let (Some(holder), Some(secret)) = (holder, &self.secret) else {
            return links;
        };
        let expiry = holder
            .expires_at
            .unwrap_or(u64::MAX)
            .min(now_unix.saturating_add(self.lifetime.as_secs()));
        if expiry <= now_unix {
            return links;
        }
        let username = format!("{expiry}:{}", holder.identity);
        let credential = turn_credential(secret, &username);
        // An identity with a `"` or `\` or control characters cannot be
        // quoted plainly; quoted-pair escapes (RFC 9110 §5.6.4) keep it exact.
        let quoted_username = quote(&username);
        links.extend(self.turn.iter().filter_map(|url| {
            header(format!(
                "<{url}>; rel=\"ice-server\"; username={quoted_username}; \
                 credential=\"{credential}\"; credential-type=\"password\""
            ))
        }));
        links
    }
}

impl Default for IceServers {
    /// No servers, and the default credential lifetime.
    fn default() -> Self {
        IceServers {
            stun: Vec::new(),
            turn: Vec::new(),
            secret: None,
            lifetime: DEFAULT_CREDENTIAL_LIFETIME,
        }
    }
}

/// URLs in full, the secret never, the lifetime.
impl fmt::Debug for IceServers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceServers")
            .field("stun", &self.stun)
            .field("turn", &self.turn)
            .field(
                "secret",
                &self.secret.as_ref().map(|_| "<TURN shared secret>"),
            )
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// The TURN REST API password for `username`: base64(HMAC-SHA1(secret,
/// username)).
fn turn_credential(secret: &hmac::Key, username: &str) -> String {
    STANDARD.encode(hmac::sign(secret, username.as_bytes()).as_ref())
}

fn check_url(
    url: &str,
    kind: &'static str,
    schemes: &[&'static str],
) -> Result<(), IceServerError> {
    let fits = schemes
        .iter()
        .any(|scheme| url.len() > scheme.len() && url.starts_with(scheme))
        && url
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"' | b','));
    if fits {
        Ok(())
    } else {
        Err(IceServerError::BadUrl {
            url: url.to_owned(),
            kind,
            schemes: if kind == "STUN" {
                "stun:, stuns:"
            } else {
                "turn:, turns:"
            },
        })
    }
}

/// `value` as an HTTP quoted-string.
fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// `text` as a header value; one that cannot be (an identity with control
/// characters, which a verified token should never carry) is left out and
/// logged.
fn header(text: String) -> Option<HeaderValue> {
    HeaderValue::try_from(text)
        .inspect_err(|_| tracing::warn!("an ICE server Link could not be written as a header"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(lifetime: Duration) -> IceServers {
        IceServers::new(
            vec!["stun:stun.example.net:3478".into()],
            vec![
                "turn:turn.example.net:3478?transport=udp".into(),
                "turns:turn.example.net:5349?transport=tcp".into(),
            ],
            Some(b"north-sea"),
            lifetime,
        )
        .unwrap()
    }

    fn texts(links: &[HeaderValue]) -> Vec<&str> {
        links.iter().map(|l| l.to_str().unwrap()).collect()
    }

    #[test]
    fn the_credential_is_base64_of_hmac_sha1_of_the_username() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?").
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"Jefe");
        let expected = STANDARD.encode([
            0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84,
            0xdf, 0x9c, 0x25, 0x9a, 0x7c, 0x79,
        ]);
        assert_eq!(
            turn_credential(&key, "what do ya want for nothing?"),
            expected
        );
    }

    #[test]
    fn a_token_holder_gets_stun_and_turn_with_credentials_bound_to_it() {
        let now = 1_700_000_000;
        let holder = Holder {
            identity: "alice",
            expires_at: Some(now + 7200),
        };
        let links = servers(DEFAULT_CREDENTIAL_LIFETIME).links(Some(holder), now);
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"north-sea");
        let username = format!("{}:alice", now + 3600);
        let credential = turn_credential(&key, &username);
        assert_eq!(
            texts(&links),
            [
                "<stun:stun.example.net:3478>; rel=\"ice-server\"".to_owned(),
                format!(
                    "<turn:turn.example.net:3478?transport=udp>; rel=\"ice-server\"; \
                     username=\"{username}\"; credential=\"{credential}\"; credential-type=\"password\""
                ),
                format!(
                    "<turns:turn.example.net:5349?transport=tcp>; rel=\"ice-server\"; \
                     username=\"{username}\"; credential=\"{credential}\"; credential-type=\"password\""
                ),
            ]
        );
    }

    #[test]
    fn the_credential_expires_no_later_than_the_token() {
        let now = 1_700_000_000;
        let holder = Holder {
            identity: "bob",
            expires_at: Some(now + 60),
        };
        let links = servers(DEFAULT_CREDENTIAL_LIFETIME).links(Some(holder), now);
        assert!(
            texts(&links)[1].contains(&format!("username=\"{}:bob\"", now + 60)),
            "{links:?}"
        );
        let dev = Holder {
            identity: "dev",
            expires_at: None,
        };
        let links = servers(Duration::from_secs(90)).links(Some(dev), now);
        assert!(
            texts(&links)[1].contains(&format!("username=\"{}:dev\"", now + 90)),
            "{links:?}"
        );
    }

    #[test]
    fn no_token_or_an_expired_one_gets_stun_only() {
        let now = 1_700_000_000;
        let servers = servers(DEFAULT_CREDENTIAL_LIFETIME);
        let stun_only = ["<stun:stun.example.net:3478>; rel=\"ice-server\""];
        assert_eq!(texts(&servers.links(None, now)), stun_only);
        let expired = Holder {
            identity: "carol",
            expires_at: Some(now - 1),
        };
        assert_eq!(texts(&servers.links(Some(expired), now)), stun_only);
        assert!(IceServers::default().links(None, now).is_empty());
        assert!(IceServers::default().is_empty());
    }

    #[test]
    fn an_identity_with_quotes_is_escaped_not_broken() {
        let holder = Holder {
            identity: "a\"b\\c",
            expires_at: None,
        };
        let links = servers(Duration::from_secs(10)).links(Some(holder), 100);
        assert!(
            texts(&links)[1].contains(r#"username="110:a\"b\\c""#),
            "{links:?}"
        );
    }

    #[test]
    fn bad_configurations_are_refused_with_the_reason() {
        let hour = DEFAULT_CREDENTIAL_LIFETIME;
        let bad_stun = IceServers::new(vec!["http://x".into()], vec![], None, hour);
        assert!(matches!(
            bad_stun,
            Err(IceServerError::BadUrl { kind: "STUN", .. })
        ));
        let bad_turn = IceServers::new(vec![], vec!["stun:x".into()], Some(b"s"), hour);
        assert!(matches!(
            bad_turn,
            Err(IceServerError::BadUrl { kind: "TURN", .. })
        ));
        let spaced = IceServers::new(vec!["stun:a b".into()], vec![], None, hour);
        assert!(spaced.is_err());
        let angle = IceServers::new(vec!["stun:a>".into()], vec![], None, hour);
        assert!(angle.is_err());
        assert_eq!(
            IceServers::new(vec![], vec!["turn:x".into()], None, hour).err(),
            Some(IceServerError::NoSecret)
        );
        assert_eq!(
            IceServers::new(vec![], vec!["turn:x".into()], Some(b""), hour).err(),
            Some(IceServerError::EmptySecret)
        );
        assert_eq!(
            IceServers::new(vec![], vec![], None, Duration::ZERO).err(),
            Some(IceServerError::NoLifetime)
        );
    }

    #[test]
    fn the_secret_is_never_printed() {
        let printed = format!("{:?}", servers(DEFAULT_CREDENTIAL_LIFETIME));
        assert!(!printed.contains("north-sea"), "{printed}");
        assert!(printed.contains("turn.example.net"), "{printed}");
    }
}
