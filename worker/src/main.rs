//! Entry point: parse the configuration, start tracing, run the start-up checks
//! (`kg_shared::checks`), run until SIGTERM. A failed required check prints one
//! `startup check failed: …` line and exits 2; any other fatal error prints one line and
//! exits 1.

use std::process::ExitCode;

use clap::Parser;
use kg_shared::checks::{self, StartupCheckSettings};
use worker::config::WorkerConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let config = WorkerConfig::parse();
    kg_shared::telemetry::init_tracing(config.log_format);
    let settings = StartupCheckSettings::from_env_or_exit();
    // Only the graph builder keeps state on disk. Kafka is required: a worker that cannot
    // reach it does nothing, and exit 2 shows up in the control plane's API and restarts
    // with its back-off. Missing input topics are reported: the consumer waits for them.
    // A pipeline's topics are its template's: a templates file with an error stops the
    // worker here, before anything waits for Kafka.
    let pipeline = match worker::pipeline_template(&config) {
        Ok(pipeline) => pipeline,
        Err(error) => {
            eprintln!("worker: {error}");
            return ExitCode::FAILURE;
        }
    };
    let topics = worker::input_topics(&config, pipeline.as_ref());
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut startup = Vec::new();
    if config.role.keeps_state() {
        startup.push(settings.data_dir(&config.data_dir, "WORKER_DATA_DIR"));
    }
    startup.extend(settings.kafka_checks(&config.kafka, &topics, false));
    checks::run_or_exit(startup).await;
    match worker::run(config, pipeline, kg_shared::telemetry::termination_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("worker: {error}");
            ExitCode::FAILURE
        }
    }
}
