//! The Kafka protocol server: accepts connections, reads size-prefixed
//! request frames, decodes them with the `kafka-protocol` crate, and answers
//! each in request order while handling several concurrently.
//!
//! Untrusted bytes are bounded before anything is allocated for them: the
//! frame size is checked against `max_request_bytes` and read as it
//! arrives; requests other than Produce are limited to a few MiB; and a
//! request that fails to decode closes its connection. (The decoder sizes
//! arrays from wire counts before reading them; the `oxbow` binary's
//! allocator keeps such a reservation lazy, see `oxbow/src/alloc.rs`.)
//! A handler never panics on client input.

mod admin;
mod configs;
mod fetch;
mod group;
mod produce;
mod reassign;
mod records;
mod txn;
pub mod versions;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use proto::seams::{BoxConn, BoxListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::errors::ErrorCode;

/// Only Produce carries bulk data; every other request is small, and a small
/// frame bounds what the decoder can be made to allocate for it.
const MAX_NON_PRODUCE_REQUEST_BYTES: usize = 8 * 1024 * 1024;

type ResponseFuture = Pin<Box<dyn Future<Output = Option<ResponseKind>> + Send>>;

/// Accepts Kafka connections until `stop` turns true.
pub async fn serve(
    mut listener: BoxListener,
    broker: Arc<Broker>,
    mut stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(broker.config.max_connections));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(%peer, "connection limit reached; closing new connection");
            continue;
        };
        let broker = broker.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            metrics::gauge!("oxbow_connections").increment(1.0);
            if let Err(e) = connection(socket, broker, stop).await {
                debug!(%peer, error = %e, "connection closed");
            }
            metrics::gauge!("oxbow_connections").decrement(1.0);
            drop(permit);
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is outside the accepted range")]
    FrameSize(i64),
    #[error("malformed request: {0}")]
    Malformed(String),
}

/// Reads one frame. The buffer grows as bytes arrive, so a peer that claims
/// a large frame and sends nothing costs nothing.
async fn read_frame(
    rd: &mut tokio::io::ReadHalf<BoxConn>,
    max: usize,
) -> Result<Option<Bytes>, ConnError> {
    let mut len = [0u8; 4];
    match rd.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = i32::from_be_bytes(len);
    if size < 8 || size as usize > max {
        return Err(ConnError::FrameSize(i64::from(size)));
    }
    let size = size as usize;
    let mut buf = BytesMut::with_capacity(size.min(64 * 1024));
    while buf.len() < size {
        let want = (size - buf.len()).min(1024 * 1024);
        buf.reserve(want);
        let n = (&mut *rd).take(want as u64).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok(Some(buf.freeze()))
}

async fn connection(
    socket: BoxConn,
    broker: Arc<Broker>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ConnError> {
    let (mut rd, mut wr) = tokio::io::split(socket);
    let inflight = broker.config.max_inflight_requests_per_connection.max(1);
    let (tx, mut rx) =
        mpsc::channel::<(i32, i16, i16, tokio::task::JoinHandle<Option<ResponseKind>>)>(inflight);
    // Responses leave in request order.
    let writer = tokio::spawn(async move {
        let mut out = BytesMut::new();
        while let Some((correlation_id, api_key, version, handle)) = rx.recv().await {
            let Ok(Some(body)) = handle.await else {
                continue; // acks=0 produce, or a handler that failed: no response
            };
            out.clear();
            if encode_response(&mut out, correlation_id, api_key, version, &body).is_err() {
                warn!(
                    api_key,
                    version, "encoding response failed; closing connection"
                );
                return;
            }
            if wr.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    let result = loop {
        let frame = tokio::select! {
            f = read_frame(&mut rd, broker.config.max_request_bytes) => f,
            _ = stop.changed() => break Ok(()),
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match handle_frame(&broker, frame).await {
            Ok(Some((cid, key, version, fut))) => {
                let handle = tokio::spawn(fut);
                if tx.send((cid, key, version, handle)).await.is_err() {
                    break Ok(());
                }
            }
            Ok(None) => {}
            Err(e) => break Err(e),
        }
    };
    drop(tx);
    let _ = writer.await;
    result
}

type Dispatched = (i32, i16, i16, ResponseFuture);

/// Decodes one request and starts handling it. The part of the handling that
/// must happen in request order (handing produce batches to partitions) runs
/// before this returns; the rest runs in the returned future.
async fn handle_frame(broker: &Arc<Broker>, frame: Bytes) -> Result<Option<Dispatched>, ConnError> {
    let mut peek = &frame[..];
    let api_key_raw = peek.get_i16();
    let api_version = peek.get_i16();
    let correlation_id = peek.get_i32();
    let Ok(api_key) = ApiKey::try_from(api_key_raw) else {
        return Err(ConnError::Malformed(format!(
            "unknown API key {api_key_raw}"
        )));
    };
    let Some(range) = versions::supported(api_key) else {
        return Err(ConnError::Malformed(format!("unsupported API {api_key:?}")));
    };
    if api_version < range.0 || api_version > range.1 {
        if api_key == ApiKey::ApiVersions {
            // KIP-511: answer in v0 format with the versions we do support.
            let mut resp = versions::api_versions_response();
            resp.error_code = ErrorCode::UnsupportedVersion.code();
            return Ok(Some((
                correlation_id,
                api_key_raw,
                0,
                Box::pin(async move { Some(ResponseKind::ApiVersions(resp)) }),
            )));
        }
        return Err(ConnError::Malformed(format!(
            "{api_key:?} v{api_version} is not supported"
        )));
    }
    let started = tokio::time::Instant::now();
    let mut buf = frame.clone();
    let header_version = api_key.request_header_version(api_version);
    let header = RequestHeader::decode(&mut buf, header_version)
        .map_err(|e| ConnError::Malformed(format!("header: {e}")))?;
    if api_key != ApiKey::Produce && frame.len() > MAX_NON_PRODUCE_REQUEST_BYTES {
        return Err(ConnError::FrameSize(frame.len() as i64));
    }
    let request = RequestKind::decode(api_key, &mut buf, api_version)
        .map_err(|e| ConnError::Malformed(format!("{api_key:?} v{api_version}: {e}")))?;
    let label = versions::name(api_key);
    metrics::counter!("oxbow_requests_total", "api" => label).increment(1);
    let fut = dispatch(broker.clone(), header, request, api_version).await;
    let fut: ResponseFuture = Box::pin(async move {
        let r = fut.await;
        metrics::histogram!("oxbow_request_seconds", "api" => label)
            .record(started.elapsed().as_secs_f64());
        r
    });
    Ok(Some((correlation_id, api_key_raw, api_version, fut)))
}

fn ready(resp: ResponseKind) -> ResponseFuture {
    Box::pin(async move { Some(resp) })
}

async fn dispatch(
    broker: Arc<Broker>,
    header: RequestHeader,
    request: RequestKind,
    version: i16,
) -> ResponseFuture {
    match request {
        RequestKind::ApiVersions(_) => {
            ready(ResponseKind::ApiVersions(versions::api_versions_response()))
        }
        RequestKind::Produce(req) => produce::handle(broker, req, version).await,
        RequestKind::Fetch(req) => Box::pin(async move {
            Some(ResponseKind::Fetch(
                fetch::handle(&broker, req, version).await,
            ))
        }),
        RequestKind::ListOffsets(req) => Box::pin(async move {
            Some(ResponseKind::ListOffsets(
                fetch::list_offsets(&broker, req, version).await,
            ))
        }),
        RequestKind::Metadata(req) => Box::pin(async move {
            Some(ResponseKind::Metadata(
                admin::metadata(&broker, req, version).await,
            ))
        }),
        RequestKind::CreateTopics(req) => Box::pin(async move {
            Some(ResponseKind::CreateTopics(
                admin::create_topics(&broker, req).await,
            ))
        }),
        RequestKind::DeleteTopics(req) => Box::pin(async move {
            Some(ResponseKind::DeleteTopics(
                admin::delete_topics(&broker, req).await,
            ))
        }),
        RequestKind::CreatePartitions(req) => Box::pin(async move {
            Some(ResponseKind::CreatePartitions(
                admin::create_partitions(&broker, req).await,
            ))
        }),
        RequestKind::InitProducerId(req) => Box::pin(async move {
            Some(ResponseKind::InitProducerId(
                txn::init_producer_id(&broker, req, version).await,
            ))
        }),
        // Transaction coordinator (kafka/txn.rs).
        RequestKind::AddPartitionsToTxn(req) => Box::pin(async move {
            Some(ResponseKind::AddPartitionsToTxn(
                txn::add_partitions(&broker, req, version).await,
            ))
        }),
        RequestKind::AddOffsetsToTxn(req) => Box::pin(async move {
            Some(ResponseKind::AddOffsetsToTxn(
                txn::add_offsets(&broker, req, version).await,
            ))
        }),
        RequestKind::EndTxn(req) => Box::pin(async move {
            Some(ResponseKind::EndTxn(
                txn::end_txn(&broker, req, version).await,
            ))
        }),
        RequestKind::TxnOffsetCommit(req) => Box::pin(async move {
            Some(ResponseKind::TxnOffsetCommit(
                txn::txn_offset_commit(&broker, req, version).await,
            ))
        }),
        RequestKind::WriteTxnMarkers(req) => Box::pin(async move {
            Some(ResponseKind::WriteTxnMarkers(
                txn::write_txn_markers(&broker, req).await,
            ))
        }),
        RequestKind::DescribeTransactions(req) => Box::pin(async move {
            Some(ResponseKind::DescribeTransactions(
                txn::describe_transactions(&broker, req).await,
            ))
        }),
        RequestKind::ListTransactions(req) => Box::pin(async move {
            Some(ResponseKind::ListTransactions(
                txn::list_transactions(&broker, req, version).await,
            ))
        }),
        RequestKind::DescribeProducers(req) => Box::pin(async move {
            Some(ResponseKind::DescribeProducers(
                txn::describe_producers(&broker, req).await,
            ))
        }),
        RequestKind::DescribeConfigs(req) => Box::pin(async move {
            Some(ResponseKind::DescribeConfigs(admin::describe_configs(
                &broker, req,
            )))
        }),
        RequestKind::IncrementalAlterConfigs(req) => Box::pin(async move {
            Some(ResponseKind::IncrementalAlterConfigs(
                configs::incremental_alter(&broker, req).await,
            ))
        }),
        RequestKind::DeleteRecords(req) => Box::pin(async move {
            Some(ResponseKind::DeleteRecords(
                records::delete_records(&broker, req).await,
            ))
        }),
        RequestKind::AlterPartitionReassignments(req) => Box::pin(async move {
            Some(ResponseKind::AlterPartitionReassignments(
                reassign::alter(&broker, req, version).await,
            ))
        }),
        RequestKind::ListPartitionReassignments(req) => ready(
            ResponseKind::ListPartitionReassignments(reassign::list(&broker, req)),
        ),
        RequestKind::DescribeCluster(req) => ready(ResponseKind::DescribeCluster(
            admin::describe_cluster(&broker, req),
        )),
        // Group coordinator.
        RequestKind::FindCoordinator(req) => Box::pin(async move {
            Some(ResponseKind::FindCoordinator(
                group::find_coordinator(&broker, req, version).await,
            ))
        }),
        RequestKind::JoinGroup(req) => Box::pin(async move {
            Some(ResponseKind::JoinGroup(
                group::join_group(&broker, req, version, header.client_id).await,
            ))
        }),
        RequestKind::SyncGroup(req) => Box::pin(async move {
            Some(ResponseKind::SyncGroup(
                group::sync_group(&broker, req, version).await,
            ))
        }),
        RequestKind::Heartbeat(req) => Box::pin(async move {
            Some(ResponseKind::Heartbeat(
                group::heartbeat(&broker, req).await,
            ))
        }),
        RequestKind::LeaveGroup(req) => Box::pin(async move {
            Some(ResponseKind::LeaveGroup(
                group::leave_group(&broker, req, version).await,
            ))
        }),
        RequestKind::OffsetCommit(req) => Box::pin(async move {
            Some(ResponseKind::OffsetCommit(
                group::offset_commit(&broker, req, version).await,
            ))
        }),
        RequestKind::OffsetFetch(req) => Box::pin(async move {
            Some(ResponseKind::OffsetFetch(
                group::offset_fetch(&broker, req, version).await,
            ))
        }),
        RequestKind::ConsumerGroupHeartbeat(req) => Box::pin(async move {
            Some(ResponseKind::ConsumerGroupHeartbeat(
                group::consumer_group_heartbeat(&broker, req, version, header.client_id).await,
            ))
        }),
        RequestKind::ConsumerGroupDescribe(req) => Box::pin(async move {
            Some(ResponseKind::ConsumerGroupDescribe(
                group::consumer_group_describe(&broker, req).await,
            ))
        }),
        RequestKind::ListGroups(req) => Box::pin(async move {
            Some(ResponseKind::ListGroups(
                group::list_groups(&broker, req, version).await,
            ))
        }),
        RequestKind::DescribeGroups(req) => Box::pin(async move {
            Some(ResponseKind::DescribeGroups(
                group::describe_groups(&broker, req).await,
            ))
        }),
        RequestKind::DeleteGroups(req) => Box::pin(async move {
            Some(ResponseKind::DeleteGroups(
                group::delete_groups(&broker, req).await,
            ))
        }),
        RequestKind::OffsetDelete(req) => Box::pin(async move {
            Some(ResponseKind::OffsetDelete(
                group::offset_delete(&broker, req).await,
            ))
        }),
        other => {
            // `versions::supported` admits only the APIs above.
            warn!(client = ?header.client_id, "no handler for {:?}", std::mem::discriminant(&other));
            Box::pin(async { None })
        }
    }
}

fn encode_response(
    out: &mut BytesMut,
    correlation_id: i32,
    api_key: i16,
    version: i16,
    body: &ResponseKind,
) -> anyhow::Result<()> {
    let header_version = match body {
        // ApiVersions responses always use header v0 (KIP-511).
        ResponseKind::ApiVersions(_) => 0,
        _ => ApiKey::try_from(api_key)
            .map_err(|_| anyhow::anyhow!("unknown api key"))?
            .response_header_version(version),
    };
    out.put_i32(0); // size, patched below
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header.encode(out, header_version)?;
    body.encode(out, version)?;
    let size = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

pub async fn run_listener(listener: BoxListener, broker: Arc<Broker>, stop: watch::Receiver<bool>) {
    info!(addr = ?listener.local_addr().ok(), "Kafka listener started");
    serve(listener, broker, stop).await;
}
