//! The broker↔controller interface: what a broker may ask of the metadata
//! quorum, the messages that carry it, and their framing on a byte stream.
//!
//! `ControllerApi` is the seam: in `oxbow server` the controller implements it
//! in-process; across hosts an RPC client implements it over frames of
//! `rmp-serde` (named fields) behind a 4-byte big-endian length.
//! `FrameReader` reads such frames off any byte stream (both ends use it);
//! it is the only I/O here.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::ids::BrokerId;
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
    /// This controller was removed from the quorum: it no longer learns of
    /// new metadata and must not be asked anything; ask another one.
    #[error("controller was removed from the quorum")]
    Removed,
    /// The request itself is wrong (e.g. removing a voter that is not one);
    /// asking again, here or elsewhere, gets the same answer.
    #[error("request rejected: {0}")]
    Rejected(String),
}

impl RpcError {
    /// Whether the same request may succeed if asked again, later or at
    /// another controller.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, RpcError::Rejected(_))
    }
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
    DeltasSince {
        version: u64,
        wait_ms: u64,
    },
    /// A broker incarnation says it is alive (about once a second). Only the
    /// leader keeps sessions; a follower forwards it there.
    Heartbeat {
        broker: BrokerId,
        broker_epoch: u64,
    },
    /// Admin: adds or removes a controller of the quorum.
    ChangeMembership(MembershipChange),
    /// Admin: the answering controller's own view of the quorum (never
    /// forwarded, so each controller can be asked in turn).
    DescribeQuorum,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControllerResponse {
    Written(Result<WriteOutcome, RpcError>),
    Deltas(Result<MetadataDeltas, RpcError>),
    Heartbeat(Result<HeartbeatReply, RpcError>),
    MembershipChanged(Result<Voters, RpcError>),
    Quorum(Result<QuorumStatus, RpcError>),
}

/// One controller's view of the quorum (its own Raft state), for status
/// pages, admin tools and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumStatus {
    pub node_id: u64,
    /// The leader this node knows of, if any.
    pub leader: Option<u64>,
    pub term: u64,
    /// Voters and learners of the membership this node knows, id → address.
    pub voters: Voters,
    pub learners: Voters,
    /// Log index of the last entry applied to the image.
    pub last_applied: Option<u64>,
    /// Log index the latest snapshot covers.
    pub snapshot: Option<u64>,
    /// Log entries up to this index are purged.
    pub purged: Option<u64>,
}

/// The leader's answer to a broker heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// This incarnation is fenced (its session expired, it shut down, or a
    /// newer incarnation registered) or unknown: it must register again, and
    /// gets a new epoch when it does.
    pub fenced: bool,
}

/// A change to the controller quorum's voters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Adds controller `id`, reachable at `addr` (`host:port`), first as a
    /// learner that catches up, then as a voter.
    AddVoter { id: u64, addr: String },
    /// Removes controller `id` from the quorum.
    RemoveVoter { id: u64 },
}

/// Controller id → RPC address of every voter, after a membership change.
pub type Voters = std::collections::BTreeMap<u64, String>;

/// Version of the connection protocol below; both sides must agree.
pub const RPC_PROTOCOL_VERSION: u32 = 1;

/// The first frame on every connection to a controller's RPC port: who is
/// calling, and so what the frames after it carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hello {
    /// A broker or admin tool: [`RequestFrame`]s follow, answered by
    /// [`ResponseFrame`]s with the same id, possibly out of order.
    Client { protocol: u32 },
    /// Another controller (Raft id `from`): the controller crate's own peer
    /// messages follow.
    Controller { protocol: u32, from: u64 },
}

/// The controller's answer to a [`Hello`]: which node answered. A peer that
/// reached a different node than it meant to drops the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Accepted {
        protocol: u32,
        node_id: u64,
    },
    /// Protocol mismatch or too many connections; the connection closes.
    Refused {
        reason: String,
    },
}

/// One request on a client connection; `id` is chosen by the client and
/// unique among its requests in flight on that connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub id: u64,
    pub request: ControllerRequest,
}

/// The answer to the [`RequestFrame`] with the same `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: u64,
    pub response: ControllerResponse,
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

/// Why reading a frame off a byte stream failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("frame of {len} bytes exceeds this connection's limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("connection closed mid-frame")]
    Truncated,
}

/// Reads whole frames off a byte stream, refusing any whose declared length
/// is above `max` before buffering it.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
}

impl<R: tokio::io::AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            max,
        }
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The next frame, or `None` at a clean end of stream.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameReadError> {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > self.max {
                    return Err(FrameReadError::TooLarge { len, max: self.max });
                }
                if let Some(msg) = decode_frame(&mut self.buf)? {
                    return Ok(Some(msg));
                }
                // Room for the rest of this frame in one go; `len` is bounded.
                self.buf.reserve(4 + len - self.buf.len());
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameReadError::Truncated)
                };
            }
        }
    }
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
    fn request_frames_round_trip() {
        let frames = [
            RequestFrame {
                id: 1,
                request: ControllerRequest::Heartbeat {
                    broker: 3,
                    broker_epoch: 9,
                },
            },
            RequestFrame {
                id: u64::MAX,
                request: ControllerRequest::ChangeMembership(MembershipChange::AddVoter {
                    id: 4,
                    addr: "10.0.0.4:9093".into(),
                }),
            },
        ];
        let mut buf = BytesMut::new();
        for f in &frames {
            encode_frame(f, &mut buf).unwrap();
        }
        for f in frames {
            assert_eq!(decode_frame::<RequestFrame>(&mut buf).unwrap(), Some(f));
        }
        let reply = ResponseFrame {
            id: 7,
            response: ControllerResponse::Heartbeat(Ok(HeartbeatReply { fenced: true })),
        };
        encode_frame(&reply, &mut buf).unwrap();
        assert_eq!(
            decode_frame::<ResponseFrame>(&mut buf).unwrap(),
            Some(reply)
        );
        assert!(RpcError::NotLeader(None).is_retriable());
        assert!(!RpcError::Rejected("no".into()).is_retriable());
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
