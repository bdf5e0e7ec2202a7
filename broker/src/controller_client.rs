//! The broker's client for a controller quorum across the network:
//! [`RemoteController`] implements `proto::rpc::ControllerApi` over TCP, so
//! the rest of the broker does not know whether its controller is in
//! process or three hosts away.
//!
//! It is given every controller's address and talks to one at a time over
//! one connection that carries many requests at once (each tagged with an
//! id; answers may come back in any order). Any controller will do: a
//! follower forwards writes to the leader, and serves metadata deltas from
//! its own state. The client follows a `NotLeader` hint, moves to the next
//! controller when a connection fails or a controller shuts down, and
//! retries retriable errors with backoff until its time budget is spent.
//! Metadata long-polls (`deltas_since`) use a second connection so they
//! never sit in front of a commit.
//!
//! Retrying a write whose answer was lost may apply it twice; the metadata
//! commands brokers send are idempotent or recognised (object commits by
//! key, fencing by epoch), but a retried `CreateTopic` answers
//! `TopicExists` and a retried `RegisterBroker` registers a newer epoch.
//!
//! This module owns no metadata and makes no decisions about it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proto::rpc::{
    encode_frame, BoxFuture, ControllerApi, ControllerRequest, ControllerResponse, FrameReader,
    HeartbeatReply, Hello, HelloReply, MembershipChange, MetadataDeltas, QuorumStatus,
    RequestFrame, ResponseFrame, RpcError, Voters, WriteOutcome, MAX_RPC_FRAME,
    RPC_PROTOCOL_VERSION,
};
use proto::seams::Net;
use proto::{BrokerId, MetadataCommand};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

/// How a [`RemoteController`] behaves. The defaults suit a cluster on one
/// network; every bound is here.
#[derive(Debug, Clone)]
pub struct RemoteControllerConfig {
    /// Bound on opening a connection, handshake included.
    pub connect_timeout: Duration,
    /// Bound on one attempt of a request (a long-poll adds its wait). A
    /// little above the controller's own request timeout (10 s), so the
    /// controller's answer arrives first.
    pub request_timeout: Duration,
    /// Bound on all attempts of one request; the last error is returned.
    pub retry_for: Duration,
    /// Bound on all attempts of one heartbeat (a late one is useless).
    pub heartbeat_retry_for: Duration,
    /// First pause between attempts; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Requests in flight at once on the connection; more wait.
    pub max_in_flight: usize,
    /// Largest answer accepted (a whole-image `DeltasSince` answer is the
    /// biggest).
    pub max_frame_bytes: usize,
}

impl Default for RemoteControllerConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(11),
            retry_for: Duration::from_secs(15),
            heartbeat_retry_for: Duration::from_secs(3),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(250),
            max_in_flight: 256,
            max_frame_bytes: MAX_RPC_FRAME,
        }
    }
}

/// `ControllerApi` over TCP to a list of controllers.
pub struct RemoteController {
    config: RemoteControllerConfig,
    net: Arc<dyn Net>,
    /// Writes, heartbeats, membership changes.
    requests: Target,
    /// `DeltasSince` long-polls.
    polls: Target,
}

impl RemoteController {
    /// A client for the controllers at `addrs` (`host:port`). Connects
    /// lazily, on the first request.
    pub fn new(
        addrs: Vec<String>,
        config: RemoteControllerConfig,
        net: Arc<dyn Net>,
    ) -> Result<Self, RpcError> {
        if addrs.is_empty() || addrs.iter().any(|a| a.is_empty()) {
            return Err(RpcError::Rejected(format!(
                "controller addresses must be non-empty: {addrs:?}"
            )));
        }
        Ok(Self {
            requests: Target::new(addrs.clone(), 0),
            // Polls start at another controller, spreading the load.
            polls: Target::new(addrs, 1),
            config,
            net,
        })
    }

    /// Tells the leader this broker incarnation is alive; the answer says
    /// whether it has been fenced and must register again.
    pub async fn heartbeat(
        &self,
        broker: BrokerId,
        broker_epoch: u64,
    ) -> Result<HeartbeatReply, RpcError> {
        let request = ControllerRequest::Heartbeat {
            broker,
            broker_epoch,
        };
        let attempt = self.config.heartbeat_retry_for;
        match self
            .call(
                &self.requests,
                request,
                attempt,
                self.config.heartbeat_retry_for,
            )
            .await?
        {
            ControllerResponse::Heartbeat(reply) => reply,
            other => Err(unexpected(other)),
        }
    }

    /// Admin: the view of the quorum of whichever controller answers (with
    /// a single address: that controller's).
    pub async fn describe_quorum(&self) -> Result<QuorumStatus, RpcError> {
        match self
            .call(
                &self.requests,
                ControllerRequest::DescribeQuorum,
                self.config.request_timeout,
                self.config.retry_for,
            )
            .await?
        {
            ControllerResponse::Quorum(status) => status,
            other => Err(unexpected(other)),
        }
    }

    /// Admin: adds or removes a controller; answers the voters after.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<Voters, RpcError> {
        let request = ControllerRequest::ChangeMembership(change);
        match self
            .call(
                &self.requests,
                request,
                self.config.request_timeout,
                self.config.retry_for,
            )
            .await?
        {
            ControllerResponse::MembershipChanged(voters) => voters,
            other => Err(unexpected(other)),
        }
    }

    async fn write_command(&self, cmd: MetadataCommand) -> Result<WriteOutcome, RpcError> {
        let request = ControllerRequest::Write(cmd);
        match self
            .call(
                &self.requests,
                request,
                self.config.request_timeout,
                self.config.retry_for,
            )
            .await?
        {
            ControllerResponse::Written(outcome) => outcome,
            other => Err(unexpected(other)),
        }
    }

    async fn poll_deltas(&self, version: u64, wait: Duration) -> Result<MetadataDeltas, RpcError> {
        let request = ControllerRequest::DeltasSince {
            version,
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        };
        let attempt = wait + self.config.request_timeout;
        match self
            .call(&self.polls, request, attempt, self.config.retry_for)
            .await?
        {
            ControllerResponse::Deltas(deltas) => deltas,
            other => Err(unexpected(other)),
        }
    }

    /// Sends `request` to `target`'s current controller, retrying retriable
    /// failures (moving between controllers as needed) until `budget` is
    /// spent. A response carrying a non-retriable error is returned as is.
    async fn call(
        &self,
        target: &Target,
        request: ControllerRequest,
        attempt_timeout: Duration,
        budget: Duration,
    ) -> Result<ControllerResponse, RpcError> {
        let deadline = tokio::time::Instant::now() + budget;
        let mut backoff = self.config.min_backoff;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let error = match target.connection(&self.config, &*self.net, left).await {
                Err(e) => e,
                Ok(conn) => match conn.call(&request, attempt_timeout.min(left)).await {
                    Ok(response) => match response_error(&response) {
                        None => return Ok(response),
                        Some(e) if !e.is_retriable() => return Ok(response),
                        Some(RpcError::NotLeader(hint)) => {
                            target.redirect(&conn, hint.clone());
                            RpcError::NotLeader(hint.clone())
                        }
                        Some(e @ (RpcError::ShuttingDown | RpcError::Removed)) => {
                            target.rotate(&conn);
                            e.clone()
                        }
                        Some(e) => e.clone(),
                    },
                    Err(e) => {
                        target.rotate(&conn);
                        e
                    }
                },
            };
            let now = tokio::time::Instant::now();
            if now + backoff >= deadline {
                return Err(match error {
                    // The caller may hold on to a retriable answer; this
                    // one only meant "try another controller".
                    RpcError::ShuttingDown => {
                        RpcError::Unavailable("controllers shutting down".into())
                    }
                    RpcError::Removed => {
                        RpcError::Unavailable("controller removed from the quorum".into())
                    }
                    other => other,
                });
            }
            debug!(error = %error, ?backoff, "controller request failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }
}

impl ControllerApi for RemoteController {
    fn write(&self, cmd: MetadataCommand) -> BoxFuture<'_, Result<WriteOutcome, RpcError>> {
        Box::pin(self.write_command(cmd))
    }

    fn deltas_since(
        &self,
        version: u64,
        wait: Duration,
    ) -> BoxFuture<'_, Result<MetadataDeltas, RpcError>> {
        Box::pin(self.poll_deltas(version, wait))
    }
}

fn unexpected(response: ControllerResponse) -> RpcError {
    RpcError::Unavailable(format!("unexpected controller response {response:?}"))
}

fn response_error(response: &ControllerResponse) -> Option<&RpcError> {
    match response {
        ControllerResponse::Written(Err(e))
        | ControllerResponse::Deltas(Err(e))
        | ControllerResponse::Heartbeat(Err(e))
        | ControllerResponse::MembershipChanged(Err(e))
        | ControllerResponse::Quorum(Err(e)) => Some(e),
        _ => None,
    }
}

/// Which controller to talk to, and the open connection to it.
struct Target {
    addrs: Vec<String>,
    state: Mutex<TargetState>,
    /// Serialises connecting, so concurrent requests share one connection.
    connecting: tokio::sync::Mutex<()>,
}

struct TargetState {
    /// Index into `addrs` of the controller in use.
    index: usize,
    /// A leader address learned from `NotLeader`, used before `addrs`.
    redirect: Option<String>,
    conn: Option<Arc<Connection>>,
}

impl Target {
    fn new(addrs: Vec<String>, start: usize) -> Self {
        let index = start % addrs.len();
        Self {
            addrs,
            state: Mutex::new(TargetState {
                index,
                redirect: None,
                conn: None,
            }),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TargetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) -> Option<Arc<Connection>> {
        self.lock().conn.clone().filter(|c| !c.is_closed())
    }

    async fn connection(
        &self,
        config: &RemoteControllerConfig,
        net: &dyn Net,
        left: Duration,
    ) -> Result<Arc<Connection>, RpcError> {
        if let Some(conn) = self.open() {
            return Ok(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.open() {
            return Ok(conn);
        }
        let addr = {
            let state = self.lock();
            state
                .redirect
                .clone()
                .unwrap_or_else(|| self.addrs[state.index].clone())
        };
        let timeout = config.connect_timeout.min(left);
        match Connection::connect(net, &addr, timeout, config).await {
            Ok(conn) => {
                let conn = Arc::new(conn);
                debug!(%addr, "connected to controller");
                self.lock().conn = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                let mut state = self.lock();
                if state.redirect.take().is_none() {
                    state.index = (state.index + 1) % self.addrs.len();
                }
                Err(RpcError::Unavailable(format!("controller {addr}: {e}")))
            }
        }
    }

    /// `failed` is broken or its controller is leaving: use the next one.
    fn rotate(&self, failed: &Arc<Connection>) {
        let mut state = self.lock();
        if state.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, failed)) {
            state.conn = None;
            if state.redirect.take().is_none() {
                state.index = (state.index + 1) % self.addrs.len();
            }
        }
    }

    /// `failed` answered `NotLeader`: go to the hinted leader, or, without
    /// a hint, to the next controller (one that knows no leader may be cut
    /// off from the others, or out of the quorum; another may know).
    fn redirect(&self, failed: &Arc<Connection>, hint: Option<String>) {
        let Some(hint) = hint.filter(|h| h.as_str() != failed.addr) else {
            return self.rotate(failed);
        };
        let mut state = self.lock();
        if state.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, failed)) {
            state.conn = None;
            state.redirect = Some(hint);
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] proto::rpc::FrameError),
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("connection closed mid-frame")]
    Truncated,
    #[error("refused: {0}")]
    Refused(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl From<proto::rpc::FrameReadError> for ConnectionError {
    fn from(e: proto::rpc::FrameReadError) -> Self {
        use proto::rpc::FrameReadError as E;
        match e {
            E::Io(e) => ConnectionError::Io(e),
            E::Frame(e) => ConnectionError::Frame(e),
            E::TooLarge { len, max } => ConnectionError::TooLarge { len, max },
            E::Truncated => ConnectionError::Truncated,
        }
    }
}

fn frame<T: serde::Serialize>(msg: &T) -> Result<Bytes, proto::rpc::FrameError> {
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf)?;
    Ok(buf.freeze())
}

struct Pending {
    waiters: HashMap<u64, oneshot::Sender<ControllerResponse>>,
    closed: Option<String>,
}

fn lock_pending(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

fn close(pending: &Mutex<Pending>, reason: String) {
    let waiters = {
        let mut p = lock_pending(pending);
        p.closed.get_or_insert(reason);
        std::mem::take(&mut p.waiters)
    };
    drop(waiters);
}

/// One connection to one controller, many requests in flight on it.
/// Dropping it closes the connection.
struct Connection {
    addr: String,
    out: mpsc::Sender<Bytes>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    slots: Semaphore,
    tasks: [AbortHandle; 2],
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Connection {
    async fn connect(
        net: &dyn Net,
        addr: &str,
        timeout: Duration,
        config: &RemoteControllerConfig,
    ) -> Result<Connection, ConnectionError> {
        let handshake = async {
            let mut stream = net.connect(addr).await?;
            stream
                .write_all(&frame(&Hello::Client {
                    protocol: RPC_PROTOCOL_VERSION,
                })?)
                .await?;
            let (read, write) = tokio::io::split(stream);
            let mut reader = FrameReader::new(read, 4 * 1024);
            match reader.next::<HelloReply>().await? {
                Some(HelloReply::Accepted { .. }) => Ok((reader, write)),
                Some(HelloReply::Refused { reason }) => Err(ConnectionError::Refused(reason)),
                None => Err(ConnectionError::Refused(
                    "closed during the handshake".into(),
                )),
            }
        };
        let (mut reader, mut write) = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| ConnectionError::Timeout(timeout))??;
        reader.set_max(config.max_frame_bytes);

        let pending = Arc::new(Mutex::new(Pending {
            waiters: HashMap::new(),
            closed: None,
        }));
        let in_flight = config.max_in_flight.max(1);
        let (out, mut out_rx) = mpsc::channel::<Bytes>(in_flight);
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
            let addr = addr.to_string();
            tokio::spawn(async move {
                let reason = loop {
                    match reader.next::<ResponseFrame>().await {
                        Ok(Some(ResponseFrame { id, response })) => {
                            let waiter = lock_pending(&pending).waiters.remove(&id);
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(response);
                            }
                        }
                        Ok(None) => break "closed by the controller".to_string(),
                        Err(e) => {
                            warn!(%addr, error = %e, "controller connection failed");
                            break format!("reading: {e}");
                        }
                    }
                };
                close(&pending, reason);
            })
        };
        Ok(Connection {
            addr: addr.to_string(),
            out,
            pending,
            next_id: AtomicU64::new(1),
            slots: Semaphore::new(in_flight),
            tasks: [writer.abort_handle(), reader.abort_handle()],
        })
    }

    fn is_closed(&self) -> bool {
        lock_pending(&self.pending).closed.is_some()
    }

    fn closed(&self) -> RpcError {
        let reason = lock_pending(&self.pending).closed.clone();
        RpcError::Unavailable(format!(
            "controller {}: connection closed ({})",
            self.addr,
            reason.unwrap_or_else(|| "writer stopped".into())
        ))
    }

    /// One request, answered within `timeout` or failed as `Unavailable`.
    async fn call(
        &self,
        request: &ControllerRequest,
        timeout: Duration,
    ) -> Result<ControllerResponse, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = frame(&RequestFrame {
            id,
            request: request.clone(),
        })
        .map_err(|e| RpcError::Rejected(format!("encoding the request: {e}")))?;
        let exchange = async {
            let _slot = self.slots.acquire().await.map_err(|_| self.closed())?;
            let (tx, rx) = oneshot::channel();
            {
                let mut p = lock_pending(&self.pending);
                if p.closed.is_some() {
                    drop(p);
                    return Err(self.closed());
                }
                p.waiters.insert(id, tx);
            }
            if self.out.send(bytes).await.is_err() {
                return Err(self.closed());
            }
            rx.await.map_err(|_| self.closed())
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                lock_pending(&self.pending).waiters.remove(&id);
                Err(RpcError::Unavailable(format!(
                    "controller {}: no answer within {timeout:?}",
                    self.addr
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prod_net() -> Arc<dyn Net> {
        Arc::new(proto::seams::TokioNet)
    }

    #[test]
    fn needs_addresses() {
        assert!(
            RemoteController::new(vec![], RemoteControllerConfig::default(), prod_net()).is_err()
        );
        assert!(RemoteController::new(
            vec![String::new()],
            RemoteControllerConfig::default(),
            prod_net()
        )
        .is_err());
    }

    #[tokio::test]
    async fn unreachable_controllers_fail_within_the_budget() {
        // A port nobody listens on: bind, note it, close.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let config = RemoteControllerConfig {
            retry_for: Duration::from_millis(300),
            ..RemoteControllerConfig::default()
        };
        let client =
            RemoteController::new(vec![addr.clone(), addr], config, prod_net()).expect("client");
        let started = tokio::time::Instant::now();
        let err = client
            .write(MetadataCommand::AllocateProducerIds { count: 1 })
            .await
            .expect_err("nobody listens");
        assert!(matches!(err, RpcError::Unavailable(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
