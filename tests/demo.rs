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

#[test]
fn the_demo_with_page_serves_the_operators_page_on_loopback_and_prints_its_address() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "demo",
            "--page",
            "--frames",
            "8",
            "--interval",
            "20ms",
            "--engine",
            "tract",
            "--out",
            out.to_str().unwrap(),
        ])
        .env_remove("VIGIL_LOG")
        .env_remove("ORT_DYLIB_PATH")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The address is printed before the frames; the demo keeps running after the eighth.
    let (mut port, mut frames) = (None, 0);
    let mut summary = false;
    while port.is_none() || frames < 8 || !summary {
        let line = rx.recv_timeout(crate::daemon::WAIT).expect("the demo's page line and 8 frame lines");
        if let Some(rest) = line.strip_prefix("the page: http://127.0.0.1:") {
            port = Some(rest.split('/').next().unwrap().parse::<u16>().unwrap());
            assert!(line.contains("http-token"), "it says where the token is: {line}");
        }
        frames += usize::from(line.contains("frame-0"));
        summary |= line.starts_with("| frames | anomalies |");
    }
    let port = port.unwrap();
    let (status, page) = crate::common::mosquitto::http_get(port, "/");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("demo-cam") && page.contains("id=\"viewer\""), "{page}");
    let (_, state) = crate::common::mosquitto::http_get(port, "/api/state");
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(
        state["cameras"][0]["counters"]["normal"].as_u64().unwrap()
            + state["cameras"][0]["counters"]["anomalous"].as_u64().unwrap(),
        8
    );
    assert!(child.try_wait().unwrap().is_none(), "the demo keeps serving after its frames");
    child.kill().unwrap();
    child.wait().unwrap();
}
