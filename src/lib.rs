//! winback: an event-sourced engine for winback conversations.
//!
//! `domain` is the pure state machine; `config` turns TOML files into validated
//! definitions; `wire` encodes events and transitions (JSON lines, protobuf);
//! `domain::driver` drives the engine, `sim` over memory (offline) and
//! `runtime` over the store (live); `cli` is the command line.

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
