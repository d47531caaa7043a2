//! The embedded default: with no brokers configured, `winback run` starts an
//! in-process Kafka-protocol broker (noida-db) so that it can be tried with
//! nothing else installed. It is a try-it broker, not a production one: its
//! topics are saved to the state directory on a clean shutdown only.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::engine::EngineConfig;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot start the embedded broker on {listen}: {source}")]
    Start {
        listen: String,
        source: std::io::Error,
    },
    #[error("cannot create topic {topic:?} on the embedded broker: {reason}")]
    Topic { topic: String, reason: String },
}

pub struct EmbeddedBroker {
    pub addr: SocketAddr,
    save: Box<dyn Fn() + Send + Sync>,
}

impl EmbeddedBroker {
    /// Starts the broker on `listen`, with the topics it saved last time
    /// under `data_dir`, if any.
    pub fn start(listen: &str, data_dir: &Path) -> Result<EmbeddedBroker, EmbeddedError> {
        let err = |source| EmbeddedError::Start {
            listen: listen.to_string(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(err)?;
        let (addr, save) =
            noida::kafka::spawn_persistent_for_test(listen, data_dir).map_err(err)?;
        Ok(EmbeddedBroker {
            addr,
            save: Box::new(save),
        })
    }

    /// Writes the broker's topics to its data directory.
    pub fn save(&self) {
        (self.save)();
    }
}

/// Creates every topic the config names (inputs and outputs) with
/// `partitions` partitions; topics that exist are left as they are.
pub fn create_topics(
    cfg: &EngineConfig,
    bootstrap: &str,
    partitions: i32,
) -> Result<(), EmbeddedError> {
    let admin: AdminClient<DefaultClientContext> = crate::source::client_config(cfg, bootstrap)
        .create()
        .map_err(|e| EmbeddedError::Topic {
            topic: String::new(),
            reason: e.to_string(),
        })?;
    let names: Vec<&str> = cfg
        .inputs
        .iter()
        .map(|i| i.topic.as_str())
        .chain([
            cfg.outputs.transitions.as_str(),
            cfg.outputs.sends.as_str(),
            cfg.outputs.dead_letters.as_str(),
            cfg.outputs.changelog.as_str(),
        ])
        .collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            let t = NewTopic::new(n, partitions, TopicReplication::Fixed(1));
            if *n == cfg.outputs.changelog {
                // Only each contact's latest state matters.
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let failed = |reason: String| EmbeddedError::Topic {
        topic: names.join(","),
        reason,
    };
    let results = super::checks::block_on(admin.create_topics(&topics, &opts))
        .map_err(failed)?
        .map_err(|e| failed(e.to_string()))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(EmbeddedError::Topic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}
