//! Entry point: parse the configuration, start tracing, run until SIGTERM.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = worker::config::WorkerConfig::parse();
    kg_shared::telemetry::init_tracing(config.log_format);
    worker::run(config, kg_shared::telemetry::termination_signal()).await?;
    Ok(())
}
