//! Entry point: parse the settings, refuse an invalid client id before anything else
//! (exit 2), then `run` until SIGTERM or `deregister` once.

use std::process::ExitCode;

use clap::Parser;
use kg_rca_agent::config::{AgentCli, AgentCommand};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = AgentCli::parse();
    kg_shared::telemetry::init_tracing(cli.common.log_format);
    let client = match cli.common.client_id() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "refusing to start");
            eprintln!("kg-rca-agent: {error}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(AgentCommand::Run) {
        AgentCommand::Deregister => kg_rca_agent::deregister(&cli.common, &client).await,
        AgentCommand::Run => match cli.run.validate() {
            Err(error) => {
                eprintln!("kg-rca-agent: {error}");
                return ExitCode::from(2);
            }
            Ok(()) => {
                kg_rca_agent::run(
                    cli.common,
                    cli.run,
                    client,
                    kg_shared::telemetry::termination_signal(),
                )
                .await
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "agent failed");
            eprintln!("kg-rca-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}
