//! What travels on a controller's TCP connections and how: frames of
//! `proto::rpc` (a 4-byte big-endian length, then rmp-serde with named
//! fields), the controller-to-controller messages (Raft RPCs and forwarded
//! broker requests), and [`PeerConnection`], one multiplexed connection to a
//! peer on which any number of calls are in flight, each tagged with an id.
//!
//! Every connection opens with `proto::rpc::Hello` and is answered with
//! `proto::rpc::HelloReply` naming the node that answered. After that a peer
//! connection carries [`Tagged`] [`PeerRequest`]s one way and [`Tagged`]
//! [`PeerResponse`]s the other, answered in any order.
//!
//! This module moves bytes and matches answers to questions; it never
//! interprets a Raft message or a metadata command, and never retries: the
//! callers (openraft, the forwarding path) decide that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use proto::rpc::{
    encode_frame, ControllerRequest, ControllerResponse, FrameError, Hello, HelloReply,
    RPC_PROTOCOL_VERSION,
};
use proto::seams::Net;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::AbortHandle;

use crate::types::{SnapshotMeta, TypeConfig, Vote};

/// Largest `Hello`/`HelloReply` frame either side reads.
pub(crate) const MAX_HELLO_FRAME: usize = 4 * 1024;

/// A message with the id that pairs a request with its response.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Tagged<T> {
    pub id: u64,
    pub body: T,
}

/// What one controller asks another.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    /// A whole snapshot in one frame (bounded by `MAX_RPC_FRAME`).
    FullSnapshot {
        vote: Vote,
        meta: SnapshotMeta,
        data: Bytes,
    },
    /// The leader, stepping down, asks the target to take over at once.
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// A broker request that reached a follower, for the leader to handle
    /// itself. The leader never forwards it again.
    Forward(ControllerRequest),
}

/// The answer to a [`PeerRequest`] of the same kind. A Raft error on the
/// remote side travels as text: the caller only needs to know it failed.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerResponse {
    AppendEntries(Result<AppendEntriesResponse<TypeConfig>, String>),
    Vote(Result<VoteResponse<TypeConfig>, String>),
    FullSnapshot(Result<SnapshotResponse<TypeConfig>, String>),
    TransferLeader(Result<TransferLeaderResponse<TypeConfig>, String>),
    Forwarded(ControllerResponse),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("connecting to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("frame of {len} bytes exceeds this connection's limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("connection closed mid-frame")]
    Truncated,
    #[error("refused by {addr}: {reason}")]
    Refused { addr: String, reason: String },
    #[error("{addr} is node {got}, not node {expected}")]
    WrongNode {
        addr: String,
        expected: u64,
        got: u64,
    },
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

pub(crate) use proto::rpc::FrameReader;

impl From<proto::rpc::FrameReadError> for WireError {
    fn from(e: proto::rpc::FrameReadError) -> Self {
        use proto::rpc::FrameReadError as E;
        match e {
            E::Io(e) => WireError::Io(e),
            E::Frame(e) => WireError::Frame(e),
            E::TooLarge { len, max } => WireError::TooLarge { len, max },
            E::Truncated => WireError::Truncated,
        }
    }
}

/// `msg` as one frame.
pub(crate) fn frame<T: Serialize>(msg: &T) -> Result<Bytes, FrameError> {
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf)?;
    Ok(buf.freeze())
}

pub(crate) async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    msg: &T,
) -> Result<(), WireError> {
    writer.write_all(&frame(msg)?).await?;
    Ok(())
}

/// How a [`PeerConnection`] behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectLimits {
    pub connect_timeout: Duration,
    /// Calls in flight at once on one connection; more wait for a slot.
    pub max_in_flight: usize,
}

type Waiters = HashMap<u64, oneshot::Sender<PeerResponse>>;

/// Calls waiting for an answer, or why the connection is gone.
struct Pending {
    waiters: Waiters,
    closed: Option<String>,
}

/// One TCP connection to a peer controller carrying many concurrent calls.
/// Dropping it closes the connection.
pub(crate) struct PeerConnection {
    addr: String,
    out: mpsc::Sender<Bytes>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    slots: Semaphore,
    tasks: [AbortHandle; 2],
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // Holders only move entries in and out of a map; a panic there leaves
    // nothing half-done worth refusing.
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

fn close(pending: &Mutex<Pending>, reason: String) {
    let waiters = {
        let mut p = lock(pending);
        if p.closed.is_none() {
            p.closed = Some(reason);
        }
        std::mem::take(&mut p.waiters)
    };
    // Dropping the senders wakes every caller with "closed".
    drop(waiters);
}

impl PeerConnection {
    /// Connects to `addr`, introduces this node as `from` and checks that
    /// the node answering is `expected`.
    pub(crate) async fn connect(
        net: &dyn Net,
        addr: &str,
        from: u64,
        expected: u64,
        limits: ConnectLimits,
    ) -> Result<PeerConnection, WireError> {
        let connect_error = |message: String| WireError::Connect {
            addr: addr.to_string(),
            message,
        };
        let handshake = async {
            let mut stream = net
                .connect(addr)
                .await
                .map_err(|e| connect_error(e.to_string()))?;
            write_frame(
                &mut stream,
                &Hello::Controller {
                    protocol: RPC_PROTOCOL_VERSION,
                    from,
                },
            )
            .await?;
            let (read, write) = tokio::io::split(stream);
            let mut reader = FrameReader::new(read, MAX_HELLO_FRAME);
            match reader.next::<HelloReply>().await? {
                Some(HelloReply::Accepted { node_id, .. }) if node_id == expected => {
                    Ok((reader, write))
                }
                Some(HelloReply::Accepted { node_id, .. }) => Err(WireError::WrongNode {
                    addr: addr.to_string(),
                    expected,
                    got: node_id,
                }),
                Some(HelloReply::Refused { reason }) => Err(WireError::Refused {
                    addr: addr.to_string(),
                    reason,
                }),
                None => Err(connect_error("closed during the handshake".into())),
            }
        };
        let (mut reader, mut write) = tokio::time::timeout(limits.connect_timeout, handshake)
            .await
            .map_err(|_| {
                connect_error(format!("no handshake within {:?}", limits.connect_timeout))
            })??;
        reader.set_max(proto::rpc::MAX_RPC_FRAME);

        let pending = Arc::new(Mutex::new(Pending {
            waiters: HashMap::new(),
            closed: None,
        }));
        let (out, mut out_rx) = mpsc::channel::<Bytes>(limits.max_in_flight.max(1));
        let writer = {
            let pending = pending.clone();
            tokio::spawn(async move {
                while let Some(bytes) = out_rx.recv().await {
                    if let Err(e) = write.write_all(&bytes).await {
                        close(&pending, format!("writing: {e}"));
                        return;
                    }
                }
            })
        };
        let reader = {
            let pending = pending.clone();
            tokio::spawn(async move {
                let reason = loop {
                    match reader.next::<Tagged<PeerResponse>>().await {
                        Ok(Some(Tagged { id, body })) => {
                            let waiter = lock(&pending).waiters.remove(&id);
                            // A waiter that gave up (timed out) is simply gone.
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(body);
                            }
                        }
                        Ok(None) => break "closed by the peer".to_string(),
                        Err(e) => break format!("reading: {e}"),
                    }
                };
                close(&pending, reason);
            })
        };
        Ok(PeerConnection {
            addr: addr.to_string(),
            out,
            pending,
            next_id: AtomicU64::new(1),
            slots: Semaphore::new(limits.max_in_flight.max(1)),
            tasks: [writer.abort_handle(), reader.abort_handle()],
        })
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.pending).closed.is_some()
    }

    /// Sends `request` and waits up to `timeout` for its answer.
    pub(crate) async fn call(
        &self,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, WireError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = frame(&Tagged { id, body: request })?;
        let exchange = async {
            let _slot = self
                .slots
                .acquire()
                .await
                .map_err(|_| WireError::Closed("connection dropped".into()))?;
            let (tx, rx) = oneshot::channel();
            {
                let mut p = lock(&self.pending);
                if let Some(reason) = &p.closed {
                    return Err(WireError::Closed(reason.clone()));
                }
                p.waiters.insert(id, tx);
            }
            if self.out.send(bytes).await.is_err() {
                return Err(self.closed_error());
            }
            rx.await.map_err(|_| self.closed_error())
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                lock(&self.pending).waiters.remove(&id);
                Err(WireError::Timeout(timeout))
            }
        }
    }

    fn closed_error(&self) -> WireError {
        let reason = lock(&self.pending).closed.clone();
        WireError::Closed(reason.unwrap_or_else(|| "writer stopped".into()))
    }
}
