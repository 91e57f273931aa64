//! The operator's loop through the daemon's own HTTP listener: the page in a real headless
//! Chromium (through chromedriver), verdicts from the page and over MQTT into the data set,
//! sampled normals, and every refusal of the page's security.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::common::mosquitto::{Mosquitto, Subscriber, free_port, http_request, metric};
use crate::daemon::{Daemon, Plant, WAIT, mqtt_section};

pub const TOKEN: &str = "page-test-token-0123456789";

/// The files in `dir` (none when it does not exist), without those being written (`.tmp`).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|p: &PathBuf| p.extension().is_none_or(|e| e != "tmp"))
        .collect();
    v.sort();
    v
}

/// The data-set files of cam1 for one verdict folder (`normal`, `abnormal`), on both sides of
/// the hold-out (which side a frame lands on is the box's key's to decide).
fn dataset_files(plant: &Plant, kind: &str) -> Vec<PathBuf> {
    let mut v = files(&plant.path(&format!("state/dataset/cam1/{kind}")));
    v.extend(files(&plant.path(&format!("state/dataset/cam1/held-out/{kind}"))));
    v
}

/// The records of cam1's verdict log.
fn verdict_log(plant: &Plant) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(plant.path("state/dataset/cam1/verdicts.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A daemon with one folder camera, MQTT, the page with a token file, and `extra` config.
fn start(plant: &Plant, broker: &Mosquitto, extra: &str) -> Daemon {
    let token = plant.path("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let cfg = plant.config(&format!(
        "token_file = \"{}\"\n{}{extra}{}",
        token.display(),
        mqtt_section(broker.port),
        plant.folder_camera("")
    ));
    Daemon::start(plant, &cfg)
}

/// A daemon with one folder camera (alerts to a JSON-lines file, no broker), the page with a
/// token file, and `extra` config in `[http]`.
pub fn start_web(plant: &Plant, extra: &str) -> Daemon {
    let token = plant.path("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let cfg = plant.config(&format!(
        "token_file = \"{}\"\n{extra}[alerts]\njsonl = \"{}\"\n{}",
        token.display(),
        plant.path("out/alerts.jsonl").display(),
        plant.folder_camera("")
    ));
    Daemon::start(plant, &cfg)
}

/// An HTTP response as it came.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Raw {
    /// The values of header `name` (any case).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }
}

/// A TCP connection to the daemon on loopback, from the loopback address `from` (any of
/// 127.0.0.0/8 is this machine's, so tests can be several clients).
pub fn connect_from(from: IpAddr, port: u16) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((from, 0).into()).unwrap();
        let s = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        let s = s.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

/// Sends `request` whole on a new connection from `from` and reads the answer to the end.
pub fn raw_request(port: u16, from: IpAddr, request: &str) -> Raw {
    let mut s = connect_from(from, port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = vec![];
    s.read_to_end(&mut out).unwrap();
    parse_response(&out)
}

pub fn parse_response(bytes: &[u8]) -> Raw {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Raw { status, head: head.to_owned(), body: body.to_owned() }
}

/// A login form post from `from` with `token`, as the page's own form sends it.
fn login_from(port: u16, from: IpAddr, token: &str, extra_headers: &str) -> Raw {
    let form = format!("token={token}");
    raw_request(
        port,
        from,
        &format!(
            "POST /login HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{extra_headers}\r\n{form}",
            form.len()
        ),
    )
}

/// The `name=value` of a response's session cookie, and its attributes.
fn session_cookie(r: &Raw) -> (String, Vec<String>) {
    let set = r.header("set-cookie");
    assert_eq!(set.len(), 1, "{r:?}");
    let mut parts = set[0].split(';').map(|p| p.trim().to_owned());
    (parts.next().unwrap(), parts.collect())
}

fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/setup installs it)");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,900"] }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn text_of(b: &Client, css: &str) -> String {
    b.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

/// Waits until `script` (the body of a function) returns `true` in the page.
async fn wait_js(b: &Client, what: &str, script: &str) {
    let deadline = Instant::now() + WAIT;
    while b.execute(script, vec![]).await.unwrap().as_bool() != Some(true) {
        assert!(Instant::now() < deadline, "waited for {what} ({script})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the element `css` has text containing `want`.
async fn wait_text(b: &Client, css: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(e) = b.find(Locator::Css(css)).await
            && e.text().await.unwrap_or_default().contains(want)
        {
            return;
        }
        assert!(Instant::now() < deadline, "waited for `{want}` in {css}; it reads `{}`", text_of(b, css).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_page_shows_alerts_live_takes_verdicts_and_threshold_edits_in_a_real_browser() {
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let daemon = start(&plant, &broker, "");
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    plant.drop_frame("n1.png", &plant.normal);
    plant.wait_frames("cam1", "normal", 1.0);
    let driver = Driver::start();
    let base = format!("http://127.0.0.1:{}", plant.http);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let b = driver.browser().await;
        b.goto(&format!("{base}/")).await.unwrap();
        b.find(Locator::Css("section.camera[data-camera=\"cam1\"]")).await.expect("the camera's card");
        wait_text(&b, "#live", "live").await;
        assert!(text_of(&b, "section#camera-cam1 .model").await.contains("reference-dae v1"));

        // A defect: its row appears without a reload.
        plant.drop_frame("a1.png", &plant.anomalous);
        let row = b.wait().at_most(WAIT).for_element(Locator::Css("section#camera-cam1 tr.alert")).await.unwrap();
        let id = row.attr("data-id").await.unwrap().expect("the alert id");
        assert_eq!(id, sub.wait_for("vigil/box1/cam1/anomaly", 1, WAIT)[0].json()["id"]);
        wait_text(&b, "section#camera-cam1 [data-counter=\"alerts\"]", "1").await;

        // A verdict before logging in is refused, and says why.
        b.find(Locator::Css("button.verdict[data-verdict=\"false_alarm\"]")).await.unwrap().click().await.unwrap();
        wait_text(&b, "section#camera-cam1 .status", "token").await;
        assert!(dataset_files(&plant, "normal").is_empty(), "nothing written without the token");

        // Log in; the alert is on the page as rendered by the server.
        b.goto(&format!("{base}/login")).await.unwrap();
        b.find(Locator::Css("#token")).await.unwrap().send_keys(TOKEN).await.unwrap();
        b.find(Locator::Css("#login")).await.unwrap().click().await.unwrap();
        let button = format!("tr.alert[data-id=\"{id}\"] button.verdict[data-verdict=\"false_alarm\"]");
        b.wait().at_most(WAIT).for_element(Locator::Css(&button)).await.unwrap().click().await.unwrap();
        crate::common::wait_until("the false alarm's frame in the data set", WAIT, || {
            !dataset_files(&plant, "normal").is_empty()
        });
        let kept = dataset_files(&plant, "normal").remove(0);
        assert_eq!(kept.file_name().unwrap().to_str().unwrap(), format!("{id}.png"));
        assert_eq!(std::fs::read(&kept).unwrap(), plant.anomalous, "the clean frame, as it arrived");
        // Recorded as given on the page, from the browser's address.
        let log = verdict_log(&plant);
        assert_eq!((log.len(), &log[0]["id"], &log[0]["source"]["via"]), (1, &id.clone().into(), &"page".into()));
        assert!(log[0]["source"]["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{:?}", log[0]);
        wait_text(&b, "section#camera-cam1 .status", "saved to the data set").await;
        let pressed = b.find(Locator::Css(&button)).await.unwrap().attr("aria-pressed").await.unwrap();
        assert_eq!(pressed.as_deref(), Some("true"));

        // The threshold edit takes effect: at 0, the normal frame alerts.
        let input = b.find(Locator::Css("section#camera-cam1 input[name=\"threshold\"]")).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys("0").await.unwrap();
        b.find(Locator::Css("section#camera-cam1 form.threshold button")).await.unwrap().click().await.unwrap();
        wait_text(&b, "section#camera-cam1 .status", "saved").await;
        wait_text(&b, "section#camera-cam1 .threshold-source", "runtime").await;
        let states = sub.wait_for("vigil/box1/cam1/threshold/state", 2, WAIT);
        assert_eq!(states.last().unwrap().json()["threshold"], 0.0);
        plant.drop_frame("n2.png", &plant.normal);
        wait_text(&b, "section#camera-cam1 [data-counter=\"alerts\"]", "2").await;
        assert_eq!(b.find_all(Locator::Css("section#camera-cam1 tr.alert")).await.unwrap().len(), 2);
        wait_text(&b, "section#camera-cam1 .threshold-label", "threshold 0").await;

        // The full-size view: the first alert's thumbnail opens its clean frame with the map
        // over it and the region outlined in the frame's pixels.
        let link = format!("tr.alert[data-id=\"{id}\"] a.open-viewer");
        b.find(Locator::Css(&link)).await.unwrap().click().await.unwrap();
        b.wait().at_most(WAIT).for_element(Locator::Css("dialog#viewer[open]")).await.unwrap();
        wait_js(
            &b,
            "the clean frame in the view",
            "const f = document.querySelector('#viewer img.frame'); \
             return f.complete && f.naturalWidth > 0 && f.src.endsWith('/frame')",
        )
        .await;
        let frame = image::load_from_memory(&plant.anomalous).unwrap();
        let geometry = b
            .execute(
                "const s = document.querySelector('#viewer svg.region'); const r = s.querySelector('rect'); \
                 return [s.getAttribute('viewBox'), Number(r.getAttribute('width')), s.style.display];",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(geometry[0], format!("0 0 {} {}", frame.width(), frame.height()));
        assert!(geometry[1].as_f64().unwrap() > 0.0, "{geometry}");
        assert_eq!(geometry[2], "", "the region is shown");
        assert!(text_of(&b, "#viewer .viewer-score").await.contains("normalized"));
        // M hides the map, and shows it again.
        let key = |k: &'static str| {
            let b = b.clone();
            async move { b.active_element().await.unwrap().send_keys(k).await.unwrap() }
        };
        key("m").await;
        wait_js(&b, "the map hidden", "return document.querySelector('#viewer img.map').hidden").await;
        key("m").await;
        wait_js(&b, "the map shown", "return !document.querySelector('#viewer img.map').hidden").await;
        // C confirms the defect from the keyboard: the frame goes from the normal examples to
        // the defects, and both the view and the table say so.
        key("c").await;
        wait_text(&b, "#viewer .viewer-status", "saved to the data set").await;
        crate::common::wait_until("the confirmed frame among the defects", WAIT, || {
            dataset_files(&plant, "abnormal").len() == 1 && dataset_files(&plant, "normal").is_empty()
        });
        let confirmed = format!("tr.alert[data-id=\"{id}\"] button.verdict[data-verdict=\"confirmed\"]");
        let pressed = b.find(Locator::Css(&confirmed)).await.unwrap().attr("aria-pressed").await.unwrap();
        assert_eq!(pressed.as_deref(), Some("true"));
        let pressed = b.find(Locator::Css("#viewer button.viewer-verdict[data-verdict=\"confirmed\"]")).await.unwrap();
        assert_eq!(pressed.attr("aria-pressed").await.unwrap().as_deref(), Some("true"));
        if std::env::var_os("VIGIL_BLESS").is_some() {
            let shot = image::load_from_memory(&b.screenshot().await.unwrap()).unwrap();
            let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/images/alert-view.png");
            shot.resize(900, 900, image::imageops::FilterType::Triangle).save(&out).unwrap();
        }
        // Esc closes it.
        key("\u{e00c}").await;
        wait_js(&b, "the view closed", "return !document.querySelector('#viewer').open").await;

        // The screenshot in docs/operators-loop.md is this page (VIGIL_BLESS=1 rewrites it).
        let png = b.screenshot().await.unwrap();
        let shot = image::load_from_memory(&png).unwrap();
        assert!(shot.width() >= 800 && shot.height() >= 600);
        if std::env::var_os("VIGIL_BLESS").is_some() {
            let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/images/operators-page.png");
            std::fs::create_dir_all(out.parent().unwrap()).unwrap();
            let small = shot.resize(900, 900, image::imageops::FilterType::Triangle);
            small.save(&out).unwrap();
        }
        b.close().await.unwrap();
    });
    daemon.stop();
}

#[test]
fn verdicts_over_mqtt_land_in_the_data_set_once_and_unknown_ids_write_nothing() {
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let daemon = start(&plant, &broker, "[dataset]\nsample_normal = 2\n");
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    plant.drop_frame("a.png", &plant.anomalous);
    let id = sub.wait_for("vigil/box1/cam1/anomaly", 1, WAIT)[0].json()["id"].as_str().unwrap().to_owned();
    let clean = plant.path("state/frames/cam1/x").parent().unwrap().join(format!("{id}.png"));
    assert_eq!(std::fs::read(&clean).unwrap(), plant.anomalous, "the clean frame is kept next to the alert");

    let feedback = |payload: String| sub.publish("vigil/box1/cam1/feedback", false, payload.into_bytes());
    feedback(format!(r#"{{"id": "{id}", "verdict": "confirmed", "by": "qa line 2"}}"#));
    let state = &sub.wait_for("vigil/box1/cam1/feedback/state", 1, WAIT)[0];
    assert_eq!(state.json(), serde_json::json!({ "id": id, "verdict": "confirmed", "ok": true, "changed": true }));
    let abnormal = dataset_files(&plant, "abnormal");
    assert_eq!(abnormal.len(), 1);
    assert_eq!(abnormal[0].file_name().unwrap().to_str().unwrap(), format!("{id}.png"));
    // Recorded as from MQTT: the topic, and who the payload says it is.
    let source = serde_json::json!({ "via": "mqtt", "topic": "vigil/box1/cam1/feedback", "by": "qa line 2" });
    assert_eq!(verdict_log(&plant)[0]["source"], source);
    // Again: idempotent.
    feedback(format!(r#"{{"id": "{id}", "verdict": "confirmed"}}"#));
    assert_eq!(sub.wait_for("vigil/box1/cam1/feedback/state", 2, WAIT)[1].json()["changed"], false);
    assert_eq!(dataset_files(&plant, "abnormal").len(), 1);
    assert_eq!(verdict_log(&plant).len(), 1, "a repeat records nothing");

    // An unknown id and a bad payload: a clear error on the state topic, nothing written.
    feedback(r#"{"id": "01KB0000000000000000000000", "verdict": "false_alarm"}"#.into());
    let unknown = sub.wait_for("vigil/box1/cam1/feedback/state", 3, WAIT)[2].json();
    assert_eq!(unknown["ok"], false);
    assert!(unknown["error"].as_str().unwrap().contains("unknown alert `01KB0000000000000000000000`"), "{unknown}");
    feedback(r#"{"id": "x", "verdict": "maybe"}"#.into());
    let bad = sub.wait_for("vigil/box1/cam1/feedback/state", 4, WAIT)[3].json();
    assert!(bad["error"].as_str().unwrap().contains("false_alarm"), "names the verdicts: {bad}");
    assert!(dataset_files(&plant, "normal").is_empty());
    let m = plant.metrics();
    assert_eq!(metric(&m, "vigil_errors_total{kind=\"bad_feedback\"}"), 2.0, "{m}");
    assert_eq!(metric(&m, "vigil_verdicts_total{camera=\"cam1\",verdict=\"confirmed\"}"), 2.0, "{m}");

    // 1 in 2 normal frames is sampled into normal/.
    for i in 0..4 {
        plant.drop_frame(&format!("n{i}.png"), &plant.normal);
    }
    plant.wait_frames("cam1", "normal", 4.0);
    // A frame is counted when it is decided, and its sample written just after: wait for it.
    let deadline = Instant::now() + WAIT;
    while dataset_files(&plant, "normal").len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let sampled = dataset_files(&plant, "normal");
    assert_eq!(sampled.len(), 2, "{sampled:?}");
    assert!(sampled.iter().all(|p| p.file_name().unwrap().to_str().unwrap().starts_with("sample-")));
    daemon.stop();

    // After a restart the alert is still on the page's list and takes a verdict.
    let daemon = start(&plant, &broker, "");
    let (code, body) = http_request(plant.http, "GET", "/api/state", &[], "");
    assert_eq!(code, 200);
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["cameras"][0]["alerts"][0]["alert"]["id"], id);
    assert_eq!(state["cameras"][0]["alerts"][0]["verdict"], "confirmed");
    daemon.stop();
}

#[test]
fn the_page_refuses_writes_without_the_token_from_other_origins_and_outside_its_files() {
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let daemon = start(&plant, &broker, "");
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    plant.drop_frame("a.png", &plant.anomalous);
    let id = sub.wait_for("vigil/box1/cam1/anomaly", 1, WAIT)[0].json()["id"].as_str().unwrap().to_owned();
    let port = plant.http;
    let verdict = format!("/api/cameras/cam1/alerts/{id}/verdict");
    let body = r#"{"verdict": "confirmed"}"#;
    let bearer = format!("Bearer {TOKEN}");
    let login = login_from(port, localhost(), TOKEN, "");
    assert_eq!(login.status, 303, "{login:?}");
    let (cookie, _) = session_cookie(&login);
    let host_origin = "http://localhost";

    // Reading on loopback needs no token.
    assert_eq!(http_request(port, "GET", "/api/state", &[], "").0, 200);
    assert_eq!(http_request(port, "GET", "/", &[], "").0, 200);
    // Reads from the box itself only: not for another site's name rebound to 127.0.0.1, not
    // through a proxy; the token still opens them.
    let rebound = [("Host", "vigil.attacker.example:80")];
    assert_eq!(http_request(port, "GET", "/api/state", &rebound, "").0, 401);
    let proxied = [("X-Forwarded-For", "203.0.113.9")];
    assert_eq!(http_request(port, "GET", "/api/state", &proxied, "").0, 401);
    let proxied_token = [("X-Forwarded-For", "203.0.113.9"), ("Authorization", bearer.as_str())];
    assert_eq!(http_request(port, "GET", "/api/state", &proxied_token, "").0, 200);
    // Writes: no token, a wrong one, another origin, a cookie without an origin.
    assert_eq!(http_request(port, "POST", &verdict, &[], body).0, 401);
    assert_eq!(
        http_request(port, "POST", &verdict, &[("Authorization", "Bearer wrong-token-0123456789")], body).0,
        401
    );
    let evil = [("Authorization", bearer.as_str()), ("Origin", "http://evil.example")];
    assert_eq!(http_request(port, "POST", &verdict, &evil, body).0, 403);
    let cross = [("Cookie", cookie.as_str()), ("Origin", host_origin), ("Sec-Fetch-Site", "cross-site")];
    assert_eq!(http_request(port, "POST", &verdict, &cross, body).0, 403);
    assert_eq!(http_request(port, "POST", &verdict, &[("Cookie", cookie.as_str())], body).0, 403);
    let evil_threshold = [("Cookie", cookie.as_str()), ("Origin", "http://evil.example")];
    assert_eq!(http_request(port, "POST", "/api/cameras/cam1/threshold", &evil_threshold, "0").0, 403);
    assert_eq!(http_request(port, "POST", "/login", &[("Origin", "http://evil.example")], "token=x").0, 403);
    assert!(dataset_files(&plant, "abnormal").is_empty(), "no refused write wrote anything");
    // Outside the page's own files: nothing.
    for path in [
        "/static/../Cargo.toml",
        "/static/page.rs",
        "/api/cameras/cam1/alerts/..%2F..%2F..%2Fetc%2Fpasswd/snapshot.jpg",
        "/api/cameras/..%2F..%2Fetc/alerts/01KB0000000000000000000000/frame",
        &format!("/api/cameras/cam1/alerts/{id}/..%2F..%2F..%2Fvigil.toml"),
        "/state/http-token",
    ] {
        let (code, text) = http_request(port, "GET", path, &[], "");
        assert_eq!(code, 404, "{path}: {text}");
        assert!(!text.contains(TOKEN) && !text.contains("device_id"), "{path}: {text}");
    }
    // A body beyond the limit.
    let big = format!(r#"{{"verdict": "confirmed", "pad": "{}"}}"#, "x".repeat(8000));
    let ok = [("Authorization", bearer.as_str()), ("Origin", host_origin)];
    assert_eq!(http_request(port, "POST", &verdict, &ok, &big).0, 413);
    // The right token from the page's origin works, and the login form sets the cookie.
    let (code, text) = http_request(port, "POST", &verdict, &ok, body);
    assert_eq!(code, 200, "{text}");
    assert_eq!(dataset_files(&plant, "abnormal").len(), 1);
    let form = format!("token={TOKEN}");
    let login = [("Origin", host_origin), ("Content-Type", "application/x-www-form-urlencoded")];
    assert_eq!(http_request(port, "POST", "/login", &login, &form).0, 303);
    assert_eq!(http_request(port, "POST", "/login", &login, "token=wrong-token-0123456789").0, 401);
    // A browser with the cookie, from the page itself.
    let page = [("Cookie", cookie.as_str()), ("Origin", host_origin), ("Content-Type", "application/json")];
    let (code, text) = http_request(port, "POST", "/api/cameras/cam1/threshold", &page, r#"{"threshold": 2.5}"#);
    assert_eq!(
        (code, serde_json::from_str::<serde_json::Value>(&text).unwrap()["threshold"].clone()),
        (200, 2.5.into())
    );
    assert_eq!(http_request(port, "POST", "/api/cameras/nope/threshold", &page, "1").0, 404);
    // /metrics keeps its names, through prometheus-client.
    let m = plant.metrics();
    assert!(m.contains("# TYPE vigil_frames_total counter"), "{m}");
    assert_eq!(metric(&m, "vigil_frames_total{camera=\"cam1\",result=\"anomalous\"}"), 1.0);
    daemon.stop();
}

#[test]
fn the_page_off_loopback_needs_a_token_file_and_the_token_to_read() {
    let plant = Plant::new();
    // Without a token file: refused before anything starts, naming the key and the ways out.
    let port = free_port();
    let cfg = plant.path("open.toml");
    std::fs::write(
        &cfg,
        format!(
            "device_id = \"box1\"\nstate_dir = \"{}\"\n[http]\nlisten = \"0.0.0.0:{port}\"\n[alerts]\nstdout = true\n{}",
            plant.path("state/x").parent().unwrap().display(),
            plant.folder_camera("")
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["validate", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("http.listen") && err.contains("token_file") && err.contains("http.page = false"), "{err}");
    // With `page = false` the same address serves only /metrics and /healthz.
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("[http]\n", "[http]\npage = false\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["validate", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // With a token file on all addresses: reads need the token too.
    let broker = Mosquitto::start();
    let token = plant.path("token");
    std::fs::write(&token, TOKEN).unwrap();
    let cfg = plant.config(&format!(
        "token_file = \"{}\"\n{}{}",
        token.display(),
        mqtt_section(broker.port),
        plant.folder_camera("")
    ));
    let text = std::fs::read_to_string(&cfg).unwrap().replace("listen = \"127.0.0.1:", "listen = \"0.0.0.0:");
    std::fs::write(&cfg, text).unwrap();
    let daemon = Daemon::start(&plant, &cfg);
    let port = plant.http;
    assert_eq!(http_request(port, "GET", "/api/state", &[], "").0, 401);
    let (code, _) = http_request(port, "GET", "/", &[], "");
    assert_eq!(code, 303, "the page sends to the login form");
    let (cookie, _) = session_cookie(&login_from(port, localhost(), TOKEN, ""));
    assert_eq!(http_request(port, "GET", "/api/state", &[("Cookie", &cookie)], "").0, 200);
    assert_eq!(
        http_request(port, "GET", "/api/state", &[("Cookie", &format!("vigil_session={TOKEN}"))], "").0,
        401,
        "the token itself is no session"
    );
    assert_eq!(http_request(port, "GET", "/api/state", &[("Authorization", "Bearer nope-nope-nope-nope")], "").0, 401);
    assert_eq!(http_request(port, "GET", "/metrics", &[], "").0, 200, "scrapers need no token");
    assert_eq!(http_request(port, "GET", "/healthz", &[], "").0, 200);
    daemon.stop();
}

#[test]
fn every_response_says_nosniff_and_may_not_be_framed() {
    let plant = Plant::new();
    let daemon = start_web(&plant, "");
    let port = plant.http;
    let get = |path: &str| {
        raw_request(port, localhost(), &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))
    };
    let refused_write = raw_request(
        port,
        localhost(),
        "POST /api/cameras/cam1/threshold HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\n0",
    );
    assert_eq!(refused_write.status, 401);
    let answers = [
        get("/"),
        get("/login"),
        get("/static/page.js"),
        get("/api/state"),
        get("/nope"),
        get("/healthz"),
        get("/metrics"),
        refused_write,
        login_from(port, localhost(), "wrong-token-0123456789", ""),
    ];
    for r in &answers {
        assert_eq!(r.header("x-content-type-options"), ["nosniff"], "{r:?}");
        let csp = r.header("content-security-policy");
        assert!(csp.len() == 1 && csp[0].contains("frame-ancestors 'none'"), "{r:?}");
        assert_eq!(r.header("x-frame-options"), ["DENY"], "{r:?}");
    }
    daemon.stop();
}

#[test]
fn the_session_cookie_holds_no_token_expires_and_is_secure_behind_tls() {
    let plant = Plant::new();
    let daemon = start_web(&plant, "");
    let port = plant.http;
    let login = login_from(port, localhost(), TOKEN, "");
    assert_eq!(login.status, 303, "{login:?}");
    let (cookie, attributes) = session_cookie(&login);
    assert!(cookie.starts_with("vigil_session=") && !cookie.contains(TOKEN), "{cookie}");
    for want in ["Path=/", "Max-Age=43200", "HttpOnly", "SameSite=Strict"] {
        assert!(attributes.iter().any(|a| a == want), "{want} in {attributes:?}");
    }
    assert!(!attributes.iter().any(|a| a == "Secure"), "plain HTTP: a Secure cookie would never come back");
    // The value says when it ends, and the server holds it to that.
    let value = cookie.strip_prefix("vigil_session=").unwrap();
    let expires: u64 = value.split_once('.').unwrap().0.parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(expires.abs_diff(now + 43200) <= 5, "{expires} vs {now}");

    // It opens writes (the threshold, from the page's origin) ...
    let write = |cookie: &str| {
        let headers = [("Cookie", cookie), ("Origin", "http://localhost"), ("Content-Type", "application/json")];
        http_request(port, "POST", "/api/cameras/cam1/threshold", &headers, r#"{"threshold": 2.5}"#)
    };
    assert_eq!(write(&cookie).0, 200);
    // ... until it expires; the token itself, an altered expiry or a session made with another
    // token open nothing.
    let token = vigil::web::auth::Token::new(TOKEN);
    let expired = format!("vigil_session={}", token.session(now - 1));
    let (code, text) = write(&expired);
    assert_eq!(code, 401, "{text}");
    assert!(text.contains("expired"), "{text}");
    assert_eq!(write(&format!("vigil_session={TOKEN}")).0, 401);
    let (_, tag) = value.split_once('.').unwrap();
    assert_eq!(write(&format!("vigil_session={}.{tag}", expires + 60)).0, 401);
    let other = vigil::web::auth::Token::new("another-token-0123456789");
    assert_eq!(write(&format!("vigil_session={}", other.session(now + 600))).0, 401);
    assert_eq!(write(&format!("vigil_session={}", token.session(now + 600))).0, 200, "the key is the token's");

    // Through a TLS reverse proxy the cookie is Secure.
    let proxied = login_from(port, localhost(), TOKEN, "X-Forwarded-Proto: https\r\n");
    assert!(session_cookie(&proxied).1.iter().any(|a| a == "Secure"), "{proxied:?}");
    daemon.stop();

    // And always with `secure_cookie = true`.
    let daemon = start_web(&plant, "secure_cookie = true\n");
    let login = login_from(port, localhost(), TOKEN, "");
    assert!(session_cookie(&login).1.iter().any(|a| a == "Secure"), "{login:?}");
    daemon.stop();
}

#[test]
fn wrong_logins_are_limited_per_address_and_in_all_with_429_and_retry_after() {
    let plant = Plant::new();
    let daemon = start_web(&plant, "");
    let port = plant.http;
    let from = |last: u8| IpAddr::from([127, 0, 0, last]);
    let wrong = "wrong-token-0123456789";
    // A right token costs nothing.
    for _ in 0..8 {
        assert_eq!(login_from(port, from(2), TOKEN, "").status, 303);
    }
    // One address: five wrong tokens, then it waits, the right token included (else the
    // answer to a guess would still tell right from wrong).
    for _ in 0..5 {
        assert_eq!(login_from(port, from(2), wrong, "").status, 401);
    }
    let limited = login_from(port, from(2), wrong, "");
    assert_eq!(limited.status, 429, "{limited:?}");
    let retry: u64 = limited.header("retry-after")[0].parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert!(limited.body.contains("try again in"), "{limited:?}");
    assert_eq!(login_from(port, from(2), TOKEN, "").status, 429);
    // Another address is not held back by it ...
    assert_eq!(login_from(port, from(3), TOKEN, "").status, 303);
    // ... until all of them together have used the global allowance (20 wrong tokens).
    for a in 3..=5 {
        for _ in 0..5 {
            assert_eq!(login_from(port, from(a), wrong, "").status, 401);
        }
    }
    // Bounded: the global bucket earns one attempt back every 5 s, so a slow machine may see
    // one more wrong token through.
    let mut allowed = 0;
    let mut a = 6;
    while login_from(port, from(a), wrong, "").status != 429 {
        allowed += 1;
        a += 1;
        assert!(allowed <= 1, "a fresh address was let in {allowed} times with all attempts used");
    }
    assert_eq!(login_from(port, from(a + 1), TOKEN, "").status, 429, "the right token waits too");
    let m = plant.metrics();
    assert_eq!(metric(&m, "vigil_errors_total{kind=\"http_auth\"}"), 20.0 + allowed as f64, "{m}");
    assert_eq!(metric(&m, "vigil_errors_total{kind=\"http_login_limited\"}"), 4.0, "{m}");
    daemon.stop();
}
