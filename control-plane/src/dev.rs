//! The embedded default: `embedded-broker` (the mock cluster alone) and `dev` (the mock
//! cluster, the control plane with the process runtime and the API in one command, with
//! the demo agent of [`crate::demo`] when asked).

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use kg_shared::kafka::{EmbeddedBroker, KafkaArgs, KafkaSetupError};
use kg_shared::ClientId;
use tokio::sync::oneshot;

use crate::config::{BrokerArgs, DevArgs};
use crate::controller::Controller;
use crate::demo::DemoAgent;
use crate::runtime::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error(transparent)]
    ControlPlane(#[from] crate::ControlPlaneError),
    #[error("invalid demo client id: {0}")]
    DemoClient(#[from] kg_shared::InvalidClientId),
}

/// `control-plane embedded-broker`: runs until SIGTERM/SIGINT. The broker is not `Send`, so
/// this must run on the thread that drives the main future.
pub async fn embedded_broker(args: BrokerArgs) -> Result<(), DevError> {
    let broker = EmbeddedBroker::start(args.brokers)?;
    broker.set_group_initial_rebalance_delay(Duration::from_millis(
        args.group_initial_rebalance_delay_ms,
    ));
    println!("bootstrap={}", broker.bootstrap_servers());
    let _ = std::io::stdout().flush();
    tracing::info!(bootstrap = %broker.bootstrap_servers(), brokers = args.brokers, "embedded broker running");

    // Outage rehearsal: `down 1` / `up 1` on standard input.
    let (commands_tx, mut commands_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if commands_tx.send(line).is_err() {
                break;
            }
        }
    });
    let shutdown = crate::termination_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(line) = commands_rx.recv() => {
                let mut words = line.split_whitespace();
                let result = match (words.next(), words.next().and_then(|id| id.parse::<i32>().ok())) {
                    (Some("down"), Some(id)) => broker.broker_down(id).map(|_| format!("broker {id} down")),
                    (Some("up"), Some(id)) => broker.broker_up(id).map(|_| format!("broker {id} up")),
                    _ => Ok(format!("unknown command {line:?}; use `down <id>` or `up <id>`")),
                };
                match result {
                    Ok(message) => println!("{message}"),
                    Err(error) => println!("error: {error}"),
                }
                let _ = std::io::stdout().flush();
            }
        }
    }
    Ok(())
}

/// `control-plane dev`.
pub async fn dev(mut args: DevArgs) -> Result<(), DevError> {
    let demo_client = ClientId::parse(&args.demo_client)?;
    let broker = EmbeddedBroker::start(1)?;
    let bootstrap = broker.bootstrap_servers();
    args.run.kafka = KafkaArgs::plaintext(bootstrap.clone());
    println!("bootstrap={bootstrap}");
    let _ = std::io::stdout().flush();

    let (demo_done_tx, demo_done_rx) = oneshot::channel::<()>();
    let exit_after_demo = args.exit_after_demo && args.demo;
    let shutdown = async move {
        tokio::select! {
            _ = crate::termination_signal() => {}
            _ = demo_done_rx, if exit_after_demo => {}
        }
    };
    let mut runtime: Option<Arc<dyn Runtime>> = None;
    let demo = args.demo;
    let heartbeat_secs = args.demo_heartbeat_secs;
    let timeout_secs = args.run.heartbeat_timeout.as_secs();
    let stop_grace = Duration::from_secs(args.run.stop_grace_secs);
    crate::run(args.run, shutdown, |handles| {
        println!("api=http://{}", handles.api_addr);
        let _ = std::io::stdout().flush();
        runtime = Some(handles.runtime.clone());
        if demo {
            let agent = DemoAgent {
                bootstrap,
                client: demo_client,
                heartbeat_for: Duration::from_secs(heartbeat_secs),
                heartbeat_timeout_secs: timeout_secs,
                table: handles.table.clone(),
                status: handles.status.clone(),
                api: handles.api_addr,
                seen: Arc::default(),
            };
            tokio::spawn(async move {
                if let Err(error) = agent.run().await {
                    println!("demo: failed: {error}");
                }
                let _ = demo_done_tx.send(());
            });
        }
    })
    .await?;
    // The embedded broker goes away with this process, so its workers must too.
    if let Some(runtime) = runtime {
        println!("stopping workers");
        Controller::stop_all(runtime.as_ref(), stop_grace).await;
    }
    drop(broker);
    Ok(())
}
