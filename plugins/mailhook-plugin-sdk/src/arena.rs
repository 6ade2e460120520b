//! The plugin's memory allocator on `wasm32-unknown-unknown`: dlmalloc, as Rust's own
//! default there, but whose first region is a static arena inside the module's initial
//! memory instead of pages from `memory.grow`.
//!
//! Why: the host gives every call a fresh instance. With Rust's default allocator the first
//! allocation of every call grows the memory, and the host then makes the new pages
//! accessible (`mprotect`) and, after the call, inaccessible again: system calls that
//! interrupt every core to flush their TLBs, once or twice per event. With the arena, a
//! call that allocates less than [`ARENA_BYTES`] never grows its memory; one that needs more
//! still gets it, from `memory.grow`, up to the plugin's memory limit.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

use dlmalloc::{Allocator, Dlmalloc};

/// The arena: room for a call on an event of tens of KiB with room to spare, small enough
/// that the whole initial memory (256 KiB stack, data, arena) stays in the part of the
/// memory the host resets in place between calls.
pub const ARENA_BYTES: usize = 512 * 1024;
const WASM_PAGE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

// One thread: a wasm instance has no threads of its own.
unsafe impl Sync for Arena {}

/// Zeroed, so it lands in `.bss`: no bytes in the file, no copy at instantiation.
static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));

/// Where dlmalloc gets its regions: the arena first, then `memory.grow`.
struct Regions {
    arena_taken: UnsafeCell<bool>,
}

// dlmalloc asks for `Send`; there is one thread.
unsafe impl Send for Regions {}

unsafe impl Allocator for Regions {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        // SAFETY: one thread, and dlmalloc does not call back into itself here.
        let taken = unsafe { &mut *self.arena_taken.get() };
        if !*taken && size <= ARENA_BYTES {
            *taken = true;
            return (ARENA.0.get().cast(), ARENA_BYTES, 0);
        }
        let pages = size.div_ceil(WASM_PAGE);
        let previous = core::arch::wasm32::memory_grow(0, pages);
        if previous == usize::MAX {
            return (core::ptr::null_mut(), 0, 0);
        }
        ((previous * WASM_PAGE) as *mut u8, pages * WASM_PAGE, 0)
    }

    fn remap(&self, _ptr: *mut u8, _old: usize, _new: usize, _can_move: bool) -> *mut u8 {
        core::ptr::null_mut()
    }

    fn free_part(&self, _ptr: *mut u8, _old: usize, _new: usize) -> bool {
        false
    }

    fn free(&self, _ptr: *mut u8, _size: usize) -> bool {
        false
    }

    fn can_release_part(&self, _flags: u32) -> bool {
        false
    }

    fn allocates_zeros(&self) -> bool {
        // The arena is zeroed `.bss` in a fresh instance, and grown pages are zero.
        true
    }

    fn page_size(&self) -> usize {
        WASM_PAGE
    }
}

struct Global(UnsafeCell<Dlmalloc<Regions>>);

// One thread.
unsafe impl Sync for Global {}

unsafe impl GlobalAlloc for Global {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).malloc(layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).calloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { (*self.0.get()).free(ptr, layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { (*self.0.get()).realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}

#[global_allocator]
static GLOBAL: Global = Global(UnsafeCell::new(Dlmalloc::new_with_allocator(Regions {
    arena_taken: UnsafeCell::new(false),
})));
