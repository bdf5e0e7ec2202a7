//! A single-voter controller end to end: start, write through `ControllerApi`,
//! follow deltas, restart on the same data directory.

// Tests run against real time, sockets and randomness.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use controller::{Controller, ControllerConfig, ControllerError};
use proto::image::BrokerEndpoint;
use proto::rpc::{ControllerApi, MetadataDeltas, WriteOutcome};
use proto::{CommandReply, MetadataCommand};

fn config(dir: &Path) -> ControllerConfig {
    let mut config = ControllerConfig::new(1, dir);
    // In process only (as `oxbow server` runs it): no RPC listener, so
    // these tests run in parallel without ports.
    config.rpc_addr = String::new();
    config.heartbeat_interval = Duration::from_millis(50);
    config.election_timeout_min = Duration::from_millis(150);
    config.election_timeout_max = Duration::from_millis(300);
    config
}

fn register(id: i32) -> MetadataCommand {
    MetadataCommand::RegisterBroker {
        id,
        endpoint: BrokerEndpoint {
            host: "localhost".into(),
            port: 9092,
        },
        rack: None,
    }
}

fn create_topic(name: &str, partitions: u32) -> MetadataCommand {
    MetadataCommand::CreateTopic {
        id: uuid::Uuid::new_v4(),
        name: name.into(),
        partitions,
        configs: BTreeMap::new(),
        internal: false,
    }
}

async fn write(controller: &Controller, cmd: MetadataCommand) -> WriteOutcome {
    controller.write(cmd).await.expect("write commits")
}

fn deltas(answer: MetadataDeltas) -> Vec<(u64, MetadataCommand)> {
    match answer {
        MetadataDeltas::Deltas(d) => d,
        MetadataDeltas::Snapshot { version, .. } => {
            panic!("expected deltas, got a snapshot at {version}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_state_and_does_not_bootstrap_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let controller = Controller::start(config(dir.path()))
        .await
        .expect("first start");

    let (_, fresh) = controller.image().await;
    let cluster_id = fresh
        .cluster_id
        .clone()
        .expect("bootstrapped on first start");
    assert_eq!(cluster_id.len(), 22);

    let registered = write(&controller, register(1)).await;
    assert_eq!(
        registered.reply,
        CommandReply::BrokerRegistered { epoch: 1 }
    );
    let created = write(&controller, create_topic("orders", 3)).await;
    assert!(matches!(created.reply, CommandReply::TopicCreated { .. }));
    assert!(created.version > registered.version);
    let ids = write(
        &controller,
        MetadataCommand::AllocateProducerIds { count: 10 },
    )
    .await;
    assert_eq!(
        ids.reply,
        CommandReply::ProducerIds {
            first: 1000,
            count: 10
        }
    );

    let (before_version, before) = controller.image().await;
    assert_eq!(before_version, ids.version);
    assert_eq!(*controller.applied_version().borrow(), ids.version);
    controller.shutdown().await;

    let controller = Controller::start(config(dir.path()))
        .await
        .expect("restart on the same dir");
    let (after_version, after) = controller.image().await;
    assert_eq!(after, before, "same image after restart");
    assert_eq!(after.cluster_id.as_deref(), Some(cluster_id.as_str()));
    assert!(after_version >= before_version, "versions never go back");
    // Only the new leader's blank entry came after: no commands, no Bootstrap.
    assert!(deltas(
        controller
            .deltas_since(before_version, Duration::ZERO)
            .await
            .unwrap()
    )
    .is_empty());

    let again = write(&controller, create_topic("orders", 3)).await;
    assert_eq!(again.reply, CommandReply::TopicExists);
    assert!(again.version > after_version);
    controller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_a_snapshot_after_the_log_is_purged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path());
    cfg.snapshot_every_entries = 5;
    cfg.entries_kept_after_snapshot = 0;
    let controller = Controller::start(cfg.clone()).await.expect("first start");
    for id in 0..30 {
        write(&controller, register(id)).await;
    }
    // Give the background snapshot build and purge a moment to finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (version, before) = controller.image().await;
    controller.shutdown().await;

    let controller = Controller::start(cfg).await.expect("restart from snapshot");
    let (after_version, after) = controller.image().await;
    assert_eq!(after, before);
    assert!(after_version >= version);
    assert_eq!(after.brokers.len(), 30);
    // The ring starts at the snapshot, so a broker at 0 gets the image.
    match controller.deltas_since(0, Duration::ZERO).await.unwrap() {
        MetadataDeltas::Snapshot { version, image } => {
            assert_eq!(*image, after);
            assert_eq!(version, after_version);
        }
        MetadataDeltas::Deltas(d) => panic!("expected the image, got {} deltas", d.len()),
    }
    controller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_follow_the_log_and_fall_back_to_the_image() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config(dir.path());
    cfg.cluster_id = Some("AAAAAAAAAAAAAAAAAAAAAA".into());
    cfg.deltas_ring_capacity = 4;
    let controller = Controller::start(cfg).await.expect("start");

    let mut written = Vec::new();
    for id in 1..=6 {
        let cmd = register(id);
        let outcome = write(&controller, cmd.clone()).await;
        written.push((outcome.version, cmd));
    }

    // The ring holds the last four commands; everything after the third
    // write's version is there.
    let third = written[2].0;
    let answer = deltas(
        controller
            .deltas_since(third, Duration::ZERO)
            .await
            .unwrap(),
    );
    assert_eq!(answer, written[3..].to_vec());
    let answer = deltas(
        controller
            .deltas_since(written[1].0, Duration::ZERO)
            .await
            .unwrap(),
    );
    assert_eq!(answer, written[2..].to_vec());

    // Older than the ring: the whole image at the applied version.
    let (version, image) = controller.image().await;
    for old in [0, written[1].0 - 1] {
        match controller.deltas_since(old, Duration::ZERO).await.unwrap() {
            MetadataDeltas::Snapshot {
                version: at,
                image: got,
            } => {
                assert_eq!(at, version);
                assert_eq!(*got, image);
                assert_eq!(got.cluster_id.as_deref(), Some("AAAAAAAAAAAAAAAAAAAAAA"));
            }
            MetadataDeltas::Deltas(d) => panic!("expected the image for {old}, got {d:?}"),
        }
    }
    controller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_commands_arrive_in_log_order_from_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let controller = Controller::start(config(dir.path())).await.expect("start");
    let mut written = Vec::new();
    for id in 1..=5 {
        let cmd = register(id);
        written.push((write(&controller, cmd.clone()).await.version, cmd));
    }
    let answer = deltas(controller.deltas_since(0, Duration::ZERO).await.unwrap());
    assert_eq!(answer.len(), 6);
    assert!(matches!(answer[0].1, MetadataCommand::Bootstrap { .. }));
    assert_eq!(answer[1..].to_vec(), written);
    assert!(answer.windows(2).all(|w| w[0].0 < w[1].0));
    controller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_waits_then_wakes_on_a_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let controller = Arc::new(Controller::start(config(dir.path())).await.expect("start"));
    let (version, _) = controller.image().await;

    let started = Instant::now();
    let answer = controller
        .deltas_since(version, Duration::from_millis(200))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(deltas(answer).is_empty());
    assert!(
        waited >= Duration::from_millis(190),
        "returned after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1000),
        "returned after {waited:?}"
    );

    let poller = {
        let controller = controller.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = controller
                .deltas_since(version, Duration::from_secs(10))
                .await
                .unwrap();
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let outcome = write(&controller, register(7)).await;
    let (answer, waited) = poller.await.expect("poller task");
    assert_eq!(deltas(answer), vec![(outcome.version, register(7))]);
    assert!(waited < Duration::from_secs(2), "woke after {waited:?}");

    let controller = Arc::try_unwrap(controller).unwrap_or_else(|_| panic!("poller finished"));
    controller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_controller_on_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let controller = Controller::start(config(dir.path())).await.expect("start");
    match Controller::start(config(dir.path())).await {
        Err(e @ ControllerError::OpenDatabase { .. }) => {
            assert!(e.to_string().contains("controller.redb"), "{e}");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("two controllers opened one data dir"),
    }
    controller.shutdown().await;
}
