//! Taking the first free port of a range, so replicas sharing a host each
//! find one inside a range the operator opened: the relay's UDP sockets and
//! the ops listeners bind through [`first_free`].

use std::io;
use std::ops::RangeInclusive;

/// The first of `ports` that `bind` succeeds on. A port in use
/// (`AddrInUse`) is skipped; any other error ends the search with that
/// error; `AddrInUse` again when no port of the range is free, saying
/// `what` was bound (`UDP`, `TCP`).
pub fn first_free<T>(
    what: &str,
    ports: RangeInclusive<u16>,
    mut bind: impl FnMut(u16) -> io::Result<T>,
) -> io::Result<T> {
    for port in ports.clone() {
        match bind(port) {
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => {}
            bound => return bound,
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free {what} port in {}-{}", ports.start(), ports.end()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_use() -> io::Error {
        io::Error::from(io::ErrorKind::AddrInUse)
    }

    #[test]
    fn ports_in_use_are_skipped() {
        let bound = first_free("UDP", 10..=20, |port| {
            if port < 13 { Err(in_use()) } else { Ok(port) }
        });
        assert_eq!(bound.unwrap(), 13);
    }

    #[test]
    fn other_errors_end_the_search() {
        let mut tried = Vec::new();
        let error = first_free("UDP", 10..=20, |port| {
            tried.push(port);
            Err::<u16, _>(io::Error::from(io::ErrorKind::PermissionDenied))
        })
        .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(tried, vec![10]);
    }

    #[test]
    fn a_range_with_no_free_port_is_addr_in_use() {
        let error = first_free("UDP", 10..=12, |_| Err::<u16, _>(in_use())).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(error.to_string(), "no free UDP port in 10-12");
    }
}
