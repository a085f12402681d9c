//! The walkthroughs in `docs/pipelines.md`, run as written: every `bash` block that follows
//! a `<!-- run by tests/tests/docs_examples.rs -->` line, from the project's root, with
//! `KAFKA_BOOTSTRAP_SERVERS` pointing at a test broker. A block checks its own outcome (it
//! ends in a `grep` of what should come out), so a block that fails fails the test.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use kg_tests::*;

const MARK: &str = "<!-- run by tests/tests/docs_examples.rs -->";

/// The marked blocks of a Markdown file.
fn marked_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if line.trim() != MARK {
            continue;
        }
        if lines.next().map(str::trim) != Some("```bash") {
            continue;
        }
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(block.join("\n"));
    }
    blocks
}

on_both_brokers!(the_pipeline_walkthroughs_run_as_written);

async fn the_pipeline_walkthroughs_run_as_written(kind: BrokerKind) -> Result<()> {
    let broker = broker_or_skip!(kind);
    // The blocks run target/<profile>/worker: built, as for every test, with this profile.
    binaries();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/pipelines.md"))?;
    let blocks = marked_blocks(&doc);
    ensure!(
        blocks.len() == 3,
        "expected 3 marked walkthroughs, found {}",
        blocks.len()
    );
    for (n, block) in blocks.iter().enumerate() {
        // Run from a copy of the tree's paths as the reader has them: the project's root.
        let output = Command::new("timeout")
            .args(["180", "bash", "-euo", "pipefail", "-c", block])
            .current_dir(&root)
            .env("KAFKA_BOOTSTRAP_SERVERS", &broker.bootstrap)
            .output()
            .context("run bash")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success(),
            "walkthrough {n} failed ({}):\n{block}\n--- stdout\n{stdout}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        ensure!(!stdout.trim().is_empty(), "walkthrough {n} printed nothing");
    }
    Ok(())
}

#[test]
fn marked_blocks_are_found_and_others_are_not() {
    let doc = format!(
        "text\n```bash\nnot marked\n```\n{MARK}\n```bash\necho a\necho b\n```\n{MARK}\nno block\n"
    );
    assert_eq!(marked_blocks(&doc), ["echo a\necho b"]);
}
