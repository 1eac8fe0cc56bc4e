//! The allocator's part in bounded memory: glibc serves a large buffer
//! from its heap once a buffer of that size has been freed (its mmap
//! threshold grows up to 32 MB), and heap memory is rarely given back.
//! One 10 MB message would then keep tens of MB resident for good. A
//! fixed threshold of 1 MB keeps every buffer of 1 MB and more (large
//! messages, request bodies, spool records) mapped on its own and returned
//! to the system when freed; small buffers are unaffected.

/// Buffers at least this large are mapped on their own.
pub const MMAP_THRESHOLD: usize = 1024 * 1024;

/// Sets the fixed mmap threshold (glibc only; elsewhere nothing to do).
pub fn release_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tunable of the allocator; it is safe to
    // call at any time from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}
