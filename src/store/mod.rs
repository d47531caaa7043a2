//! Stored state: [`codec`], the versioned encoding of a contact's state (for
//! RocksDB values and the changelog), and [`rocks`], the RocksDB store.

pub mod activity;
pub mod changelog;
pub mod codec;
pub mod rocks;

pub use rocks::{Batch, CouponShare, Store, StoreError, StoredTimer};
