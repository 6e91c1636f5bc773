//! ICE restart of a live peer connection (RFC 9725 §4.4, PROTOCOL §1): the
//! peer's new ICE credentials and candidates in, the relay's new ones out.
//! The peer keeps its `Rtc` (DTLS, SCTP, channels), its peer id and its
//! place in the session's stream; only the ICE credentials change, so the
//! peer can reach the relay from a new address. The core does the swap
//! ([`RelayCore::restart_ice`](crate::RelayCore::restart_ice)); the demux
//! routes the new address by the new local ufrag.
//!
//! The swap is a real RFC 8445 §9 restart: the relay keeps the peer's offer
//! ([`RestartOffer`]) and accepts it again under the peer's new
//! credentials, so str0m flushes the ICE agent's remote candidates and
//! pairs (`IceAgent::ice_restart`, reached only through an offer) and the
//! first pair the peer nominates on its new path becomes the send path,
//! whatever its priority. Setting the credentials alone would keep the old
//! nominated pair, which outranks a new one of equal or lower priority
//! (Chromium's host candidate on a new address). DTLS and SCTP are set up
//! once and stay: str0m skips both when the offer comes again.

use str0m::change::SdpOffer;
use str0m::{Candidate, IceCreds, Rtc};

/// What a peer sends to restart ICE.
#[derive(Debug, Clone)]
pub struct IceRestart {
    /// The peer's new `ice-ufrag` and `ice-pwd`.
    pub remote: IceCreds,
    /// The peer's candidates under its new credentials (may be none: the
    /// relay is ICE-lite and learns the address from the peer's checks).
    pub candidates: Vec<Candidate>,
}

/// The relay's side of a restart, for the `200` sdpfrag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceRestarted {
    /// The relay's new `ice-ufrag`: the resource's new ETag.
    pub ice_ufrag: String,
    /// The relay's new `ice-pwd`.
    pub ice_pwd: String,
    /// The relay's candidates, as `candidate:` attribute values.
    pub candidates: Vec<String>,
}

/// The peer's offer without its candidates, kept to renegotiate ICE: a
/// few hundred bytes per WebRTC peer.
pub(crate) struct RestartOffer(String);

impl RestartOffer {
    /// Keeps `offer` (its candidates dropped: a restart brings its own).
    pub(crate) fn new(offer: &SdpOffer) -> Self {
        let lines = offer.to_sdp_string();
        let kept = lines
            .split("\r\n")
            .filter(|line| !line.is_empty() && !is_candidate_line(line))
            .fold(String::new(), |mut sdp, line| {
                sdp.push_str(line);
                sdp.push_str("\r\n");
                sdp
            });
        RestartOffer(kept)
    }

    /// The offer again under the peer's new credentials `remote`.
    fn with_credentials(&self, remote: &IceCreds) -> Result<SdpOffer, String> {
        let mut sdp = String::with_capacity(self.0.len() + 64);
        for line in self.0.split("\r\n").filter(|line| !line.is_empty()) {
            if line.starts_with("a=ice-ufrag:") {
                sdp.push_str("a=ice-ufrag:");
                sdp.push_str(&remote.ufrag);
            } else if line.starts_with("a=ice-pwd:") {
                sdp.push_str("a=ice-pwd:");
                sdp.push_str(&remote.pass);
            } else {
                sdp.push_str(line);
            }
            sdp.push_str("\r\n");
        }
        SdpOffer::from_sdp_string(&sdp).map_err(|e| format!("cannot renegotiate ICE: {e}"))
    }
}

fn is_candidate_line(line: &str) -> bool {
    line.starts_with("a=candidate:") || line == "a=end-of-candidates"
}

/// Restarts `rtc`'s ICE with the peer's new credentials `remote` by
/// accepting `offer` again; returns the relay's new local credentials.
/// Refuses credentials that are not new (RFC 8445 §9: a restart changes
/// both) or not ICE characters (RFC 8839 §5.4), leaving `rtc` as it was.
pub(crate) fn renegotiate(
    rtc: &mut Rtc,
    offer: &RestartOffer,
    remote: &IceCreds,
) -> Result<IceCreds, String> {
    check_credentials(remote)?;
    let before = rtc.direct_api().local_ice_credentials();
    let offer = offer.with_credentials(remote)?;
    rtc.sdp_api()
        .accept_offer(offer)
        .map_err(|e| format!("cannot renegotiate ICE: {e}"))?;
    let local = rtc.direct_api().local_ice_credentials();
    if local == before {
        // str0m restarts only on credentials that differ from the current.
        return Err("an ICE restart needs a new ice-ufrag and ice-pwd".into());
    }
    Ok(local)
}

fn check_credentials(remote: &IceCreds) -> Result<(), String> {
    let ice_chars = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    };
    if !(4..=256).contains(&remote.ufrag.len()) || !ice_chars(&remote.ufrag) {
        return Err("ice-ufrag must be 4 to 256 ICE characters".into());
    }
    if !(22..=256).contains(&remote.pass.len()) || !ice_chars(&remote.pass) {
        return Err("ice-pwd must be 22 to 256 ICE characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
        a=candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host\r\na=end-of-candidates\r\n\
        a=ice-ufrag:oldu\r\na=ice-pwd:oldpasswordoldpassword00\r\n\
        a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
        a=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\n";

    #[test]
    fn a_kept_offer_has_no_candidates_and_takes_the_new_credentials() {
        let offer = SdpOffer::from_sdp_string(OFFER).expect("an offer");
        let kept = RestartOffer::new(&offer);
        assert!(!kept.0.contains("candidate"), "{}", kept.0);
        let creds = IceCreds {
            ufrag: "newu".into(),
            pass: "newpasswordnewpassword11".into(),
        };
        let again = kept
            .with_credentials(&creds)
            .expect("an offer")
            .to_sdp_string();
        assert!(again.contains("a=ice-ufrag:newu\r\n"), "{again}");
        assert!(again.contains("a=ice-pwd:newpasswordnewpassword11\r\n"));
        assert!(!again.contains("oldu") && !again.contains("10.0.0.1"));
    }

    #[test]
    fn credentials_must_be_ice_characters_of_the_right_length() {
        let creds = |ufrag: &str, pass: &str| IceCreds {
            ufrag: ufrag.into(),
            pass: pass.into(),
        };
        assert!(check_credentials(&creds("abcd", "0123456789abcdefghijkl")).is_ok());
        assert!(check_credentials(&creds("abc", "0123456789abcdefghijkl")).is_err());
        assert!(check_credentials(&creds("ab d", "0123456789abcdefghijkl")).is_err());
        assert!(check_credentials(&creds("abcd", "short")).is_err());
        assert!(check_credentials(&creds("abcd", "0123456789abcdefghijk\r")).is_err());
    }
}
