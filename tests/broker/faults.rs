//! Fault injection with librdkafka's mock cluster: produce errors and a broker
//! that goes down, in at-least-once mode (the mock's transactions are stubs;
//! exactly-once is tested against Apache Kafka in `exactly_once.rs` and
//! `crash.rs`). The engine retries, stores no offset (nor clock, nor timer)
//! past output the broker has not acknowledged, and recovers: in the end every
//! expected transition is there, and de-duplicated by `transition_id` the
//! output is exactly `simulate`'s.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::kafka::{self, Running, Topics, assert_same};
use crate::common::{SEEDS, definitions};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use winback::domain::Timestamp;

const T: Duration = Duration::from_secs(60);

fn until() -> Timestamp {
    Timestamp::parse_rfc3339("2026-12-31T00:00:00Z").unwrap()
}

fn mock(topics: &Topics) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let m = MockCluster::new(1).expect("mock cluster");
    for t in [
        &topics.input,
        &topics.transitions,
        &topics.sends,
        &topics.dead_letters,
    ] {
        m.create_topic(t, 1, 1).expect("mock topic");
    }
    m
}

/// De-duplicated by transition id (what a consumer that de-duplicates sees).
fn dedup(lines: Vec<String>) -> Vec<String> {
    let mut m = BTreeMap::new();
    for l in lines {
        let j: serde_json::Value = serde_json::from_str(&l).unwrap();
        m.entry(j["transition_id"].as_str().unwrap().to_string())
            .or_insert(l);
    }
    m.into_values().collect()
}

/// Reads `topic` until `want` distinct transitions are there (or a minute
/// passed), de-duplicated by id.
fn read_distinct(bs: &str, topic: &str, want: usize) -> Vec<String> {
    let deadline = Instant::now() + T;
    loop {
        let got = dedup(kafka::as_json(&kafka::read_on(
            bs,
            topic,
            usize::MAX,
            Duration::from_secs(2),
        )));
        if got.len() >= want || Instant::now() > deadline {
            return got;
        }
    }
}

/// Short delivery timeouts so that failures surface within the test.
// The mock cluster's transactions are stubs: this is the at-least-once mode.
const FAST_FAIL: &str = "guarantee = \"at_least_once\"\n[kafka]\n\"message.timeout.ms\" = 1500\n\"retry.backoff.ms\" = 50\n";

#[test]
fn failing_produce_requests_store_nothing_until_acknowledged_then_recover() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    let m = mock(&topics);
    let bs = m.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let lines = kafka::purchase_stream(40, 120, 21);
    let expected = kafka::simulate(&defs, &lines, until());
    kafka::produce_on(&bs, &topics.input, &kafka::keyed(&lines));

    // Every produce request fails for a long while.
    m.request_errors(
        RDKafkaApiKey::Produce,
        &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
    );
    let cfg = || topics.config_on(&bs, dir.path(), &SEEDS, FAST_FAIL);
    let run = Running::start(cfg(), defs.clone(), Timestamp(0));
    let deadline = Instant::now() + T;
    // The first batch with output can never be acknowledged: the engine
    // stays on it (and consumes no further batch).
    while run.stats.transitions.load(Ordering::Acquire) == 0 {
        assert!(Instant::now() < deadline, "nothing folded");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Deliveries fail and are produced again.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        run.stats.redelivered.load(Ordering::Acquire) > 0,
        "no retry seen"
    );
    let stopped = run.stop_result();
    assert!(
        stopped.is_err(),
        "stopping with unacknowledged output must say so"
    );
    // Batches whose events produced nothing may be stored; none past the
    // first event that produced a transition.
    let first_output = {
        let mut sim = winback::sim::Simulator::new(defs.clone());
        let mut out = Vec::new();
        lines
            .iter()
            .position(|l| {
                sim.feed(&winback::wire::json::decode_event(l).unwrap(), &mut out)
                    .unwrap();
                !out.is_empty()
            })
            .unwrap() as i64
    };
    let stored = {
        let store = winback::store::rocks::Store::open(&dir.path().join("rocksdb")).unwrap();
        store.offset(0, &topics.input).unwrap().unwrap_or(0)
    };
    assert!(
        stored <= first_output,
        "offset {stored} stored past unacknowledged output (first output at {first_output})"
    );

    // The broker accepts again: a new process on the same state starts from
    // the stored offsets and produces everything.
    m.clear_request_errors(RDKafkaApiKey::Produce);
    let run = Running::start(cfg(), defs.clone(), Timestamp(0));
    run.wait_events(lines.len() as u64 - stored as u64, T);
    run.advance_wall(until());
    let got = read_distinct(&bs, &topics.transitions, expected.len());
    run.stop();
    assert_same(&got, &expected);
}

#[test]
fn a_broker_outage_is_ridden_out() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    let m = mock(&topics);
    let bs = m.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let lines = kafka::purchase_stream(40, 120, 22);
    let expected = kafka::simulate(&defs, &lines, until());
    let (first, second) = lines.split_at(lines.len() / 2);
    kafka::produce_on(&bs, &topics.input, &kafka::keyed(first));

    let run = Running::start(
        topics.config_on(&bs, dir.path(), &SEEDS, FAST_FAIL),
        defs.clone(),
        Timestamp(0),
    );
    run.wait_events(first.len() as u64, T);
    // The broker goes away for a while: fetches and watermark queries fail,
    // the engine keeps polling and changes nothing.
    m.broker_down(1).unwrap();
    let during = run.stats.batches.load(Ordering::Acquire);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(run.stats.batches.load(Ordering::Acquire), during);
    m.broker_up(1).unwrap();
    kafka::produce_on(&bs, &topics.input, &kafka::keyed(second));
    run.wait_events(lines.len() as u64, T);
    run.advance_wall(until());
    let got = read_distinct(&bs, &topics.transitions, expected.len());
    run.stop();
    assert_same(&got, &expected);
}
