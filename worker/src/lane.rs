//! Lane choice, sans-IO, shared by the native peer and the browser worker:
//! which transport the next connection tries (PROTOCOL §11 says where
//! WebRTC cannot connect at all, the same channels run over one
//! WebSocket). WebRTC first; the WebSocket lane when WebRTC has not
//! connected within the fallback time or failed; what worked is
//! remembered for the next reconnect, and WebRTC, the better lane, is
//! tried again once `retry_webrtc` has passed on the WebSocket lane. An
//! option forces one lane. Time is passed in, in milliseconds of any
//! monotonic clock.

use std::time::Duration;

/// Which lanes a peer may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LaneChoice {
    /// WebRTC first, the WebSocket lane when it cannot connect.
    #[default]
    Auto,
    /// WebRTC only.
    WebRtc,
    /// The WebSocket lane only.
    WebSocket,
}

impl LaneChoice {
    /// The choice named `name` (`auto`, `webrtc`, `websocket`).
    pub fn from_name(name: &str) -> Option<LaneChoice> {
        match name {
            "auto" => Some(LaneChoice::Auto),
            "webrtc" => Some(LaneChoice::WebRtc),
            "websocket" => Some(LaneChoice::WebSocket),
            _ => None,
        }
    }
}

/// The transport a connection runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WebRTC data channels.
    WebRtc,
    /// One WebSocket (PROTOCOL §11).
    WebSocket,
}

/// The lane in use, as `stats()` and the demo name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// WebRTC over a UDP candidate pair.
    WebRtcUdp,
    /// WebRTC over a TCP candidate pair (ICE-TCP).
    WebRtcTcp,
    /// WebRTC through a TURN relay.
    Turn,
    /// The WebSocket lane.
    WebSocket,
}

impl Lane {
    /// Its name: `webrtc-udp`, `webrtc-tcp`, `turn` or `websocket`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::WebRtcUdp => "webrtc-udp",
            Lane::WebRtcTcp => "webrtc-tcp",
            Lane::Turn => "turn",
            Lane::WebSocket => "websocket",
        }
    }

    /// The lane named `name` ([`Lane::as_str`]).
    pub fn from_name(name: &str) -> Option<Lane> {
        [
            Lane::WebRtcUdp,
            Lane::WebRtcTcp,
            Lane::Turn,
            Lane::WebSocket,
        ]
        .into_iter()
        .find(|lane| lane.as_str() == name)
    }

    /// The WebRTC lane of a selected candidate pair whose local candidate
    /// has this `candidateType` and `protocol` (as `RTCPeerConnection`'s
    /// stats name them): a relay candidate goes through TURN (over UDP or
    /// TCP to the TURN server alike), a TCP one is ICE-TCP, any other UDP.
    pub fn of_local_candidate(candidate_type: &str, protocol: &str) -> Lane {
        if candidate_type.eq_ignore_ascii_case("relay") {
            Lane::Turn
        } else if protocol.eq_ignore_ascii_case("tcp") {
            Lane::WebRtcTcp
        } else {
            Lane::WebRtcUdp
        }
    }
}

/// How long WebRTC may take, and when to try it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneTimes {
    /// From the offer to `Welcome` over WebRTC before falling back.
    pub webrtc_fallback: Duration,
    /// Time on the WebSocket lane after which a reconnect tries WebRTC again.
    pub retry_webrtc: Duration,
}

impl Default for LaneTimes {
    fn default() -> Self {
        LaneTimes {
            webrtc_fallback: Duration::from_secs(3),
            retry_webrtc: Duration::from_secs(60),
        }
    }
}

/// Which transport to connect over next.
#[derive(Debug, Clone)]
pub struct LanePolicy {
    choice: LaneChoice,
    times: LaneTimes,
    /// The transport that last reached `Welcome`, and since when (ms).
    worked: Option<(Transport, u64)>,
    /// WebRTC failed on the last attempt.
    webrtc_failed: bool,
}

impl LanePolicy {
    /// A policy for `choice` with `times`.
    pub fn new(choice: LaneChoice, times: LaneTimes) -> Self {
        LanePolicy {
            choice,
            times,
            worked: None,
            webrtc_failed: false,
        }
    }

    /// Uses `choice` from the next connection on.
    pub fn set_choice(&mut self, choice: LaneChoice) {
        if choice != self.choice {
            self.choice = choice;
            self.webrtc_failed = false;
        }
    }

    /// How long WebRTC may take before the WebSocket lane is tried, when
    /// it may be (`None`: wait for WebRTC as long as it takes).
    pub fn webrtc_deadline(&self) -> Option<Duration> {
        (self.choice == LaneChoice::Auto).then_some(self.times.webrtc_fallback)
    }

    /// The transport the next connection tries at `now_ms`.
    pub fn next(&self, now_ms: u64) -> Transport {
        match self.choice {
            LaneChoice::WebRtc => Transport::WebRtc,
            LaneChoice::WebSocket => Transport::WebSocket,
            LaneChoice::Auto if self.webrtc_failed => Transport::WebSocket,
            LaneChoice::Auto => match self.worked {
                Some((Transport::WebSocket, since))
                    if now_ms.saturating_sub(since) < millis(self.times.retry_webrtc) =>
                {
                    Transport::WebSocket
                }
                _ => Transport::WebRtc,
            },
        }
    }

    /// A connection over `transport` reached `Welcome` at `now_ms`. On the
    /// WebSocket lane after WebRTC failed, the time to try WebRTC again
    /// counts from now.
    pub fn connected(&mut self, transport: Transport, now_ms: u64) {
        let fell_back = self.webrtc_failed;
        self.webrtc_failed = false;
        match self.worked {
            Some((worked, _)) if worked == transport && !fell_back => {}
            _ => self.worked = Some((transport, now_ms)),
        }
    }

    /// A connection attempt over `transport` failed (or did not reach
    /// `Welcome` in time).
    pub fn failed(&mut self, transport: Transport) {
        if transport == Transport::WebRtc {
            self.webrtc_failed = true;
        } else if self.choice == LaneChoice::Auto {
            // The socket failed too: WebRTC gets its turn again.
            self.webrtc_failed = false;
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto() -> LanePolicy {
        LanePolicy::new(LaneChoice::Auto, LaneTimes::default())
    }

    #[test]
    fn webrtc_comes_first_and_the_socket_after_it_fails() {
        let mut policy = auto();
        assert_eq!(policy.next(0), Transport::WebRtc);
        assert_eq!(policy.webrtc_deadline(), Some(Duration::from_secs(3)));
        policy.failed(Transport::WebRtc);
        assert_eq!(policy.next(3_000), Transport::WebSocket);
        policy.connected(Transport::WebSocket, 3_100);
        // Remembered for the next reconnect...
        assert_eq!(policy.next(10_000), Transport::WebSocket);
        // ...until WebRTC is worth another try.
        assert_eq!(policy.next(63_100), Transport::WebRtc);
        // WebRTC fails again: the socket, and the wait starts over.
        policy.failed(Transport::WebRtc);
        assert_eq!(policy.next(66_100), Transport::WebSocket);
        policy.connected(Transport::WebSocket, 66_200);
        assert_eq!(policy.next(100_000), Transport::WebSocket);
        assert_eq!(policy.next(126_200), Transport::WebRtc);
        policy.connected(Transport::WebRtc, 126_300);
        assert_eq!(policy.next(130_000), Transport::WebRtc);
    }

    #[test]
    fn a_failed_socket_gives_webrtc_its_turn_again() {
        let mut policy = auto();
        policy.failed(Transport::WebRtc);
        policy.failed(Transport::WebSocket);
        assert_eq!(policy.next(0), Transport::WebRtc);
    }

    #[test]
    fn a_forced_lane_is_the_only_lane() {
        let mut policy = LanePolicy::new(LaneChoice::WebSocket, LaneTimes::default());
        policy.failed(Transport::WebSocket);
        assert_eq!(policy.next(0), Transport::WebSocket);
        let mut policy = LanePolicy::new(LaneChoice::WebRtc, LaneTimes::default());
        assert_eq!(policy.webrtc_deadline(), None);
        policy.failed(Transport::WebRtc);
        assert_eq!(policy.next(0), Transport::WebRtc);
    }

    #[test]
    fn lanes_have_the_names_the_demo_shows() {
        let names = [
            Lane::WebRtcUdp,
            Lane::WebRtcTcp,
            Lane::Turn,
            Lane::WebSocket,
        ]
        .map(Lane::as_str);
        assert_eq!(names, ["webrtc-udp", "webrtc-tcp", "turn", "websocket"]);
        assert_eq!(
            LaneChoice::from_name("websocket"),
            Some(LaneChoice::WebSocket)
        );
        assert_eq!(LaneChoice::from_name("x"), None);
        assert_eq!(Lane::from_name("webrtc-tcp"), Some(Lane::WebRtcTcp));
        assert_eq!(Lane::from_name("tcp"), None);
    }

    #[test]
    fn a_selected_local_candidate_names_its_lane() {
        assert_eq!(Lane::of_local_candidate("host", "udp"), Lane::WebRtcUdp);
        assert_eq!(Lane::of_local_candidate("srflx", "udp"), Lane::WebRtcUdp);
        assert_eq!(Lane::of_local_candidate("host", "tcp"), Lane::WebRtcTcp);
        assert_eq!(Lane::of_local_candidate("relay", "udp"), Lane::Turn);
        assert_eq!(Lane::of_local_candidate("relay", "tcp"), Lane::Turn);
    }
}
