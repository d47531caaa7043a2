//! What `run` checks against the brokers before it trusts them with state:
//! the changelog topic keeps every contact, and a stored input position is
//! still in its log. Each failure names what is wrong and how to fix it.

use std::future::Future;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

use super::RuntimeError;
use crate::config::engine::EngineConfig;

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
        .map_err(super::kafka(format!("watermarks of {topic}[{partition}]")))?;
    Ok((next < low || next > high).then_some((low, high)))
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
}
