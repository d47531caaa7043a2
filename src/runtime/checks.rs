//! What `run` (and `reprocess`, where it applies) checks before it trusts
//! the brokers and the store with state: the topics exist and the inputs
//! agree on a partition count, the changelog topic keeps every contact, a
//! stored input position is still in its log, the coupon pools only grew.
//! Each failure names what is wrong and how to fix it.

use std::future::Future;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

use super::RuntimeError;
use super::error::kafka;
use crate::config::engine::{EngineConfig, Guarantee};
use crate::domain::Definitions;
use crate::store::rocks::Store;

/// Runs an admin future to completion from a blocking thread: inside the
/// CLI's runtime (where `run` works), or on a plain thread.
pub(crate) fn block_on<F: Future>(f: F) -> Result<F::Output, String> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => Ok(h.block_on(f)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(f))
            .map_err(|e| e.to_string()),
    }
}

/// Whether a changelog topic's settings keep every contact's latest state
/// for as long as the topic lives; why not, if they do not.
pub fn changelog_problem(
    policy: &str,
    retention_ms: &str,
    retention_bytes: &str,
) -> Option<String> {
    let policies: Vec<&str> = policy.split(',').map(str::trim).collect();
    if !policies.contains(&"compact") {
        return Some(format!(
            "cleanup.policy is {policy:?}: old records are deleted by retention, not compacted, \
             so a contact that has not changed within the retention time is gone from it"
        ));
    }
    if policies.contains(&"delete") && (retention_ms != "-1" || retention_bytes != "-1") {
        return Some(format!(
            "cleanup.policy is {policy:?} with retention.ms={retention_ms} and \
             retention.bytes={retention_bytes}: compacted records are still deleted by retention"
        ));
    }
    None
}

/// Refuses a changelog topic that would lose contacts: with a lost disk the
/// state is restored from it alone. The topic's own settings are read from
/// the brokers (DescribeConfigs).
pub fn check_changelog_topic(cfg: &EngineConfig, bootstrap: &str) -> Result<(), RuntimeError> {
    let topic = cfg.outputs.changelog.as_str();
    let fail = |reason: String| RuntimeError::Changelog {
        topic: topic.to_string(),
        reason,
    };
    let admin: AdminClient<DefaultClientContext> = crate::source::client_config(cfg, bootstrap)
        .create()
        .map_err(|e| fail(format!("cannot create an admin client: {e}")))?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = block_on(admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &opts))
        .map_err(|e| fail(format!("cannot read its settings: {e}")))?
        .map_err(|e| fail(format!("cannot read its settings: {e}")))?;
    let resource = results
        .into_iter()
        .next()
        .ok_or_else(|| fail("the brokers returned no settings for it".into()))?
        .map_err(|e| fail(format!("cannot read its settings: {e}")))?;
    let value = |name: &str, default: &str| {
        resource
            .get(name)
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| default.to_string())
    };
    let policy = value("cleanup.policy", "delete");
    let retention_ms = value("retention.ms", "604800000");
    let retention_bytes = value("retention.bytes", "-1");
    match changelog_problem(&policy, &retention_ms, &retention_bytes) {
        None => Ok(()),
        Some(why) => Err(fail(format!(
            "{why}. Fix it before starting: kafka-configs.sh --bootstrap-server {bootstrap} \
             --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy=compact \
             (and create changelog topics with --config cleanup.policy=compact)"
        ))),
    }
}

/// An input partition's stored position against its log: `Some((low,
/// high))` when `next` lies outside `low..=high`.
pub fn out_of_range<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    next: i64,
) -> Result<Option<(i64, i64)>, RuntimeError> {
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(kafka(format!("watermarks of {topic}[{partition}]")))?;
    Ok((next < low || next > high).then_some((low, high)))
}

/// How many partitions `topic` has; an error if it does not exist.
pub(crate) fn topic_partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<u32, RuntimeError> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(kafka(format!("metadata of {topic:?}")))?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len() as u32);
    if n == 0 {
        return Err(RuntimeError::MissingTopic(topic.to_string()));
    }
    Ok(n)
}

/// The input topics' common partition count, which places every contact
/// and splits the coupon pools: `run` and `reprocess` start with it. Every
/// topic in `outputs` must exist; the changelog, if among them, must be
/// partitioned like the input.
pub(crate) fn input_partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    cfg: &EngineConfig,
    outputs: &[&str],
) -> Result<u32, RuntimeError> {
    let mut counts = Vec::new();
    for input in &cfg.inputs {
        counts.push((
            input.topic.clone(),
            topic_partitions(consumer, &input.topic)?,
        ));
    }
    let first = counts[0].1;
    for &topic in outputs {
        let n = topic_partitions(consumer, topic)?;
        if topic == cfg.outputs.changelog && n != first {
            counts.push((topic.to_string(), n));
        }
    }
    if counts.iter().any(|(_, n)| *n != first) {
        let list: Vec<String> = counts.iter().map(|(t, n)| format!("{t}: {n}")).collect();
        return Err(RuntimeError::PartitionMismatch(list.join(", ")));
    }
    Ok(first)
}

/// What `run` writes to: each must exist before it starts.
pub(crate) fn run_outputs(cfg: &EngineConfig) -> Vec<&str> {
    let mut outputs = vec![
        cfg.outputs.transitions.as_str(),
        cfg.outputs.sends.as_str(),
        cfg.outputs.dead_letters.as_str(),
    ];
    if cfg.guarantee == Guarantee::ExactlyOnce {
        outputs.push(&cfg.outputs.changelog);
    }
    outputs
}

/// Checks the pool codes against those loaded first, and loads them the
/// first time. Codes may be appended to a file; anything else would hand out
/// a code twice.
pub fn load_pools(store: &Store, defs: &Definitions) -> Result<(), RuntimeError> {
    // A pool renamed in the definitions would start over at its first code.
    for name in store.pool_names()? {
        if defs.pools.iter().any(|p| *p.name == *name) {
            continue;
        }
        let Some(codes) = store.pool_codes(&name)? else {
            continue;
        };
        let old: std::collections::HashSet<&str> = codes.iter().map(String::as_str).collect();
        if let Some(p) = defs
            .pools
            .iter()
            .find(|p| p.codes.iter().any(|c| old.contains(&**c)))
        {
            return Err(RuntimeError::PoolRenamed {
                old: name,
                new: p.name.to_string(),
            });
        }
    }
    for p in &defs.pools {
        let stored = store.pool_codes(&p.name)?;
        if let Some(stored) = &stored
            && let Some(index) = stored
                .iter()
                .zip(p.codes.iter())
                .position(|(a, b)| a.as_str() != &**b)
                .or((p.codes.len() < stored.len()).then_some(p.codes.len()))
        {
            return Err(RuntimeError::PoolChanged {
                pool: p.name.to_string(),
                stored: stored.len(),
                index: index + 1,
            });
        }
        if stored.is_none_or(|s| s.len() < p.codes.len()) {
            store.put_pool_codes(&p.name, &p.codes)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_changelog_that_keeps_every_contact_passes() {
        assert_eq!(changelog_problem("compact", "604800000", "-1"), None);
        assert_eq!(changelog_problem("compact,delete", "-1", "-1"), None);
        assert_eq!(changelog_problem("delete, compact", "-1", "-1"), None);
        assert!(
            changelog_problem("delete", "-1", "-1")
                .unwrap()
                .contains("not compacted")
        );
        assert!(
            changelog_problem("compact,delete", "604800000", "-1")
                .unwrap()
                .contains("retention.ms=604800000")
        );
        assert!(changelog_problem("compact,delete", "-1", "1000").is_some());
    }

    use std::sync::Arc;

    use crate::domain::definition::PoolDef;

    fn defs(codes: &[&str]) -> Definitions {
        named("p", codes)
    }

    fn named(name: &str, codes: &[&str]) -> Definitions {
        Definitions::new(
            vec![],
            vec![PoolDef {
                name: name.into(),
                codes: codes.iter().map(|c| Arc::from(*c)).collect(),
                low_stock: 1,
                expires_at: None,
            }],
            vec![],
            vec![],
            vec![],
        )
    }

    #[test]
    fn pool_codes_are_stored_once_and_may_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        load_pools(&store, &defs(&["A", "B"])).unwrap();
        assert_eq!(store.pool_codes("p").unwrap().unwrap(), ["A", "B"]);
        // The same, and appended: fine; the stored list grows.
        load_pools(&store, &defs(&["A", "B"])).unwrap();
        load_pools(&store, &defs(&["A", "B", "C"])).unwrap();
        assert_eq!(store.pool_codes("p").unwrap().unwrap(), ["A", "B", "C"]);
        // Reordered, replaced or removed: refused, naming the first difference.
        for bad in [&["B", "A", "C"][..], &["A", "X", "C"], &["A", "B"]] {
            match load_pools(&store, &defs(bad)) {
                Err(RuntimeError::PoolChanged { pool, stored, .. }) => {
                    assert_eq!((pool.as_str(), stored), ("p", 3));
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert_eq!(store.pool_codes("p").unwrap().unwrap(), ["A", "B", "C"]);
    }

    #[test]
    fn a_renamed_pool_is_refused_and_a_new_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        load_pools(&store, &named("spring", &["A", "B"])).unwrap();
        match load_pools(&store, &named("autumn", &["X", "B"])) {
            Err(RuntimeError::PoolRenamed { old, new }) => {
                assert_eq!((old.as_str(), new.as_str()), ("spring", "autumn"));
            }
            other => panic!("{other:?}"),
        }
        load_pools(&store, &named("autumn", &["X", "Y"])).unwrap();
    }
}
