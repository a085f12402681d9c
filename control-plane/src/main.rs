//! Entry point: parse the command line, start tracing, run the start-up checks
//! (`kg_shared::checks`), run the chosen command. A failed required check prints one
//! `startup check failed: …` line and exits 2; any other fatal error prints one line and
//! exits 1.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use control_plane::config::{Cli, Command, LogFormat, RunArgs, RuntimeKind};
use kg_shared::checks::{self, Check, CheckFailure, StartupCheckSettings};
use kg_shared::topics::{CLUSTER_HEARTBEAT, CLUSTER_REGISTRY};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        Command::Run(args) => args.log_format,
        Command::Dev(args) => args.run.log_format,
        _ => LogFormat::Text,
    };
    control_plane::init_tracing(format);
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Run(args) => {
            checks::run_or_exit(startup_checks(&args, true)).await;
            control_plane::run(args, control_plane::termination_signal(), |_| {})
                .await
                .map_err(Into::into)
        }
        Command::Dev(args) => {
            // Its broker is embedded: nothing to reach yet.
            checks::run_or_exit(startup_checks(&args.run, false)).await;
            control_plane::dev::dev(args).await.map_err(Into::into)
        }
        Command::CreateTopics(args) => {
            let settings = StartupCheckSettings::from_env_or_exit()
                .waiting(Duration::from_secs(args.wait_secs));
            checks::run_or_exit(settings.kafka_checks(&args.kafka, &[], false)).await;
            control_plane::admin::create_topics(args)
                .await
                .map_err(Into::into)
        }
        Command::EmbeddedBroker(args) => control_plane::dev::embedded_broker(args)
            .await
            .map_err(Into::into),
        Command::ListGroups(args) => control_plane::admin::list_groups(args).map_err(Into::into),
        Command::GroupOffsets(args) => {
            control_plane::admin::group_offsets(args).map_err(Into::into)
        }
        Command::DeadLetters(args) => control_plane::dead_letters::run(args)
            .await
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("control-plane: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Data directory, Docker when it is the runtime, and (unless the broker is embedded)
/// Kafka, whose registry and heartbeat topics are only reported when missing: ingest waits
/// for them.
fn startup_checks(args: &RunArgs, kafka: bool) -> Vec<Check> {
    let settings = StartupCheckSettings::from_env_or_exit();
    let mut list = vec![settings.data_dir(&args.data_dir, "CP_DATA_DIR")];
    if matches!(args.runtime, RuntimeKind::Docker | RuntimeKind::Swarm) {
        let args = args.clone();
        list.push(settings.check("docker", move |_| {
            let args = args.clone();
            async move {
                match control_plane::build_runtime(&args).await {
                    Ok(_) => Ok("the engine answered".to_string()),
                    Err(error) => Err(CheckFailure::new(
                        error.to_string(),
                        "start the Docker engine and make its socket readable by this user \
                         (compose: DOCKER_SOCKET, DOCKER_GID); for CP_RUNTIME=swarm, make it \
                         a swarm manager (docker swarm init); or set CP_RUNTIME=process",
                    )),
                }
            }
        }));
    }
    if kafka {
        list.extend(settings.kafka_checks(
            &args.kafka,
            &[CLUSTER_REGISTRY, CLUSTER_HEARTBEAT],
            false,
        ));
    }
    list
}
