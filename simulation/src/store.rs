//! The object store every simulated broker shares: one in-memory bucket,
//! reached by each broker through its own [`FaultyStore`] handle, which
//! injects the seeded faults of real S3-compatible stores: latency, 503
//! SlowDown, timeouts, a PUT that succeeded but whose answer was lost, a
//! broker cut off from the store, and multipart uploads whose parts fail
//! (an upload missing a part cannot complete, as S3 answers InvalidPart).
//! (Oxbow's writer does not use multipart uploads today; the unit test
//! below covers them.)

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

use crate::seams::{splitmix64, SimClock};

/// How often each fault strikes; all zero is a perfect store.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultRates {
    /// Probability that a request fails at once with 503 SlowDown.
    pub slow_down: f64,
    /// Probability that a request hangs until the client gives up.
    pub timeout: f64,
    /// Probability that a PUT is stored but its answer is lost.
    pub lost_put_response: f64,
    /// Latency of every request, uniform in this range (milliseconds).
    pub latency_ms: (u64, u64),
}

/// The bucket and the fault switches, shared by every handle.
#[derive(Debug)]
pub struct SharedStore {
    bucket: InMemory,
    state: Mutex<StoreState>,
}

#[derive(Debug, Default)]
struct StoreState {
    rates: FaultRates,
    /// Hosts that cannot reach the store.
    cut_off: BTreeSet<String>,
    rng: u64,
    /// Simulated wall time of each object's last PUT (the in-memory bucket
    /// would report the real time).
    put_ms: BTreeMap<Path, i64>,
    stats: StoreStats,
}

/// What the store saw, for reports and checks.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreStats {
    pub puts: u64,
    pub gets: u64,
    pub deletes: u64,
    pub injected_faults: u64,
}

enum Fault {
    None,
    SlowDown,
    Timeout,
    LostResponse,
    CutOff,
}

impl SharedStore {
    pub fn new(seed: u64) -> Arc<SharedStore> {
        Arc::new(SharedStore {
            bucket: InMemory::new(),
            state: Mutex::new(StoreState {
                rng: seed,
                ..StoreState::default()
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, StoreState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_rates(&self, rates: FaultRates) {
        self.state().rates = rates;
    }

    pub fn cut_off(&self, host: &str, cut: bool) {
        let mut s = self.state();
        if cut {
            s.cut_off.insert(host.to_string());
        } else {
            s.cut_off.remove(host);
        }
    }

    pub fn stats(&self) -> StoreStats {
        self.state().stats
    }

    /// Every object in the bucket with the simulated wall time (ms) of its
    /// last PUT, for the checks against the metadata.
    pub fn objects(&self) -> Vec<(String, i64)> {
        self.state()
            .put_ms
            .iter()
            .map(|(k, ms)| (k.to_string(), *ms))
            .collect()
    }

    /// A handle for one host.
    pub fn handle(self: &Arc<Self>, host: &str) -> Arc<dyn ObjectStore> {
        Arc::new(FaultyStore {
            shared: self.clone(),
            host: host.to_string(),
        })
    }

    /// Draws the fault and latency of one request.
    fn draw(&self, host: &str, is_put: bool) -> (Fault, Duration) {
        let mut s = self.state();
        let mut next = || {
            s.rng = s.rng.wrapping_add(1);
            (splitmix64(s.rng) >> 11) as f64 / (1u64 << 53) as f64
        };
        let (u1, u2, u3, u4) = (next(), next(), next(), next());
        let rates = s.rates;
        let (lo, hi) = rates.latency_ms;
        let latency = Duration::from_millis(lo + ((hi.saturating_sub(lo)) as f64 * u4) as u64);
        let fault = if s.cut_off.contains(host) {
            Fault::CutOff
        } else if u1 < rates.slow_down {
            Fault::SlowDown
        } else if u2 < rates.timeout {
            Fault::Timeout
        } else if is_put && u3 < rates.lost_put_response {
            Fault::LostResponse
        } else {
            Fault::None
        };
        if !matches!(fault, Fault::None) {
            s.stats.injected_faults += 1;
        }
        (fault, latency)
    }
}

/// A multipart upload whose parts and completion draw faults like any
/// request. A part that fails is not stored; completing an upload with a
/// failed part fails and creates nothing.
#[derive(Debug)]
struct FaultyUpload {
    shared: Arc<SharedStore>,
    host: String,
    location: Path,
    inner: Box<dyn MultipartUpload>,
    failed_part: bool,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        let (fault, latency) = self.shared.draw(&self.host, false);
        let stored = match fault {
            Fault::None | Fault::LostResponse => Some(self.inner.put_part(data)),
            _ => {
                self.failed_part = true;
                None
            }
        };
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            match stored {
                Some(part) => part.await,
                None => Err(injected("multipart part failed (injected)")),
            }
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let lost = FaultyStore {
            shared: self.shared.clone(),
            host: self.host.clone(),
        }
        .before(true)
        .await?;
        if self.failed_part {
            return Err(injected(
                "InvalidPart: a part of this upload failed (injected)",
            ));
        }
        let result = self.inner.complete().await?;
        {
            let now = proto::seams::Clock::now_ms(&SimClock {
                epoch_ms: crate::seams::SIM_EPOCH_MS,
            });
            let mut s = self.shared.state();
            s.put_ms.insert(self.location.clone(), now);
            s.stats.puts += 1;
        }
        if lost {
            return Err(injected(
                "multipart completed but its answer was lost (injected)",
            ));
        }
        Ok(result)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

/// One host's view of the shared bucket.
#[derive(Debug)]
pub struct FaultyStore {
    shared: Arc<SharedStore>,
    host: String,
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimStore({})", self.host)
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "sim",
        source: what.to_string().into(),
    }
}

/// How long a hung request takes to fail (a client-side timeout).
const HANG: Duration = Duration::from_secs(10);
/// How long a request to an unreachable store takes to fail (connect timeout).
const UNREACHABLE: Duration = Duration::from_secs(2);

impl FaultyStore {
    /// Applies the drawn fault before the request: `Ok(lost)` means "go on",
    /// with `lost` saying the answer must be dropped afterwards.
    async fn before(&self, is_put: bool) -> Result<bool> {
        let (fault, latency) = self.shared.draw(&self.host, is_put);
        tokio::time::sleep(latency).await;
        match fault {
            Fault::None => Ok(false),
            Fault::LostResponse => Ok(true),
            Fault::SlowDown => Err(injected("503 SlowDown (injected)")),
            Fault::Timeout => {
                tokio::time::sleep(HANG).await;
                Err(injected("request timed out (injected)"))
            }
            Fault::CutOff => {
                tokio::time::sleep(UNREACHABLE).await;
                Err(injected("store unreachable (injected partition)"))
            }
        }
    }

    fn with_sim_time(&self, mut meta: ObjectMeta) -> ObjectMeta {
        if let Some(ms) = self.shared.state().put_ms.get(&meta.location) {
            if let Some(t) = chrono::DateTime::from_timestamp_millis(*ms) {
                meta.last_modified = t;
            }
        }
        meta
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let lost = self.before(true).await?;
        let result = self.shared.bucket.put_opts(location, payload, opts).await?;
        {
            let now = proto::seams::Clock::now_ms(&SimClock {
                epoch_ms: crate::seams::SIM_EPOCH_MS,
            });
            let mut s = self.shared.state();
            s.put_ms.insert(location.clone(), now);
            s.stats.puts += 1;
        }
        if lost {
            return Err(injected("PUT stored but its answer was lost (injected)"));
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.before(false).await?;
        let inner = self
            .shared
            .bucket
            .put_multipart_opts(location, opts)
            .await?;
        Ok(Box::new(FaultyUpload {
            shared: self.shared.clone(),
            host: self.host.clone(),
            location: location.clone(),
            inner,
            failed_part: false,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.before(false).await?;
        self.shared.state().stats.gets += 1;
        let mut result = self.shared.bucket.get_opts(location, options).await?;
        result.meta = self.with_sim_time(result.meta);
        Ok(result)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let shared = self.shared.clone();
        let host = self.host.clone();
        locations
            .then(move |location| {
                let shared = shared.clone();
                let host = host.clone();
                async move {
                    let location = location?;
                    let handle = FaultyStore { shared, host };
                    handle.before(false).await?;
                    let mut one = handle
                        .shared
                        .bucket
                        .delete_stream(futures::stream::iter([Ok(location.clone())]).boxed());
                    while let Some(r) = one.next().await {
                        r?;
                    }
                    let mut s = handle.shared.state();
                    s.put_ms.remove(&location);
                    s.stats.deletes += 1;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let handle = FaultyStore {
            shared: self.shared.clone(),
            host: self.host.clone(),
        };
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            handle.before(false).await?;
            let mut items = Vec::new();
            let mut list = handle.shared.bucket.list(prefix.as_ref());
            while let Some(meta) = list.next().await {
                items.push(meta.map(|m| handle.with_sim_time(m)));
            }
            Ok::<_, object_store::Error>(futures::stream::iter(items))
        })
        .map(|r| match r {
            Ok(items) => items.boxed(),
            Err(e) => futures::stream::iter([Err(e)]).boxed(),
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.before(false).await?;
        let mut result = self.shared.bucket.list_with_delimiter(prefix).await?;
        result.objects = result
            .objects
            .into_iter()
            .map(|m| self.with_sim_time(m))
            .collect();
        Ok(result)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.before(false).await?;
        self.shared.bucket.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    /// With flaky parts, an upload either completes whole or leaves nothing.
    #[tokio::test(start_paused = true)]
    async fn multipart_uploads_fail_partially_but_never_half_exist() {
        let shared = SharedStore::new(7);
        shared.set_rates(FaultRates {
            slow_down: 0.15,
            timeout: 0.0,
            lost_put_response: 0.2,
            latency_ms: (1, 5),
        });
        let store = shared.handle("b1");
        let (mut whole, mut partial) = (0, 0);
        for i in 0..40 {
            let path = Path::from(format!("mp/{i}"));
            let Ok(mut upload) = store.put_multipart(&path).await else {
                continue;
            };
            let mut any_failed = false;
            for p in 0..4u8 {
                any_failed |= upload.put_part(PutPayload::from(vec![p; 8])).await.is_err();
            }
            let completed = upload.complete().await;
            // Checked in the bucket itself, past the faults.
            let exists = shared.bucket.head(&path).await.is_ok();
            if any_failed {
                partial += 1;
                assert!(
                    completed.is_err() && !exists,
                    "upload {i} with a failed part"
                );
            } else if exists {
                whole += 1;
                let body = shared
                    .bucket
                    .get(&path)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
                assert_eq!(body.len(), 32, "upload {i} is whole");
            } else {
                assert!(completed.is_err(), "upload {i}: no object but success");
            }
        }
        assert!(whole > 0 && partial > 0, "whole {whole}, partial {partial}");
    }
}
