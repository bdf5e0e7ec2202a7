//! `proto::seams::Net` over turmoil's simulated network: connections between
//! hosts of one simulation, named `host:port`, subject to the partitions,
//! holds and latencies the simulation imposes.

use std::io;
use std::net::SocketAddr;

use proto::rpc::BoxFuture;
use proto::seams::{BoxConn, BoxListener, Listener, Net};

/// turmoil's TCP. Must be used from inside a simulation host or client.
#[derive(Debug, Default, Clone, Copy)]
pub struct TurmoilNet;

struct TurmoilListener(turmoil::net::TcpListener);

impl Net for TurmoilNet {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxConn>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(stream) as BoxConn)
        })
    }

    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxListener>> {
        Box::pin(async move {
            // Hosts bind their own address; a name other than this host's
            // means "all of this host's addresses", as 0.0.0.0 would.
            let port = addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, addr.to_string()))?;
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
            Ok(Box::new(TurmoilListener(listener)) as BoxListener)
        })
    }
}

impl Listener for TurmoilListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxConn, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            Ok((Box::new(stream) as BoxConn, peer))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}
