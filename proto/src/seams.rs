//! The seams between Oxbow and the world it cannot control: the network, the
//! wall clock and randomness. Production code reaches them only through
//! [`Seams`]; the simulation (`simulation/`) passes its own deterministic
//! implementations and so runs the same code under a seeded schedule.
//!
//! This module holds the traits and their production implementations, and is
//! the only place allowed to call `tokio::net`, `SystemTime::now` or the OS
//! random source directly (clippy's `disallowed-methods` in `clippy.toml`
//! rejects them everywhere else). Monotonic time is `tokio::time`, which the
//! simulation already controls.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::rpc::BoxFuture;

/// A byte stream to a peer (a TCP connection in production).
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}

pub type BoxConn = Box<dyn Conn>;

/// A bound listening socket.
pub trait Listener: Send + 'static {
    /// The next connection and the peer's address.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxConn, SocketAddr)>>;
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

pub type BoxListener = Box<dyn Listener>;

/// Opens connections and listeners. Connections have Nagle's algorithm off.
pub trait Net: Send + Sync + 'static {
    /// Connects to `addr` (`host:port`).
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxConn>>;
    /// Binds a listener on `addr` (`host:port`; port 0 picks a free one).
    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxListener>>;
}

/// Wall-clock time, for timestamps and ages that must survive a restart.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// Randomness: ids that must be unique (topic ids, member ids).
pub trait Entropy: Send + Sync + 'static {
    fn next_u64(&self) -> u64;

    /// A version-4 UUID.
    fn uuid(&self) -> uuid::Uuid {
        let hi = u128::from(self.next_u64()) << 64;
        let lo = u128::from(self.next_u64());
        uuid::Builder::from_random_bytes((hi | lo).to_be_bytes()).into_uuid()
    }
}

/// The three seams, cloned into every component that needs one of them.
#[derive(Clone)]
pub struct Seams {
    pub net: Arc<dyn Net>,
    pub clock: Arc<dyn Clock>,
    pub entropy: Arc<dyn Entropy>,
}

impl Seams {
    /// The real network, clock and OS randomness.
    pub fn production() -> Self {
        Seams {
            net: Arc::new(TokioNet),
            clock: Arc::new(SystemClock),
            entropy: Arc::new(OsEntropy),
        }
    }
}

impl Default for Seams {
    fn default() -> Self {
        Seams::production()
    }
}

impl fmt::Debug for Seams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seams")
    }
}

/// TCP through tokio.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioNet;

struct TokioListener(tokio::net::TcpListener);

#[allow(clippy::disallowed_methods)]
impl Net for TokioNet {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxConn>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxConn)
        })
    }

    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxListener>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            Ok(Box::new(TokioListener(listener)) as BoxListener)
        })
    }
}

impl Listener for TokioListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxConn, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            // A socket that cannot turn Nagle off still works.
            let _ = stream.set_nodelay(true);
            Ok((Box::new(stream) as BoxConn, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[allow(clippy::disallowed_methods)]
impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// The operating system's random source (through `uuid`'s).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

#[allow(clippy::disallowed_methods)]
impl Entropy for OsEntropy {
    fn next_u64(&self) -> u64 {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]))
    }

    fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::new_v4()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(std::sync::atomic::AtomicU64);

    impl Entropy for Counter {
        fn next_u64(&self) -> u64 {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        }
    }

    #[test]
    fn uuids_from_entropy_are_version_4_and_follow_the_source() {
        let a = Counter(std::sync::atomic::AtomicU64::new(7)).uuid();
        let b = Counter(std::sync::atomic::AtomicU64::new(7)).uuid();
        assert_eq!(a, b);
        assert_eq!(a.get_version_num(), 4);
        assert_ne!(a, Counter(std::sync::atomic::AtomicU64::new(8)).uuid());
    }

    #[tokio::test]
    async fn tokio_net_connects_to_what_it_binds() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let net = TokioNet;
        let mut listener = net.bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let client = tokio::spawn(async move {
            let mut c = TokioNet.connect(&addr).await.expect("connect");
            c.write_all(b"ping").await.expect("write");
        });
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        client.await.expect("client");
    }
}
