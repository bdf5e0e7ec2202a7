//! The Prometheus endpoint: the `metrics` recorder and a minimal HTTP
//! responder that renders it on any GET. Bounded: one small request read per
//! connection, a few connections at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use proto::seams::BoxListener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

pub fn install() -> Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow!("installing the metrics recorder: {e}"))
}

pub async fn serve(
    mut listener: BoxListener,
    handle: PrometheusHandle,
    mut stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(16));
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        let (mut sock, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = upkeep.tick() => { handle.run_upkeep(); continue; }
            _ = stop.changed() => return,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let read = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await;
            if !matches!(read, Ok(Ok(n)) if n > 0) {
                return;
            }
            let body = handle.render();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
            drop(permit);
        });
    }
}
