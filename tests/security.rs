//! Security: no silent plaintext to a remote broker, no plaintext fallback when TLS fails,
//! the systemd unit's sandbox, and an HTTP listener that slow clients cannot take away.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::mosquitto::{Mosquitto, Subscriber, metric};
use crate::daemon::{Daemon, Plant};

fn mqtt_problems(mqtt: &str) -> Vec<String> {
    let text = format!(
        "device_id = \"box1\"\n{mqtt}\n[[cameras]]\nid = \"c\"\nbundle = \"models/surface-dae\"\nsource = {{ type = \"folder\", path = \"/tmp\" }}\n"
    );
    let (config, problems) = vigil::config::parse_str(&text);
    assert!(problems.is_empty(), "{problems:?}");
    config.unwrap().validate().into_iter().filter(|p| p.key.starts_with("mqtt")).map(|p| p.to_string()).collect()
}

#[test]
fn plain_tcp_to_another_machine_is_refused_unless_asked_for() {
    let remote = mqtt_problems("[mqtt]\nhost = \"broker.factory.example\"");
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert!(remote[0].contains("mqtt.tls") && remote[0].contains("plaintext = true"), "{remote:?}");
    assert!(mqtt_problems("[mqtt]\nhost = \"broker.factory.example\"\nplaintext = true").is_empty());
    assert!(mqtt_problems("[mqtt]\nhost = \"127.0.0.1\"").is_empty());
    assert!(mqtt_problems("[mqtt]\nhost = \"localhost\"").is_empty());
    assert!(mqtt_problems("[mqtt]\nhost = \"::1\"").is_empty());
}

#[test]
fn a_tls_config_never_falls_back_to_plain_tcp() {
    // The broker speaks plain MQTT only; vigil is configured for TLS to it.
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "#");
    crate::daemon::certificates(plant.dir.path());
    let cfg = plant.config(&format!(
        "[mqtt]\nhost = \"localhost\"\nport = {}\nmax_backoff = \"1s\"\n[mqtt.tls]\nca_file = \"{}\"\n{}",
        broker.port,
        plant.dir.path().join("ca.pem").display(),
        plant.folder_camera("")
    ));
    let daemon = Daemon::start(&plant, &cfg);
    plant.drop_frame("a.png", &plant.anomalous);
    plant.wait_frames("cam1", "anomalous", 1.0);
    std::thread::sleep(Duration::from_secs(3));
    let m = plant.metrics();
    assert_eq!(metric(&m, "vigil_mqtt_connected"), 0.0, "{m}");
    assert!(metric(&m, "vigil_errors_total{kind=\"broker\"}") >= 1.0, "{m}");
    assert_eq!(metric(&m, "vigil_outbox_pending"), 1.0, "the alert waits for a secure connection:\n{m}");
    assert!(sub.on("vigil/box1/cam1/anomaly").is_empty() && sub.on("vigil/box1/available").is_empty());
    daemon.stop();
}

#[test]
fn the_systemd_unit_is_sandboxed_to_an_exposure_of_at_most_2() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/vigil.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", unit])
        .output()
        .expect("systemd-analyze runs (Debian package systemd; scripts/setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    let level: f64 = line.split(':').nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    eprintln!("{line}");
    assert!(level <= 2.0, "{line}");
}

/// How long the slow clients below keep at it: they stop by themselves.
const ATTACK: Duration = Duration::from_secs(7);

/// `clients` threads on loopback, each sending the first part of `request(i)` at once and the
/// second a byte every 100 ms and, when the daemon answers or closes the connection, starting
/// again 250 ms later, until `ATTACK` is over or `stop` is set.
fn slow_clients(
    port: u16,
    clients: usize,
    request: impl Fn(usize) -> (String, String) + Send + Sync + 'static,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let request = Arc::new(request);
    (0..clients)
        .map(|i| {
            let (stop, request) = (stop.clone(), request.clone());
            std::thread::spawn(move || {
                let end = Instant::now() + ATTACK;
                let (fast, slow) = request(i);
                while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                        std::thread::sleep(Duration::from_millis(250));
                        continue;
                    };
                    if s.write_all(fast.as_bytes()).is_err() {
                        continue;
                    }
                    s.set_nonblocking(true).unwrap();
                    for b in slow.as_bytes() {
                        if Instant::now() >= end || stop.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                            break;
                        }
                        // An answer or a close ends this try.
                        match s.read(&mut [0u8; 512]) {
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            _ => break,
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
        })
        .collect()
}

/// Times `GET path` on a new connection; its status must be 200.
fn timed_get(port: u16, path: &str) -> Duration {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = vec![];
    let read = s.read_to_end(&mut out);
    let took = t0.elapsed();
    let r = crate::page::parse_response(&out);
    assert!(read.is_ok() && r.status == 200, "{path}: no answer after {took:?} ({read:?}): {r:?}");
    took
}

/// While the slow clients hold on, `/healthz` and `/metrics` answer within a second, again and
/// again; gives the last `/metrics` text.
fn still_answers(port: u16) -> String {
    // Long enough for every slow client to be connected and past the eviction grace.
    std::thread::sleep(Duration::from_millis(1500));
    for round in 0..4 {
        for path in ["/healthz", "/metrics"] {
            let took = timed_get(port, path);
            assert!(took < Duration::from_secs(1), "round {round}: {path} took {took:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    crate::common::mosquitto::http_get(port, "/metrics").1
}

#[test]
fn sixty_four_slow_unauthenticated_bodies_leave_healthz_and_metrics_answering() {
    let plant = Plant::new();
    let daemon = crate::page::start_web(&plant, "max_connections = 64\n");
    let port = plant.http;
    let stop = Arc::new(AtomicBool::new(false));
    // Half post a threshold without the token, half the login form (the one body that needs
    // no token); each body promises 4000 bytes and sends one every 100 ms.
    let threads = slow_clients(
        port,
        64,
        |i| {
            let (path, headers) = if i % 2 == 0 {
                ("/api/cameras/cam1/threshold", "Content-Type: application/json\r\n")
            } else {
                ("/login", "Origin: http://localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n")
            };
            (
                format!("POST {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Length: 4000\r\n\r\n"),
                format!("token={}", "x".repeat(3994)),
            )
        },
        stop.clone(),
    );
    let m = still_answers(port);
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    // The writes were refused on their heads, the logins beyond the first five on theirs.
    assert!(metric(&m, "vigil_errors_total{kind=\"http_auth\"}") >= 32.0, "{m}");
    assert!(metric(&m, "vigil_errors_total{kind=\"http_login_limited\"}") >= 1.0, "{m}");
    daemon.stop();
}

#[test]
fn sixty_four_slow_request_heads_leave_healthz_and_metrics_answering() {
    let plant = Plant::new();
    let daemon = crate::page::start_web(&plant, "max_connections = 64\n");
    let port = plant.http;
    let stop = Arc::new(AtomicBool::new(false));
    // A head that never ends within the attack: a header line that grows by a byte each 100 ms.
    let threads = slow_clients(
        port,
        64,
        |_| ("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ".to_owned(), "a".repeat(200)),
        stop.clone(),
    );
    let m = still_answers(port);
    stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert!(metric(&m, "vigil_http_evicted_total{waiting=\"head\"}") >= 1.0, "slow heads made room: {m}");
    assert!(metric(&m, "vigil_http_connections") <= 64.0, "{m}");
    daemon.stop();
}

#[test]
fn a_write_without_the_token_is_refused_before_its_body_and_a_slow_body_times_out() {
    let plant = Plant::new();
    let daemon = crate::page::start_web(&plant, "");
    let port = plant.http;
    let localhost = IpAddr::from([127, 0, 0, 1]);
    // The head promises 100 bytes that never come: the refusal comes at once, and the
    // connection is closed (nothing waits on the body).
    let t0 = Instant::now();
    let mut s = crate::page::connect_from(localhost, port);
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"POST /api/cameras/cam1/threshold HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    let mut out = vec![];
    let read = s.read_to_end(&mut out);
    let r = crate::page::parse_response(&out);
    assert!(read.is_ok(), "the connection was left open: {read:?} after {:?}, {r:?}", t0.elapsed());
    assert_eq!(r.status, 401, "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(r.header("connection").contains(&"close"), "{r:?}");

    // With the token, the body must come within 5 s; 10 of 100 bytes is not enough.
    let t0 = Instant::now();
    let mut s = crate::page::connect_from(localhost, port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /api/cameras/cam1/threshold HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n{{\"thresh",
        crate::page::TOKEN
    )
    .unwrap();
    let mut out = vec![];
    let read = s.read_to_end(&mut out);
    let took = t0.elapsed();
    let r = crate::page::parse_response(&out);
    assert!(read.is_ok() && r.status == 408, "{read:?} after {took:?}: {r:?}");
    assert!(took >= Duration::from_millis(4500) && took < Duration::from_secs(7), "{took:?}");
    assert!(r.body.contains("within 5 s"), "{r:?}");
    let m = plant.metrics();
    assert_eq!(metric(&m, "vigil_errors_total{kind=\"http_timeout\"}"), 1.0, "{m}");
    // The threshold did not change.
    let state: serde_json::Value =
        serde_json::from_str(&crate::common::mosquitto::http_get(port, "/api/state").1).unwrap();
    assert_eq!(state["cameras"][0]["threshold"]["source"], "config", "{state}");
    daemon.stop();
}
