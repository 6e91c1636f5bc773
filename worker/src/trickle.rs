//! Trickle ICE (RFC 8838/8840 over `PATCH`, PROTOCOL §1): the candidates a
//! client gathers after its offer went out, queued until the peer resource
//! exists and sent in batches, one `PATCH` at a time, as an
//! `application/trickle-ice-sdpfrag` body.
//!
//! The relay is ICE-lite and learns a peer's address from its checks, so a
//! connection needs no trickle; trickled candidates tell the relay's ICE
//! agent the real type (host, srflx, relay) of the addresses it hears from,
//! and keep one request per batch (signal's per-token rate limit counts
//! each). Only UDP candidates with an IP address are sent: the relay has
//! no resolver for mDNS (`….local`) names, and one unparsable line would
//! refuse the whole batch.

/// The most candidates in one `PATCH` (a fleet relay refuses more than 64).
pub const MAX_BATCH: usize = 16;
/// The most candidates waiting at once; later ones are dropped (a peer
/// gathers a handful).
pub const MAX_PENDING: usize = 64;

/// Candidates waiting for the peer resource or for the `PATCH` in flight.
#[derive(Debug, Default)]
pub struct TrickleQueue {
    pending: Vec<String>,
    in_flight: bool,
    ready: bool,
}

impl TrickleQueue {
    /// Queues `candidate` (an `RTCIceCandidate.candidate` string, with or
    /// without `a=`) if it is one the relay can use.
    pub fn push(&mut self, candidate: &str) {
        let line = candidate.trim().trim_start_matches("a=");
        if is_worth_sending(line) && self.pending.len() < MAX_PENDING {
            self.pending.push(format!("a={line}"));
        }
    }

    /// The peer resource exists (the answer arrived): batches may go.
    pub fn set_ready(&mut self) {
        self.ready = true;
    }

    /// The next batch to `PATCH`, if the resource exists, no `PATCH` is in
    /// flight and candidates are waiting; the queue then counts it in
    /// flight until [`TrickleQueue::sent`].
    pub fn next_batch(&mut self) -> Option<Vec<String>> {
        if !self.ready || self.in_flight || self.pending.is_empty() {
            return None;
        }
        self.in_flight = true;
        let count = self.pending.len().min(MAX_BATCH);
        Some(self.pending.drain(..count).collect())
    }

    /// The `PATCH` in flight is answered (either way).
    pub fn sent(&mut self) {
        self.in_flight = false;
    }
}

/// The sdpfrag body for `candidates` (`a=candidate:` lines): the data
/// channel's media section, its mid and the candidates.
pub fn sdpfrag(candidates: &[String]) -> String {
    let mut body = String::from("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n");
    for line in candidates {
        body.push_str(line);
        body.push_str("\r\n");
    }
    body
}

/// Whether `line` (`candidate:<foundation> <component> <transport>
/// <priority> <address> <port> typ …`) is UDP with an IP address.
fn is_worth_sending(line: &str) -> bool {
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    fields.first().is_some_and(|f| f.starts_with("candidate:"))
        && fields.get(2).is_some_and(|t| t.eq_ignore_ascii_case("udp"))
        && fields
            .get(4)
            .is_some_and(|address| address.parse::<std::net::IpAddr>().is_ok())
        && fields
            .get(5)
            .is_some_and(|port| port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &str = "candidate:842163049 1 udp 41885439 127.0.0.1 50002 typ relay \
        raddr 127.0.0.1 rport 41234 generation 0 ufrag abcd network-cost 999";
    const HOST: &str = "candidate:1 1 UDP 2130706431 192.0.2.7 5000 typ host";

    #[test]
    fn candidates_wait_for_the_resource_then_go_one_batch_at_a_time() {
        let mut queue = TrickleQueue::default();
        queue.push(RELAY);
        assert_eq!(queue.next_batch(), None, "no resource yet");
        queue.set_ready();
        assert_eq!(queue.next_batch(), Some(vec![format!("a={RELAY}")]));
        queue.push(&format!("a={HOST}"));
        assert_eq!(queue.next_batch(), None, "one PATCH at a time");
        queue.sent();
        assert_eq!(queue.next_batch(), Some(vec![format!("a={HOST}")]));
        queue.sent();
        assert_eq!(queue.next_batch(), None);
    }

    #[test]
    fn only_udp_candidates_with_an_ip_address_are_sent() {
        let mut queue = TrickleQueue::default();
        queue.set_ready();
        for useless in [
            "candidate:2 1 udp 2113937151 0c4c2b6a-1a2b.local 50000 typ host generation 0",
            "candidate:3 1 tcp 1518280447 192.0.2.7 9 typ host tcptype active",
            "",
            "candidate:4 1 udp",
            "not a candidate",
        ] {
            queue.push(useless);
        }
        assert_eq!(queue.next_batch(), None);
    }

    #[test]
    fn batches_and_the_queue_are_bounded() {
        let mut queue = TrickleQueue::default();
        for _ in 0..MAX_PENDING + 10 {
            queue.push(HOST);
        }
        queue.set_ready();
        let mut sent = 0;
        while let Some(batch) = queue.next_batch() {
            assert!(batch.len() <= MAX_BATCH);
            sent += batch.len();
            queue.sent();
        }
        assert_eq!(sent, MAX_PENDING);
    }

    #[test]
    fn the_sdpfrag_carries_the_media_section_and_the_candidates() {
        assert_eq!(
            sdpfrag(&[format!("a={HOST}")]),
            format!("m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\na={HOST}\r\n")
        );
    }
}
