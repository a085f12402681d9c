//! The swarm runtime (`CP_RUNTIME=swarm`) against a real single-node Docker Swarm, with
//! the real worker image: the runtime contract, secrets as swarm secrets, and a control
//! plane that runs a client's workers as services, adopts them after a SIGKILL, restarts
//! one whose task died, and removes them (and the client's volume) when the client goes.
//!
//! The swarm is made by the test when the engine is in none (`docker swarm init
//! --advertise-addr 127.0.0.1`) and left afterwards, with the `docker_gwbridge` network
//! that `docker swarm leave` leaves behind; an engine already in a swarm is used as it is.
//! Everything runs in one test function: the tests of one binary run at once, and only
//! one of them may make and leave the swarm.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use control_plane::runtime::swarm::{service_name, SwarmRuntime, SwarmSettings};
use control_plane::runtime::Runtime;
use kg_tests::{poll, register_with_chart, Broker, ControlPlane, ControlPlaneOptions};

fn docker(args: &[&str]) -> Result<String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .with_context(|| format!("docker {args:?}"))?;
    ensure!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// A single-node swarm for the test's duration; left on drop when the test made it.
struct Swarm {
    made_here: bool,
}

impl Swarm {
    fn join_or_init() -> Result<Option<Self>> {
        let engine = kg_tests::require_tool(
            "a Docker Engine",
            docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).ok(),
            "`docker info` fails: install Docker and start dockerd",
        )?;
        let Some(state) = engine else {
            return Ok(None);
        };
        let made_here = match state.as_str() {
            "active" => {
                let manager = docker(&["info", "--format", "{{.Swarm.ControlAvailable}}"])?;
                ensure!(
                    manager == "true",
                    "this engine is in a swarm but no manager"
                );
                false
            }
            "inactive" => {
                docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"])?;
                true
            }
            other => bail!("the engine's swarm is {other}: neither in one nor out"),
        };
        kg_tests::docker::ensure_images()?;
        Ok(Some(Self { made_here }))
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.made_here {
            let _ = docker(&["swarm", "leave", "--force"]);
            let _ = docker(&["network", "rm", "docker_gwbridge"]);
        }
    }
}

fn settings(secret_env: Vec<(String, String)>) -> SwarmSettings {
    SwarmSettings {
        network: "host".into(),
        worker_bind: "127.0.0.1".into(),
        user: "10001:10001".into(),
        log_max_size: "1m".into(),
        log_max_files: 1,
        constraints: vec!["node.role==manager".into()],
        secret_env,
    }
}

/// Our services of `client`: (worker name, replicas as `docker service ls` shows them).
fn services_of(client: &str) -> Vec<(String, String, String)> {
    let listed = docker(&[
        "service",
        "ls",
        "--filter",
        "label=kg.managed-by=kg-control-plane",
        "--filter",
        &format!("label=kg.client-id={client}"),
        "--format",
        "{{.Name}} {{.ID}} {{.Replicas}}",
    ])
    .unwrap_or_default();
    kg_tests::docker::three_fields(&listed)
}

/// Removes service `name` once no task of it waits for swarm's task reaper: Engine
/// 20.10's manager crashes the daemon when a service is deleted while one of its tasks
/// is being reaped (the runtime's `remove` waits the same way).
fn service_rm(name: &str) {
    let _ = poll(
        "the service's tasks reaped",
        Duration::from_secs(15),
        || {
            let desired = docker(&["service", "ps", "--format", "{{.DesiredState}}", name]).ok()?;
            (!desired.lines().any(|state| state == "Remove")).then_some(())
        },
    );
    let _ = docker(&["service", "rm", name]);
}

fn remove_client(client: &str) {
    for (name, _, _) in services_of(client) {
        service_rm(&name);
    }
    let volume = format!("kg-data-{client}");
    let _ = poll(
        "the client's volume removed",
        Duration::from_secs(30),
        || {
            let _ = docker(&["volume", "rm", "-f", &volume]);
            docker(&["volume", "inspect", &volume])
                .is_err()
                .then_some(())
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swarm_runtime_on_a_single_node_swarm() -> Result<()> {
    let Some(_swarm) = Swarm::join_or_init()? else {
        return Ok(());
    };
    contract().await.context("the runtime contract")?;
    secrets().await.context("secrets")?;
    tokio::task::spawn_blocking(a_control_plane_runs_a_client_on_the_swarm)
        .await?
        .context("a control plane with CP_RUNTIME=swarm")?;
    Ok(())
}

async fn contract() -> Result<()> {
    let runtime = SwarmRuntime::connect(settings(Vec::new()), Duration::from_secs(10)).await?;
    let result = control_plane::runtime::contract::run_contract(
        &runtime,
        "contract-swarm",
        "kg-worker:latest",
        Duration::from_secs(60),
    )
    .await;
    remove_client("contract-swarm");
    Ok(result?)
}

/// The Kafka SASL password is a swarm secret mounted as the file the worker is told of,
/// owned by its user, mode 0400; `docker service inspect` never shows it.
async fn secrets() -> Result<()> {
    let secret = "s3cret-swarm-Pa55word";
    let runtime = SwarmRuntime::connect(
        settings(vec![("KAFKA_SASL_PASSWORD".into(), secret.into())]),
        Duration::from_secs(10),
    )
    .await?;
    let spec = control_plane::runtime::contract::contract_spec("secret-swarm", "kg-worker:latest");
    let name = spec.name.to_string();
    let result = async {
        runtime.create(&spec).await?;
        let inspect = docker(&["service", "inspect", &service_name(&name)])?;
        ensure!(
            !inspect.contains(secret),
            "docker service inspect shows the password"
        );
        ensure!(
            inspect.contains("KAFKA_SASL_PASSWORD_FILE=/run/secrets/kafka-sasl-password"),
            "the worker is not told where the password is"
        );
        let inspect: serde_json::Value = serde_json::from_str(&inspect)?;
        let mounted = &inspect[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"][0];
        ensure!(
            mounted["File"]["Name"] == "kafka-sasl-password"
                && mounted["File"]["UID"] == "10001"
                && mounted["File"]["Mode"] == 0o400,
            "{mounted}"
        );
        let secret_name = mounted["SecretName"].as_str().context("secret name")?;
        ensure!(
            !docker(&["secret", "inspect", secret_name])?.contains(secret),
            "docker secret inspect shows the password"
        );
        runtime.start(&name).await?;
        // The file as the worker reads it: the task's container on this node.
        let container = poll(
            "the secret worker's container",
            Duration::from_secs(60),
            || {
                docker(&[
                    "ps",
                    "-q",
                    "--filter",
                    &format!(
                        "label=com.docker.swarm.service.name={}",
                        service_name(&name)
                    ),
                ])
                .ok()
                .filter(|id| !id.is_empty())
            },
        )?;
        // `docker cp` does not see into the secrets' tmpfs, and the image has no shell:
        // read the file swarm mounted, where the engine keeps it for the container.
        let full_id = docker(&["inspect", "--format", "{{.Id}}", &container])?;
        let root = docker(&["info", "--format", "{{.DockerRootDir}}"])?;
        let dir = std::path::Path::new(&root).join(format!("containers/{full_id}/mounts/secrets"));
        let file = std::fs::read_dir(&dir)
            .with_context(|| format!("{}", dir.display()))?
            .next()
            .context("a secret file")??
            .path();
        let content = std::fs::read_to_string(&file)?;
        ensure!(content == secret, "the file holds {content:?}");
        let metadata = std::fs::metadata(&file)?;
        use std::os::unix::fs::MetadataExt;
        ensure!(
            metadata.mode() & 0o777 == 0o400 && metadata.uid() == 10001,
            "mode {:o}, owner {}",
            metadata.mode() & 0o777,
            metadata.uid()
        );
        runtime.stop(&name, Duration::from_secs(5)).await?;
        runtime.remove(&name).await?;
        Ok(())
    }
    .await;
    remove_client("secret-swarm");
    result
}

/// Whether `client` has exactly `count` services, each with its one task running, and
/// the control plane shows them running.
fn converged(plane: &ControlPlane, client: &str, count: usize) -> bool {
    let services = services_of(client);
    services.len() == count
        && services.iter().all(|(_, _, replicas)| replicas == "1/1")
        && plane.running_workers(client).len() == count
}

#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
fn a_control_plane_runs_a_client_on_the_swarm() -> Result<()> {
    let client = "swarm-e2e-001";
    remove_client(client);
    let result = (|| -> Result<()> {
        let broker = Broker::start()?;
        let mut plane = ControlPlane::start(
            &broker,
            ControlPlaneOptions {
                built_in_pipelines: true,
                extra_env: vec![
                    ("CP_RUNTIME".into(), "swarm".into()),
                    ("CP_SWARM_WORKER_BIND".into(), "127.0.0.1".into()),
                    ("CP_DEREGISTERED_DATA".into(), "delete".into()),
                ],
                ..ControlPlaneOptions::default()
            },
        )?;
        register_with_chart(&broker.bootstrap, client)?;
        let heartbeats =
            kg_tests::Heartbeater::start(&broker.bootstrap, client, Duration::from_secs(1))?;
        // Three roles and alert enrichment, each a service with its task running.
        poll(
            "four services running for the client",
            Duration::from_secs(120),
            || converged(&plane, client, 4).then_some(()),
        )
        .with_context(|| format!("{:?}\n{}", services_of(client), plane.log_tail()))?;
        let pipeline = service_name(&format!("kg-pipeline-alert-enrichment.{client}"));
        ensure!(
            services_of(client)
                .iter()
                .any(|(name, _, _)| *name == pipeline),
            "{:?}",
            services_of(client)
        );
        // The image by id, restarts ours.
        let spec: serde_json::Value = serde_json::from_str(&docker(&[
            "service",
            "inspect",
            &format!("kg-graph-builder-{client}"),
        ])?)?;
        let template = &spec[0]["Spec"]["TaskTemplate"];
        ensure!(
            template["ContainerSpec"]["Image"]
                .as_str()
                .is_some_and(|image| image.starts_with("sha256:")),
            "{template}"
        );
        ensure!(
            template["RestartPolicy"]["Condition"] == "none",
            "{template}"
        );
        // The graph builder's HTTP server, through its endpoint (its node's address and
        // its port), and its log, through `docker service logs`: both via the API.
        poll(
            "the graph through the worker's endpoint",
            Duration::from_secs(60),
            || {
                let (code, body) = plane.get(&format!("/clients/{client}/graph/stats")).ok()?;
                (code == 200).then_some(body)
            },
        )
        .with_context(|| format!("{:?}", plane.get(&format!("/clients/{client}/graph/stats"))))?;
        let (code, logs) = plane.get(&format!("/clients/{client}/workers/graph-builder/logs"))?;
        ensure!(
            code == 200 && logs.contains("worker started") && logs.contains(client),
            "{code}: {logs}"
        );

        // SIGKILL and restart: the same services adopted.
        let before = services_of(client);
        plane.kill();
        plane.spawn()?;
        plane.wait_reconcile_passes(3)?;
        poll("the services adopted", Duration::from_secs(60), || {
            converged(&plane, client, 4).then_some(())
        })?;
        ensure!(
            services_of(client) == before,
            "before {before:?}, after {:?}",
            services_of(client)
        );

        // A task that dies is the control plane's to restart: a new service, running.
        let victim = format!("kg-event-normalizer-{client}");
        let old_id = before
            .iter()
            .find(|(name, _, _)| *name == victim)
            .map(|(_, id, _)| id.clone())
            .context("the event normalizer's service")?;
        let container = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={victim}"),
        ])?;
        docker(&["kill", &container])?;
        poll("the killed worker back", Duration::from_secs(60), || {
            services_of(client)
                .iter()
                .any(|(name, id, replicas)| *name == victim && *id != old_id && replicas == "1/1")
                .then_some(())
        })
        .with_context(|| format!("{:?}\n{}", services_of(client), plane.log_tail()))?;

        // Deregistered: every service and the client's volume gone.
        drop(heartbeats);
        kg_tests::kcat_produce(&broker.bootstrap, "cluster.registry", client, None, None)?;
        poll(
            "the client's services removed",
            Duration::from_secs(60),
            || services_of(client).is_empty().then_some(()),
        )?;
        poll(
            "the client's volume removed",
            Duration::from_secs(60),
            || {
                docker(&["volume", "inspect", &format!("kg-data-{client}")])
                    .is_err()
                    .then_some(())
            },
        )
        .with_context(|| plane.log_tail())?;
        Ok(())
    })();
    remove_client(client);
    for (name, _, _) in services_of("shared") {
        service_rm(&name);
    }
    result
}
