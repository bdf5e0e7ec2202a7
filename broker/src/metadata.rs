//! The broker's copy of the cluster metadata, kept current by following the
//! controller's committed commands as a versioned stream of deltas (or a
//! whole image when it falls too far behind).
//!
//! The image is replayed with the same pure `MetadataImage::apply` the
//! controller uses, so both agree on every answer. This module never writes
//! metadata; it only follows.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use proto::image::MetadataImage;
use proto::rpc::{ControllerApi, MetadataDeltas};
use tokio::sync::watch;
use tracing::warn;

pub struct MetadataView {
    image: RwLock<MetadataImage>,
    version: watch::Sender<u64>,
}

impl Default for MetadataView {
    fn default() -> Self {
        MetadataView {
            image: RwLock::new(MetadataImage::default()),
            version: watch::Sender::new(0),
        }
    }
}

impl MetadataView {
    /// Runs `f` on the current image. Keep `f` short: it holds a read lock.
    pub fn read<R>(&self, f: impl FnOnce(&MetadataImage) -> R) -> R {
        let guard = self.image.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Waits until the image includes `version`, up to `timeout`.
    pub async fn wait_for(&self, version: u64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= version))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until `ready` holds for the image (checked after every apply),
    /// up to `timeout`; whether it does.
    pub async fn wait_until(
        &self,
        ready: impl Fn(&MetadataImage) -> bool,
        timeout: Duration,
    ) -> bool {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if self.read(&ready) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return self.read(&ready),
            }
        }
    }

    /// Applies one answer from the controller.
    pub fn apply(&self, update: MetadataDeltas) {
        let mut guard = self.image.write().unwrap_or_else(|e| e.into_inner());
        let mut current = self.version();
        match update {
            MetadataDeltas::Deltas(deltas) => {
                for (v, cmd) in deltas {
                    if v <= current {
                        continue; // already applied: answers may overlap on retry
                    }
                    guard.apply(&cmd);
                    current = v;
                }
            }
            MetadataDeltas::Snapshot { version, image } => {
                if version > current {
                    *guard = *image;
                    current = version;
                }
            }
        }
        drop(guard);
        self.version.send_if_modified(|v| {
            let changed = *v != current;
            *v = current;
            changed
        });
    }

    /// Asks for everything newer than what we have, waiting up to `wait`.
    pub async fn pull(&self, controller: &dyn ControllerApi, wait: Duration) -> bool {
        match controller.deltas_since(self.version(), wait).await {
            Ok(update) => {
                self.apply(update);
                true
            }
            Err(e) => {
                warn!(error = %e, "fetching metadata deltas failed");
                false
            }
        }
    }
}

/// Follows the controller until `stop` fires.
pub async fn follow(
    view: Arc<MetadataView>,
    controller: Arc<dyn ControllerApi>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            ok = view.pull(&*controller, Duration::from_secs(5)) => {
                if !ok {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}
