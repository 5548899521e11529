//! A global allocator for one-shot plugin processes.
//!
//! A CNI plugin process lives for one ADD, DEL or CHECK and allocates a few hundred small
//! blocks. [`OneShotArena`] hands them out of a fixed region of zeroed static memory (`.bss`,
//! so only the pages actually used are ever faulted in) by bumping an offset, and frees
//! nothing except the most recent block, which lets a growing `Vec` or `String` extend in
//! place. The kernel takes the whole region back at exit. Compared with the C library's
//! allocator this saves its set-up, its `brk`/`mmap` calls and the `munmap` storms of some
//! allocators (musl's), which `scripts/bench ipam` showed as a fifth of a plugin's time.
//!
//! Nothing is lost when the region runs out: larger or later requests go to the system
//! allocator (the etcd client's connection, for one), and a block is returned to whichever
//! allocator it came from. Not for long-running processes: freed arena blocks are not reused.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes of static memory the arena serves from. Untouched pages cost nothing.
pub const ARENA_BYTES: usize = 4 << 20;

#[repr(C, align(4096))]
struct Region(UnsafeCell<[u8; ARENA_BYTES]>);

// SAFETY: the bytes are only reached through pointers handed out by `OneShotArena`, whose
// ranges never overlap: each is claimed by one successful compare-exchange of `used`.
unsafe impl Sync for Region {}

/// Bump allocator over a static region, falling back to [`System`]. Install it with
/// `#[global_allocator] static ALLOC: OneShotArena = OneShotArena::new();`.
pub struct OneShotArena {
    region: Region,
    /// Offset of the first free byte in `region`.
    used: AtomicUsize,
}

impl OneShotArena {
    pub const fn new() -> Self {
        OneShotArena {
            region: Region(UnsafeCell::new([0; ARENA_BYTES])),
            used: AtomicUsize::new(0),
        }
    }

    fn base(&self) -> usize {
        self.region.0.get() as usize
    }

    /// The arena offset of `ptr`, or None when the system allocator handed it out.
    fn offset_of(&self, ptr: *mut u8) -> Option<usize> {
        let addr = ptr as usize;
        let base = self.base();
        (addr >= base && addr < base + ARENA_BYTES).then(|| addr - base)
    }

    /// Bytes handed out so far.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Claims `layout` from the region, or None when it does not fit.
    fn claim(&self, layout: Layout) -> Option<*mut u8> {
        let base = self.base();
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let start = (base + used).checked_next_multiple_of(layout.align())? - base;
            let end = start.checked_add(layout.size())?;
            if end > ARENA_BYTES {
                return None;
            }
            match self
                .used
                .compare_exchange_weak(used, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some((base + start) as *mut u8),
                Err(now) => used = now,
            }
        }
    }
}

impl Default for OneShotArena {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: `claim` returns disjoint, suitably aligned ranges inside the region; blocks from the
// region are never passed to `System`, and blocks from `System` never treated as the region's.
unsafe impl GlobalAlloc for OneShotArena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.claim(layout) {
            Some(ptr) => ptr,
            // SAFETY: the caller's layout has a non-zero size, as GlobalAlloc requires.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.claim(layout) {
            // SAFETY: the claimed range is ours alone and `layout.size()` long. It is zero
            // unless an earlier, since freed, block used it; clearing it is then required.
            Some(ptr) => unsafe {
                ptr.write_bytes(0, layout.size());
                ptr
            },
            // SAFETY: as in `alloc`.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match self.offset_of(ptr) {
            // Only the most recent block goes back, so that a freed tail is reused.
            Some(start) => {
                let _ = self.used.compare_exchange(
                    start + layout.size(),
                    start,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            // SAFETY: the block came from `System` with this layout.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(start) = self.offset_of(ptr) else {
            // SAFETY: the block came from `System` with this layout; the caller upholds the
            // rest of realloc's contract.
            return unsafe { System.realloc(ptr, layout, new_size) };
        };
        // The most recent block grows or shrinks in place when the region has room; any
        // other block shrinks in place.
        let end = start + layout.size();
        if let Some(new_end) = start.checked_add(new_size)
            && new_end <= ARENA_BYTES
            && self
                .used
                .compare_exchange(end, new_end, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return ptr;
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // A region block that must grow moves: a new block (from the region or the system),
        // the contents copied, the old block freed.
        // SAFETY: `layout.align()` is valid and `new_size` is non-zero, as realloc requires.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as in `alloc`.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not overlap (the new
            // one was claimed after the old one, or comes from the system).
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
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn blocks_are_aligned_disjoint_and_the_last_one_is_reused() {
        static ARENA: OneShotArena = OneShotArena::new();
        let arena = &ARENA;
        // SAFETY: every pointer is one this arena just returned, used within the size and
        // layout it was allocated with and freed with that same layout.
        unsafe {
            let a = arena.alloc(layout(3, 1));
            let b = arena.alloc(layout(16, 64));
            assert_eq!(b as usize % 64, 0);
            assert!(b as usize >= a as usize + 3);
            b.write_bytes(0xab, 16);
            assert_eq!(*a, 0, "b's writes did not reach a");
            let used = arena.used();
            arena.dealloc(b, layout(16, 64));
            assert!(arena.used() < used, "the most recent block was given back");
            // A block that is not the most recent stays claimed.
            let c = arena.alloc(layout(8, 8));
            let d = arena.alloc(layout(8, 8));
            let used = arena.used();
            arena.dealloc(c, layout(8, 8));
            assert_eq!(arena.used(), used);
            arena.dealloc(d, layout(8, 8));
        }
    }

    #[test]
    fn the_most_recent_block_grows_in_place_and_others_move_with_their_contents() {
        static ARENA: OneShotArena = OneShotArena::new();
        let arena = &ARENA;
        // SAFETY: every pointer is one this arena just returned, used within the size and
        // layout it was allocated with and freed with that same layout.
        unsafe {
            let a = arena.alloc(layout(4, 1));
            a.copy_from_nonoverlapping(b"abcd".as_ptr(), 4);
            let grown = arena.realloc(a, layout(4, 1), 1000);
            assert_eq!(grown, a, "the last block grows where it is");
            let b = arena.alloc(layout(4, 1));
            let moved = arena.realloc(a, layout(1000, 1), 2000);
            assert_ne!(moved, a);
            assert_eq!(std::slice::from_raw_parts(moved, 4), b"abcd");
            assert!(moved as usize > b as usize);
        }
    }

    #[test]
    fn what_does_not_fit_comes_from_the_system_and_goes_back_there() {
        static ARENA: OneShotArena = OneShotArena::new();
        let arena = &ARENA;
        // SAFETY: every pointer is one this arena just returned, used within the size and
        // layout it was allocated with and freed with that same layout.
        unsafe {
            let big = arena.alloc(layout(ARENA_BYTES + 1, 8));
            assert!(!big.is_null());
            assert!(arena.offset_of(big).is_none());
            assert_eq!(arena.used(), 0);
            big.write_bytes(1, ARENA_BYTES + 1);
            arena.dealloc(big, layout(ARENA_BYTES + 1, 8));
            // A region block that outgrows the region moves to the system with its bytes.
            let a = arena.alloc(layout(8, 8));
            a.copy_from_nonoverlapping(b"12345678".as_ptr(), 8);
            let _pin = arena.alloc(layout(8, 8));
            let moved = arena.realloc(a, layout(8, 8), ARENA_BYTES);
            assert!(arena.offset_of(moved).is_none());
            assert_eq!(std::slice::from_raw_parts(moved, 8), b"12345678");
            // A system block stays with the system when it grows, bytes and all.
            let used = arena.used();
            let grown = arena.realloc(moved, layout(ARENA_BYTES, 8), ARENA_BYTES + 64);
            assert!(arena.offset_of(grown).is_none());
            assert_eq!(arena.used(), used, "nothing was claimed from the region");
            assert_eq!(std::slice::from_raw_parts(grown, 8), b"12345678");
            arena.dealloc(grown, layout(ARENA_BYTES + 64, 8));
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_even_where_a_freed_block_wrote() {
        static ARENA: OneShotArena = OneShotArena::new();
        let arena = &ARENA;
        // SAFETY: every pointer is one this arena just returned, used within the size and
        // layout it was allocated with and freed with that same layout.
        unsafe {
            let a = arena.alloc(layout(64, 8));
            a.write_bytes(0xff, 64);
            arena.dealloc(a, layout(64, 8));
            let z = arena.alloc_zeroed(layout(64, 8));
            assert_eq!(z, a, "the freed tail is reused");
            assert!(std::slice::from_raw_parts(z, 64).iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn threads_never_get_overlapping_blocks() {
        static ARENA: OneShotArena = OneShotArena::new();
        let arena = &ARENA;
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut blocks = Vec::new();
                    for _ in 0..2000 {
                        // SAFETY: p is a fresh 24-byte block from the arena, written in bounds.
                        unsafe {
                            let p = arena.alloc(layout(24, 8));
                            p.write_bytes(t + 1, 24);
                            blocks.push(p as usize);
                        }
                    }
                    (t, blocks)
                })
            })
            .collect();
        for h in handles {
            let (t, blocks) = h.join().unwrap();
            for p in blocks {
                // SAFETY: each block is 24 initialised bytes that are never freed.
                let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, 24) };
                assert!(
                    bytes.iter().all(|&b| b == t + 1),
                    "block written by another thread"
                );
            }
        }
    }
}
