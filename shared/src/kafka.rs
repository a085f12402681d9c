//! The Kafka glue every binary shares: connection settings read from flags and the
//! environment ([`KafkaArgs`]), the embedded broker ([`EmbeddedBroker`], librdkafka's mock
//! cluster, the default for development and tests). Topic setup against a real cluster is
//! [`crate::topic_setup`].
//!
//! Kept apart from the pure modules so that decoding and normalization can be tested and
//! benchmarked without a Kafka client.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};

use crate::topics::ALL_TOPICS;

/// Failures of the Kafka glue.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("failed to start the embedded broker: {0}")]
    EmbeddedBroker(#[source] rdkafka::error::KafkaError),
    #[error("failed to create topic {topic} on the embedded broker: {source}")]
    EmbeddedTopic {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("failed to create an admin client for {bootstrap}: {source}")]
    AdminClient {
        bootstrap: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("failed to create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("failed to take embedded broker {broker} {action}: {source}")]
    BrokerControl {
        broker: i32,
        action: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// How to reach Kafka. Every field is a flag and an environment variable, because compose
/// files and scripts configure the binaries through the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated.
    #[arg(
        long = "kafka-bootstrap-servers",
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "localhost:9092"
    )]
    pub bootstrap_servers: String,

    /// security.protocol: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(
        long = "kafka-security-protocol",
        env = "KAFKA_SECURITY_PROTOCOL",
        default_value = "plaintext"
    )]
    pub security_protocol: String,

    /// sasl.mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER) when SASL is
    /// used. GSSAPI (Kerberos) is not built in.
    #[arg(long = "kafka-sasl-mechanism", env = "KAFKA_SASL_MECHANISM")]
    pub sasl_mechanism: Option<String>,

    /// SASL user name.
    #[arg(long = "kafka-sasl-username", env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// SASL password.
    #[arg(
        long = "kafka-sasl-password",
        env = "KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<String>,

    /// A file holding the SASL password (read when `KAFKA_SASL_PASSWORD` is not set; a
    /// trailing newline is ignored): how the Docker runtime hands it to workers, so that it
    /// is not in `docker inspect`.
    #[arg(long = "kafka-sasl-password-file", env = "KAFKA_SASL_PASSWORD_FILE")]
    pub sasl_password_file: Option<String>,

    /// CA certificate file for TLS; unset, librdkafka probes the usual system locations
    /// (the OpenSSL built into the binaries has no system CA path of its own).
    #[arg(long = "kafka-ssl-ca-location", env = "KAFKA_SSL_CA_LOCATION")]
    pub ssl_ca_location: Option<String>,

    /// Extra librdkafka settings, `key=value` pairs separated by commas, applied last.
    #[arg(
        long = "kafka-extra-config",
        env = "KAFKA_EXTRA_CONFIG",
        default_value = ""
    )]
    pub extra_config: String,
}

impl KafkaArgs {
    /// Settings for a broker at `bootstrap_servers` with no security: what tests and the
    /// embedded default use.
    pub fn plaintext(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            security_protocol: "plaintext".into(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            sasl_password_file: None,
            ssl_ca_location: None,
            extra_config: String::new(),
        }
    }

    /// The SASL password: the variable, else the file's content; `None` when neither is
    /// set (or the file cannot be read, which authentication then reports).
    pub fn password(&self) -> Option<String> {
        if let Some(password) = &self.sasl_password {
            return Some(password.clone());
        }
        let file = self.sasl_password_file.as_ref()?;
        match std::fs::read_to_string(file) {
            Ok(content) => Some(content.trim_end_matches(['\n', '\r']).to_string()),
            Err(error) => {
                tracing::warn!(file, %error, "cannot read the SASL password file");
                None
            }
        }
    }

    /// A librdkafka configuration carrying the connection settings; callers add the
    /// consumer- or producer-specific ones.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("security.protocol", &self.security_protocol)
            // librdkafka logs reconnect attempts loudly; an outage is reported by our own
            // health and metrics instead.
            .set("log_level", "4");
        if let Some(mechanism) = &self.sasl_mechanism {
            config.set("sasl.mechanism", mechanism);
        }
        if let Some(user) = &self.sasl_username {
            config.set("sasl.username", user);
        }
        if let Some(password) = self.password() {
            config.set("sasl.password", password);
        }
        match &self.ssl_ca_location {
            Some(ca) => {
                config.set("ssl.ca.location", ca);
            }
            // OpenSSL is vendored: its compiled-in CA directory is its own install prefix,
            // not the system's, so without a location TLS could verify nothing.
            None if self.security_protocol.to_ascii_lowercase().contains("ssl") => {
                config.set("ssl.ca.location", "probe");
            }
            None => {}
        }
        for (key, value) in parse_extra_config(&self.extra_config) {
            config.set(key, value);
        }
        config
    }

    /// The environment variables that hand these settings to a child process or container,
    /// so that workers connect exactly the way the control plane does: everything but the
    /// password, which [`KafkaArgs::secret_env`] gives separately so that no record of a
    /// worker's settings (a spec file, a container's configuration) ever holds it.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "KAFKA_BOOTSTRAP_SERVERS".to_string(),
                self.bootstrap_servers.clone(),
            ),
            (
                "KAFKA_SECURITY_PROTOCOL".to_string(),
                self.security_protocol.clone(),
            ),
        ];
        let optional = [
            ("KAFKA_SASL_MECHANISM", &self.sasl_mechanism),
            ("KAFKA_SASL_USERNAME", &self.sasl_username),
            ("KAFKA_SSL_CA_LOCATION", &self.ssl_ca_location),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                env.push((name.to_string(), value.clone()));
            }
        }
        if !self.extra_config.is_empty() {
            env.push(("KAFKA_EXTRA_CONFIG".to_string(), self.extra_config.clone()));
        }
        env
    }
}

impl KafkaArgs {
    /// The secrets a worker needs, as environment variables (`KAFKA_SASL_PASSWORD`); each
    /// runtime hands them over its own way, never in a record of the worker's settings.
    pub fn secret_env(&self) -> Vec<(String, String)> {
        self.password()
            .map(|password| vec![("KAFKA_SASL_PASSWORD".to_string(), password)])
            .unwrap_or_default()
    }
}

/// Splits `a=b,c=d` into pairs; entries without `=` are ignored rather than fatal because
/// an operator's typo in an optional tuning knob must not stop the service.
pub fn parse_extra_config(raw: &str) -> Vec<(&str, &str)> {
    raw.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim();
            (!key.is_empty()).then_some((key, value.trim()))
        })
        .collect()
}

/// An in-process Kafka-protocol server (librdkafka's mock cluster) with the project's
/// topics. External clients such as `kcat` reach it over TCP on loopback.
///
/// Limits worth knowing: it keeps at most 5 MiB and 100,000 message sets per partition and
/// silently drops older data; it does not compact or enforce retention; and only
/// librdkafka-based clients can talk to it. It is not `Send`: keep it on the thread that
/// created it.
pub struct EmbeddedBroker {
    // The mock cluster belongs to this client (created with `test.mock.num.brokers`) rather
    // than to a `MockCluster::new`, because only a client handle lets us reach the mock's
    // group settings, which rust-rdkafka's `MockCluster` does not wrap.
    owner: BaseProducer,
}

/// The embedded broker's `group.initial.rebalance.delay.ms`. Kafka's default (3 s) holds
/// every new consumer group's first join for that long; each client's workers form new
/// groups, so the delay would be added to every registration's first record. The compose
/// stack's Kafka sets 0 too, for the same reason.
pub const EMBEDDED_GROUP_INITIAL_REBALANCE_DELAY: Duration = Duration::ZERO;

impl EmbeddedBroker {
    /// Starts `broker_count` brokers, creates every topic of [`ALL_TOPICS`] and sets the
    /// initial rebalance delay to [`EMBEDDED_GROUP_INITIAL_REBALANCE_DELAY`].
    pub fn start(broker_count: i32) -> Result<Self, KafkaSetupError> {
        let owner: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", broker_count.max(1).to_string())
            // The owner never produces; keep its own connections quiet and small.
            .set("log_level", "3")
            .create()
            .map_err(KafkaSetupError::EmbeddedBroker)?;
        let broker = Self { owner };
        let cluster = broker.cluster();
        for spec in ALL_TOPICS.iter() {
            cluster
                .create_topic(spec.name, spec.partitions, 1)
                .map_err(|source| KafkaSetupError::EmbeddedTopic {
                    topic: spec.name.to_string(),
                    source,
                })?;
        }
        drop(cluster);
        broker.set_group_initial_rebalance_delay(EMBEDDED_GROUP_INITIAL_REBALANCE_DELAY);
        Ok(broker)
    }

    fn cluster(&self) -> MockCluster<'_, DefaultProducerContext> {
        self.owner
            .client()
            .mock_cluster()
            .expect("a client created with test.mock.num.brokers owns a mock cluster")
    }

    /// Sets how long the first member of a new consumer group waits for others before the
    /// group's first assignment, as Kafka's `group.initial.rebalance.delay.ms` does.
    #[allow(unsafe_code)]
    pub fn set_group_initial_rebalance_delay(&self, delay: Duration) {
        let delay_ms = i32::try_from(delay.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `owner` was created with `test.mock.num.brokers`, so its handle owns a mock
        // cluster that lives as long as `owner`, which `&self` keeps alive for this call. The
        // setter only enqueues an operation for the mock cluster's own thread.
        unsafe {
            let cluster =
                rdkafka::bindings::rd_kafka_handle_mock_cluster(self.owner.client().native_ptr());
            assert!(!cluster.is_null(), "the owner client has no mock cluster");
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, delay_ms);
        }
    }

    /// `host:port[,host:port…]` of the brokers.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster().bootstrap_servers()
    }

    /// Makes one broker unreachable, to rehearse an outage.
    pub fn broker_down(&self, broker_id: i32) -> Result<(), KafkaSetupError> {
        self.cluster()
            .broker_down(broker_id)
            .map_err(|source| KafkaSetupError::BrokerControl {
                broker: broker_id,
                action: "down",
                source,
            })
    }

    /// Brings a broker taken down by [`Self::broker_down`] back.
    pub fn broker_up(&self, broker_id: i32) -> Result<(), KafkaSetupError> {
        self.cluster()
            .broker_up(broker_id)
            .map_err(|source| KafkaSetupError::BrokerControl {
                broker: broker_id,
                action: "up",
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rdkafka::producer::BaseProducer;

    use rdkafka::consumer::{BaseConsumer, Consumer};

    use super::*;

    /// Polls a fresh group's only member until the group assigns it a partition, or until
    /// `within` has passed; returns whether it was assigned.
    fn assigned_within(bootstrap: &str, group: &str, within: Duration) -> bool {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .create()
            .expect("consumer");
        consumer
            .subscribe(&[crate::topics::CLUSTER_HEARTBEAT])
            .expect("subscribe");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let _ = consumer.poll(Duration::from_millis(100));
            if consumer.assignment().is_ok_and(|a| a.count() > 0) {
                return true;
            }
        }
        false
    }

    fn secured(mechanism: &str) -> KafkaArgs {
        KafkaArgs {
            security_protocol: "sasl_ssl".into(),
            sasl_mechanism: Some(mechanism.into()),
            sasl_username: Some("user".into()),
            sasl_password: Some("secret".into()),
            ..KafkaArgs::plaintext("127.0.0.1:1")
        }
    }

    /// The vendored build must keep what the README promises: TLS and the SASL mechanisms
    /// librdkafka implements itself. librdkafka refuses, at client creation, a mechanism
    /// it was built without.
    #[test]
    fn tls_and_sasl_plain_scram_and_oauthbearer_are_built_in() {
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] {
            let created: Result<BaseProducer, _> = secured(mechanism).client_config().create();
            assert!(created.is_ok(), "{mechanism}: {:?}", created.err());
        }
        let gssapi: Result<BaseProducer, _> = secured("GSSAPI").client_config().create();
        assert!(gssapi.is_err(), "GSSAPI is documented as not built in");
    }

    #[test]
    fn the_password_is_a_secret_never_in_the_plain_environment() {
        let args = secured("SCRAM-SHA-512");
        assert!(!args.to_env().iter().any(|(_, v)| v == "secret"));
        assert_eq!(
            args.secret_env(),
            vec![("KAFKA_SASL_PASSWORD".to_string(), "secret".to_string())]
        );
        // From a file, as the Docker runtime gives it.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-file\n").unwrap();
        let args = KafkaArgs {
            sasl_password: None,
            sasl_password_file: Some(file.display().to_string()),
            ..secured("PLAIN")
        };
        assert_eq!(args.client_config().get("sasl.password"), Some("from-file"));
        assert_eq!(args.secret_env()[0].1, "from-file");
    }

    #[test]
    fn tls_without_a_ca_file_probes_the_system_locations() {
        let config = secured("PLAIN").client_config();
        assert_eq!(config.get("ssl.ca.location"), Some("probe"));
        let with_file = KafkaArgs {
            ssl_ca_location: Some("/etc/kafka/ca.pem".into()),
            ..secured("PLAIN")
        };
        assert_eq!(
            with_file.client_config().get("ssl.ca.location"),
            Some("/etc/kafka/ca.pem")
        );
        assert_eq!(
            KafkaArgs::plaintext("x:1")
                .client_config()
                .get("ssl.ca.location"),
            None
        );
    }

    #[test]
    fn the_initial_rebalance_delay_reaches_the_embedded_broker() {
        let broker = EmbeddedBroker::start(1).expect("embedded broker");
        let bootstrap = broker.bootstrap_servers();
        // Kafka's default would assign after 3 s; a 30 s delay must hold the group longer,
        // which proves the setter reaches the mock cluster.
        broker.set_group_initial_rebalance_delay(Duration::from_secs(30));
        assert!(
            !assigned_within(&bootstrap, "held-back", Duration::from_secs(6)),
            "a new group was assigned despite a 30 s initial rebalance delay"
        );
        // And the start-up default (no delay) lets a new group in at once.
        broker.set_group_initial_rebalance_delay(EMBEDDED_GROUP_INITIAL_REBALANCE_DELAY);
        assert!(
            assigned_within(&bootstrap, "let-in", Duration::from_secs(20)),
            "a new group was not assigned with no initial rebalance delay"
        );
    }
}
