//! A global allocator wrapper that zeroes every block before it is freed, so a request's
//! plaintext does not outlive the request in freed heap memory (the tokenizer's and candle's
//! copies of a prompt, prompt pieces, output text, tensors of activations).
//!
//! `tandem-node` installs `ZeroOnFree<System>` as its global allocator. Nothing else changes:
//! allocation is the wrapped allocator's; only `dealloc` (and the old block of a `realloc`)
//! is zeroed first. A `realloc` is always done as allocate, copy, zero the old block, free it,
//! so the wrapped allocator never moves or shrinks a block behind our back (a libc `realloc`
//! would free the old block unzeroed). Measured cost: BENCHMARKS.md, "zeroing allocator".
//!
//! Why not a crate: the candidates either zero only their own types (`zeroize`,
//! `secrecy`: the copies inside candle and tokenizers are not theirs) or replace the whole
//! allocator (hardened allocators with free-time zeroing options). This is ~40 lines over the
//! system allocator, and the only `unsafe` is the `GlobalAlloc` contract itself.
//!
//! Not covered: memory that is never freed while the process runs (caches: the tokenizer's
//! word cache is turned off in `tandem_model::Tokenizer`), stack frames, and copies outside the
//! process (kernel socket buffers hold only sealed bytes).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};

/// Wraps allocator `A`; zeroes each block before `A` frees it.
#[derive(Debug, Default, Clone, Copy)]
pub struct ZeroOnFree<A>(pub A);

/// Zeroes `len` bytes at `ptr` in a way the compiler cannot drop as dead stores.
///
/// # Safety
/// `ptr..ptr + len` must be writable memory owned by the caller.
#[inline]
unsafe fn zero(ptr: *mut u8, len: usize) {
    // SAFETY: the caller owns `len` writable bytes at `ptr`.
    unsafe { std::ptr::write_bytes(ptr, 0, len) };
    // The block is freed right after; LLVM removes stores to memory that is about to be freed.
    // An (empty) asm block that is given the pointer and may read any memory keeps them.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    // SAFETY: an empty asm block: it reads nothing, writes nothing, and keeps the stack.
    unsafe {
        std::arch::asm!("/* {0} */", in(reg) ptr, options(nostack, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    std::hint::black_box(ptr);
}

// SAFETY: every method forwards to `A` with the same layouts `A` handed out; `dealloc` only
// writes inside the block being freed, and `realloc` is built from `A`'s own alloc/dealloc.
unsafe impl<A: GlobalAlloc> GlobalAlloc for ZeroOnFree<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's (valid, non-zero-size) layout.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is a live block of `layout.size()` bytes from `alloc` (caller contract).
        unsafe {
            zero(ptr, layout.size());
            self.0.dealloc(ptr, layout);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` is non-zero and, rounded up to the
        // alignment, does not overflow `isize` (the `realloc` contract), so this layout is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a fresh block from `A`; on success the old block is live and `min` bytes of
        // both are valid, they do not overlap, and the old block is then freed (zeroed) once.
        unsafe {
            let new = self.0.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    #[test]
    fn blocks_keep_their_contents_until_freed_and_realloc_keeps_the_prefix() {
        let a = ZeroOnFree(System);
        for (size, align) in [(1, 1), (24, 8), (4096, 64), (1 << 20, 16)] {
            let layout = Layout::from_size_align(size, align).unwrap_or_else(|_| unreachable!());
            // SAFETY: valid non-zero layouts; every pointer is used within its block and freed
            // once with the layout it was (re)allocated with.
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                std::ptr::write_bytes(p, 0xab, size);
                let bigger = a.realloc(p, layout, size * 2);
                assert!(!bigger.is_null());
                assert_eq!(bigger as usize % align, 0);
                assert!((0..size).all(|i| *bigger.add(i) == 0xab));
                let smaller = a.realloc(
                    bigger,
                    Layout::from_size_align_unchecked(size * 2, align),
                    size,
                );
                assert!((0..size).all(|i| *smaller.add(i) == 0xab));
                a.dealloc(smaller, layout);
            }
        }
    }
}
