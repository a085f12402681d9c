//! The Docker Engine as the end-to-end tests use it: whether one answers (and the images
//! are built), and what runs there for a client, by the labels our runtimes put on it.

use std::process::Command;

use anyhow::{ensure, Context, Result};

/// Builds the images when they are missing (CI builds them fresh before the tests).
pub fn ensure_images() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new("bash")
        .arg(root.join("scripts/build-images.sh"))
        .arg("--if-missing")
        .status()
        .context("run scripts/build-images.sh")?;
    ensure!(status.success(), "scripts/build-images.sh failed");
    Ok(())
}

/// Whether a Docker Engine answers here.
fn docker_engine() -> Option<()> {
    Command::new("docker")
        .arg("info")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|_| ())
}

/// `Some` with the images built when a Docker Engine answers; `None` to skip (or, with
/// `KG_TEST_STRICT=1`, an error).
pub fn docker_with_images() -> Result<Option<()>> {
    let engine = crate::require_tool(
        "a Docker Engine",
        docker_engine(),
        "`docker info` fails: install Docker and start dockerd",
    )?;
    if engine.is_some() {
        ensure_images()?;
    }
    Ok(engine)
}

/// `docker ps -a` of the containers of `client`: (name, state, id), sorted.
pub fn containers_with_ids(client: &str) -> Vec<(String, String, String)> {
    let listed = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label=kg.client-id={client}"),
            "--format",
            "{{.Names}} {{.State}} {{.ID}}",
        ])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    three_fields(&listed)
}

/// Lines of three space-separated fields (a `docker … --format` listing), sorted.
pub fn three_fields(listed: &str) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = listed
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            Some((
                fields.next()?.to_string(),
                fields.next()?.to_string(),
                fields.next()?.to_string(),
            ))
        })
        .collect();
    rows.sort();
    rows
}

/// `docker ps -a` of the containers of `client`: (name, state), sorted.
pub fn containers_of(client: &str) -> Vec<(String, String)> {
    containers_with_ids(client)
        .into_iter()
        .map(|(name, state, _)| (name, state))
        .collect()
}

/// Removes every container and data volume of `clients`, whatever a test left.
pub fn remove_clients(clients: &[String]) {
    for client in clients {
        for (name, _) in containers_of(client) {
            let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        }
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &format!("kg-data-{client}")])
            .output();
    }
}
