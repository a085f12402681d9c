//! The agent's settings: every flag is also an environment variable, because the Helm
//! chart configures the agent through its Deployment's and hook Job's environment.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kg_shared::client_id::ClientId;
use kg_shared::kafka::KafkaArgs;
use kg_shared::telemetry::LogFormat;

/// The kg-rca agent: one process in the client's cluster that registers the cluster,
/// heartbeats, and streams Kubernetes Events, resource state and topology to Kafka.
#[derive(Debug, Parser)]
#[command(name = "kg-rca-agent", version)]
pub struct AgentCli {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,

    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub run: RunArgs,
}

/// What the process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum AgentCommand {
    /// Register, heartbeat and stream until SIGTERM (the default).
    Run,
    /// Send the deregistration (a tombstone on the registry topic) and exit: the chart's
    /// pre-delete hook.
    Deregister,
}

/// What both commands need.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// The client id the control plane knows this cluster by: a lowercase DNS label.
    #[arg(long = "client-id", env = "CLIENT_ID")]
    pub client_id: String,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Topic of registrations and deregistrations.
    #[arg(
        long = "topic-registry",
        env = "TOPIC_REGISTRY",
        default_value = "cluster.registry"
    )]
    pub topic_registry: String,

    /// Log line format.
    #[arg(
        long = "log-format",
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// How long `deregister` (and the first registration) keeps retrying an unreachable
    /// Kafka before giving up.
    #[arg(long = "delivery-deadline", env = "DELIVERY_DEADLINE", value_parser = humantime::parse_duration, default_value = "60s")]
    pub delivery_deadline: Duration,
}

/// What `run` needs beyond [`CommonArgs`].
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Human-readable cluster name sent with the registration; defaults to the client id.
    #[arg(long = "cluster-name", env = "CLUSTER_NAME")]
    pub cluster_name: Option<String>,

    /// The Helm chart's version, sent with the registration.
    #[arg(long = "chart-version", env = "CHART_VERSION")]
    pub chart_version: Option<String>,

    /// Pipelines to ask the control plane for beyond its defaults, comma separated (names
    /// the operator made requestable), sent with the registration.
    #[arg(long = "pipelines", env = "PIPELINES", value_delimiter = ',')]
    pub pipelines: Vec<String>,

    /// Send heartbeats (the control plane reaps a client's workers without them).
    #[arg(long = "heartbeat-enabled", env = "HEARTBEAT_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub heartbeat_enabled: bool,

    /// Time between heartbeats (`30s`, `1m`, ...).
    #[arg(long = "heartbeat-interval", env = "HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration, default_value = "30s")]
    pub heartbeat_interval: Duration,

    /// Topic of heartbeats.
    #[arg(
        long = "topic-heartbeat",
        env = "TOPIC_HEARTBEAT",
        default_value = "cluster.heartbeat"
    )]
    pub topic_heartbeat: String,

    /// Stream Kubernetes Events.
    #[arg(long = "watch-events", env = "WATCH_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_events: bool,

    /// Stream resource state and topology.
    #[arg(long = "watch-resources", env = "WATCH_RESOURCES", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_resources: bool,

    /// Namespaces to watch, comma separated; empty watches every namespace the service
    /// account may read. Nodes are cluster-scoped and always watched.
    #[arg(
        long = "watch-namespaces",
        env = "WATCH_NAMESPACES",
        default_value = ""
    )]
    pub watch_namespaces: String,

    /// Topic of raw Kubernetes Events.
    #[arg(
        long = "topic-events",
        env = "TOPIC_EVENTS",
        default_value = "raw.k8s.events"
    )]
    pub topic_events: String,

    /// Topic of resource snapshots.
    #[arg(
        long = "topic-resource",
        env = "TOPIC_RESOURCE",
        default_value = "state.k8s.resource"
    )]
    pub topic_resource: String,

    /// Topic of topology edges.
    #[arg(
        long = "topic-topology",
        env = "TOPIC_TOPOLOGY",
        default_value = "state.k8s.topology"
    )]
    pub topic_topology: String,

    /// Address of `/health`, `/ready` and `/metrics`.
    #[arg(
        long = "listen-addr",
        env = "LISTEN_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub listen_addr: std::net::SocketAddr,

    /// Seconds a watch request may stay open before it is renewed (the API server's
    /// default is 5 minutes; shorter suits tests).
    #[arg(
        long = "watch-timeout-secs",
        env = "WATCH_TIMEOUT_SECS",
        default_value_t = 290
    )]
    pub watch_timeout_secs: u32,
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("CLIENT_ID (client.id in the chart's values): {0}")]
    ClientId(#[from] kg_shared::client_id::InvalidClientId),
    #[error("WATCH_NAMESPACES: {0:?} is not a namespace name (a lowercase DNS label)")]
    Namespace(String),
    #[error("HEARTBEAT_INTERVAL must be at least one second, not {0:?}")]
    HeartbeatInterval(Duration),
    #[error("KAFKA_BOOTSTRAP_SERVERS (client.kafka.brokers in the chart's values) is empty")]
    NoBrokers,
}

impl CommonArgs {
    /// The validated client id: checked before anything touches Kafka or Kubernetes.
    pub fn client_id(&self) -> Result<ClientId, ConfigError> {
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::NoBrokers);
        }
        Ok(ClientId::parse(&self.client_id)?)
    }

    /// One line that says where the agent sends, for the start-up log. It names the SASL
    /// user but never the password.
    pub fn kafka_summary(&self) -> String {
        let kafka = &self.kafka;
        let mut summary = format!(
            "bootstrap={} security.protocol={}",
            kafka.bootstrap_servers, kafka.security_protocol
        );
        if let Some(mechanism) = &kafka.sasl_mechanism {
            summary.push_str(&format!(" sasl.mechanism={mechanism}"));
        }
        if let Some(user) = &kafka.sasl_username {
            summary.push_str(&format!(" sasl.username={user}"));
        }
        if kafka.sasl_password.is_some() {
            summary.push_str(" sasl.password=<set>");
        }
        if let Some(ca) = &kafka.ssl_ca_location {
            summary.push_str(&format!(" ssl.ca.location={ca}"));
        }
        summary
    }
}

impl RunArgs {
    /// The namespaces to watch; empty means all.
    pub fn namespaces(&self) -> Result<Vec<String>, ConfigError> {
        let mut namespaces = Vec::new();
        for raw in self.watch_namespaces.split(',') {
            let namespace = raw.trim();
            if namespace.is_empty() {
                continue;
            }
            // Namespace names are DNS labels, the same rule as client ids.
            if ClientId::parse(namespace).is_err() {
                return Err(ConfigError::Namespace(namespace.to_string()));
            }
            if !namespaces.iter().any(|known| known == namespace) {
                namespaces.push(namespace.to_string());
            }
        }
        Ok(namespaces)
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval < Duration::from_secs(1) {
            return Err(ConfigError::HeartbeatInterval(self.heartbeat_interval));
        }
        self.namespaces().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> AgentCli {
        let mut argv = vec!["kg-rca-agent", "--kafka-bootstrap-servers", "k:9092"];
        argv.extend_from_slice(args);
        AgentCli::try_parse_from(argv).expect("parses")
    }

    #[test]
    fn a_client_id_that_is_not_a_dns_label_is_refused_with_the_values_key_named() {
        let cli = parse(&["--client-id", "Prod_EU"]);
        let error = cli.common.client_id().unwrap_err().to_string();
        assert!(error.contains("client.id"), "{error}");
        assert!(error.contains("Prod_EU"), "{error}");
        assert!(parse(&["--client-id", "prod-eu-1"])
            .common
            .client_id()
            .is_ok());
    }

    #[test]
    fn heartbeat_interval_takes_the_charts_duration_strings() {
        let cli = parse(&["--client-id", "a", "--heartbeat-interval", "1m"]);
        assert_eq!(cli.run.heartbeat_interval, Duration::from_secs(60));
        let cli = parse(&["--client-id", "a", "--heartbeat-interval", "500ms"]);
        assert!(cli.run.validate().is_err());
    }

    #[test]
    fn namespaces_are_split_deduplicated_and_checked() {
        let cli = parse(&[
            "--client-id",
            "a",
            "--watch-namespaces",
            "shop, shop,,payments",
        ]);
        assert_eq!(cli.run.namespaces().unwrap(), vec!["shop", "payments"]);
        let cli = parse(&["--client-id", "a", "--watch-namespaces", "Shop"]);
        assert!(cli.run.validate().is_err());
        let cli = parse(&["--client-id", "a"]);
        assert!(cli.run.namespaces().unwrap().is_empty());
    }

    #[test]
    fn pipelines_are_a_comma_separated_list() {
        let cli = parse(&["--client-id", "a", "--pipelines", "traffic-flatten,alerts"]);
        assert_eq!(cli.run.pipelines, ["traffic-flatten", "alerts"]);
        assert!(parse(&["--client-id", "a"]).run.pipelines.is_empty());
    }

    #[test]
    fn the_start_up_summary_never_contains_the_password() {
        let cli = parse(&[
            "--client-id",
            "a",
            "--kafka-sasl-username",
            "a",
            "--kafka-sasl-password",
            "hunter2-secret",
        ]);
        let summary = cli.common.kafka_summary();
        assert!(!summary.contains("hunter2-secret"), "{summary}");
        assert!(summary.contains("sasl.password=<set>"), "{summary}");
    }

    #[test]
    fn the_subcommand_is_optional_and_deregister_is_recognised() {
        assert_eq!(parse(&["--client-id", "a"]).command, None);
        assert_eq!(
            parse(&["--client-id", "a", "deregister"]).command,
            Some(AgentCommand::Deregister)
        );
    }
}
