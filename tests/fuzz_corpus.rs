//! Replays the fuzzers' seeds and every crasher they found (`fuzz/seeds`, `fuzz/regressions`)
//! through the same entry points, so CI checks them without fuzzing for long.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for folder in ["seeds", "regressions"] {
        let dir = root.join(folder).join(target);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{} panics in the {target} target", path.display());
            n += 1;
        }
    }
    assert!(n > 0, "no inputs for the {target} target");
}

#[test]
fn decode_inputs_never_panic() {
    replay("decode", vigil::fuzz_targets::decode);
}

#[test]
fn mqtt_payloads_never_panic() {
    replay("mqtt_payload", vigil::fuzz_targets::mqtt_payload);
}

#[test]
fn camera_buffers_never_panic() {
    replay("camera_buffer", vigil::fuzz_targets::camera_buffer);
}

#[test]
fn configs_never_panic() {
    replay("config", vigil::fuzz_targets::config);
}

#[test]
fn manifests_never_panic() {
    replay("manifest", vigil::fuzz_targets::manifest);
}

#[test]
fn the_698_byte_jpeg_declaring_42_megapixels_that_the_fuzzer_found_is_refused_as_a_bomb() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions/decode/timeout-progressive-jpeg-8224x5120-in-698-bytes");
    let bytes = std::fs::read(path).unwrap();
    match vigil_model::preprocess::decode(&bytes) {
        Err(vigil_model::preprocess::PreprocessError::TooLarge(why)) => assert!(why.contains("8224x5120"), "{why}"),
        other => panic!("decoded or refused for another reason: {:?}", other.map(|i| (i.width(), i.height()))),
    }
}
