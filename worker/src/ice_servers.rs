//! The ICE servers signal hands out (PROTOCOL.md §10), read from its
//! `Link: <url>; rel="ice-server"; username="…"; credential="…"` headers
//! (RFC 9725 §4.6, RFC 8288). Both clients use this: the browser passes the
//! servers to its `RTCPeerConnection`, the native peer reports them.
//!
//! Several links may share one header value, separated by commas (as
//! `fetch` joins repeated headers). Links of another `rel`, and anything
//! that does not parse, are skipped; at most [`MAX_ICE_SERVERS`] are kept.

/// The most ICE servers read from one response: a bound on what a server
/// can make a client hold.
pub const MAX_ICE_SERVERS: usize = 16;

/// One STUN or TURN server, with its credentials when it has any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    /// The server's URL (`stun:…`, `turn:…?transport=udp`, `turns:…`).
    pub url: String,
    /// The TURN username (`<expiry>:<identity>`), if given.
    pub username: Option<String>,
    /// The TURN password, if given.
    pub credential: Option<String>,
}

/// The ICE servers in `values`, the `Link` header values of one response,
/// in order.
pub fn parse_links<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<IceServer> {
    let mut servers = Vec::new();
    for value in values {
        let mut rest = value;
        while servers.len() < MAX_ICE_SERVERS {
            rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
            if rest.is_empty() {
                break;
            }
            let (link, after) = split_link(rest);
            rest = after;
            if let Some(server) = link {
                servers.push(server);
            }
        }
    }
    servers
}

/// The first link of `text` (an ICE server, or `None` for another `rel` or
/// a malformed link) and the text after it.
fn split_link(text: &str) -> (Option<IceServer>, &str) {
    let Some(after_open) = text.strip_prefix('<') else {
        return (None, skip_to_next_link(text));
    };
    let Some(close) = after_open.find('>') else {
        return (None, "");
    };
    let url = after_open[..close].trim().to_owned();
    let mut rest = &after_open[close + 1..];
    let mut is_ice_server = false;
    let mut username = None;
    let mut credential = None;
    loop {
        rest = rest.trim_start();
        let Some(after_semicolon) = rest.strip_prefix(';') else {
            break;
        };
        let Some((name, value, after)) = parameter(after_semicolon) else {
            return (None, skip_to_next_link(after_semicolon));
        };
        rest = after;
        match name.to_ascii_lowercase().as_str() {
            "rel" => {
                is_ice_server = value
                    .split_ascii_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("ice-server"))
            }
            "username" => username = Some(value),
            "credential" => credential = Some(value),
            _ => {}
        }
    }
    let well_ended = rest.is_empty() || rest.starts_with(',');
    let server = (is_ice_server && well_ended && !url.is_empty()).then_some(IceServer {
        url,
        username,
        credential,
    });
    (
        server,
        if well_ended {
            rest
        } else {
            skip_to_next_link(rest)
        },
    )
}

/// One `name=value` or `name="quoted value"` (or a bare `name`) and the
/// text after it; `None` when the quotes never close.
fn parameter(text: &str) -> Option<(&str, String, &str)> {
    let text = text.trim_start();
    let name_end = text
        .find(|c: char| c == '=' || c == ';' || c == ',' || c.is_ascii_whitespace())
        .unwrap_or(text.len());
    let name = &text[..name_end];
    let rest = text[name_end..].trim_start();
    let Some(value_text) = rest.strip_prefix('=') else {
        return Some((name, String::new(), rest));
    };
    let value_text = value_text.trim_start();
    if let Some(quoted) = value_text.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((index, c)) = chars.next() {
            match c {
                '"' => return Some((name, value, &quoted[index + 1..])),
                '\\' => value.push(chars.next()?.1),
                c => value.push(c),
            }
        }
        None
    } else {
        let end = value_text
            .find(|c: char| c == ';' || c == ',' || c.is_ascii_whitespace())
            .unwrap_or(value_text.len());
        Some((name, value_text[..end].to_owned(), &value_text[end..]))
    }
}

/// The text after the next comma outside quotes and `<…>`.
fn skip_to_next_link(text: &str) -> &str {
    let (mut quoted, mut bracketed, mut escaped) = (false, false, false);
    for (index, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if !bracketed => quoted = !quoted,
            '<' if !quoted => bracketed = true,
            '>' if !quoted => bracketed = false,
            ',' if !quoted && !bracketed => return &text[index + 1..],
            _ => {}
        }
    }
    ""
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(url: &str) -> IceServer {
        IceServer {
            url: url.into(),
            username: None,
            credential: None,
        }
    }

    fn turn(url: &str, username: &str, credential: &str) -> IceServer {
        IceServer {
            url: url.into(),
            username: Some(username.into()),
            credential: Some(credential.into()),
        }
    }

    #[test]
    fn signals_links_parse_one_per_header_or_joined_by_commas() {
        let stun_link = "<stun:stun.example.net:3478>; rel=\"ice-server\"";
        let turn_link = "<turn:turn.example.net:3478?transport=udp>; rel=\"ice-server\"; \
            username=\"1795330331:alice\"; credential=\"a+b/c=\"; credential-type=\"password\"";
        let expected = vec![
            stun("stun:stun.example.net:3478"),
            turn(
                "turn:turn.example.net:3478?transport=udp",
                "1795330331:alice",
                "a+b/c=",
            ),
        ];
        assert_eq!(parse_links([stun_link, turn_link]), expected);
        let joined = format!("{stun_link}, {turn_link}");
        assert_eq!(parse_links([joined.as_str()]), expected);
    }

    #[test]
    fn other_relations_and_garbage_are_skipped() {
        let value = "<https://example.net/>; rel=\"next\", garbage, \
            <stun:a>;rel=ice-server, <stun:b>; rel=\"preload ice-server\", \
            <stun:c> ; rel=\"ice-server\" trailing, <stun:d>; rel=\"ice-server";
        assert_eq!(parse_links([value]), vec![stun("stun:a"), stun("stun:b")]);
        assert!(parse_links(["<stun:unclosed; rel=\"ice-server\""]).is_empty());
        assert!(parse_links([""]).is_empty());
    }

    #[test]
    fn quoted_pairs_and_commas_inside_quotes_are_kept() {
        let value = r#"<turn:t>; rel="ice-server"; username="1:a\"b,c"; credential="x""#;
        assert_eq!(parse_links([value]), vec![turn("turn:t", "1:a\"b,c", "x")]);
    }

    #[test]
    fn a_server_cannot_make_a_client_hold_more_than_the_bound() {
        let one = "<stun:s>; rel=\"ice-server\"";
        let many = vec![one; MAX_ICE_SERVERS + 5];
        assert_eq!(parse_links(many).len(), MAX_ICE_SERVERS);
    }
}
