//! The controller's one TCP listener, serving both its peers (Raft messages
//! and forwarded requests) and brokers and admin tools
//! (`proto::rpc::ControllerRequest`).
//!
//! A connection opens with `proto::rpc::Hello`, which says which of the two
//! it is; the server answers `HelloReply` with its node id and then serves
//! requests concurrently, answering each as soon as it is done (responses
//! carry the request's id). Everything is bounded: connections at once,
//! requests in flight per connection (the server stops reading a connection
//! that has that many), frame size (client frames have their own, smaller
//! limit), the time to say hello, and the time to answer. The server owns
//! no state: it hands requests to the [`Service`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proto::rpc::{
    ControllerResponse, Hello, HelloReply, RequestFrame, ResponseFrame, RpcError, MAX_RPC_FRAME,
    RPC_PROTOCOL_VERSION,
};
use proto::seams::{BoxConn, BoxListener};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::service::{error_response, Service};
use crate::wire::{frame, write_frame, FrameReader, PeerRequest, Tagged, MAX_HELLO_FRAME};

/// Bounds of the RPC server; see `ControllerConfig` for what each means.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerLimits {
    pub max_connections: usize,
    pub max_in_flight_per_connection: usize,
    pub max_client_frame_bytes: usize,
    pub hello_timeout: Duration,
    pub request_timeout: Duration,
    pub max_deltas_wait: Duration,
}

/// Accepts connections until the task is aborted; aborting it closes every
/// connection it opened.
pub(crate) async fn serve(mut listener: BoxListener, service: Arc<Service>, limits: ServerLimits) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accepting an RPC connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "refusing an RPC connection: too many open");
            connections.spawn(refuse(
                stream,
                format!("too many connections (limit {})", limits.max_connections),
            ));
            continue;
        };
        let service = service.clone();
        connections.spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_connection(stream, service, limits).await {
                tracing::debug!(%peer, error = %e, "RPC connection ended");
            }
        });
    }
}

async fn refuse(mut stream: BoxConn, reason: String) {
    let refusal = HelloReply::Refused { reason };
    let _ = tokio::time::timeout(Duration::from_secs(1), write_frame(&mut stream, &refusal)).await;
    let _ = stream.shutdown().await;
}

async fn serve_connection(
    stream: BoxConn,
    service: Arc<Service>,
    limits: ServerLimits,
) -> Result<(), crate::wire::WireError> {
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = FrameReader::new(read, MAX_HELLO_FRAME);
    let hello = tokio::time::timeout(limits.hello_timeout, reader.next::<Hello>())
        .await
        .map_err(|_| crate::wire::WireError::Timeout(limits.hello_timeout))??;
    let Some(hello) = hello else {
        return Ok(());
    };
    let peer = match hello {
        Hello::Client { protocol } if protocol == RPC_PROTOCOL_VERSION => None,
        Hello::Controller { protocol, from } if protocol == RPC_PROTOCOL_VERSION => Some(from),
        other => {
            let reason = format!(
                "unsupported hello {other:?}; this controller speaks protocol {RPC_PROTOCOL_VERSION}"
            );
            write_frame(&mut write, &HelloReply::Refused { reason }).await?;
            return Ok(());
        }
    };
    write_frame(
        &mut write,
        &HelloReply::Accepted {
            protocol: RPC_PROTOCOL_VERSION,
            node_id: service.node_id,
        },
    )
    .await?;
    reader.set_max(if peer.is_some() {
        MAX_RPC_FRAME
    } else {
        limits.max_client_frame_bytes
    });

    let in_flight = limits.max_in_flight_per_connection.max(1);
    let (out, mut out_rx) = mpsc::channel::<Bytes>(in_flight);
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if write.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        // Wait for a free slot before reading: a client with too much in
        // flight is slowed down by TCP, not buffered here.
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the connection's own semaphore is never closed");
        let service = service.clone();
        let out = out.clone();
        if peer.is_some() {
            let Some(Tagged { id, body }) = reader.next::<Tagged<PeerRequest>>().await? else {
                return Ok(());
            };
            tasks.spawn(async move {
                let _slot = slot;
                let timeout = limits.request_timeout;
                let response = match tokio::time::timeout(timeout, service.handle_peer(body)).await
                {
                    Ok(response) => response,
                    // The caller has its own, shorter timeout; it learns
                    // nothing from an answer it no longer waits for.
                    Err(_) => return,
                };
                send(&out, &Tagged { id, body: response }).await;
            });
        } else {
            let Some(RequestFrame { id, request }) = reader.next::<RequestFrame>().await? else {
                return Ok(());
            };
            tasks.spawn(async move {
                let _slot = slot;
                let timeout = match &request {
                    proto::rpc::ControllerRequest::DeltasSince { wait_ms, .. } => {
                        Duration::from_millis(*wait_ms).min(limits.max_deltas_wait)
                            + limits.request_timeout
                    }
                    _ => limits.request_timeout,
                };
                let fallback = error_response(
                    &request,
                    RpcError::Unavailable(format!("no answer within {timeout:?}")),
                );
                let response: ControllerResponse =
                    tokio::time::timeout(timeout, service.handle_client(request, true))
                        .await
                        .unwrap_or(fallback);
                send(&out, &ResponseFrame { id, response }).await;
            });
        }
        // Reap finished handlers so the set stays as small as what is in flight.
        while tasks.try_join_next().is_some() {}
    }
}

async fn send<T: serde::Serialize>(out: &mpsc::Sender<Bytes>, message: &T) {
    match frame(message) {
        // A closed writer means the connection is gone; nobody to tell.
        Ok(bytes) => {
            let _ = out.send(bytes).await;
        }
        Err(e) => tracing::error!(error = %e, "encoding an RPC response failed"),
    }
}
