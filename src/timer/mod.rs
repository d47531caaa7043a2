//! Timers for waits. The in-memory hierarchical [`wheel::Wheel`]; the durable
//! expiry index in front of it comes with the RocksDB runtime.

pub mod wheel;

pub use wheel::Wheel;
