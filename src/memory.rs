//! Keeping the daemon's resident memory small on edge boxes: glibc's allocator keeps freed
//! memory, so what a model load (protobuf decoding, graph optimisation) or a burst of frames
//! used would otherwise stay resident. (Fewer malloc arenas were tried too: the threads then
//! fragment a shared heap, and a 10,000-file burst peaked at 120–200 MiB instead of 65.)

/// Returns freed heap memory to the system (after a model load or reload).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}
