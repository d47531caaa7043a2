//! What can stop `winback run`, each with what to do about it.

use std::path::PathBuf;

use rdkafka::error::KafkaError;

use crate::sink::SinkError;
use crate::store::rocks::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error("Kafka: {what}: {source}")]
    Kafka { what: String, source: KafkaError },
    #[error(
        "topic {0:?} does not exist on the brokers (create it, partitioned like the input topics)"
    )]
    MissingTopic(String),
    #[error(
        "the input topics (and the changelog) differ in partition count ({0}): every contact's events and state must land in the same partition number"
    )]
    PartitionMismatch(String),
    #[error(
        "the input topics have {now} partitions but the state in {dir} was built with {stored}: coupon shares and contact placement depend on it"
    )]
    PartitionsChanged { now: u32, stored: u32, dir: PathBuf },
    #[error("changelog topic {topic:?}: {reason}")]
    Changelog { topic: String, reason: String },
    #[error(
        "input {topic}[{partition}]: the stored position {next} is outside the log (offsets {low} to {high}): records were deleted before winback read them (retention), or the topic was deleted and created again. Nothing was read from it. To go on from the log's first record (records missing in between are lost to winback) set processing.offset_out_of_range = \"earliest\"; to skip to its end, \"latest\""
    )]
    OffsetOutOfRange {
        topic: String,
        partition: i32,
        next: i64,
        low: i64,
        high: i64,
    },
    #[error(
        "at-least-once mode keeps no changelog, so its state cannot move between processes: it runs as the only member of its group, and this member was assigned {assigned} of {partitions} partitions (another process runs with group {group:?}). Stop the others, or use exactly_once"
    )]
    AtLeastOnceShared {
        assigned: usize,
        partitions: u32,
        group: String,
    },
    #[error(
        "coupon pool {new:?} holds codes of pool {old:?}, which this state directory loaded before and which is no longer defined: a renamed pool would hand out its codes again. Give it its old name back"
    )]
    PoolRenamed { old: String, new: String },
    #[error("restoring partition {partition} from the changelog: {reason}")]
    Restore { partition: u32, reason: String },
    #[error(
        "the state in {dir} was built in {stored} mode; this config runs {now} (use a new state directory)"
    )]
    GuaranteeChanged {
        stored: String,
        now: &'static str,
        dir: PathBuf,
    },
    #[error(
        "coupon pool {pool:?}: its codes file no longer starts with the {stored} codes loaded first (code {index} differs); codes may be appended, never reordered or removed"
    )]
    PoolChanged {
        pool: String,
        stored: usize,
        index: usize,
    },
}

pub(super) fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Kafka { what, source }
}
