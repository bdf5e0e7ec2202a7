//! Requests from this broker to another one, over the Kafka protocol: the
//! transaction coordinator's WriteTxnMarkers (markers for partitions owned
//! elsewhere) and KIP-890's verification (AddPartitionsToTxn v4 with
//! `verify_only`) sent by a partition owner to a remote coordinator.
//!
//! A connection per request, bounded by timeouts; responses are bounded in
//! size before they are read. (A pool of connections kept in the broker
//! made the simulation diverge between runs of one seed on parallel
//! threads, a connection outliving its simulated host; these requests are
//! a few per transaction, so the pool is left for later.)

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, ProducerId, RequestHeader,
    ResponseHeader, TopicName, TransactionalId, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use proto::seams::{BoxConn, Net};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::errors::ErrorCode;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response accepted from a peer.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

pub struct Peers {
    net: Arc<dyn Net>,
    client_id: String,
    correlation: AtomicI32,
}

impl Peers {
    pub fn new(net: Arc<dyn Net>, node_id: i32) -> Self {
        Peers {
            net,
            client_id: format!("oxbow-broker-{node_id}"),
            correlation: AtomicI32::new(1),
        }
    }

    /// Sends one request and reads its response.
    async fn call<Req, Resp>(
        &self,
        addr: &str,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> io::Result<Resp>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion,
    {
        let correlation_id = self.correlation.fetch_add(1, Ordering::Relaxed);
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        let mut header = RequestHeader::default();
        header.request_api_key = key as i16;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(StrBytes::from_string(self.client_id.clone()));
        let bad = |e: anyhow::Error| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        header
            .encode(&mut frame, Req::header_version(version))
            .map_err(bad)?;
        req.encode(&mut frame, version).map_err(bad)?;
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());

        let mut c: BoxConn = tokio::time::timeout(CONNECT_TIMEOUT, self.net.connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let exchange = async {
            c.write_all(&frame).await?;
            let mut len = [0u8; 4];
            c.read_exact(&mut len).await?;
            let n = i32::from_be_bytes(len);
            if n < 4 || n as usize > MAX_RESPONSE_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("response of {n} bytes"),
                ));
            }
            let mut body = vec![0u8; n as usize];
            c.read_exact(&mut body).await?;
            let mut body = Bytes::from(body);
            let h =
                ResponseHeader::decode(&mut body, Resp::header_version(version)).map_err(bad)?;
            if h.correlation_id != correlation_id {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response to another request",
                ));
            }
            Resp::decode(&mut body, version).map_err(bad)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?
    }

    /// WriteTxnMarkers v1 for one partition; the partition's error code,
    /// or NOT_LEADER_OR_FOLLOWER (retriable) when the peer cannot be reached.
    #[allow(clippy::too_many_arguments)]
    pub async fn write_txn_marker(
        &self,
        addr: &str,
        topic: &str,
        partition: i32,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
    ) -> ErrorCode {
        let mut t = WritableTxnMarkerTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.partition_indexes = vec![partition];
        let mut m = WritableTxnMarker::default();
        m.producer_id = ProducerId(producer_id);
        m.producer_epoch = epoch;
        m.transaction_result = commit;
        m.topics = vec![t];
        m.coordinator_epoch = coordinator_epoch;
        let mut req = WriteTxnMarkersRequest::default();
        req.markers = vec![m];
        let resp: WriteTxnMarkersResponse =
            match self.call(addr, ApiKey::WriteTxnMarkers, 1, &req).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(addr, error = %e, "WriteTxnMarkers to a peer failed");
                    return ErrorCode::NotLeaderOrFollower;
                }
            };
        let code = resp
            .markers
            .iter()
            .flat_map(|m| &m.topics)
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition_index == partition)
            .map(|p| p.error_code);
        match code {
            Some(c) => ErrorCode::from_code(c),
            None => ErrorCode::UnknownServerError,
        }
    }

    /// KIP-890 verification at a remote coordinator (AddPartitionsToTxn v4
    /// `verify_only`): NONE when the partition is in the producer's open
    /// transaction, else the error for the produce.
    pub async fn verify_txn_partition(
        &self,
        addr: &str,
        transactional_id: &str,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> ErrorCode {
        let mut t = AddPartitionsToTxnTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.partitions = vec![partition];
        let mut tx = AddPartitionsToTxnTransaction::default();
        tx.transactional_id = TransactionalId(StrBytes::from_string(transactional_id.to_string()));
        tx.producer_id = ProducerId(producer_id);
        tx.producer_epoch = epoch;
        tx.verify_only = true;
        tx.topics = vec![t];
        let mut req = AddPartitionsToTxnRequest::default();
        req.transactions = vec![tx];
        let resp: AddPartitionsToTxnResponse =
            match self.call(addr, ApiKey::AddPartitionsToTxn, 4, &req).await {
                Ok(r) => r,
                Err(_) => return ErrorCode::NotEnoughReplicas,
            };
        if resp.error_code != 0 {
            return ErrorCode::from_code(resp.error_code);
        }
        let Some(r) = resp.results_by_transaction.first() else {
            return ErrorCode::UnknownServerError;
        };
        r.topic_results
            .iter()
            .flat_map(|t| &t.results_by_partition)
            .find(|p| p.partition_index == partition)
            .map_or(ErrorCode::UnknownServerError, |p| {
                ErrorCode::from_code(p.partition_error_code)
            })
    }
}
