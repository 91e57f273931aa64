//! A real Mosquitto broker on a free port, and a subscriber that records what it receives.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn binary() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("mosquitto is not installed: run scripts/test, which installs it")
}

/// A running broker; killed on drop.
pub struct Mosquitto {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Its folder (config, certificates, password file).
    pub dir: tempfile::TempDir,
    listener: String,
}

impl Mosquitto {
    /// Starts an anonymous plain-TCP broker on a free port and waits until it accepts
    /// connections.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(|_, port| format!("listener {port} 127.0.0.1\nallow_anonymous true\n"))
    }

    /// Starts a broker whose listeners are written by `listeners` (given the broker's folder,
    /// for certificates and password files, and `port`, which must be a plain anonymous
    /// listener: tests subscribe there).
    pub fn start_with(listeners: impl FnOnce(&std::path::Path, u16) -> String) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let listener = listeners(dir.path(), port);
        let mut m = Mosquitto { child: None, port, dir, listener };
        m.restart();
        m
    }

    /// A broker that keeps sessions across a graceful restart ([`Mosquitto::terminate`], then
    /// [`Mosquitto::restart`]), so a persistent subscriber misses nothing while it is away.
    pub fn persistent() -> Mosquitto {
        Mosquitto::start_with(|dir, port| {
            // Started as root, mosquitto drops to its own user, which must be able to save there.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            format!(
                "persistence true\npersistence_location {}/\nlistener {port} 127.0.0.1\nallow_anonymous true\n",
                dir.display()
            )
        })
    }

    /// Starts the broker again on the same port (after [`Mosquitto::stop`]).
    pub fn restart(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings true\n{}max_inflight_messages 20\n{}",
                if self.listener.contains("persistence ") { "" } else { "persistence false\n" },
                self.listener
            ),
        )
        .unwrap();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {} within 10 s", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker gracefully (SIGTERM), so that a broker started with persistence
    /// saves its sessions and queued messages.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    /// Kills the broker.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// When the subscriber received it.
    pub at: Instant,
}

impl Message {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| panic!("{}: not JSON ({e})", self.topic))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A subscriber recording every message on `filter`.
pub struct Subscriber {
    pub client: rumqttc::Client,
    messages: Arc<Mutex<Vec<Message>>>,
}

impl Subscriber {
    pub fn new(port: u16, filter: &str) -> Subscriber {
        Subscriber::with_session(port, filter, &format!("test-sub-{}", free_port()), true)
    }

    /// A subscriber with a persistent session under `id`: with a persistent broker, messages
    /// published while it is away (or the broker restarts) are kept for it.
    pub fn persistent(port: u16, filter: &str, id: &str) -> Subscriber {
        Subscriber::with_session(port, filter, id, false)
    }

    fn with_session(port: u16, filter: &str, id: &str, clean: bool) -> Subscriber {
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_session(clean);
        opts.set_max_packet_size(64 << 20, 64 << 20);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut conn) = rumqttc::Client::new(opts, 100);
        let mut net = conn.eventloop.network_options();
        net.set_tcp_nodelay(true);
        conn.eventloop.set_network_options(net);
        client.subscribe(filter, rumqttc::QoS::AtLeastOnce).unwrap();
        let messages: Arc<Mutex<Vec<Message>>> = Arc::default();
        let m = messages.clone();
        let subscribed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = subscribed.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        s.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => m.lock().unwrap().push(Message {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                        at: Instant::now(),
                    }),
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !subscribed.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the test subscriber could not subscribe");
            std::thread::sleep(Duration::from_millis(10));
        }
        Subscriber { client, messages }
    }

    /// Every message so far on `topic`.
    pub fn all(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    pub fn on(&self, topic: &str) -> Vec<Message> {
        self.messages.lock().unwrap().iter().filter(|m| m.topic == topic).cloned().collect()
    }

    /// Waits until `topic` has received `n` messages; returns them.
    pub fn wait_for(&self, topic: &str, n: usize, timeout: Duration) -> Vec<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.on(topic);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {n} message(s) on {topic}, got {}; all topics: {:?}",
                got.len(),
                self.messages.lock().unwrap().iter().map(|m| m.topic.clone()).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the last message on `topic` has this text payload.
    pub fn wait_for_text(&self, topic: &str, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.on(topic).last().map(|m| m.text()).as_deref() != Some(text) {
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for `{text}` on {topic}; got {:?}",
                self.on(topic).iter().map(|m| m.text()).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Publishes at QoS 1.
    pub fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) {
        self.client.publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload).unwrap();
    }
}

/// `GET path` from a local HTTP server; the status code and body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, &[], "")
}

/// One HTTP/1.1 request (`Host: localhost` unless `headers` name another, the connection
/// closed after it); the status code and body.
pub fn http_request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let host = if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) { "" } else { "Host: localhost\r\n" };
    let mut head = format!("{method} {path} HTTP/1.1\r\n{host}Connection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(s, "{head}\r\n{body}").unwrap();
    let mut out = vec![];
    s.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// The value of one metric line (`name{labels}`) in a Prometheus text, 0 when absent.
pub fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start) && l[line_start.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
