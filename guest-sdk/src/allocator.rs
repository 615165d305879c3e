//! The filters' memory allocator: size classes with free lists in front of
//! the standard one.
//!
//! A filter allocates a few dozen small blocks per request (header values,
//! claims, the strings the host hands over) and frees them all before the
//! request ends. The standard allocator on `wasm32-wasip2` is wasi-libc's
//! dlmalloc, which spends a few hundred instructions on each allocation and
//! free; here a small block is a free-list pop or push, a few dozen. Blocks
//! of up to 1 KiB come in seven power-of-two classes; a freed block goes onto
//! its class's list, never back to dlmalloc, so it serves the next request.
//! (A reused instance's memory stays as large as its busiest request made
//! it, which the chain entry's memory cap bounds.) Larger blocks go straight
//! to dlmalloc.
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

/// A size-class allocator over `B` (the standard allocator in a filter).
pub struct SizeClasses<B: GlobalAlloc = System> {
    state: UnsafeCell<State>,
    backing: B,
}

/// The first free block of each class; a free block's first word links to
/// the next.
struct State {
    free: [*mut u8; CLASSES],
}

// Safety: a component instance runs one thread, and the native tests use an
// allocator from one thread only.
unsafe impl<B: GlobalAlloc> Sync for SizeClasses<B> {}

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
        let state = State { free: [ptr::null_mut(); CLASSES] };
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
            // time (not in chunks): a fresh instance's heap then grows no
            // more than it would without this allocator, and the pooling
            // allocator's reset pays for every page it grows.
            return unsafe { self.backing.alloc(Self::block_layout(class)) };
        }
        // Safety: a free block holds the link to the next one.
        state.free[class] = unsafe { *block.cast::<*mut u8>() };
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = Self::class(layout) else {
            return unsafe { self.backing.dealloc(block, layout) };
        };
        let state = unsafe { &mut *self.state.get() };
        // Safety: the block is at least 16 bytes and aligned for a pointer.
        unsafe { *block.cast::<*mut u8>() = state.free[class] };
        state.free[class] = block;
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Safety: the caller guarantees `new_size` with this alignment is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (Self::class(layout), Self::class(new_layout)) {
            // The block already has room (or is only a little too big).
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

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn sizes_map_to_power_of_two_classes() {
        let class = SizeClasses::<System>::class;
        assert_eq!(class(layout(1, 1)), Some(0));
        assert_eq!(class(layout(16, 8)), Some(0));
        assert_eq!(class(layout(17, 1)), Some(1));
        assert_eq!(class(layout(8, 32)), None, "over-aligned blocks go to the backing allocator");
        assert_eq!(class(layout(1024, 1)), Some(CLASSES - 1));
        assert_eq!(class(layout(1025, 1)), None);
    }

    #[test]
    fn blocks_are_aligned_distinct_and_reused_after_free() {
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
            let (small, small_layout) = blocks[4];
            for (block, l) in blocks {
                heap.dealloc(block, l);
            }
            assert_eq!(heap.alloc(small_layout), small, "a freed block serves the next request of its class");
        }
    }

    #[test]
    fn realloc_keeps_the_contents_across_classes_and_to_the_backing_allocator() {
        let heap = SizeClasses::new();
        unsafe {
            let mut size = 3;
            let mut block = heap.alloc(layout(size, 1));
            ptr::copy_nonoverlapping(b"abc".as_ptr(), block, 3);
            for new_size in [10, 200, 1024, 9000, 20_000, 50] {
                block = heap.realloc(block, layout(size, 1), new_size);
                assert!(!block.is_null());
                assert_eq!(std::slice::from_raw_parts(block, 3), b"abc", "after growing to {new_size}");
                size = new_size;
            }
            heap.dealloc(block, layout(size, 1));
        }
    }

    #[test]
    fn many_blocks_are_distinct() {
        let heap = SizeClasses::new();
        let l = layout(MAX_SMALL, 8);
        unsafe {
            let blocks: Vec<*mut u8> = (0..64).map(|_| heap.alloc(l)).collect();
            let mut sorted = blocks.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), blocks.len(), "every block is distinct");
            assert!(sorted.windows(2).all(|w| w[1] as usize - w[0] as usize >= MAX_SMALL), "blocks do not overlap");
            blocks.into_iter().for_each(|b| heap.dealloc(b, l));
        }
    }
}
