//! The simulation's client against a real `oxbow server` over TCP.
//!
//! Ignored by default (it needs the binary): build it with
//! `cargo build -p oxbow`, then run
//! `cargo test -p simulation --test real_server -- --ignored`.
//! `OXBOW_BIN` overrides where the binary is looked for.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proto::seams::TokioNet;
use simulation::client::{
    ClientConfig, ClusterClient, ProducerIds, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP,
};

/// Kills the server when the test ends, passed or failed.
struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn oxbow_binary() -> PathBuf {
    match std::env::var_os("OXBOW_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/oxbow"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

fn start_server(data_dir: &std::path::Path, kafka: &str) -> ServerGuard {
    let binary = oxbow_binary();
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p oxbow` first",
        binary.display()
    );
    let mut cmd = Command::new(&binary);
    cmd.arg("server")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--kafka-listen")
        .arg(kafka)
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OXBOW_") {
            cmd.env_remove(key);
        }
    }
    ServerGuard(cmd.spawn().expect("starting oxbow server"))
}

fn values(vs: &[&str]) -> Vec<Bytes> {
    vs.iter()
        .map(|v| Bytes::copy_from_slice(v.as_bytes()))
        .collect()
}

#[tokio::test]
#[ignore = "needs the oxbow binary: cargo build -p oxbow"]
async fn client_round_trip_against_oxbow_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kafka = format!("127.0.0.1:{}", free_port());
    let mut server = start_server(dir.path(), &kafka);

    let mut client = ClusterClient::new(Arc::new(TokioNet), vec![kafka.clone()], "sim-it")
        .with_config(ClientConfig {
            request_timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        });

    // Wait for the server to answer metadata.
    let mut ready = false;
    for _ in 0..150 {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("oxbow server exited early: {status}");
        }
        if client.metadata().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "oxbow server did not answer within 30 s");

    client
        .create_topic("sim-it", 2, &[])
        .await
        .expect("create topic");
    // Creating it again is not an error.
    client
        .create_topic("sim-it", 2, &[])
        .await
        .expect("create again");

    let (id, epoch) = client.init_producer_id().await.expect("producer id");
    assert!(id >= 0 && epoch >= 0, "producer ({id}, {epoch})");
    let ids = |base_sequence| {
        Some(ProducerIds {
            id,
            epoch,
            base_sequence,
        })
    };

    let a = client
        .produce("sim-it", 1, ids(0), &values(&["a0", "a1"]), -1)
        .await
        .expect("batch a");
    let b = client
        .produce("sim-it", 1, ids(2), &values(&["b2"]), -1)
        .await
        .expect("batch b");
    // A retry of batch b (same sequence): the broker must answer with the
    // original offset and write nothing.
    let b_again = client
        .produce("sim-it", 1, ids(2), &values(&["b2"]), -1)
        .await
        .expect("batch b retried");
    let c = client
        .produce("sim-it", 1, ids(3), &values(&["c3", "c4", "c5"]), -1)
        .await
        .expect("batch c");
    assert_eq!((a, b, b_again, c), (0, 2, 2, 3));

    // A sequence gap is refused, definitely.
    let gap = client
        .produce("sim-it", 1, ids(10), &values(&["x"]), -1)
        .await
        .expect_err("out-of-order sequence");
    assert_eq!(gap.code(), Some(45), "{gap}");
    assert!(gap.is_definite());

    let all = client
        .fetch("sim-it", 1, 0, 1 << 20)
        .await
        .expect("fetch from 0");
    let want: Vec<(i64, Bytes)> = ["a0", "a1", "b2", "c3", "c4", "c5"]
        .iter()
        .zip(0..)
        .map(|(v, o)| (o, Bytes::copy_from_slice(v.as_bytes())))
        .collect();
    assert_eq!(all.records, want);
    assert_eq!((all.high_watermark, all.log_start_offset), (6, 0));

    // From the middle of batch c: the batch's first record is skipped.
    let tail = client
        .fetch("sim-it", 1, 4, 1 << 20)
        .await
        .expect("fetch 4");
    assert_eq!(tail.records, want[4..].to_vec());

    // At the end: nothing, after waiting at most fetch_max_wait.
    let end = client
        .fetch("sim-it", 1, 6, 1 << 20)
        .await
        .expect("fetch 6");
    assert!(end.records.is_empty());

    // Past the end: the broker's error, definite.
    let past = client
        .fetch("sim-it", 1, 7, 1 << 20)
        .await
        .expect_err("out of range");
    assert_eq!(past.code(), Some(1), "{past}");

    assert_eq!(
        client
            .list_offsets("sim-it", 1, EARLIEST_TIMESTAMP)
            .await
            .expect("earliest"),
        0
    );
    assert_eq!(
        client
            .list_offsets("sim-it", 1, LATEST_TIMESTAMP)
            .await
            .expect("latest"),
        6
    );
    assert_eq!(
        client
            .list_offsets("sim-it", 0, LATEST_TIMESTAMP)
            .await
            .expect("latest of the empty partition"),
        0
    );

    // A plain (non-idempotent) produce to the other partition.
    let plain = client
        .produce("sim-it", 0, None, &values(&["p"]), 1)
        .await
        .expect("plain produce");
    assert_eq!(plain, 0);

    // An unknown topic is a definite, routing failure.
    let unknown = client
        .produce("no-such-topic", 0, None, &values(&["p"]), 1)
        .await
        .expect_err("unknown topic");
    assert!(unknown.is_definite(), "{unknown}");

    assert!(
        server.0.try_wait().expect("server status").is_none(),
        "the server is still running"
    );
}
