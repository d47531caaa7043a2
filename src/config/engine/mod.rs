//! The engine config of `winback run` (TOML): brokers, topics, state directory,
//! batching, the conversation files, and a `[kafka]` table handed to
//! librdkafka as is. Environment variables override the brokers and carry
//! secrets, so a config file can be committed. README.md documents every key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::diagnostic::{Diagnostic, Severity, Source};
use crate::domain::time::{Duration, HOUR_MS, MINUTE_MS, SECOND_MS};

pub const DEFAULT_GROUP_ID: &str = "winback";
pub const DEFAULT_EMBEDDED_LISTEN: &str = "127.0.0.1:9092";
/// The admin server (`/metrics`, `/healthz`, `/readyz`): local only by default.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";
/// A gauge not set for this long leaves `/metrics`: a partition that left
/// the process stops being reported.
pub const DEFAULT_GAUGE_IDLE_TIMEOUT: Duration = Duration(5 * MINUTE_MS);
pub const DEFAULT_PURCHASES_TOPIC: &str = "checkouts";
pub const DEFAULT_SUBSCRIPTIONS_TOPIC: &str = "subscriptions";
pub const DEFAULT_TRANSITIONS_TOPIC: &str = "winback.transitions";
pub const DEFAULT_SENDS_TOPIC: &str = "winback.sends";
pub const DEFAULT_DEAD_LETTERS_TOPIC: &str = "winback.dead-letters";
pub const DEFAULT_CHANGELOG_TOPIC: &str = "winback.changelog";
pub const DEFAULT_STATE_DIR: &str = "winback-state";
pub const DEFAULT_COMMIT_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 20_000;
pub const DEFAULT_MAX_BATCH_TIMERS: usize = 100_000;
pub const DEFAULT_TIMER_HORIZON_MS: i64 = 60 * 60 * 1000;
pub const DEFAULT_CONTACT_HISTORY: bool = true;
pub const DEFAULT_EMBEDDED_PARTITIONS: i32 = 4;
/// See [`TimeRules`]; README, "Engine config", and docs/semantics.md, "Time".
pub const DEFAULT_QUIET_PERIOD: Duration = Duration(10 * SECOND_MS);
pub const DEFAULT_ALLOWED_LATENESS: Duration = Duration(5 * MINUTE_MS);
pub const DEFAULT_MAX_FUTURE_SKEW: Duration = Duration(HOUR_MS);
pub const DEFAULT_MERGE_WAIT: Duration = Duration(5 * SECOND_MS);

/// `WINBACK_BOOTSTRAP_SERVERS` overrides `broker.bootstrap_servers`.
pub const ENV_BOOTSTRAP: &str = "WINBACK_BOOTSTRAP_SERVERS";
/// `WINBACK_GROUP_ID` overrides `broker.group_id`.
pub const ENV_GROUP_ID: &str = "WINBACK_GROUP_ID";
/// `WINBACK_INSTANCE_ID` overrides `processing.instance_id`.
pub const ENV_INSTANCE_ID: &str = "WINBACK_INSTANCE_ID";
/// `WINBACK_KAFKA_SASL_PASSWORD=...` sets librdkafka's `sasl.password`: the
/// rest of the name, lower-cased, with `_` read as `.`.
pub const ENV_KAFKA_PREFIX: &str = "WINBACK_KAFKA_";

/// librdkafka properties winback sets itself; `[kafka]` may not override them,
/// because the delivery guarantees depend on them.
pub const RESERVED_KAFKA_KEYS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.idempotence",
    "auto.offset.reset",
    "partition.assignment.strategy",
    "transactional.id",
    "group.instance.id",
    "isolation.level",
    "enable.partition.eof",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    conversations: Spanned<Vec<Spanned<String>>>,
    state_dir: Option<Spanned<String>>,
    #[serde(default)]
    broker: Option<Spanned<RawBroker>>,
    #[serde(default)]
    input: Option<Spanned<Vec<Spanned<RawInput>>>>,
    #[serde(default)]
    output: Option<Spanned<RawOutput>>,
    #[serde(default)]
    processing: Option<Spanned<RawProcessing>>,
    #[serde(default)]
    admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    kafka: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    bootstrap_servers: Option<Spanned<String>>,
    group_id: Option<Spanned<String>>,
    embedded_listen: Option<Spanned<String>>,
    embedded_partitions: Option<Spanned<i64>>,
    restore_from: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    gauge_idle_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    topic: Spanned<String>,
    format: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    transitions: Option<Spanned<String>>,
    sends: Option<Spanned<String>>,
    dead_letters: Option<Spanned<String>>,
    changelog: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcessing {
    commit_interval_ms: Option<Spanned<i64>>,
    max_batch_events: Option<Spanned<i64>>,
    max_batch_timers: Option<Spanned<i64>>,
    timer_horizon_ms: Option<Spanned<i64>>,
    guarantee: Option<Spanned<String>>,
    instance_id: Option<Spanned<String>>,
    offset_out_of_range: Option<Spanned<String>>,
    quiet_period: Option<Spanned<String>>,
    allowed_lateness: Option<Spanned<String>>,
    max_future_skew: Option<Spanned<String>>,
    merge_wait: Option<Spanned<String>>,
    contact_history: Option<Spanned<bool>>,
}

/// How the wall clock and the records' timestamps bear on event time
/// (docs/semantics.md, "Time in `run`").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRules {
    /// A partition read to its end must have had no input for this long
    /// (by the wall clock) before the wall clock may move its clock.
    pub quiet_period: Duration,
    /// The wall clock moves a quiet partition's clock only to the wall clock
    /// minus this: input stamped up to this long before it arrives is
    /// folded as `simulate` folds it.
    pub allowed_lateness: Duration,
    /// An event stamped more than this after its record's timestamp is
    /// dead-lettered: it would move its partition's clock into the future.
    pub max_future_skew: Duration,
    /// How long a partition's merge of its input topics waits for a topic
    /// that has nothing buffered, read to its end, before folding the
    /// others' records without it.
    pub merge_wait: Duration,
}

impl Default for TimeRules {
    fn default() -> Self {
        TimeRules {
            quiet_period: DEFAULT_QUIET_PERIOD,
            allowed_lateness: DEFAULT_ALLOWED_LATENESS,
            max_future_skew: DEFAULT_MAX_FUTURE_SKEW,
            merge_wait: DEFAULT_MERGE_WAIT,
        }
    }
}

/// What a crash may do to the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// Kafka transactions: output, changelog and input offsets commit
    /// together; consumers reading `read_committed` see every transition once.
    ExactlyOnce,
    /// An idempotent producer; a crash may produce a batch's transitions
    /// again (same `transition_id`s); no changelog.
    AtLeastOnce,
}

impl Guarantee {
    pub fn as_str(self) -> &'static str {
        match self {
            Guarantee::ExactlyOnce => "exactly_once",
            Guarantee::AtLeastOnce => "at_least_once",
        }
    }
}

/// What `run` does when an input partition's stored position is not in the
/// log any more (retention deleted records before they were read) or not yet
/// (the topic was deleted and created again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetOutOfRange {
    /// Stop with an error naming the topic, partition and offsets (default):
    /// input would be skipped or read twice, and only the operator knows which
    /// is right.
    Stop,
    /// Go on from the log's first record (a retention gap: the records in
    /// between are lost to winback; a recreated topic: all of it is new).
    Earliest,
    /// Go on from the log's end.
    Latest,
}

impl OffsetOutOfRange {
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetOutOfRange::Stop => "stop",
            OffsetOutOfRange::Earliest => "earliest",
            OffsetOutOfRange::Latest => "latest",
        }
    }
}

/// How an input topic's record values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// One JSON event per record (the JSON-lines form of `simulate`).
    Json,
    /// `winback.v1.InputEvent`.
    Protobuf,
}

impl InputFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::Json => "json",
            InputFormat::Protobuf => "protobuf",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputTopic {
    pub topic: String,
    pub format: InputFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputTopics {
    pub transitions: String,
    pub sends: String,
    pub dead_letters: String,
    /// Compacted, partitioned like the input: each contact's state (exactly-once mode).
    pub changelog: String,
}

/// Where a restore starts reading a changelog partition that the local state
/// has applied up to some position (exactly-once mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreFrom {
    /// From that position: only what the state lacks is read. Needs a broker
    /// that lists, in a `read_committed` fetch, only the aborted transactions
    /// the fetched range overlaps (Kafka, Redpanda).
    Position,
    /// From the partition's start, skipping what the state has. For brokers
    /// that list every aborted transaction of the log in each fetch (noida-db
    /// 0.2.3, the embedded broker): librdkafka then takes a transaction that
    /// ended before the fetch offset for one still running, and a read that
    /// starts after it skips committed records (all of that producer's, up to
    /// the end of the log).
    Start,
}

impl RestoreFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreFrom::Position => "position",
            RestoreFrom::Start => "start",
        }
    }
}

/// A validated engine config, environment overrides applied.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The file it came from (relative paths inside it are resolved against its folder).
    pub file: PathBuf,
    pub conversations: Vec<PathBuf>,
    pub state_dir: PathBuf,
    /// Empty: start the embedded broker.
    pub bootstrap_servers: String,
    pub group_id: String,
    pub embedded_listen: String,
    /// Where `run` serves `/metrics`, `/healthz` and `/readyz`; `None` (an
    /// empty `admin.listen`): not served.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// `admin.gauge_idle_timeout`: a gauge not set for this long (a
    /// partition's, once it left the process) leaves `/metrics`.
    pub gauge_idle_timeout: Duration,
    /// Partitions of each topic the embedded broker creates.
    pub embedded_partitions: i32,
    /// Default: `Start` with the embedded broker, else `Position`.
    pub restore_from: RestoreFrom,
    /// Topics read; all must be partitioned alike and keyed by contact id.
    pub inputs: Vec<InputTopic>,
    pub outputs: OutputTopics,
    pub commit_interval_ms: u64,
    pub max_batch_events: usize,
    pub max_batch_timers: usize,
    pub timer_horizon_ms: i64,
    /// Keep each contact's last transitions in the store for `inspect` and
    /// `/contacts/{id}` (default true; costs CPU and disk, see
    /// docs/benchmarks.md).
    pub contact_history: bool,
    /// Default: exactly-once, at-least-once with the embedded broker (see
    /// README, "The embedded broker").
    pub guarantee: Guarantee,
    /// A stored input position outside the log.
    pub offset_out_of_range: OffsetOutOfRange,
    pub time: TimeRules,
    /// Names this process across restarts (its transactional id): a restarted
    /// process fences its predecessor's unfinished transaction at once.
    /// Default: derived from the group, the host name and the state directory.
    pub instance_id: String,
    /// Passed to librdkafka for every client (consumer and producer).
    pub kafka: BTreeMap<String, String>,
}

impl EngineConfig {
    pub fn embedded(&self) -> bool {
        self.bootstrap_servers.trim().is_empty()
    }

    /// The format of an input topic, if winback reads it.
    pub fn input_format(&self, topic: &str) -> Option<InputFormat> {
        self.inputs
            .iter()
            .find(|i| i.topic == topic)
            .map(|i| i.format)
    }
}

/// Every problem found in an engine config.
#[derive(Debug, thiserror::Error)]
#[error("{} error(s) in the engine config", self.diagnostics.iter().filter(|d| d.severity == Severity::Error).count())]
pub struct InvalidEngine {
    pub diagnostics: Vec<Diagnostic>,
}

/// Reads and validates an engine config, applying the environment `env`
/// (pass `std::env::vars()`; tests pass their own).
pub fn load_engine(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<EngineConfig, InvalidEngine> {
    let text = std::fs::read_to_string(path).map_err(|e| InvalidEngine {
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    parse_engine(path, &text, env)
}

/// As [`load_engine`], over a text already read.
pub fn parse_engine(
    path: &Path,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<EngineConfig, InvalidEngine> {
    let src = Source { path, text };
    let raw: RawEngine = toml::from_str(text).map_err(|e| InvalidEngine {
        diagnostics: vec![src.diag(
            Severity::Error,
            e.span(),
            "",
            e.message().trim_end().to_string(),
        )],
    })?;
    let mut diags = Vec::new();
    let base = path.parent().unwrap_or(Path::new(""));
    let resolve = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };

    let mut conversations = Vec::new();
    if raw.conversations.get_ref().is_empty() {
        diags.push(src.diag(
            Severity::Error,
            Some(raw.conversations.span()),
            "conversations",
            "name at least one conversation file",
        ));
    }
    for c in raw.conversations.get_ref() {
        conversations.push(resolve(c.get_ref()));
    }

    let state_dir = raw.state_dir.as_ref().map_or_else(
        || PathBuf::from(DEFAULT_STATE_DIR),
        |s| resolve(s.get_ref()),
    );

    let admin_listen = match raw.admin.as_ref().and_then(|a| a.get_ref().listen.as_ref()) {
        None => DEFAULT_ADMIN_LISTEN.parse().ok(),
        Some(l) if l.get_ref().trim().is_empty() => None,
        Some(l) => match l.get_ref().trim().parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                diags.push(src.diag(
                    Severity::Error,
                    Some(l.span()),
                    "admin.listen",
                    format!(
                        "{:?} is not an address such as \"127.0.0.1:9464\" (empty: no admin server)",
                        l.get_ref()
                    ),
                ));
                None
            }
        },
    };

    let gauge_idle_timeout = match raw
        .admin
        .as_ref()
        .and_then(|a| a.get_ref().gauge_idle_timeout.as_ref())
    {
        None => DEFAULT_GAUGE_IDLE_TIMEOUT,
        Some(v) => match Duration::parse(v.get_ref()) {
            // Gauges are set at every batch's end; under a second, a slow
            // batch would make them blink.
            Ok(d) if d.0 >= SECOND_MS => d,
            Ok(d) => {
                diags.push(src.diag(
                    Severity::Error,
                    Some(v.span()),
                    "admin.gauge_idle_timeout",
                    format!("{d} is shorter than 1s, the least accepted"),
                ));
                DEFAULT_GAUGE_IDLE_TIMEOUT
            }
            Err(e) => {
                diags.push(src.diag(
                    Severity::Error,
                    Some(v.span()),
                    "admin.gauge_idle_timeout",
                    e,
                ));
                DEFAULT_GAUGE_IDLE_TIMEOUT
            }
        },
    };

    let broker = raw.broker.as_ref().map(|b| b.get_ref());
    let mut bootstrap_servers = broker
        .and_then(|b| b.bootstrap_servers.as_ref())
        .map_or_else(String::new, |s| s.get_ref().clone());
    let mut group_id = broker
        .and_then(|b| b.group_id.as_ref())
        .map_or_else(|| DEFAULT_GROUP_ID.to_string(), |s| s.get_ref().clone());
    let embedded_listen = broker.and_then(|b| b.embedded_listen.as_ref()).map_or_else(
        || DEFAULT_EMBEDDED_LISTEN.to_string(),
        |s| s.get_ref().clone(),
    );
    if let Some(l) = broker.and_then(|b| b.embedded_listen.as_ref())
        && l.get_ref().parse::<std::net::SocketAddr>().is_err()
    {
        diags.push(src.diag(
            Severity::Error,
            Some(l.span()),
            "broker.embedded_listen",
            format!(
                "{:?} is not an address such as \"127.0.0.1:9092\"",
                l.get_ref()
            ),
        ));
    }
    let mut embedded_partitions = DEFAULT_EMBEDDED_PARTITIONS;
    if let Some(p) = broker.and_then(|b| b.embedded_partitions.as_ref()) {
        match i32::try_from(*p.get_ref()) {
            Ok(n) if (1..=1024).contains(&n) => embedded_partitions = n,
            _ => diags.push(src.diag(
                Severity::Error,
                Some(p.span()),
                "broker.embedded_partitions",
                "must be between 1 and 1024",
            )),
        }
    }
    let restore_from = one_of(
        &src,
        &mut diags,
        broker.and_then(|b| b.restore_from.as_ref()),
        "broker.restore_from",
        &[
            ("position", RestoreFrom::Position),
            ("start", RestoreFrom::Start),
        ],
    );
    if let Some(g) = broker.and_then(|b| b.group_id.as_ref())
        && g.get_ref().trim().is_empty()
    {
        diags.push(src.diag(
            Severity::Error,
            Some(g.span()),
            "broker.group_id",
            "must not be empty",
        ));
    }

    let mut inputs = Vec::new();
    match &raw.input {
        None => {
            inputs.push(InputTopic {
                topic: DEFAULT_PURCHASES_TOPIC.into(),
                format: InputFormat::Json,
            });
            inputs.push(InputTopic {
                topic: DEFAULT_SUBSCRIPTIONS_TOPIC.into(),
                format: InputFormat::Json,
            });
        }
        Some(list) => {
            if list.get_ref().is_empty() {
                diags.push(src.diag(
                    Severity::Error,
                    Some(list.span()),
                    "input",
                    "name at least one input topic",
                ));
            }
            for (i, inp) in list.get_ref().iter().enumerate() {
                let inp = inp.get_ref();
                let topic = inp.topic.get_ref().trim().to_string();
                if let Some(msg) = topic_problem(&topic) {
                    diags.push(src.diag(
                        Severity::Error,
                        Some(inp.topic.span()),
                        format!("input[{i}].topic"),
                        msg,
                    ));
                }
                if inputs.iter().any(|t: &InputTopic| t.topic == topic) {
                    diags.push(src.diag(
                        Severity::Error,
                        Some(inp.topic.span()),
                        format!("input[{i}].topic"),
                        format!("topic {topic:?} is listed twice"),
                    ));
                }
                let format = one_of(
                    &src,
                    &mut diags,
                    inp.format.as_ref(),
                    format!("input[{i}].format"),
                    &[
                        ("json", InputFormat::Json),
                        ("protobuf", InputFormat::Protobuf),
                    ],
                )
                .unwrap_or(InputFormat::Json);
                inputs.push(InputTopic { topic, format });
            }
        }
    }

    let out = raw.output.as_ref().map(|o| o.get_ref());
    let mut out_topic = |v: Option<&Spanned<String>>, field: &str, default: &str| {
        let Some(v) = v else {
            return default.to_string();
        };
        let t = v.get_ref().trim().to_string();
        if let Some(msg) = topic_problem(&t) {
            diags.push(src.diag(
                Severity::Error,
                Some(v.span()),
                format!("output.{field}"),
                msg,
            ));
        }
        t
    };
    let outputs = OutputTopics {
        transitions: out_topic(
            out.and_then(|o| o.transitions.as_ref()),
            "transitions",
            DEFAULT_TRANSITIONS_TOPIC,
        ),
        sends: out_topic(
            out.and_then(|o| o.sends.as_ref()),
            "sends",
            DEFAULT_SENDS_TOPIC,
        ),
        dead_letters: out_topic(
            out.and_then(|o| o.dead_letters.as_ref()),
            "dead_letters",
            DEFAULT_DEAD_LETTERS_TOPIC,
        ),
        changelog: out_topic(
            out.and_then(|o| o.changelog.as_ref()),
            "changelog",
            DEFAULT_CHANGELOG_TOPIC,
        ),
    };
    for t in [
        &outputs.transitions,
        &outputs.sends,
        &outputs.dead_letters,
        &outputs.changelog,
    ] {
        if inputs.iter().any(|i| &i.topic == t) {
            diags.push(src.diag(
                Severity::Error,
                raw.output.as_ref().map(|o| o.span()),
                "output",
                format!("topic {t:?} is both an input and an output"),
            ));
        }
    }
    let names = [
        &outputs.transitions,
        &outputs.sends,
        &outputs.dead_letters,
        &outputs.changelog,
    ];
    if names
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        != names.len()
    {
        diags.push(src.diag(
            Severity::Error,
            raw.output.as_ref().map(|o| o.span()),
            "output",
            "the transitions, sends, dead-letter and changelog topics must differ",
        ));
    }

    let proc_ = raw.processing.as_ref().map(|p| p.get_ref());
    let mut positive = |v: Option<&Spanned<i64>>, field: &str, default: i64, max: i64| match v {
        None => default,
        Some(v) if (1..=max).contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            diags.push(src.diag(
                Severity::Error,
                Some(v.span()),
                format!("processing.{field}"),
                format!("must be between 1 and {max}"),
            ));
            default
        }
    };
    let commit_interval_ms = positive(
        proc_.and_then(|p| p.commit_interval_ms.as_ref()),
        "commit_interval_ms",
        DEFAULT_COMMIT_INTERVAL_MS as i64,
        3_600_000,
    ) as u64;
    let max_batch_events = positive(
        proc_.and_then(|p| p.max_batch_events.as_ref()),
        "max_batch_events",
        DEFAULT_MAX_BATCH_EVENTS as i64,
        10_000_000,
    ) as usize;
    let max_batch_timers = positive(
        proc_.and_then(|p| p.max_batch_timers.as_ref()),
        "max_batch_timers",
        DEFAULT_MAX_BATCH_TIMERS as i64,
        10_000_000,
    ) as usize;
    let timer_horizon_ms = positive(
        proc_.and_then(|p| p.timer_horizon_ms.as_ref()),
        "timer_horizon_ms",
        DEFAULT_TIMER_HORIZON_MS,
        365 * 86_400_000,
    );
    let contact_history = proc_
        .and_then(|p| p.contact_history.as_ref())
        .map_or(DEFAULT_CONTACT_HISTORY, |b| *b.get_ref());

    let guarantee = one_of(
        &src,
        &mut diags,
        proc_.and_then(|p| p.guarantee.as_ref()),
        "processing.guarantee",
        &[
            ("exactly_once", Guarantee::ExactlyOnce),
            ("at_least_once", Guarantee::AtLeastOnce),
        ],
    );
    let offset_out_of_range = one_of(
        &src,
        &mut diags,
        proc_.and_then(|p| p.offset_out_of_range.as_ref()),
        "processing.offset_out_of_range",
        &[
            ("stop", OffsetOutOfRange::Stop),
            ("earliest", OffsetOutOfRange::Earliest),
            ("latest", OffsetOutOfRange::Latest),
        ],
    )
    .unwrap_or(OffsetOutOfRange::Stop);
    let mut span = |v: Option<&Spanned<String>>, field: &str, default: Duration, max: Duration| {
        let Some(v) = v else { return default };
        match Duration::parse(v.get_ref()) {
            Ok(d) if d <= max => d,
            Ok(d) => {
                diags.push(src.diag(
                    Severity::Error,
                    Some(v.span()),
                    format!("processing.{field}"),
                    format!("{d} is longer than {max}, the most accepted"),
                ));
                default
            }
            Err(e) => {
                diags.push(src.diag(
                    Severity::Error,
                    Some(v.span()),
                    format!("processing.{field}"),
                    e,
                ));
                default
            }
        }
    };
    let day = Duration(24 * HOUR_MS);
    let time = TimeRules {
        quiet_period: span(
            proc_.and_then(|p| p.quiet_period.as_ref()),
            "quiet_period",
            DEFAULT_QUIET_PERIOD,
            day,
        ),
        allowed_lateness: span(
            proc_.and_then(|p| p.allowed_lateness.as_ref()),
            "allowed_lateness",
            DEFAULT_ALLOWED_LATENESS,
            Duration(30 * 24 * HOUR_MS),
        ),
        max_future_skew: span(
            proc_.and_then(|p| p.max_future_skew.as_ref()),
            "max_future_skew",
            DEFAULT_MAX_FUTURE_SKEW,
            Duration(365 * 24 * HOUR_MS),
        ),
        merge_wait: span(
            proc_.and_then(|p| p.merge_wait.as_ref()),
            "merge_wait",
            DEFAULT_MERGE_WAIT,
            Duration(10 * MINUTE_MS),
        ),
    };
    let mut instance_id = proc_
        .and_then(|p| p.instance_id.as_ref())
        .map(|i| i.get_ref().trim().to_string());
    if let Some(i) = proc_.and_then(|p| p.instance_id.as_ref())
        && i.get_ref().trim().is_empty()
    {
        diags.push(src.diag(
            Severity::Error,
            Some(i.span()),
            "processing.instance_id",
            "must not be empty",
        ));
    }

    let mut kafka = BTreeMap::new();
    for (k, v) in &raw.kafka {
        let key = k.get_ref().trim();
        let field = format!("kafka.{key:?}");
        if RESERVED_KAFKA_KEYS.contains(&key) {
            diags.push(src.diag(
                Severity::Error,
                Some(k.span()),
                field,
                "winback sets this property itself (see the [broker] table and README.md)",
            ));
            continue;
        }
        let value = match v.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Float(f) => f.to_string(),
            _ => {
                diags.push(src.diag(
                    Severity::Error,
                    Some(v.span()),
                    field,
                    "expected a string, number or boolean",
                ));
                continue;
            }
        };
        kafka.insert(key.to_string(), value);
    }

    for (name, value) in env {
        if name == ENV_BOOTSTRAP {
            bootstrap_servers = value;
        } else if name == ENV_GROUP_ID {
            group_id = value;
        } else if name == ENV_INSTANCE_ID && !value.trim().is_empty() {
            instance_id = Some(value.trim().to_string());
        } else if let Some(rest) = name.strip_prefix(ENV_KAFKA_PREFIX)
            && !rest.is_empty()
        {
            let key = rest.to_ascii_lowercase().replace('_', ".");
            if RESERVED_KAFKA_KEYS.contains(&key.as_str()) {
                diags.push(Diagnostic {
                    severity: Severity::Error,
                    file: path.to_path_buf(),
                    line: 0,
                    column: 0,
                    field: format!("${name}"),
                    message: format!("{key:?} is set by winback itself"),
                });
                continue;
            }
            kafka.insert(key, value);
        }
    }
    if group_id.trim().is_empty() {
        diags.push(Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            field: format!("${ENV_GROUP_ID}"),
            message: "must not be empty".into(),
        });
    }

    // librdkafka knows its own properties: let it judge names and values now,
    // not at the first connection.
    let mut probe = rdkafka::ClientConfig::new();
    for (k, v) in &kafka {
        probe.set(k, v);
        if let Err(e) = probe.create_native_config() {
            let span = raw
                .kafka
                .iter()
                .find(|(rk, _)| rk.get_ref().trim() == k)
                .map(|(rk, _)| rk.span());
            diags.push(src.diag(
                Severity::Error,
                span,
                format!("kafka.{k:?}"),
                format!("librdkafka rejects it: {e}"),
            ));
            probe.remove(k);
        }
    }
    // librdkafka checks a mechanism only when a client starts: say now, and
    // how to get it, when this build cannot do Kerberos.
    if !cfg!(feature = "gssapi")
        && kafka.get("sasl.mechanisms").is_some_and(|v| {
            v.split(',')
                .any(|m| m.trim().eq_ignore_ascii_case("GSSAPI"))
        })
    {
        let span = raw
            .kafka
            .iter()
            .find(|(rk, _)| rk.get_ref().trim() == "sasl.mechanisms")
            .map(|(rk, _)| rk.span());
        diags.push(src.diag(
            Severity::Error,
            span,
            "kafka.\"sasl.mechanisms\"",
            "GSSAPI (Kerberos) needs winback built with `--features gssapi` \
             (and libsasl2: `deploy/build-deps.sh --gssapi`); PLAIN, SCRAM-SHA-256/512 \
             and OAUTHBEARER need nothing more",
        ));
    }

    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(InvalidEngine { diagnostics: diags });
    }
    let instance_id = instance_id.unwrap_or_else(|| default_instance_id(&group_id, &state_dir));
    // Decided after the environment: it may name the broker.
    let embedded = bootstrap_servers.trim().is_empty();
    let restore_from = restore_from.unwrap_or(if embedded {
        RestoreFrom::Start
    } else {
        RestoreFrom::Position
    });
    // The embedded broker hides a producer's committed transactions from a
    // reader that started after one of its aborts (README, "The embedded
    // broker"): without transactions, a `tail` that follows the output sees
    // everything.
    let guarantee = guarantee.unwrap_or(if embedded {
        Guarantee::AtLeastOnce
    } else {
        Guarantee::ExactlyOnce
    });
    Ok(EngineConfig {
        file: path.to_path_buf(),
        conversations,
        state_dir,
        bootstrap_servers,
        embedded_listen,
        admin_listen,
        gauge_idle_timeout,
        embedded_partitions,
        restore_from,
        inputs,
        outputs,
        commit_interval_ms,
        max_batch_events,
        max_batch_timers,
        timer_horizon_ms,
        contact_history,
        guarantee,
        offset_out_of_range,
        time,
        instance_id,
        group_id,
        kafka,
    })
}

/// A string field that names one of `options`: its value, None when absent.
/// Any other value is reported and read as absent.
fn one_of<T: Copy>(
    src: &Source<'_>,
    diags: &mut Vec<Diagnostic>,
    field: Option<&Spanned<String>>,
    path: impl Into<String>,
    options: &[(&str, T)],
) -> Option<T> {
    let field = field?;
    let value = field.get_ref().as_str();
    if let Some((_, v)) = options.iter().find(|(name, _)| *name == value) {
        return Some(*v);
    }
    let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
    diags.push(src.diag(
        Severity::Error,
        Some(field.span()),
        path,
        format!("{value:?}: expected {}", names.join(" or ")),
    ));
    None
}

/// The group, the host and the state directory name a process: the same on
/// every restart of it (an emptied state directory included), different for
/// two processes of one group, which cannot share a state directory.
fn default_instance_id(group: &str, state_dir: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let hash = xxhash_rust::xxh3::xxh3_64(dir.as_os_str().as_encoded_bytes());
    format!("{group}-{host}-{:08x}", hash >> 32)
}

/// Kafka's own rule for topic names.
fn topic_problem(t: &str) -> Option<String> {
    if t.is_empty() {
        return Some("must not be empty".into());
    }
    if t.len() > 249 {
        return Some("is longer than Kafka's 249 characters".into());
    }
    if t == "." || t == ".." {
        return Some(format!("{t:?} is not a valid topic name"));
    }
    t.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .map(|c| format!("{c:?} is not allowed in a topic name (letters, digits, '.', '_', '-')"))
}

#[cfg(test)]
mod tests;
