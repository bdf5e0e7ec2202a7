//! The broker↔controller interface: what a broker may ask of the metadata
//! quorum, the messages that carry it, and their framing on a byte stream.
//!
//! `ControllerApi` is the seam: in `oxbow server` the controller implements it
//! in-process; across hosts an RPC client implements it over frames of
//! `rmp-serde` (named fields) behind a 4-byte big-endian length.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::image::{CommandReply, MetadataCommand, MetadataImage};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Largest RPC frame either side accepts. A snapshot of the image for 10,000
/// partitions is a few MiB; anything larger is refused, not allocated.
pub const MAX_RPC_FRAME: usize = 256 * 1024 * 1024;

/// A committed write: the metadata version (Raft log index) at which it
/// applied, and what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    pub version: u64,
    pub reply: CommandReply,
}

/// What a broker gets when it asks for metadata newer than a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetadataDeltas {
    /// Committed commands in order, each with the version it applied at.
    Deltas(Vec<(u64, MetadataCommand)>),
    /// The asker is too far behind for deltas: the whole image at `version`.
    Snapshot {
        version: u64,
        image: Box<MetadataImage>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RpcError {
    #[error("controller is not the leader (leader hint: {0:?})")]
    NotLeader(Option<String>),
    #[error("controller unavailable: {0}")]
    Unavailable(String),
    #[error("controller is shutting down")]
    ShuttingDown,
}

/// What brokers ask of the metadata quorum.
pub trait ControllerApi: Send + Sync + 'static {
    /// Proposes a command; resolves once it is committed and applied.
    fn write(&self, cmd: MetadataCommand) -> BoxFuture<'_, Result<WriteOutcome, RpcError>>;

    /// Commands applied after `version`, waiting up to `wait` for one to
    /// appear. An empty `Deltas` means nothing new within `wait`.
    fn deltas_since(
        &self,
        version: u64,
        wait: Duration,
    ) -> BoxFuture<'_, Result<MetadataDeltas, RpcError>>;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControllerRequest {
    Write(MetadataCommand),
    DeltasSince { version: u64, wait_ms: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControllerResponse {
    Written(Result<WriteOutcome, RpcError>),
    Deltas(Result<MetadataDeltas, RpcError>),
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_RPC_FRAME}")]
    TooLarge(usize),
    #[error("encoding frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decoding frame: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// Appends one length-prefixed frame holding `msg`.
pub fn encode_frame<T: Serialize>(msg: &T, out: &mut BytesMut) -> Result<(), FrameError> {
    let body = rmp_serde::to_vec_named(msg)?;
    if body.len() > MAX_RPC_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    out.put_u32(body.len() as u32);
    out.extend_from_slice(&body);
    Ok(())
}

/// Takes one whole frame off the front of `buf`, or `None` if it holds only
/// part of one. Refuses a declared length above the limit before buffering it.
pub fn decode_frame<T: DeserializeOwned>(buf: &mut BytesMut) -> Result<Option<T>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_RPC_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    let body = buf.split_to(len);
    Ok(Some(rmp_serde::from_slice(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_split() {
        let req = ControllerRequest::DeltasSince {
            version: 42,
            wait_ms: 100,
        };
        let mut buf = BytesMut::new();
        encode_frame(&req, &mut buf).unwrap();
        let whole = buf.clone();
        let mut partial = BytesMut::from(&whole[..whole.len() - 1]);
        assert!(decode_frame::<ControllerRequest>(&mut partial)
            .unwrap()
            .is_none());
        assert_eq!(
            decode_frame::<ControllerRequest>(&mut buf).unwrap(),
            Some(req)
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        assert!(matches!(
            decode_frame::<ControllerRequest>(&mut buf),
            Err(FrameError::TooLarge(_))
        ));
    }
}
