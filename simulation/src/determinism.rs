//! Makes the operating system's randomness a function of the seed on the
//! thread that runs a simulation, so that everything seeded from it (std's
//! `HashMap` keys, tokio's and openraft's random number generators) repeats
//! with the seed. Every simulation runs on one thread (turmoil's), so the
//! override is per thread and runs on other threads are unaffected.
//!
//! It works by defining the C library's `getrandom` for the binary that links
//! this crate, as madsim does: callers on a seeded thread get the seeded
//! stream, everyone else the real system call.

use std::cell::Cell;

use crate::seams::splitmix64;

thread_local! {
    static STREAM: Cell<Option<u64>> = const { Cell::new(None) };
}

/// From now on, randomness on this thread comes from `seed`.
pub fn seed_this_thread(seed: u64) {
    STREAM.with(|s| s.set(Some(splitmix64(seed ^ 0x6E7D))));
}

/// Back to the operating system's randomness on this thread.
pub fn unseed_this_thread() {
    STREAM.with(|s| s.set(None));
}

/// The message of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

fn seeded_fill(buf: &mut [u8]) -> bool {
    STREAM
        .try_with(|s| {
            let Some(mut state) = s.get() else {
                return false;
            };
            for chunk in buf.chunks_mut(8) {
                state = splitmix64(state);
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            s.set(Some(state));
            true
        })
        .unwrap_or(false)
}

/// The C library's `getrandom(2)` wrapper, replaced for this binary.
///
/// # Safety
/// `buf` must be valid for writes of `buflen` bytes, as for the libc call.
#[no_mangle]
pub unsafe extern "C" fn getrandom(buf: *mut u8, buflen: usize, flags: u32) -> isize {
    if buf.is_null() {
        return -1;
    }
    // SAFETY: the caller promises `buf` is valid for `buflen` bytes.
    let slice = unsafe { std::slice::from_raw_parts_mut(buf, buflen) };
    if seeded_fill(slice) {
        return isize::try_from(buflen).unwrap_or(isize::MAX);
    }
    // SAFETY: the same arguments the caller gave, passed to the kernel.
    unsafe { libc::syscall(libc::SYS_getrandom, buf, buflen, flags) as isize }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    fn first_hash(seed: Option<u64>) -> u64 {
        std::thread::scope(|s| {
            #[allow(clippy::disallowed_methods)]
            s.spawn(move || {
                if let Some(seed) = seed {
                    seed_this_thread(seed);
                }
                let h = std::collections::hash_map::RandomState::new().hash_one("oxbow");
                unseed_this_thread();
                h
            })
            .join()
            .unwrap_or(0)
        })
    }

    #[test]
    fn hash_map_keys_follow_the_seed_on_a_seeded_thread() {
        assert_eq!(first_hash(Some(7)), first_hash(Some(7)));
        assert_ne!(first_hash(Some(7)), first_hash(Some(8)));
        // Unseeded threads still get real randomness.
        assert_ne!(first_hash(None), first_hash(None));
    }
}
