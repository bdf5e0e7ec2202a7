//! The simulation's wall clock, randomness and disk: deterministic functions
//! of the seed and of simulated time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use proto::seams::{Clock, Entropy, Seams};

use crate::net::TurmoilNet;

/// Wall time of the simulated world: a fixed epoch plus simulated time.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    pub epoch_ms: i64,
}

/// 2026-01-01T00:00:00Z: the simulated world's boot time.
pub const SIM_EPOCH_MS: i64 = 1_767_225_600_000;

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        let elapsed = turmoil::sim_elapsed().unwrap_or_default();
        self.epoch_ms
            .saturating_add(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
    }
}

/// splitmix64 over a counter: a stream of well-mixed numbers fixed by its
/// seed.
#[derive(Debug)]
pub struct SeededEntropy {
    state: AtomicU64,
}

impl SeededEntropy {
    pub fn new(seed: u64) -> Self {
        SeededEntropy {
            state: AtomicU64::new(seed),
        }
    }
}

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Entropy for SeededEntropy {
    fn next_u64(&self) -> u64 {
        let n = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        splitmix64(n)
    }
}

/// The seams of one simulated process, seeded by the run's seed and the
/// process's name (and incarnation, so a restarted process draws anew).
pub fn host_seams(seed: u64, host: &str, incarnation: u64) -> Seams {
    let mut h = seed ^ incarnation.wrapping_mul(0xA24B_AED4_963E_E407);
    for b in host.bytes() {
        h = splitmix64(h ^ u64::from(b));
    }
    Seams {
        net: Arc::new(TurmoilNet),
        clock: Arc::new(SimClock {
            epoch_ms: SIM_EPOCH_MS,
        }),
        entropy: Arc::new(SeededEntropy::new(h)),
    }
}

/// A disk for a controller's redb database that survives the controller's
/// crash the way a real one does: what was written but not yet synced is
/// lost when the process dies ([`SimDisk::crash`]). Unsynced writes are kept
/// as an undo log, so a sync costs nothing however large the file.
#[derive(Debug, Default)]
pub struct SimDisk {
    inner: Mutex<DiskState>,
}

#[derive(Debug, Default)]
struct DiskState {
    /// What a reader sees now.
    current: Vec<u8>,
    /// How to get back to the last synced image, newest last: the length
    /// before a change and the bytes it overwrote.
    undo: Vec<Undo>,
    syncs: u64,
}

#[derive(Debug)]
struct Undo {
    len: usize,
    offset: usize,
    old: Vec<u8>,
}

impl SimDisk {
    pub fn new() -> Arc<SimDisk> {
        Arc::new(SimDisk::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process died: unsynced writes are gone.
    pub fn crash(&self) {
        let mut s = self.state();
        while let Some(u) = s.undo.pop() {
            let end = u.offset + u.old.len();
            if s.current.len() < end {
                s.current.resize(end, 0);
            }
            s.current[u.offset..end].copy_from_slice(&u.old);
            s.current.resize(u.len, 0);
        }
    }

    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }
}

impl DiskState {
    /// Records what `[offset, offset + n)` holds before it changes.
    fn remember(&mut self, offset: usize, n: usize) {
        let len = self.current.len();
        let start = offset.min(len);
        let end = offset.saturating_add(n).min(len);
        self.undo.push(Undo {
            len,
            offset: start,
            old: self.current[start..end].to_vec(),
        });
    }
}

impl redb::StorageBackend for SimDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.state().current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let s = self.state();
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(out.len()).ok_or_else(eof)?;
        let src = s.current.get(start..end).ok_or_else(eof)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let len = usize::try_from(len).map_err(|_| eof())?;
        let mut s = self.state();
        let cur = s.current.len();
        if len < cur {
            s.remember(len, cur - len);
        } else {
            s.remember(cur, 0);
        }
        s.current.resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut s = self.state();
        s.undo.clear();
        s.syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut s = self.state();
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(data.len()).ok_or_else(eof)?;
        s.remember(start, data.len());
        if s.current.len() < end {
            s.current.resize(end, 0);
        }
        s.current[start..end].copy_from_slice(data);
        Ok(())
    }
}

fn eof() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::UnexpectedEof)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    fn bytes(d: &SimDisk) -> Vec<u8> {
        let mut out = vec![0; d.len().unwrap_or(0) as usize];
        d.read(0, &mut out).expect("read");
        out
    }

    #[test]
    fn a_crash_keeps_exactly_what_was_synced() {
        let d = SimDisk::default();
        d.write(0, b"hello").expect("write");
        d.sync_data().expect("sync");
        d.write(3, b"p!!!").expect("write");
        d.set_len(4).expect("truncate");
        d.write(10, b"x").expect("write past the end");
        assert_eq!(bytes(&d).len(), 11);
        d.crash();
        assert_eq!(bytes(&d), b"hello");
        d.write(5, b" world").expect("write");
        d.sync_data().expect("sync");
        d.crash();
        assert_eq!(bytes(&d), b"hello world");
    }
}
