//! `vigil demo` as a newcomer runs it: no config, no broker, the built-in model.

use std::process::Command;

#[test]
fn the_demo_scores_synthetic_frames_and_reports_against_their_labels() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let run = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["demo", "--frames", "8", "--interval", "20ms", "--engine", "tract", "--out", out.to_str().unwrap()])
        .env_remove("VIGIL_LOG")
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    // A line per frame, then the summary table.
    for i in 0..8 {
        assert!(stdout.contains(&format!("frame-{i:04}-")), "frame {i} missing:\n{stdout}");
    }
    assert!(stdout.contains("| frames | anomalies |") && stdout.contains("| 8 |"), "{stdout}");
    assert!(stdout.contains(&out.display().to_string()), "the demo says where its output is");
    let decisions = std::fs::read_to_string(out.join("decisions.jsonl")).unwrap();
    assert_eq!(decisions.lines().count(), 8);
    // Every alert has its overlay as PNG.
    let alerts = std::fs::read_to_string(out.join("alerts.jsonl")).unwrap_or_default();
    let overlays = std::fs::read_dir(out.join("overlays")).unwrap().count();
    assert_eq!(overlays, alerts.lines().count());
    assert!(overlays >= 1, "the two defective frames should raise at least one alert:\n{stdout}");
}
