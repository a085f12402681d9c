//! Adversarial inputs against the control plane (issue "Hardening"), each a finding that
//! failed before its fix: a flood of garbage heartbeats must not delay a live client's
//! valid ones (dead letters are queued, not awaited one by one); a registration over the
//! size cap is dead-lettered (truncated, with its size and digest) and the registrations
//! behind it are applied; SIGTERM is prompt while the broker is down and ingest has dead
//! letters in flight.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kg_tests::*;
use serde_json::Value;

fn client_state(plane: &ControlPlane, id: &str) -> Option<String> {
    plane
        .client(id)
        .and_then(|c| c["state"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_heartbeats_does_not_make_a_live_client_stale() -> Result<()> {
    let broker = Broker::start()?;
    let plane = ControlPlane::start(
        &broker,
        ControlPlaneOptions {
            heartbeat_timeout_secs: 20,
            ..ControlPlaneOptions::default()
        },
    )?;
    let client = "flood-001";
    register_with_chart(&broker.bootstrap, client)?;
    let heartbeats = Heartbeater::start(&broker.bootstrap, client, Duration::from_secs(2))?;
    poll("the client active", Duration::from_secs(60), || {
        (client_state(&plane, client).as_deref() == Some("active")).then_some(())
    })
    .with_context(|| plane.log_tail())?;

    // 10,000 non-JSON heartbeats under the client's own key: the same partition as its
    // valid heartbeats, which queue behind them.
    let producer = producer(&broker.bootstrap, "lz4")?;
    let garbage: Vec<(String, String)> = (0..10_000)
        .map(|n| (client.to_string(), format!("not json {n}")))
        .collect();
    send_all(&producer, "cluster.heartbeat", garbage).await?;
    let flooded = Instant::now();

    // Every one rejected and dead-lettered, and the client never stale meanwhile (its
    // timeout is 20 s; at the old 180 rejections per second the flood took 55 s).
    let mut rejected = 0.0;
    while flooded.elapsed() < Duration::from_secs(30) {
        let state = client_state(&plane, client);
        ensure!(
            state.as_deref() == Some("active"),
            "the client went {state:?} {:?} after the flood\n{}",
            flooded.elapsed(),
            plane.log_tail()
        );
        rejected = plane.metric("cp_heartbeats_rejected_total{reason=\"not_json\"}");
        std::thread::sleep(Duration::from_millis(250));
    }
    ensure!(
        rejected >= 10_000.0,
        "{rejected} of 10000 garbage heartbeats rejected"
    );
    poll(
        "every garbage heartbeat dead-lettered",
        Duration::from_secs(30),
        || (plane.metric("cp_dead_letters_total") >= 10_000.0).then_some(()),
    )?;
    // Counted, not logged line by line: a bounded number of lines per reason and window.
    let lines = plane.log().matches("skipping record").count();
    ensure!(
        lines < 200,
        "{lines} log lines for 10,000 rejected heartbeats"
    );
    heartbeats.stop().await;
    Ok(())
}

#[test]
fn a_registration_over_the_cap_is_dead_lettered_and_the_ones_behind_it_apply() -> Result<()> {
    let broker = Broker::start()?;
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    // 900 kB under one key, then a normal registration under the same key (so the same
    // partition, behind it), and another client's.
    let padding = "x".repeat(900_000);
    let huge = format!(r#"{{"client_id":"big-001","cluster_name":"big","padding":"{padding}"}}"#);
    kcat_produce(
        &broker.bootstrap,
        "cluster.registry",
        "big-001",
        Some(&huge),
        None,
    )?;
    register_with_chart(&broker.bootstrap, "big-001")?;
    register_with_chart(&broker.bootstrap, "small-001")?;
    poll("both clients registered", Duration::from_secs(30), || {
        (plane.client("big-001").is_some() && plane.client("small-001").is_some()).then_some(())
    })
    .with_context(|| plane.log_tail())?;
    // The big one's metadata is the normal registration's, not the 900 kB.
    let (_, clients) = plane.get("/clients")?;
    ensure!(
        clients.len() < 20_000,
        "GET /clients is {} bytes",
        clients.len()
    );
    ensure!(plane.metric("cp_registry_rejected_total{reason=\"too_large\"}") == 1.0);
    // The dead letter says what and why, with the start of the value, its size and digest.
    let letter = poll("the dead letter", Duration::from_secs(30), || {
        kcat_consume(&broker.bootstrap, "dlq.raw")
            .ok()?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str::<Value>(&v).ok())
            .find(|v| v["reason_code"] == "too_large")
    })?;
    ensure!(letter["source_topic"] == "cluster.registry", "{letter}");
    ensure!(letter["key"] == "big-001", "{letter}");
    ensure!(letter["truncated"]["size"] == huge.len(), "{letter}");
    ensure!(
        letter["truncated"]["sha256"]
            .as_str()
            .is_some_and(|d| d.len() == 64),
        "{letter}"
    );
    ensure!(
        letter["original"]
            .as_str()
            .is_some_and(|o| o.len() < 100_000),
        "the dead letter carries the whole value"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_prompt_while_the_broker_is_down_and_dead_letters_are_in_flight() -> Result<()> {
    let broker = Broker::start()?;
    let mut plane = ControlPlane::start(
        &broker,
        ControlPlaneOptions {
            extra_env: vec![("CP_STOP_GRACE_SECS".into(), "5".into())],
            ..ControlPlaneOptions::default()
        },
    )?;
    let producer = producer(&broker.bootstrap, "lz4")?;
    let garbage: Vec<(String, String)> = (0..2_000)
        .map(|n| (format!("g-{}", n % 50), format!("garbage {n}")))
        .collect();
    send_all(&producer, "cluster.heartbeat", garbage).await?;
    poll(
        "ingest rejecting the garbage",
        Duration::from_secs(30),
        || (plane.metric("cp_heartbeats_rejected_total{reason=\"not_json\"}") >= 1.0).then_some(()),
    )?;
    drop(producer);
    drop(broker);
    // Stop grace (5 s) plus a few seconds; before, every pending dead letter waited 30 s.
    let took = plane.terminate(Duration::from_secs(15))?;
    eprintln!("exited {took:?} after SIGTERM");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_output_is_too_large_is_dead_lettered_and_its_partition_moves_on(
) -> Result<()> {
    let broker = Broker::start()?;
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let client = "huge-001";
    register_with_chart(&broker.bootstrap, client)?;
    let heartbeats = Heartbeater::start(&broker.bootstrap, client, Duration::from_secs(2))?;
    poll("the client's workers", Duration::from_secs(60), || {
        (plane.running_workers(client).len() == 3).then_some(())
    })
    .with_context(|| plane.log_tail())?;
    // A raw event with a 960 KiB message (under the 1 MB a producer sends), then an
    // ordinary one under the same key (the same partition, behind it).
    let key = format!("{client}::event::huge");
    let huge = raw_event("huge-uid", "BackOff")
        .replace("Container killed: out of memory", &"m".repeat(960 * 1024));
    let producer = producer(&broker.bootstrap, "lz4")?;
    send(&producer, "raw.k8s.events", &key, &huge).await?;
    send(
        &producer,
        "raw.k8s.events",
        &key,
        &raw_event("after-uid", "BackOff"),
    )
    .await?;
    poll(
        "the event behind it normalized",
        Duration::from_secs(60),
        || {
            kcat_consume(&broker.bootstrap, "events.normalized")
                .ok()?
                .into_iter()
                .any(|(_, v)| v.contains("after-uid"))
                .then_some(())
        },
    )
    .with_context(|| plane.worker_log(&format!("kg-event-normalizer-{client}")))?;
    let letter = poll("the dead letter", Duration::from_secs(30), || {
        kcat_consume(&broker.bootstrap, "dlq.normalized")
            .ok()?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str::<Value>(&v).ok())
            .find(|v| v["reason_code"] == "output_too_large")
    })?;
    ensure!(letter["source_topic"] == "raw.k8s.events", "{letter}");
    ensure!(letter["key"] == key.as_str(), "{letter}");
    ensure!(letter["truncated"]["size"] == huge.len(), "{letter}");
    ensure!(
        letter["reason"]
            .as_str()
            .is_some_and(|r| r.contains("bytes")),
        "{letter}"
    );
    heartbeats.stop().await;
    Ok(())
}

/// The process runtime keeps the Kafka SASL password off the disk: no file under the data
/// directory holds it (the spec of every worker is there), yet every worker gets it, in its
/// environment, which only its own user can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_runtime_writes_no_secret_to_disk_and_still_hands_it_to_workers() -> Result<()>
{
    let secret = "s3cret-process-Pa55word";
    let broker = Broker::start()?;
    // Plaintext: librdkafka ignores the password, so the workers run against the embedded
    // broker while the test follows where the password goes.
    let plane = ControlPlane::start(
        &broker,
        ControlPlaneOptions {
            extra_env: vec![
                ("KAFKA_SASL_USERNAME".into(), "cp".into()),
                ("KAFKA_SASL_PASSWORD".into(), secret.into()),
            ],
            ..ControlPlaneOptions::default()
        },
    )?;
    let client = "secret-001";
    register_with_chart(&broker.bootstrap, client)?;
    let heartbeats = Heartbeater::start(&broker.bootstrap, client, Duration::from_secs(2))?;
    poll("the client's workers", Duration::from_secs(60), || {
        (plane.running_workers(client).len() == 3).then_some(())
    })
    .with_context(|| plane.log_tail())?;
    let mut files = 0;
    let mut stack = vec![plane.data_dir.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files += 1;
                ensure!(
                    !String::from_utf8_lossy(&bytes).contains(secret),
                    "{} holds the password",
                    path.display()
                );
            }
        }
    }
    ensure!(files > 3, "only {files} files looked at");
    let name = format!("kg-graph-builder-{client}");
    let pid = plane.worker_pid(&name).context("worker pid")?;
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    ensure!(
        String::from_utf8_lossy(&environ).contains(&format!("KAFKA_SASL_PASSWORD={secret}")),
        "the worker did not get the password"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(plane.data_dir.join("workers"))?
        .permissions()
        .mode();
    ensure!(mode & 0o077 == 0, "the workers' directory is mode {mode:o}");
    heartbeats.stop().await;
    Ok(())
}

/// Finding 9: under `CP_MAX_CLIENTS` a restart's replay admitted clients in the order it
/// happened to read partitions, and swapped which clients were served. Now admission is in
/// arrival order, clients whose workers run keep their slots, and the waiting ones stay
/// waiting.
#[test]
fn the_clients_served_under_the_cap_are_the_same_after_a_restart() -> Result<()> {
    let broker = Broker::start()?;
    let mut plane = ControlPlane::start(
        &broker,
        ControlPlaneOptions {
            extra_env: vec![("CP_MAX_CLIENTS".into(), "2".into())],
            ..ControlPlaneOptions::default()
        },
    )?;
    let ids = ["cap-d", "cap-c", "cap-b", "cap-a"];
    for id in ids {
        register_with_chart(&broker.bootstrap, id)?;
    }
    let served = |plane: &ControlPlane| -> Vec<String> {
        ids.iter()
            .filter(|id| !plane.running_workers(id).is_empty())
            .map(|id| id.to_string())
            .collect()
    };
    let before = poll("two clients served", Duration::from_secs(60), || {
        let now = served(&plane);
        (now.len() == 2).then_some(now)
    })
    .with_context(|| plane.log_tail())?;
    // The first two to arrive.
    ensure!(before == ["cap-d", "cap-c"], "served {before:?}");
    for _ in 0..3 {
        plane.terminate(Duration::from_secs(15))?;
        plane.spawn()?;
        plane.wait_reconcile_passes(4)?;
        let after = served(&plane);
        ensure!(
            after == before,
            "served {after:?} after a restart, {before:?} before"
        );
        ensure!(plane.client("cap-a").is_none() && plane.client("cap-b").is_none());
    }
    ensure!(
        plane.metric("cp_admission_waiting") == 2.0,
        "{}",
        plane.log_tail()
    );
    Ok(())
}

/// Finding 6, the part past the waiting line: a registration that arrives while the line
/// is full is not kept in memory, but it is not lost either. Once the line has drained,
/// the registry is read again from where admission dropped registrations, and they are
/// admitted in arrival order as slots free, without a restart; one deregistered meanwhile
/// (its tombstone after its registration, while it was out of the line) never is.
#[test]
fn registrations_past_the_waiting_line_are_admitted_as_slots_free_without_a_restart() -> Result<()>
{
    let broker = Broker::start()?;
    let plane = ControlPlane::start(
        &broker,
        ControlPlaneOptions {
            extra_env: vec![
                ("CP_MAX_CLIENTS".into(), "2".into()),
                ("CP_MAX_WAITING_CLIENTS".into(), "2".into()),
            ],
            ..ControlPlaneOptions::default()
        },
    )?;
    plane.wait_reconcile_passes(1)?;
    let ids: Vec<String> = (1..=7).map(|n| format!("line-{n}")).collect();
    for id in &ids {
        register_with_chart(&broker.bootstrap, id)?;
    }
    // line-6 leaves while it is past the line: only the registry knows it was there.
    kcat_produce(&broker.bootstrap, "cluster.registry", "line-6", None, None)?;
    let served = |plane: &ControlPlane| -> Vec<String> {
        ids.iter()
            .filter(|id| client_state(plane, id).is_some())
            .cloned()
            .collect()
    };
    let expect_served = |plane: &ControlPlane, expected: &[&str]| -> Result<()> {
        poll(
            &format!("{expected:?} admitted"),
            Duration::from_secs(60),
            || (served(plane) == expected).then_some(()),
        )
        .with_context(|| format!("served {:?}\n{}", served(plane), plane.log_tail()))
    };
    expect_served(&plane, &["line-1", "line-2"])?;
    // Seven registrations, two served, two waiting: three dropped, on arrival or for one
    // that arrived earlier (records of several partitions are read in batches).
    poll("three past the line", Duration::from_secs(30), || {
        let dropped = plane.metric(r#"cp_admission_deferred_total{reason="waiting_full"}"#)
            + plane.metric("cp_admission_displaced_total");
        (dropped >= 3.0).then_some(())
    })
    .with_context(|| plane.log_tail())?;
    // The gauge is set by the controller's next pass, the counters as records are read.
    poll("two waiting", Duration::from_secs(30), || {
        (plane.metric("cp_admission_waiting") == 2.0).then_some(())
    })
    .with_context(|| plane.log_tail())?;
    // Each deregistration frees a slot for the next in arrival order.
    let steps: [(&str, [&str; 2]); 4] = [
        ("line-1", ["line-2", "line-3"]),
        ("line-2", ["line-3", "line-4"]),
        ("line-3", ["line-4", "line-5"]),
        ("line-4", ["line-5", "line-7"]),
    ];
    for (leaving, expected) in steps {
        kcat_produce(&broker.bootstrap, "cluster.registry", leaving, None, None)?;
        expect_served(&plane, &expected)?;
    }
    ensure!(
        plane.metric("cp_admission_refills_total") >= 1.0,
        "{}",
        plane.log_tail()
    );
    poll("none waiting", Duration::from_secs(30), || {
        (plane.metric("cp_admission_waiting") == 0.0).then_some(())
    })
    .with_context(|| plane.log_tail())?;
    Ok(())
}

/// Finding 8: while the runtime could not be listed, `/ready` stayed 200 and the API showed
/// workers as running that might have died. Now `/ready` is 503 with the reason, and every
/// client's workers are marked as last known, with why; both clear once it lists again.
#[test]
fn while_the_runtime_cannot_be_listed_ready_says_so_and_the_api_marks_workers_last_known(
) -> Result<()> {
    let broker = Broker::start()?;
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let client = "unlisted-001";
    register_with_chart(&broker.bootstrap, client)?;
    poll("the client's workers", Duration::from_secs(60), || {
        (plane.running_workers(client).len() == 3).then_some(())
    })
    .with_context(|| plane.log_tail())?;
    ensure!(plane
        .client(client)
        .is_some_and(|c| c["workers_last_known"] == false));

    // The process runtime lists its data directory: make that impossible (as root, a mode
    // would not stop the read, so the directory becomes a file).
    let workers = plane.data_dir.join("workers");
    let away = plane.data_dir.join("workers.away");
    std::fs::rename(&workers, &away)?;
    std::fs::write(&workers, "not a directory")?;
    let ready = poll(
        "/ready to say the runtime cannot be listed",
        Duration::from_secs(30),
        || {
            let (code, body) = plane.get("/ready").ok()?;
            let body: Value = serde_json::from_str(&body).ok()?;
            (code == 503 && body["runtime_listable"] == false).then_some(body)
        },
    );
    let view = plane.client(client);
    std::fs::remove_file(&workers)?;
    std::fs::rename(&away, &workers)?;
    let ready = ready.with_context(|| plane.log_tail())?;
    ensure!(
        ready["runtime_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot be listed")),
        "{ready}"
    );
    let view = view.context("the client")?;
    ensure!(view["workers_last_known"] == true, "{view}");
    ensure!(
        view["workers_note"]
            .as_str()
            .is_some_and(|n| n.contains("workers are as last seen")),
        "{view}"
    );

    poll("ready again once it lists", Duration::from_secs(30), || {
        plane.get("/ready").ok().filter(|(code, _)| *code == 200)
    })?;
    ensure!(plane
        .client(client)
        .is_some_and(|c| c["workers_last_known"] == false));
    Ok(())
}

/// The live worker processes of `worker` under the control plane's data directory, found
/// by their environment (the address file the process runtime gives each one), not by
/// anything the control plane records.
fn processes_of(plane: &ControlPlane, worker: &str) -> Vec<i32> {
    let addr_file = format!(
        "WORKER_ADDR_FILE={}",
        plane
            .data_dir
            .join("workers")
            .join(worker)
            .join("addr")
            .display()
    );
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            if matches!(state, Some("Z") | Some("X") | None) {
                return false;
            }
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            environ
                .split(|b| *b == 0)
                .any(|var| var == addr_file.as_bytes())
        })
        .collect()
}

/// Finding 7: a control plane SIGKILLed between spawning a worker and recording its pid
/// left a process no record knew, and the next instance started a second one beside it:
/// two graph builders on one client's store. Reproduced exactly: the pid record of a
/// running graph builder is removed while the control plane is down (what the kill left),
/// and another worker's whole record (a process with no record at all).
#[test]
fn after_a_kill_mid_spawn_each_worker_has_exactly_one_process() -> Result<()> {
    let broker = Broker::start()?;
    let mut plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let client = "midspawn-001";
    register_with_chart(&broker.bootstrap, client)?;
    poll("the client's workers", Duration::from_secs(60), || {
        (plane.running_workers(client).len() == 3).then_some(())
    })
    .with_context(|| plane.log_tail())?;
    let graph = format!("kg-graph-builder-{client}");
    let events = format!("kg-event-normalizer-{client}");
    // "Running" is the process runtime's word for a live pid, before the worker has checked
    // its topics and written its address into its directory. A worker whose directory the
    // test removes before that write exits on its own (it cannot tell its supervisor where
    // it listens), and there is no stray left to stop: this raced in CI (2 of 4 runs), so
    // the kill waits until every worker has written its address.
    let names: Vec<String> = plane
        .running_workers(client)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    poll("every worker's address", Duration::from_secs(60), || {
        names
            .iter()
            .all(|name| plane.worker_addr(name).is_some())
            .then_some(())
    })
    .with_context(|| plane.log_tail())?;
    let graph_pid = plane.worker_pid(&graph).context("graph builder pid")?;
    ensure!(processes_of(&plane, &graph) == [graph_pid]);
    let old_normalizers = processes_of(&plane, &events);
    ensure!(old_normalizers.len() == 1, "{old_normalizers:?}");

    plane.kill();
    std::fs::remove_file(plane.data_dir.join("workers").join(&graph).join("pid.json"))?;
    std::fs::remove_dir_all(plane.data_dir.join("workers").join(&events))?;
    plane.spawn()?;
    plane.wait_reconcile_passes(4)?;
    poll("one process per worker", Duration::from_secs(30), || {
        let graphs = processes_of(&plane, &graph);
        let normalizers = processes_of(&plane, &events);
        (graphs.len() == 1 && normalizers.len() == 1 && plane.running_workers(client).len() == 3)
            .then_some(())
    })
    .with_context(|| {
        format!(
            "graph builders {:?}, event normalizers {:?}\n{}",
            processes_of(&plane, &graph),
            processes_of(&plane, &events),
            plane.log_tail()
        )
    })?;
    // The unrecorded graph builder was adopted, not replaced; the stray normalizer was
    // stopped and a recorded one runs.
    ensure!(
        processes_of(&plane, &graph) == [graph_pid],
        "{}",
        plane.log_tail()
    );
    ensure!(plane
        .log()
        .contains("adopted a worker process that was started but never recorded"));
    ensure!(
        plane.log().contains("stopping a stray worker process"),
        "{}",
        plane.log_tail()
    );
    ensure!(
        processes_of(&plane, &events) != old_normalizers,
        "the stray normalizer {old_normalizers:?} still runs"
    );
    Ok(())
}
