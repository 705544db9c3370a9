//! The inventory read model, partitioned: one JSON blob per partition of locations, written by
//! the workers under ETags and followed by the web role.
//!
//! - [`layout`]: which partition a location lives in, and the blobs' names.
//! - [`model`]: one partition's content and how commands change it (idempotently).
//! - [`legacy`]: the single-blob read model of earlier versions, carried into the partitions.

pub mod layout;
pub mod legacy;
pub mod model;
pub mod writer;

pub use model::{Change, Partition};
