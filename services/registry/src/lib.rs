//! The deltamesh network registry: which relays exist, how loaded they are,
//! and where a new peer goes. This crate holds the placement rule as plain
//! logic; the one-process stack calls it directly, and a gRPC service with
//! durable state wraps it for a fleet.

pub mod placement;

pub use placement::{PlacementError, RelayLoad, place};
