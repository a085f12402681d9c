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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_runtime_passes_the_runtime_contract() -> Result<()> {
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
