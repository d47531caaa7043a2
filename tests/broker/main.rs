//! Every integration test that talks to a broker, in one binary (each test
//! binary links RocksDB and librdkafka, which costs seconds a binary): the
//! Apache Kafka that `tests/run.sh` starts, named by `WINBACK_TEST_BROKERS`.
//! Tests that run `winback` processes on the group's timeouts (the crash
//! harness, scale-out, the zombie) take [`common::kafka::exclusive`] so that
//! no two of them share the two cores at once.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod crash;
mod delivery;
mod exactly_once;
mod faults;
mod forget;
mod live;
mod page;
mod reprocess;
mod scale;
mod time;
