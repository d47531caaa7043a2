//! The integration tests that need no broker, in one binary: the CLI end to
//! end (its embedded-broker smoke test starts noida-db inside `winback run`),
//! golden scenarios, property tests of the state machine, the partition
//! processor and the store, the stored encoding and the wire forms.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod codec;
mod experiment;
mod partition;
mod properties;
mod robustness;
mod scenarios;
mod store;
mod wire;
