//! The filters' memory allocator: size classes with free lists in front of
//! the standard one.
//!
//! A filter allocates a few dozen small blocks per request (header values,
//! claims, the strings the host hands over) and frees them all before the
//! request ends. The standard allocator on `wasm32-wasip2` is wasi-libc's
//! dlmalloc, which spends a few hundred instructions on each allocation and
//! free; here a small block is a free-list pop or push, a few dozen. Blocks
//! of up to 1 KiB come in seven power-of-two classes; a freed block goes onto
//! its class's list, so it serves the next request, until the lists hold
//! [`MAX_IDLE_BYTES`]; past that, freed blocks go back to dlmalloc. So a
//! reused instance's heap is at most that much larger than with dlmalloc
//! alone, besides small blocks being rounded up to their class's size.
//! Larger blocks go straight to dlmalloc.
//!
//! A component runs one thread, so the lists need no lock. The SDK installs
//! this as the global allocator in `wasm32` builds with its default
//! `allocator` feature; a filter that brings its own turns the feature off.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ptr;

/// The smallest class: 16 bytes, enough for a free-list link. Every block
/// is 16-byte aligned, the most any primitive needs.
const MIN_CLASS_SHIFT: u32 = 4;
const BLOCK_ALIGN: usize = 1 << MIN_CLASS_SHIFT;
/// Blocks larger than this, or aligned more than `BLOCK_ALIGN`, go to the
/// backing allocator.
const MAX_SMALL: usize = 1024;
const CLASSES: usize = (MAX_SMALL.trailing_zeros() - MIN_CLASS_SHIFT + 1) as usize;
/// The most the free lists hold, in bytes: several busy requests' worth.
pub const MAX_IDLE_BYTES: usize = 256 * 1024;

/// A size-class allocator over `B` (the standard allocator in a filter).
pub struct SizeClasses<B: GlobalAlloc = System> {
    state: UnsafeCell<State>,
    backing: B,
}

/// The first free block of each class (a free block's first word links to
/// the next), and the bytes all the lists hold.
struct State {
    free: [*mut u8; CLASSES],
    idle_bytes: usize,
}

// Safety: a component instance without the threads proposal runs one
// thread. (Elsewhere the type is not `Sync`, so it cannot be a global
// allocator; the native tests use one from a single thread.)
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<B: GlobalAlloc + Sync> Sync for SizeClasses<B> {}

impl SizeClasses<System> {
    pub const fn new() -> Self {
        Self::over(System)
    }
}

impl Default for SizeClasses<System> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: GlobalAlloc> SizeClasses<B> {
    pub const fn over(backing: B) -> Self {
        let state = State { free: [ptr::null_mut(); CLASSES], idle_bytes: 0 };
        Self { state: UnsafeCell::new(state), backing }
    }

    /// The class of a layout, or `None` for one the backing allocator serves.
    fn class(layout: Layout) -> Option<usize> {
        let size = layout.size();
        if size > MAX_SMALL || layout.align() > BLOCK_ALIGN {
            return None;
        }
        let rounded = size.max(BLOCK_ALIGN).next_power_of_two();
        Some((rounded.trailing_zeros() - MIN_CLASS_SHIFT) as usize)
    }

    /// The layout of every block of `class`.
    fn block_layout(class: usize) -> Layout {
        let size = 1usize << (class as u32 + MIN_CLASS_SHIFT);
        // Safety: a power of two up to MAX_SMALL, aligned to BLOCK_ALIGN.
        unsafe { Layout::from_size_align_unchecked(size, BLOCK_ALIGN) }
    }
}

unsafe impl<B: GlobalAlloc> GlobalAlloc for SizeClasses<B> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = Self::class(layout) else {
            return unsafe { self.backing.alloc(layout) };
        };
        // Safety: one thread, and no reference to the state outlives a call.
        let state = unsafe { &mut *self.state.get() };
        let block = state.free[class];
        if block.is_null() {
            // A class's first blocks come from the backing allocator one at a
            // time (not in chunks): a fresh instance's heap then grows page
            // by page as before, and the pooling allocator's reset pays for
            // every page it grows.
            return unsafe { self.backing.alloc(Self::block_layout(class)) };
        }
        // Safety: a free block holds the link to the next one.
        state.free[class] = unsafe { *block.cast::<*mut u8>() };
        state.idle_bytes -= Self::block_layout(class).size();
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = Self::class(layout) else {
            return unsafe { self.backing.dealloc(block, layout) };
        };
        let size = Self::block_layout(class).size();
        let state = unsafe { &mut *self.state.get() };
        if state.idle_bytes + size > MAX_IDLE_BYTES {
            return unsafe { self.backing.dealloc(block, Self::block_layout(class)) };
        }
        // Safety: the block is at least 16 bytes and aligned for a pointer.
        unsafe { *block.cast::<*mut u8>() = state.free[class] };
        state.free[class] = block;
        state.idle_bytes += size;
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Safety: the caller guarantees `new_size` with this alignment is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (Self::class(layout), Self::class(new_layout)) {
            // The new size is in the same class: the block already fits it.
            (Some(old), Some(new)) if old == new => block,
            (None, None) => unsafe { self.backing.realloc(block, layout, new_size) },
            _ => {
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    /// The system allocator, counting the bytes it has handed out.
    struct Counting {
        held: Cell<usize>,
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.held.set(self.held.get() + layout.size());
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
            self.held.set(self.held.get() - layout.size());
            unsafe { System.dealloc(block, layout) }
        }
    }

    #[test]
    fn sizes_map_to_power_of_two_classes() {
        let class = SizeClasses::<System>::class;
        assert_eq!(class(layout(0, 1)), Some(0));
        assert_eq!(class(layout(1, 1)), Some(0));
        assert_eq!(class(layout(16, 8)), Some(0));
        assert_eq!(class(layout(17, 1)), Some(1));
        assert_eq!(class(layout(8, 32)), None, "over-aligned blocks go to the backing allocator");
        assert_eq!(class(layout(1024, 1)), Some(CLASSES - 1));
        assert_eq!(class(layout(1025, 1)), None);
    }

    #[test]
    fn blocks_are_aligned_and_distinct() {
        let heap = SizeClasses::new();
        unsafe {
            let sizes = [1, 7, 16, 24, 100, 255, 1000, 1024, 4096, 70_000];
            let blocks: Vec<(*mut u8, Layout)> = (sizes.iter())
                .enumerate()
                .map(|(i, &size)| {
                    let l = layout(size, if i % 3 == 0 { 32 } else { 8 });
                    let block = heap.alloc(l);
                    assert!(!block.is_null());
                    assert_eq!(block as usize % l.align(), 0, "size {size}");
                    ptr::write_bytes(block, i as u8, size);
                    (block, l)
                })
                .collect();
            // No block was handed out twice: each still holds its own bytes.
            for (i, (block, l)) in blocks.iter().enumerate() {
                assert!((0..l.size()).all(|at| *block.add(at) == i as u8), "block {i} was overwritten");
            }
            blocks.into_iter().for_each(|(block, l)| heap.dealloc(block, l));
        }
    }

    #[test]
    fn freed_blocks_serve_their_class_again_and_only_once() {
        let heap = SizeClasses::new();
        let small = layout(40, 8);
        unsafe {
            let mut first: Vec<*mut u8> = (0..8).map(|_| heap.alloc(small)).collect();
            first.iter().for_each(|&b| heap.dealloc(b, small));
            // Another class does not take them.
            let other = heap.alloc(layout(100, 8));
            assert!(!first.contains(&other));
            let mut again: Vec<*mut u8> = (0..8).map(|_| heap.alloc(small)).collect();
            let fresh = heap.alloc(small);
            assert!(!first.contains(&fresh) && !again.contains(&fresh), "the ninth block is a new one");
            first.sort();
            again.sort();
            assert_eq!(first, again, "the eight freed blocks, each handed out once");
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_even_when_reused() {
        let heap = SizeClasses::new();
        let l = layout(64, 8);
        unsafe {
            let dirty = heap.alloc(l);
            ptr::write_bytes(dirty, 0xAB, 64);
            heap.dealloc(dirty, l);
            let zeroed = heap.alloc_zeroed(l);
            assert_eq!(zeroed, dirty);
            assert!((0..64).all(|at| *zeroed.add(at) == 0));
        }
    }

    #[test]
    fn realloc_keeps_the_contents_between_classes_and_the_backing_allocator() {
        let heap = SizeClasses::new();
        unsafe {
            let mut size = 5;
            let mut block = heap.alloc(layout(size, 8));
            for new_size in [12, 16, 200, 1024, 9000, 20_000, 600, 50, 3] {
                (0..size).for_each(|at| *block.add(at) = (at % 251) as u8);
                block = heap.realloc(block, layout(size, 8), new_size);
                assert!(!block.is_null());
                let kept = size.min(new_size);
                assert!((0..kept).all(|at| *block.add(at) == (at % 251) as u8), "{size} to {new_size} bytes");
                size = new_size;
            }
            heap.dealloc(block, layout(size, 8));
        }
    }

    #[test]
    fn the_free_lists_hold_at_most_max_idle_bytes() {
        let heap = SizeClasses::over(Counting { held: Cell::new(0) });
        let held = || heap.backing.held.get();
        let small = layout(32, 8);
        unsafe {
            let blocks: Vec<*mut u8> = (0..2 * MAX_IDLE_BYTES / 32).map(|_| heap.alloc(small)).collect();
            assert_eq!(held(), 2 * MAX_IDLE_BYTES);
            blocks.into_iter().for_each(|b| heap.dealloc(b, small));
            assert_eq!(held(), MAX_IDLE_BYTES, "the lists keep MAX_IDLE_BYTES, the rest went back");
            // The kept blocks serve the next allocations without the backing allocator.
            let again: Vec<*mut u8> = (0..MAX_IDLE_BYTES / 32).map(|_| heap.alloc(small)).collect();
            assert_eq!(held(), MAX_IDLE_BYTES);
            again.into_iter().for_each(|b| heap.dealloc(b, small));
        }
    }
}
