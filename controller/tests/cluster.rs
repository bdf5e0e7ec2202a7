//! Three controllers in one process on loopback: election, writes through any
//! node, leader failover under a retrying TCP client, catch-up by log and by
//! snapshot, broker session expiry, and membership changes.

// Tests run against real time, sockets and randomness.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use broker::controller_client::{RemoteController, RemoteControllerConfig};
use controller::{Controller, ControllerConfig};
use proto::image::BrokerEndpoint;
use proto::rpc::{ControllerApi, ControllerRequest, ControllerResponse, MetadataDeltas, RpcError};
use proto::{CommandReply, MetadataCommand, MetadataImage};

/// Every test gives up after this long rather than hang.
const TEST_BOUND: Duration = Duration::from_secs(90);

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_BOUND, test)
        .await
        .expect("test finished within its bound");
}

/// Addresses on loopback that were free a moment ago.
fn free_addrs(n: usize) -> Vec<String> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").to_string())
        .collect()
}

fn config(id: u64, dir: &Path, voters: &BTreeMap<u64, String>, addr: &str) -> ControllerConfig {
    let mut config = ControllerConfig::new(id, dir);
    config.rpc_addr = addr.to_string();
    config.voters = voters.clone();
    config.cluster_id = Some("AAAAAAAAAAAAAAAAAAAAAA".into());
    config.join_wait = Duration::from_secs(20);
    config
}

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    voters: BTreeMap<u64, String>,
    nodes: BTreeMap<u64, Controller>,
    tweak: fn(&mut ControllerConfig),
}

impl Cluster {
    async fn start(n: u64, tweak: fn(&mut ControllerConfig)) -> Cluster {
        let addrs = free_addrs(n as usize);
        let voters: BTreeMap<u64, String> = (1..=n).zip(addrs).collect();
        let dirs: Vec<_> = (0..n)
            .map(|_| tempfile::tempdir().expect("temp dir"))
            .collect();
        let mut cluster = Cluster {
            dirs,
            voters,
            nodes: BTreeMap::new(),
            tweak,
        };
        // Each start waits for the others, so they start together.
        let starts: Vec<_> = (1..=n)
            .map(|id| {
                let config = cluster.config(id);
                tokio::spawn(async move { Controller::start(config).await })
            })
            .collect();
        for (id, start) in (1..=n).zip(starts) {
            let node = start
                .await
                .expect("start task")
                .unwrap_or_else(|e| panic!("controller {id} start: {e}"));
            cluster.nodes.insert(id, node);
        }
        cluster
    }

    fn config(&self, id: u64) -> ControllerConfig {
        let dir = self.dirs[(id - 1) as usize].path();
        let mut config = config(id, dir, &self.voters, &self.voters[&id]);
        (self.tweak)(&mut config);
        config
    }

    fn node(&self, id: u64) -> &Controller {
        &self.nodes[&id]
    }

    fn addrs(&self) -> Vec<String> {
        self.voters.values().cloned().collect()
    }

    /// The leader every running node agrees on, waiting up to `within`.
    async fn agreed_leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let leaders: Vec<_> = self.nodes.values().map(|n| n.status().leader).collect();
            if let Some(Some(leader)) = leaders.first() {
                if self.nodes.contains_key(leader) && leaders.iter().all(|l| l == &Some(*leader)) {
                    return *leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {within:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every running node has applied `version` and all images
    /// are equal; returns that image.
    async fn converged(&self, version: u64, within: Duration) -> MetadataImage {
        let deadline = Instant::now() + within;
        loop {
            let mut images = Vec::new();
            for node in self.nodes.values() {
                images.push(node.image().await);
            }
            let all_applied = images.iter().all(|(v, _)| *v >= version);
            if all_applied && images.windows(2).all(|w| w[0].1 == w[1].1) {
                return images.remove(0).1;
            }
            assert!(
                Instant::now() < deadline,
                "images did not converge at {version} within {within:?}: versions {:?}",
                images.iter().map(|(v, _)| *v).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops `id` as a crash would look to its peers (no hand-off).
    async fn crash(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("node is running");
        node.shutdown_without_handoff().await;
    }

    /// Stops `id` cleanly (a leader hands off first).
    async fn stop(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("node is running");
        node.shutdown().await;
    }

    async fn restart(&mut self, id: u64) {
        let node = Controller::start(self.config(id))
            .await
            .unwrap_or_else(|e| panic!("restart of controller {id}: {e}"));
        self.nodes.insert(id, node);
    }

    async fn shutdown(self) {
        for (_, node) in self.nodes {
            node.shutdown().await;
        }
    }
}

fn register(id: i32) -> MetadataCommand {
    MetadataCommand::RegisterBroker {
        id,
        endpoint: BrokerEndpoint {
            host: "localhost".into(),
            port: 9092 + id as u16,
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

fn no_tweak(_: &mut ControllerConfig) {}

fn client(cluster: &Cluster) -> RemoteController {
    RemoteController::new(
        cluster.addrs(),
        RemoteControllerConfig::default(),
        std::sync::Arc::new(proto::seams::TokioNet),
    )
    .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_controllers_elect_forward_fail_over_and_catch_up() {
    bounded(async {
        let mut cluster = Cluster::start(3, no_tweak).await;
        let leader = cluster.agreed_leader(Duration::from_secs(5)).await;
        let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        let status = cluster.node(leader).status();
        assert_eq!(status.voters.len(), 3);

        // Writes through every node, followers included, commit once and
        // reach every node's image.
        let mut last = 0;
        for id in 1..=3u64 {
            let outcome = cluster
                .node(id)
                .write(register(id as i32))
                .await
                .unwrap_or_else(|e| panic!("write through controller {id}: {e}"));
            assert_eq!(outcome.reply, CommandReply::BrokerRegistered { epoch: 1 });
            assert!(outcome.version > last);
            last = outcome.version;
        }
        let image = cluster.converged(last, Duration::from_secs(5)).await;
        assert_eq!(image.brokers.len(), 3);
        assert_eq!(image.cluster_id.as_deref(), Some("AAAAAAAAAAAAAAAAAAAAAA"));
        // Deltas from a follower's own state, Bootstrap first.
        match cluster.node(followers[0]).deltas_since(0, Duration::ZERO).await {
            Ok(MetadataDeltas::Deltas(d)) => {
                assert!(matches!(d[0].1, MetadataCommand::Bootstrap { .. }));
                assert_eq!(d.len(), 4, "Bootstrap and three registrations, once each");
            }
            other => panic!("unexpected deltas answer {other:?}"),
        }

        // Over TCP, through the broker's client.
        let remote = client(&cluster);
        let created = remote
            .write(create_topic("orders", 6))
            .await
            .expect("create over TCP");
        assert!(matches!(created.reply, CommandReply::TopicCreated { .. }));
        let hb = remote.heartbeat(1, 1).await.expect("heartbeat over TCP");
        assert!(!hb.fenced);

        // Lose the leader: a new one is elected and writes keep working
        // through the client's retries.
        let stopped = Instant::now();
        cluster.crash(leader).await;
        let shutdown_took = stopped.elapsed();
        let (new_leader, first_write) = tokio::join!(
            async {
                let leader = cluster.agreed_leader(Duration::from_secs(5)).await;
                (leader, stopped.elapsed())
            },
            async {
                let outcome = remote
                    .write(MetadataCommand::AllocateProducerIds { count: 10 })
                    .await
                    .expect("first write after the leader stopped");
                (outcome, stopped.elapsed())
            }
        );
        let (new_leader, elected_after) = new_leader;
        let (first_write, first_write_after) = first_write;
        println!(
            "leader {leader} stopped (shutdown took {shutdown_took:?}); new leader {new_leader} \
             agreed by all {elected_after:?} after; first client write committed {first_write_after:?} after"
        );
        assert_ne!(new_leader, leader);
        assert!(
            elected_after < Duration::from_secs(2),
            "election took {elected_after:?}"
        );
        assert!(first_write.version > created.version);
        let mut last = first_write.version;
        for i in 0..5 {
            let outcome = remote
                .write(MetadataCommand::AllocateProducerIds { count: 10 })
                .await
                .unwrap_or_else(|e| panic!("write {i} after failover: {e}"));
            assert!(outcome.version > last);
            last = outcome.version;
        }
        let image = cluster.converged(last, Duration::from_secs(5)).await;

        // The old leader comes back on its data dir and catches up.
        cluster.restart(leader).await;
        let after = cluster.converged(last, Duration::from_secs(10)).await;
        assert_eq!(after, image);
        assert_eq!(cluster.agreed_leader(Duration::from_secs(5)).await, new_leader);
        let outcome = cluster
            .node(leader)
            .write(register(9))
            .await
            .expect("write through the restarted node");
        cluster.converged(outcome.version, Duration::from_secs(5)).await;
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_catches_up_from_a_snapshot() {
    bounded(async {
        fn tiny_snapshots(config: &mut ControllerConfig) {
            config.snapshot_every_entries = 5;
            config.entries_kept_after_snapshot = 0;
        }
        let mut cluster = Cluster::start(3, tiny_snapshots).await;
        let leader = cluster.agreed_leader(Duration::from_secs(5)).await;
        let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
        cluster.stop(lagging).await;

        let mut last = 0;
        for id in 0..30 {
            last = cluster
                .node(leader)
                .write(register(id))
                .await
                .expect("write with one follower down")
                .version;
        }
        // The leader has purged entries the lagging node never saw, so only a
        // snapshot can bring it back.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let purged = cluster.node(leader).status().purged.unwrap_or(0);
            if purged > 10 {
                break;
            }
            assert!(Instant::now() < deadline, "leader never purged its log");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        cluster.restart(lagging).await;
        let image = cluster.converged(last, Duration::from_secs(10)).await;
        assert_eq!(image.brokers.len(), 30);
        let status = cluster.node(lagging).status();
        assert!(
            status.snapshot.is_some_and(|s| s > 10),
            "the lagging node holds a snapshot: {status:?}"
        );
        // A broker far behind, asking the restarted node, gets the image.
        match cluster.node(lagging).deltas_since(1, Duration::ZERO).await {
            Ok(MetadataDeltas::Snapshot { image: got, .. }) => assert_eq!(*got, image),
            other => panic!("expected the image, got {other:?}"),
        }
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_is_fenced_and_its_streams_move() {
    bounded(async {
        fn short_sessions(config: &mut ControllerConfig) {
            config.broker_session_timeout = Duration::from_millis(1000);
            config.liveness_tick = Duration::from_millis(100);
        }
        let cluster = Cluster::start(3, short_sessions).await;
        let leader = cluster.agreed_leader(Duration::from_secs(5)).await;
        let follower = (1..=3).find(|id| *id != leader).expect("a follower");
        // Only the follower's address: heartbeats must be forwarded.
        let remote = RemoteController::new(
            vec![cluster.voters[&follower].clone()],
            RemoteControllerConfig::default(),
            std::sync::Arc::new(proto::seams::TokioNet),
        )
        .expect("client");

        let epoch_of = |reply: CommandReply| match reply {
            CommandReply::BrokerRegistered { epoch } => epoch,
            other => panic!("unexpected reply {other:?}"),
        };
        let e1 = epoch_of(remote.write(register(1)).await.expect("register 1").reply);
        let e2 = epoch_of(remote.write(register(2)).await.expect("register 2").reply);
        let registered = Instant::now();
        remote
            .write(create_topic("events", 4))
            .await
            .expect("create topic");

        // Broker 2 heartbeats, broker 1 stays silent.
        let fenced = loop {
            let reply = remote.heartbeat(2, e2).await.expect("heartbeat 2");
            assert!(!reply.fenced, "a heartbeating broker is never fenced");
            let (_, image) = cluster.node(leader).image().await;
            if image.brokers[&1].fenced {
                break image;
            }
            assert!(
                registered.elapsed() < Duration::from_secs(10),
                "broker 1 was never fenced"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let fenced_after = registered.elapsed();
        println!("silent broker fenced {fenced_after:?} after registering (session timeout 1 s)");
        assert!(fenced_after >= Duration::from_millis(1000));
        assert!(!fenced.brokers[&2].fenced);
        assert!(
            fenced.streams.values().all(|s| s.owner == Some(2)),
            "every stream moved to the live broker"
        );
        assert!(remote.heartbeat(1, e1).await.expect("heartbeat 1").fenced);

        // It registers again, as a new incarnation, and is live again.
        let e1b = epoch_of(remote.write(register(1)).await.expect("re-register").reply);
        assert!(e1b > e1);
        assert!(!remote.heartbeat(1, e1b).await.expect("heartbeat").fenced);
        assert!(remote.heartbeat(1, e1).await.expect("old epoch").fenced);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_is_added_and_removed() {
    bounded(async {
        let mut cluster = Cluster::start(3, no_tweak).await;
        let leader = cluster.agreed_leader(Duration::from_secs(5)).await;
        let follower = (1..=3).find(|id| *id != leader).expect("a follower");

        // Node 4 starts with the current voters (not itself): it waits to be
        // contacted rather than forming a cluster of its own.
        let addr4 = free_addrs(1).remove(0);
        let dir4 = tempfile::tempdir().expect("temp dir");
        let joining = {
            let config = config(4, dir4.path(), &cluster.voters, &addr4);
            tokio::spawn(async move { Controller::start(config).await })
        };
        // Asked through a follower, which forwards to the leader.
        let voters = cluster
            .node(follower)
            .add_voter(4, addr4.clone())
            .await
            .expect("add voter 4");
        assert_eq!(voters.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(voters[&4], addr4);
        let node4 = joining.await.expect("start task").expect("node 4 joined");
        cluster.nodes.insert(4, node4);

        let outcome = cluster
            .node(leader)
            .write(register(7))
            .await
            .expect("write with four voters");
        cluster
            .converged(outcome.version, Duration::from_secs(5))
            .await;

        let remote = client(&cluster);
        let voters = remote
            .change_membership(proto::rpc::MembershipChange::RemoveVoter { id: 4 })
            .await
            .expect("remove voter 4");
        assert_eq!(voters.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        let rejected = remote
            .change_membership(proto::rpc::MembershipChange::RemoveVoter { id: 4 })
            .await
            .expect_err("4 is no longer a voter");
        assert!(!rejected.is_retriable(), "{rejected}");
        cluster.stop(4).await;

        let outcome = remote
            .write(register(8))
            .await
            .expect("write after removal");
        cluster
            .converged(outcome.version, Duration::from_secs(5))
            .await;
        assert_eq!(cluster.node(leader).status().voters.len(), 3);
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_leader_left_running_sends_clients_elsewhere() {
    bounded(async {
        let mut cluster = Cluster::start(3, no_tweak).await;
        let old = cluster.agreed_leader(Duration::from_secs(5)).await;
        let old_addr = cluster.voters[&old].clone();
        // Clients that try the removed node first, for requests and polls.
        let mut addrs = vec![old_addr.clone(), old_addr.clone()];
        addrs.extend(cluster.addrs().into_iter().filter(|a| *a != old_addr));
        let remote = RemoteController::new(
            addrs,
            RemoteControllerConfig::default(),
            std::sync::Arc::new(proto::seams::TokioNet),
        )
        .expect("client");
        let epoch = match remote.write(register(1)).await.expect("register").reply {
            CommandReply::BrokerRegistered { epoch } => epoch,
            other => panic!("unexpected reply {other:?}"),
        };

        let voters = remote
            .change_membership(proto::rpc::MembershipChange::RemoveVoter { id: old })
            .await
            .expect("remove the leader");
        assert!(!voters.contains_key(&old), "{voters:?}");
        // Still running, but out of the quorum: it answers `Removed` to
        // everything, never from its stale image.
        let removed = cluster.nodes.remove(&old).expect("the old leader runs");
        for request in [
            ControllerRequest::Heartbeat {
                broker: 1,
                broker_epoch: epoch,
            },
            ControllerRequest::DeltasSince {
                version: 0,
                wait_ms: 0,
            },
            ControllerRequest::Write(register(2)),
        ] {
            let answer = removed.handle(request.clone()).await;
            let refused = match &answer {
                ControllerResponse::Heartbeat(Err(e))
                | ControllerResponse::Written(Err(e))
                | ControllerResponse::Deltas(Err(e)) => *e == RpcError::Removed,
                _ => false,
            };
            assert!(refused, "{request:?} answered {answer:?}");
        }
        let leader = cluster.agreed_leader(Duration::from_secs(10)).await;
        assert_ne!(leader, old);

        // The client moves past the removed node: heartbeats keep the
        // session, writes commit, polls see them.
        assert!(!remote.heartbeat(1, epoch).await.expect("heartbeat").fenced);
        let outcome = remote
            .write(register(3))
            .await
            .expect("write after removal");
        let mut seen = 0;
        while seen < outcome.version {
            match remote
                .deltas_since(seen, Duration::from_millis(500))
                .await
                .expect("poll after removal")
            {
                MetadataDeltas::Deltas(commands) => {
                    seen = commands.last().map_or(seen, |(v, _)| *v);
                }
                MetadataDeltas::Snapshot { version, .. } => seen = version,
            }
        }
        removed.shutdown().await;
        cluster.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_hands_leadership_off_and_keeps_writes_working() {
    bounded(async {
        let mut cluster = Cluster::start(3, no_tweak).await;
        let remote = client(&cluster);
        let mut last = 0;
        // Followers first, the leader last, as an operator would.
        let leader = cluster.agreed_leader(Duration::from_secs(5)).await;
        let mut order: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
        order.push(leader);
        for id in order {
            let was_leader = cluster.node(id).status().leader == Some(id);
            let stopped = Instant::now();
            cluster.stop(id).await;
            let stop_took = stopped.elapsed();
            let outcome = remote
                .write(MetadataCommand::AllocateProducerIds { count: 1 })
                .await
                .unwrap_or_else(|e| panic!("write while controller {id} is down: {e}"));
            let write_after = stopped.elapsed();
            if was_leader {
                let new_leader = cluster.agreed_leader(Duration::from_secs(5)).await;
                println!(
                    "leader {id} handed off to {new_leader}: shutdown took {stop_took:?}, \
                     next client write committed {write_after:?} after it began"
                );
                assert!(
                    write_after < Duration::from_secs(1),
                    "a clean leader shutdown should not wait for an election: {write_after:?}"
                );
            }
            assert!(outcome.version > last);
            last = outcome.version;
            cluster.restart(id).await;
            cluster.converged(last, Duration::from_secs(10)).await;
        }
        cluster.shutdown().await;
    })
    .await;
}

mod raw {
    //! The RPC server at the byte level: handshake, pipelining, and bounds.

    use bytes::BytesMut;
    use proto::rpc::{
        decode_frame, encode_frame, ControllerRequest, ControllerResponse, Hello, HelloReply,
        RequestFrame, ResponseFrame, RPC_PROTOCOL_VERSION,
    };
    use serde::de::DeserializeOwned;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    pub async fn send<T: serde::Serialize>(stream: &mut TcpStream, msg: &T) {
        let mut buf = BytesMut::new();
        encode_frame(msg, &mut buf).expect("encode");
        stream.write_all(&buf).await.expect("write");
    }

    /// The next frame, or `None` once the server closed the connection.
    pub async fn recv<T: DeserializeOwned>(
        stream: &mut TcpStream,
        buf: &mut BytesMut,
    ) -> Option<T> {
        loop {
            if let Some(msg) = decode_frame(buf).expect("decode") {
                return Some(msg);
            }
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn hello(addr: &str, protocol: u32) -> (TcpStream, BytesMut, HelloReply) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        send(&mut stream, &Hello::Client { protocol }).await;
        let mut buf = BytesMut::new();
        let reply = recv(&mut stream, &mut buf).await.expect("hello reply");
        (stream, buf, reply)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_server_pipelines_and_enforces_its_bounds() {
        bounded(async {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut cfg = ControllerConfig::new(1, dir.path());
            cfg.rpc_addr = "127.0.0.1:0".into();
            cfg.max_connections = 3;
            cfg.max_client_frame_bytes = 1024;
            let controller = Controller::start(cfg).await.expect("start");
            let addr = controller.local_rpc_addr().expect("listening").to_string();

            // A protocol it does not speak is refused.
            let (_, _, reply) = hello(&addr, RPC_PROTOCOL_VERSION + 1).await;
            assert!(matches!(reply, HelloReply::Refused { .. }), "{reply:?}");

            // Several requests in flight on one connection, each answered
            // under its own id.
            let (mut stream, mut buf, reply) = hello(&addr, RPC_PROTOCOL_VERSION).await;
            assert_eq!(
                reply,
                HelloReply::Accepted {
                    protocol: RPC_PROTOCOL_VERSION,
                    node_id: 1
                }
            );
            // A long-poll first: the writes behind it are not held up.
            send(
                &mut stream,
                &RequestFrame {
                    id: 100,
                    request: ControllerRequest::DeltasSince {
                        version: u64::MAX - 1,
                        wait_ms: 300,
                    },
                },
            )
            .await;
            for id in 1..=3 {
                send(
                    &mut stream,
                    &RequestFrame {
                        id,
                        request: ControllerRequest::Write(MetadataCommand::AllocateProducerIds {
                            count: 1,
                        }),
                    },
                )
                .await;
            }
            let mut ids = Vec::new();
            for _ in 0..4 {
                let ResponseFrame { id, response } =
                    recv(&mut stream, &mut buf).await.expect("a response");
                match response {
                    ControllerResponse::Written(Ok(_)) => assert!(id <= 3),
                    ControllerResponse::Deltas(Ok(MetadataDeltas::Deltas(d))) => {
                        assert_eq!(id, 100);
                        assert!(d.is_empty());
                    }
                    other => panic!("unexpected response {other:?}"),
                }
                ids.push(id);
            }
            assert_eq!(
                ids.last(),
                Some(&100),
                "the long-poll answered last: {ids:?}"
            );

            // A frame above the client limit closes the connection unread.
            let (mut big, mut big_buf, _) = hello(&addr, RPC_PROTOCOL_VERSION).await;
            big.write_all(&4096u32.to_be_bytes()).await.expect("write");
            assert!(recv::<ResponseFrame>(&mut big, &mut big_buf)
                .await
                .is_none());
            drop(big);

            // Connections beyond the limit are refused (two are open: the
            // pipelining one and this one; the third fills the limit).
            let (_keep, _, third) = hello(&addr, RPC_PROTOCOL_VERSION).await;
            assert!(matches!(third, HelloReply::Accepted { .. }));
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let (_s, _, reply) = hello(&addr, RPC_PROTOCOL_VERSION).await;
                if matches!(reply, HelloReply::Refused { .. }) {
                    break;
                }
                // The closed oversized connection may not be released yet.
                assert!(
                    Instant::now() < deadline,
                    "a fourth connection was accepted"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop(stream);
            controller.shutdown().await;
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_alone_gives_up_joining_with_a_clear_error() {
    bounded(async {
        let addrs = free_addrs(3);
        let voters: BTreeMap<u64, String> = (1..=3).zip(addrs).collect();
        let dir = tempfile::tempdir().expect("temp dir");
        // Node 2 never initializes (node 1 would) and nobody contacts it.
        let mut cfg = config(2, dir.path(), &voters, &voters[&2]);
        cfg.join_wait = Duration::from_millis(500);
        let started = Instant::now();
        let err = match Controller::start(cfg).await {
            Err(e) => e,
            Ok(_) => panic!("joined a cluster that does not exist"),
        };
        assert!(started.elapsed() < Duration::from_secs(5));
        let message = err.to_string();
        assert!(
            matches!(err, controller::ControllerError::JoinTimeout { .. }),
            "{message}"
        );
        assert!(message.contains("did not join"), "{message}");
        // Its port and data dir are free again.
        let mut cfg = config(2, dir.path(), &voters, &voters[&2]);
        cfg.join_wait = Duration::from_millis(100);
        assert!(matches!(
            Controller::start(cfg).await,
            Err(controller::ControllerError::JoinTimeout { .. })
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_voter_grows_into_a_quorum_and_restarts_as_one() {
    bounded(async {
        let addrs = free_addrs(3);
        let dirs: Vec<_> = (0..3)
            .map(|_| tempfile::tempdir().expect("temp dir"))
            .collect();
        // Node 1 alone, serving RPC, configured with no voter list.
        let single = config(1, dirs[0].path(), &BTreeMap::new(), &addrs[0]);
        let node1 = Controller::start(single.clone())
            .await
            .expect("single voter");
        let known = BTreeMap::from([(1, addrs[0].clone())]);
        let mut others = Vec::new();
        for id in 2..=3u64 {
            let cfg = config(
                id,
                dirs[(id - 1) as usize].path(),
                &known,
                &addrs[(id - 1) as usize],
            );
            let joining = tokio::spawn(async move { Controller::start(cfg).await });
            node1
                .add_voter(id, addrs[(id - 1) as usize].clone())
                .await
                .unwrap_or_else(|e| panic!("add voter {id}: {e}"));
            others.push(joining.await.expect("task").expect("joined"));
        }
        assert_eq!(node1.status().voters.len(), 3);
        let before = node1.write(register(1)).await.expect("write").version;

        // Restarted with its original (single-voter) config, node 1 rejoins
        // the quorum it became instead of waiting to lead alone.
        node1.shutdown().await;
        let node1 = Controller::start(single)
            .await
            .expect("restart as a member");
        let deadline = Instant::now() + Duration::from_secs(10);
        while node1.image().await.0 < before {
            assert!(Instant::now() < deadline, "node 1 did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(node1.status().voters.len(), 3);
        node1.write(register(2)).await.expect("write after restart");
        node1.shutdown().await;
        for node in others {
            node.shutdown().await;
        }
    })
    .await;
}
