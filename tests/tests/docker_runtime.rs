//! The runtime contract against the real Docker Engine, with the real worker image.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use control_plane::runtime::docker::{DockerRuntime, DockerSettings};

/// Builds the images when they are missing (CI builds them fresh before the tests).
fn ensure_images() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new("bash")
        .arg(root.join("scripts/build-images.sh"))
        .arg("--if-missing")
        .status()
        .context("run scripts/build-images.sh")?;
    ensure!(status.success(), "scripts/build-images.sh failed");
    Ok(())
}

/// Whether a Docker Engine answers here; the test is skipped (or, with
/// `KG_TEST_STRICT=1`, fails) when none does.
fn docker_engine() -> Option<()> {
    Command::new("docker")
        .arg("info")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|_| ())
}

/// `Some` with the images built when a Docker Engine answers; `None` to skip.
fn docker_with_images() -> Result<Option<()>> {
    let engine = kg_tests::require_tool(
        "a Docker Engine",
        docker_engine(),
        "`docker info` fails: install Docker and start dockerd",
    )?;
    if engine.is_some() {
        ensure_images()?;
    }
    Ok(engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_runtime_passes_the_runtime_contract() -> Result<()> {
    if docker_with_images()?.is_none() {
        return Ok(());
    }
    let runtime = DockerRuntime::connect(
        DockerSettings {
            network: "host".into(),
            user: "10001:10001".into(),
            log_max_size: "1m".into(),
            log_max_files: 1,
            secret_env: Vec::new(),
        },
        Duration::from_secs(10),
    )
    .await?;
    let result = control_plane::runtime::contract::run_contract(
        &runtime,
        "contract-docker",
        "kg-worker:latest",
        Duration::from_secs(30),
    )
    .await;
    // Whatever happened, leave nothing behind.
    let _ = Command::new("docker")
        .args(["rm", "-f", "kg-event-normalizer-contract-docker"])
        .output();
    let _ = Command::new("docker")
        .args(["volume", "rm", "-f", "kg-data-contract-docker"])
        .output();
    result.map_err(anyhow::Error::msg)
}

/// The Kafka SASL password reaches a worker's container as a file only its user can read,
/// named by `KAFKA_SASL_PASSWORD_FILE`: never in its configuration (`docker inspect`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_runtime_passes_secrets_as_files_not_in_docker_inspect() -> Result<()> {
    use control_plane::runtime::Runtime;
    if docker_with_images()?.is_none() {
        return Ok(());
    }
    let secret = "s3cret-docker-Pa55word";
    let runtime = DockerRuntime::connect(
        DockerSettings {
            network: "host".into(),
            user: "10001:10001".into(),
            log_max_size: "1m".into(),
            log_max_files: 1,
            secret_env: vec![("KAFKA_SASL_PASSWORD".into(), secret.into())],
        },
        Duration::from_secs(10),
    )
    .await?;
    let spec = control_plane::runtime::contract::contract_spec("secret-docker", "kg-worker:latest");
    let name = spec.name.to_string();
    let result = async {
        runtime.create(&spec).await?;
        let inspect = Command::new("docker").args(["inspect", &name]).output()?;
        ensure!(inspect.status.success(), "docker inspect failed");
        let inspect = String::from_utf8_lossy(&inspect.stdout);
        ensure!(
            !inspect.contains(secret),
            "docker inspect shows the password"
        );
        ensure!(
            inspect.contains("KAFKA_SASL_PASSWORD_FILE=/run/secrets/kafka-sasl-password"),
            "the worker is not told where the password is"
        );
        // The file, as the worker will read it: owned by its user, mode 0400.
        let copied = Command::new("docker")
            .args([
                "cp",
                &format!("{name}:/run/secrets/kafka-sasl-password"),
                "-",
            ])
            .output()?;
        ensure!(
            copied.status.success(),
            "docker cp: {}",
            String::from_utf8_lossy(&copied.stderr)
        );
        let mut archive = tar::Archive::new(&copied.stdout[..]);
        let mut entry = archive.entries()?.next().context("an entry")??;
        ensure!(
            entry.header().mode()? & 0o777 == 0o400,
            "mode {:o}",
            entry.header().mode()?
        );
        ensure!(
            entry.header().uid()? == 10001,
            "owner {}",
            entry.header().uid()?
        );
        let mut content = String::new();
        std::io::Read::read_to_string(&mut entry, &mut content)?;
        ensure!(content == secret, "the file holds {content:?}");
        // And the worker starts with it.
        runtime.start(&name).await?;
        Ok(())
    }
    .await;
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    let _ = Command::new("docker")
        .args(["volume", "rm", "-f", "kg-data-secret-docker"])
        .output();
    result
}
