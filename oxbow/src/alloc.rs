//! The process allocator: the system allocator, except that very large
//! allocations are reserved lazily (anonymous `mmap` with `MAP_NORESERVE`).
//!
//! Why: the Kafka request decoder sizes each array from its wire count before
//! reading the elements (`Vec::with_capacity(count)`). A hostile count would
//! make the system allocator fail and abort the process. Reserved lazily, the
//! same request costs address space only; decoding then fails on the missing
//! bytes, the reservation is returned, and the connection is closed. Frames
//! are bounded (see `broker::kafka`), so what a request can really touch is
//! bounded too. Nothing in Oxbow legitimately allocates a gigabyte at once.

use std::alloc::{GlobalAlloc, Layout, System};

/// At and above this size an allocation is a lazy reservation.
const LAZY_FROM: usize = 1 << 30;
const PAGE: usize = 4096;

pub struct OxbowAllocator;

fn is_lazy(layout: &Layout) -> bool {
    layout.size() >= LAZY_FROM && layout.align() <= PAGE
}

unsafe fn reserve(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no
    // preconditions; failure is reported as MAP_FAILED and turned into null.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every pointer handed out comes either from `System` (and goes back
// to it) or from `reserve` (and goes back through `munmap` with the same
// size); which one is decided by the layout alone, identically on both sides.
unsafe impl GlobalAlloc for OxbowAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_lazy(&layout) {
            unsafe { reserve(layout.size()) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_lazy(&layout) {
            // Fresh anonymous pages are zero-filled.
            unsafe { reserve(layout.size()) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_lazy(&layout) {
            unsafe {
                libc::munmap(ptr.cast(), layout.size());
            }
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a
        // valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_lazy(&layout) && !is_lazy(&new_layout) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn absurd_capacity_is_a_lazy_reservation() {
        // 2^31 elements of 64 bytes: 128 GiB, far beyond this machine.
        let v: Vec<[u8; 64]> = Vec::with_capacity(1 << 31);
        assert!(v.capacity() >= 1 << 31);
        let mut small: Vec<u64> = Vec::with_capacity(8);
        small.push(1);
        assert_eq!(small[0], 1);
    }
}
