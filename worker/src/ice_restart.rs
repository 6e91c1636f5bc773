//! The sdpfrags of an ICE restart (RFC 9725 §4.4, PROTOCOL §1): a `PATCH`
//! with `If-Match: *` carries the client's new `ice-ufrag`/`ice-pwd` and
//! candidates; the `200` carries the relay's. Both clients use this.

use std::net::SocketAddr;

/// The UDP host candidate of a restart's new path, `addr` at `priority`
/// (the relay flushes the old pairs on a restart, so the new one need not
/// outrank them).
pub fn host_candidate(addr: SocketAddr, priority: u32) -> String {
    format!(
        "candidate:restart 1 udp {priority} {} {} typ host",
        addr.ip(),
        addr.port()
    )
}

/// The ICE credentials and candidates of one side of a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartFrag {
    /// `a=ice-ufrag`.
    pub ufrag: String,
    /// `a=ice-pwd`.
    pub pwd: String,
    /// `candidate:` attribute values (without `a=`).
    pub candidates: Vec<String>,
}

impl RestartFrag {
    /// The sdpfrag text: credentials, the data channel's media section
    /// (`mid`) and the candidates.
    pub fn to_sdpfrag(&self, mid: &str) -> String {
        let mut frag = format!(
            "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:{mid}\r\n",
            self.ufrag, self.pwd
        );
        for candidate in &self.candidates {
            frag.push_str("a=");
            frag.push_str(candidate);
            frag.push_str("\r\n");
        }
        frag
    }

    /// Reads an sdpfrag; `None` without both credentials. At most 16
    /// candidates are kept.
    pub fn parse(text: &str) -> Option<RestartFrag> {
        let mut ufrag = None;
        let mut pwd = None;
        let mut candidates = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(value) = line.strip_prefix("a=ice-ufrag:") {
                ufrag = Some(value.to_owned());
            } else if let Some(value) = line.strip_prefix("a=ice-pwd:") {
                pwd = Some(value.to_owned());
            } else if let Some(value) = line.strip_prefix("a=")
                && value.starts_with("candidate:")
                && candidates.len() < 16
            {
                candidates.push(value.to_owned());
            }
        }
        Some(RestartFrag {
            ufrag: ufrag.filter(|u| !u.is_empty())?,
            pwd: pwd.filter(|p| !p.is_empty())?,
            candidates,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_frag_survives_writing_and_reading() {
        let frag = RestartFrag {
            ufrag: "abcd".into(),
            pwd: "0123456789abcdefghijkl".into(),
            candidates: vec!["candidate:1 1 udp 2130706431 127.0.0.2 5000 typ host".into()],
        };
        let text = frag.to_sdpfrag("0");
        assert!(text.contains("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n"));
        assert_eq!(RestartFrag::parse(&text), Some(frag));
    }

    #[test]
    fn a_restarts_host_candidate_is_its_address_at_its_priority() {
        let addr: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        assert_eq!(
            host_candidate(addr, 2_130_706_175),
            "candidate:restart 1 udp 2130706175 127.0.0.2 5000 typ host"
        );
    }

    #[test]
    fn a_frag_without_both_credentials_is_no_restart_answer() {
        assert_eq!(RestartFrag::parse("a=ice-ufrag:abcd\r\n"), None);
        assert_eq!(RestartFrag::parse("a=ice-pwd:x\na=ice-ufrag:\n"), None);
        assert_eq!(RestartFrag::parse(""), None);
    }
}
