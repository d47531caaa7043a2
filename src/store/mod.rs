//! Stored state. [`codec`] is the versioned encoding of a contact's state, used
//! for RocksDB values and the changelog; the RocksDB store itself comes with
//! the runtime.

pub mod codec;
