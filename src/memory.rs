//! Keeping the daemon's resident memory small on edge boxes: glibc's allocator gives every
//! thread that allocates its own arena and keeps freed memory, so a model load (protobuf
//! decoding, graph optimisation) or a burst of large frames would otherwise stay resident.

/// Limits glibc to two malloc arenas (the scoring threads share them; contention is
/// negligible next to decoding and inference). Call first thing in `main`.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed heap memory to the system (after a model load or reload).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}
