//! viralwatch's per-event core, in plain Rust: no Python here, so every part
//! is tested by `cargo test` alone. The bindings (`../python`) hand it
//! batches of raw records.
//!
//! - [`event`]: parsing and validating a share event (every rejection reason
//!   of `streams.events`, in the same order);
//! - [`json`]: reading an event's JSON by orjson's rules;
//! - [`keyed`]: the keyed hash of the keys users choose, for the core's tables;
//! - `hex`: hex digits read by table, the one reader of a hash's text;
//! - `crc`: the table and loop of both reflected CRC-32s (zlib's, Castagnoli's);
//! - [`blake2b`]: the digest an unbanked cluster's id is made of;
//! - [`pdq`]: the exact index of PDQ hashes by Hamming distance;
//! - [`dedupe`]: the event ids a cluster has applied, as keyed 128-bit hashes;
//! - [`reorder`]: records held until the watermark passes them, in event-time order;
//! - [`route`]: reshares held until their parent post is routed;
//! - [`slab`]: values in numbered slots, a freed slot reused first (held records, clusters);
//! - [`posts`]: the post -> cluster map, and routing a reshare through it;
//! - [`content`]: live clusters' signals, searched through the PDQ index;
//! - [`wire`]: the records stages send each other and log, written as orjson writes them;
//! - [`wire_read`]: those records read back (envelopes, cluster-log entries);
//! - [`unbanked`]: unbanked clusters' detector state (posts, velocity, ids, review crossing);
//! - [`emerging`]: unbanked uploads' clusters: which one an upload joins, idle eviction;
//! - [`fetched`]: a fetched partition's record batches read as a consumer reads them;
//! - [`record_batch`]: Apache Kafka's record batch as a producer writes it (CRC-32C in
//!   hardware).

pub mod blake2b;
pub mod content;
pub(crate) mod crc;
pub mod dedupe;
pub mod emerging;
pub mod event;
pub mod fetched;
pub(crate) mod hex;
pub mod json;
pub mod keyed;
pub mod pdq;
pub mod posts;
pub mod prefetch;
pub mod record_batch;
pub mod reorder;
pub mod route;
pub mod slab;
#[cfg(test)]
mod testing;
pub mod unbanked;
pub mod wire;
pub mod wire_index;
pub mod wire_read;

/// The crate's version, so Python can tell which build it imported.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_semver() {
        assert_eq!(super::VERSION.split('.').count(), 3);
    }
}
