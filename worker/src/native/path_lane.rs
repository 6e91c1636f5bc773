//! Which lane a WebRTC connection's data takes: `webrtc-udp` or
//! `webrtc-tcp`. str0m has no API for the nominated candidate pair, but it
//! sends DTLS (and the SCTP inside it) only on that pair, while its STUN
//! checks go on every pair: so the transport of the driver's outgoing
//! DTLS datagrams names the path in use. [`PathLane`] watches them and
//! reports a change (ICE nominating TCP when UDP is blocked, an ICE
//! restart giving UDP back) to [`NativePeer::lane`](super::NativePeer::lane).

use str0m::net::Protocol;
use tokio::sync::watch;

use crate::lane::Lane;

/// The lane of a WebRTC connection, from the datagrams it sends.
pub(super) struct PathLane {
    lane: watch::Sender<Lane>,
    /// What `lane` holds, so a datagram on the same path costs no lock.
    current: Lane,
}

impl PathLane {
    /// Reports `first` (the lane the connection's candidates suggest
    /// before any DTLS went out) on `lane`.
    pub(super) fn new(lane: watch::Sender<Lane>, first: Lane) -> Self {
        let _ = lane.send(first);
        PathLane {
            lane,
            current: first,
        }
    }

    /// The driver sent `contents` over `proto`: a DTLS record moves the
    /// lane to that transport's.
    pub(super) fn sent(&mut self, proto: Protocol, contents: &[u8]) {
        if !is_dtls(contents) {
            return;
        }
        let lane = match proto {
            Protocol::Udp => Lane::WebRtcUdp,
            _ => Lane::WebRtcTcp,
        };
        if lane != self.current {
            self.current = lane;
            let _ = self.lane.send(lane);
        }
    }

    /// The watch back, for the next connection.
    pub(super) fn into_sender(self) -> watch::Sender<Lane> {
        self.lane
    }
}

/// Whether a datagram is a DTLS record: its first byte is 20 to 63 (RFC
/// 7983 §7; STUN's is 0 to 3).
fn is_dtls(contents: &[u8]) -> bool {
    contents.first().is_some_and(|b| (20..=63).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DTLS application-data record header and a STUN binding request's.
    const DTLS: [u8; 3] = [23, 0xfe, 0xfd];
    const STUN: [u8; 2] = [0x00, 0x01];

    #[test]
    fn the_lane_follows_the_transport_of_dtls_and_ignores_stun() {
        let (sender, lane) = watch::channel(Lane::WebSocket);
        let mut path = PathLane::new(sender, Lane::WebRtcUdp);
        assert_eq!(*lane.borrow(), Lane::WebRtcUdp);
        // Checks on the TCP pair say nothing about the path in use.
        path.sent(Protocol::Tcp, &STUN);
        assert_eq!(*lane.borrow(), Lane::WebRtcUdp);
        path.sent(Protocol::Tcp, &DTLS);
        assert_eq!(*lane.borrow(), Lane::WebRtcTcp);
        path.sent(Protocol::Udp, &[]);
        assert_eq!(*lane.borrow(), Lane::WebRtcTcp);
        path.sent(Protocol::Udp, &DTLS);
        assert_eq!(*lane.borrow(), Lane::WebRtcUdp);
    }
}
