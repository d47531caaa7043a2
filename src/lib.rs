//! winback: an event-sourced engine for winback conversations.
//!
//! - [`domain`]: the pure state machine (no IO, no wall clock); [`domain::driver`]
//!   is the one caller protocol both drivers below use.
//! - [`config`]: TOML definition and engine files into validated definitions,
//!   every problem reported with file, line and field.
//! - [`wire`]: events and transitions as JSON lines and protobuf ([`pb`]).
//! - [`sim`]: the driver over memory (`simulate`, the benchmarks' fold).
//! - [`runtime`]: `winback run`, the driver over the store with Kafka in and out.
//! - [`store`]: RocksDB state, its codec and the changelog records.
//! - [`timer`]: the hierarchical timer wheel of pending waits.
//! - [`source`], [`sink`]: Kafka input (decoding, dead-letter rules) and output
//!   (at-least-once or transactional delivery).
//! - [`admin`]: `run`'s HTTP server (metrics, health, readiness).
//! - [`cli`]: the command line.
//! - `prefetch`: cache hints for the fold's hot loops.

pub mod admin;
pub mod cli;
pub mod config;
pub mod domain;
pub(crate) mod prefetch;
pub mod runtime;
pub mod sim;
pub mod sink;
pub mod source;
pub mod store;
pub mod timer;
pub mod wire;

/// Generated from `proto/winback/v1/winback.proto`.
pub mod pb {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/winback.v1.rs"));
}
