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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_runtime_passes_the_runtime_contract() -> Result<()> {
    if kg_tests::require_tool(
        "a Docker Engine",
        docker_engine(),
        "`docker info` fails: install Docker and start dockerd",
    )?
    .is_none()
    {
        return Ok(());
    }
    ensure_images()?;
    let runtime = DockerRuntime::connect(
        DockerSettings {
            network: "host".into(),
            user: "10001:10001".into(),
            log_max_size: "1m".into(),
            log_max_files: 1,
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
