//! Fuzz target: see `vigil::fuzz_targets::camera_buffer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vigil::fuzz_targets::camera_buffer(data));
