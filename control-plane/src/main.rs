//! Entry point: parse the command line, start tracing, run the chosen command.

use clap::Parser;
use control_plane::config::{Cli, Command, LogFormat};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let format = match &cli.command {
        Command::Run(args) => args.log_format,
        Command::Dev(args) => args.run.log_format,
        _ => LogFormat::Text,
    };
    control_plane::init_tracing(format);
    match cli.command {
        Command::Run(args) => {
            control_plane::run(args, control_plane::termination_signal(), |_| {}).await?
        }
        Command::Dev(args) => control_plane::dev::dev(args).await?,
        Command::EmbeddedBroker(args) => control_plane::dev::embedded_broker(args).await?,
        Command::CreateTopics(args) => control_plane::dev::create_topics(args).await?,
        Command::ListGroups(args) => control_plane::dev::list_groups(args)?,
        Command::GroupOffsets(args) => control_plane::dev::group_offsets(args)?,
    }
    Ok(())
}
