//! The checks signal makes on SDP before the network sees it: an offer must be
//! SDP text with an SCTP application m-line (deltamesh's three data channels
//! ride on it), and a trickle sdpfrag yields its `a=candidate:` lines. The
//! relay parses SDP properly; these checks only turn garbage away early with a
//! clear 400. An ICE restart sdpfrag yields the peer's new credentials too.

use crate::network::{IceRestartAnswer, IceRestartRequest};

/// Why a body is not acceptable SDP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SdpError {
    /// No bytes at all.
    #[error("the body is empty")]
    Empty,
    /// Bytes that are not UTF-8 text.
    #[error("the body is not UTF-8 text")]
    NotUtf8,
    /// An offer whose first line is not `v=0`.
    #[error("an SDP offer starts with the line `v=0`")]
    NoVersion,
    /// A line that is not `<letter>=<value>`.
    #[error("line {line} is not an SDP `<type>=<value>` line")]
    BadLine {
        /// The 1-based line number.
        line: usize,
    },
    /// An ICE restart sdpfrag without `a=ice-ufrag` and `a=ice-pwd`, or
    /// with ones that are not ICE credentials.
    #[error(
        "an ICE restart sdpfrag needs the new `a=ice-ufrag` (4 to 256 ice-chars) and \
         `a=ice-pwd` (22 to 256 ice-chars; ice-char is A-Z a-z 0-9 + /)"
    )]
    BadIceCredentials,
    /// An offer without the data channel m-line.
    #[error(
        "the offer has no `m=application` line with an SCTP protocol \
         (e.g. `m=application 9 UDP/DTLS/SCTP webrtc-datachannel`); \
         deltamesh's three data channels need an SCTP application m-line"
    )]
    NoSctpApplication,
}

/// The offer text in `body`, when it is SDP with an SCTP application m-line.
pub(crate) fn check_offer(body: &[u8]) -> Result<&str, SdpError> {
    let text = text(body)?;
    let mut lines = lines(text)?.into_iter();
    if lines.next() != Some(('v', "0")) {
        return Err(SdpError::NoVersion);
    }
    let has_sctp_application = lines.any(|(kind, value)| {
        let mut fields = value.split_ascii_whitespace();
        kind == 'm'
            && fields.next() == Some("application")
            && fields.nth(1).is_some_and(|proto| proto.contains("SCTP"))
    });
    if has_sctp_application {
        Ok(text)
    } else {
        Err(SdpError::NoSctpApplication)
    }
}

/// The `a=candidate:` lines of a trickle sdpfrag (RFC 8840), in order. The
/// other lines (`a=ice-ufrag`, `a=ice-pwd`, `a=mid`, `a=end-of-candidates`,
/// `m=`) are allowed and left out.
pub(crate) fn trickle_candidates(body: &[u8]) -> Result<Vec<String>, SdpError> {
    Ok(lines(text(body)?)?
        .into_iter()
        .filter(|&(kind, value)| kind == 'a' && value.starts_with("candidate:"))
        .map(|(_, value)| format!("a={value}"))
        .collect())
}

/// The new credentials, the `a=mid` (if any) and the candidates of an ICE
/// restart sdpfrag (RFC 8840, RFC 9725 §4.4).
pub(crate) fn ice_restart(body: &[u8]) -> Result<(IceRestartRequest, Option<String>), SdpError> {
    let lines = lines(text(body)?)?;
    let value = |name: &str| {
        lines
            .iter()
            .find_map(|&(kind, value)| (kind == 'a').then(|| value.strip_prefix(name)).flatten())
    };
    let credential = |name: &str, min: usize| {
        value(name)
            .filter(|v| (min..=256).contains(&v.len()) && v.bytes().all(is_ice_char))
            .map(str::to_owned)
            .ok_or(SdpError::BadIceCredentials)
    };
    let restart = IceRestartRequest {
        ufrag: credential("ice-ufrag:", 4)?,
        pwd: credential("ice-pwd:", 22)?,
        candidates: trickle_candidates(body)?,
    };
    Ok((restart, value("mid:").map(str::to_owned)))
}

/// The `200` sdpfrag of an ICE restart: the relay's new credentials, the
/// data channel's media section under `mid` and the relay's candidates.
pub(crate) fn ice_restart_answer(answer: &IceRestartAnswer, mid: Option<&str>) -> String {
    let mut frag = format!(
        "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:{}\r\n",
        answer.ufrag,
        answer.pwd,
        mid.unwrap_or("0")
    );
    for candidate in &answer.candidates {
        frag.push_str("a=");
        frag.push_str(candidate.trim_start_matches("a="));
        frag.push_str("\r\n");
    }
    frag
}

/// ice-char (RFC 8839 §5.4): ALPHA / DIGIT / "+" / "/".
fn is_ice_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

/// `body` as text, when it is non-empty UTF-8.
fn text(body: &[u8]) -> Result<&str, SdpError> {
    if body.is_empty() {
        return Err(SdpError::Empty);
    }
    std::str::from_utf8(body).map_err(|_| SdpError::NotUtf8)
}

/// The `(type, value)` pairs of SDP `text`, when every line is
/// `<lowercase letter>=<value>`. Lines end in CRLF or LF; the last one may be
/// unterminated.
fn lines(text: &str) -> Result<Vec<(char, &str)>, SdpError> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.split('\n')
        .enumerate()
        .map(|(index, line)| {
            let mut chars = line.strip_suffix('\r').unwrap_or(line).chars();
            match (chars.next(), chars.next()) {
                (Some(kind @ 'a'..='z'), Some('=')) => Ok((kind, chars.as_str())),
                _ => Err(SdpError::BadLine { line: index + 1 }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
        a=sctp-port:5000\r\n";

    #[test]
    fn a_browser_style_offer_passes() {
        assert_eq!(check_offer(OFFER.as_bytes()), Ok(OFFER));
        let lf_only = OFFER.replace("\r\n", "\n");
        assert!(check_offer(lf_only.trim_end().as_bytes()).is_ok());
        let legacy = OFFER.replace("UDP/DTLS/SCTP webrtc-datachannel", "DTLS/SCTP 5000");
        assert!(check_offer(legacy.as_bytes()).is_ok());
    }

    #[test]
    fn offers_that_are_not_sdp_are_refused_with_the_reason() {
        assert_eq!(check_offer(b""), Err(SdpError::Empty));
        assert_eq!(check_offer(b"v=0\r\n\xff\r\n"), Err(SdpError::NotUtf8));
        assert_eq!(check_offer(b"hello"), Err(SdpError::BadLine { line: 1 }));
        assert_eq!(
            check_offer(b"o=- 1 2 IN IP4 0.0.0.0\r\n"),
            Err(SdpError::NoVersion)
        );
        assert_eq!(check_offer(b"v=1\r\n"), Err(SdpError::NoVersion));
        assert_eq!(
            check_offer(b"v=0\r\n\r\ns=-\r\n"),
            Err(SdpError::BadLine { line: 2 })
        );
        assert_eq!(
            check_offer(b"v=0\r\nS=-\r\n"),
            Err(SdpError::BadLine { line: 2 })
        );
        assert_eq!(
            check_offer("v=0\r\né=x\r\n".as_bytes()),
            Err(SdpError::BadLine { line: 2 })
        );
    }

    #[test]
    fn an_offer_needs_an_sctp_application_m_line() {
        let audio = OFFER.replace("m=application 9 UDP/DTLS/SCTP", "m=audio 9 UDP/DTLS/SCTP");
        let rtp = OFFER.replace("UDP/DTLS/SCTP webrtc-datachannel", "UDP/TLS/RTP/SAVPF 111");
        let short = OFFER.replace(
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
            "m=application 9",
        );
        for offer in [audio, rtp, short] {
            assert_eq!(
                check_offer(offer.as_bytes()),
                Err(SdpError::NoSctpApplication),
                "{offer}"
            );
        }
    }

    #[test]
    fn a_sdpfrag_yields_its_candidate_lines() {
        let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:secret\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
            a=mid:0\r\na=candidate:1 1 UDP 2130706431 10.0.0.1 5000 typ host\r\n\
            a=candidate:2 1 UDP 1694498815 1.2.3.4 5000 typ srflx raddr 10.0.0.1 rport 5000\r\n\
            a=end-of-candidates\r\n";
        assert_eq!(
            trickle_candidates(frag.as_bytes()),
            Ok(vec![
                "a=candidate:1 1 UDP 2130706431 10.0.0.1 5000 typ host".to_owned(),
                "a=candidate:2 1 UDP 1694498815 1.2.3.4 5000 typ srflx raddr 10.0.0.1 rport 5000"
                    .to_owned(),
            ])
        );
        assert_eq!(trickle_candidates(b"a=end-of-candidates"), Ok(vec![]));
        assert_eq!(
            trickle_candidates(b"a=candidate:1\r\ngarbage\r\n"),
            Err(SdpError::BadLine { line: 2 })
        );
        assert_eq!(trickle_candidates(b"\xfe"), Err(SdpError::NotUtf8));
        assert_eq!(trickle_candidates(b""), Err(SdpError::Empty));
    }
}
