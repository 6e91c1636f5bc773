//! Ports as operators give them: one port (`0`: any free one), or a range
//! `FIRST-LAST` of which a service takes the first free port, so replicas
//! sharing a host each find one inside a known range (binding goes through
//! [`deltamesh_proto::ports::first_free`]).

use std::ops::RangeInclusive;
use std::str::FromStr;

/// One port, or a range of ports to take the first free one of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRange(pub RangeInclusive<u16>);

impl PortRange {
    /// Whether this is a range rather than one port.
    pub fn is_range(&self) -> bool {
        self.0.start() != self.0.end()
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|e| format!("port {p:?}: {e}"))
        };
        let ports = match text.split_once('-') {
            Some((first, last)) => port(first)?..=port(last)?,
            None => port(text)?..=port(text)?,
        };
        if ports.is_empty() {
            return Err(format!("the port range {text:?} is empty"));
        }
        if *ports.start() == 0 && *ports.end() != 0 {
            return Err(format!(
                "{text:?}: port 0 (any free port) cannot be part of a range"
            ));
        }
        Ok(PortRange(ports))
    }
}

#[cfg(test)]
mod tests {
    use super::PortRange;

    #[test]
    fn a_port_or_a_range_of_ports() {
        assert_eq!("0".parse(), Ok(PortRange(0..=0)));
        assert_eq!("40000".parse(), Ok(PortRange(40000..=40000)));
        let range: PortRange = "40000-40099".parse().unwrap();
        assert_eq!(range, PortRange(40000..=40099));
        assert!(range.is_range());
        for bad in ["", "x", "40099-40000", "1-70000", "0-10", "-5", "5-"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?}");
        }
    }
}
