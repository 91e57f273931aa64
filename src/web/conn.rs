//! The listener's connections: at most `http.max_connections` served at once, and when all
//! are taken, the one that has waited longest without a request to serve (no complete request
//! head yet, idle between requests, or in the unauthenticated body of a login) is closed to
//! make room, so slow clients cannot keep `/healthz`, `/metrics` and the page from answering.
//!
//! Why eviction and not a cap per client address: behind a reverse proxy on the box every
//! client comes from 127.0.0.1, so a per-address cap would be the global cap; and a slot that
//! is holding a request being served (a live page, an authenticated write) is never taken.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::Service;
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// How long a connection may wait for its request (or be in a login's body) before it can be
/// closed to make room: a client on the slowest network sends its head well within it, and
/// a newcomer never waits longer than this for a place.
pub const GRACE: Duration = Duration::from_millis(500);

/// What a connection is doing.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request head since `since`; `served`: a request was answered before
    /// (idle keep-alive).
    Waiting { since: Instant, served: bool },
    /// Reading a body that no credential vouches for (the login form) since `since`.
    Unauthenticated { since: Instant },
    /// A request is being answered (its response body is still being sent).
    Serving,
    /// Chosen to make room; closing.
    Evicted,
}

#[derive(Debug)]
struct Slot {
    phase: Mutex<Phase>,
    evict: Notify,
}

impl Slot {
    fn set(&self, phase: Phase) {
        let mut p = self.phase.lock().expect("connection phase");
        if !matches!(*p, Phase::Evicted) {
            *p = phase;
        }
    }
}

/// A request's connection, for handlers that read a body before knowing who sends it.
#[derive(Debug, Clone)]
pub struct Handle(Arc<Slot>);

impl Handle {
    /// The request's body is read without credentials (the login form): the connection may
    /// be closed to make room while it is.
    pub fn unauthenticated(&self) {
        self.0.set(Phase::Unauthenticated { since: Instant::now() });
    }

    /// The body is in: the request is being answered.
    pub fn serving(&self) {
        self.0.set(Phase::Serving);
    }
}

/// The open connections and the places they hold.
struct Table {
    places: Arc<Semaphore>,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next: AtomicU64,
    metrics: Arc<Metrics>,
}

/// What [`Table::evict`] did.
enum Evicted {
    /// Closed one; its place comes back as its task ends.
    One,
    /// None may be closed yet; the first may be in this long.
    NotYet(Duration),
    /// Every connection is answering a request.
    None,
}

impl Table {
    /// Closes the connection that has waited longest without a request (those that never
    /// sent one first), once it has waited `GRACE`.
    fn evict(&self) -> Evicted {
        let now = Instant::now();
        let slots = self.slots.lock().expect("connections");
        let mut best: Option<((bool, Instant), &'static str, &Arc<Slot>)> = None;
        let mut soonest: Option<Duration> = None;
        for slot in slots.values() {
            let (key, why) = match *slot.phase.lock().expect("connection phase") {
                Phase::Waiting { since, served: false } => ((false, since), "head"),
                Phase::Waiting { since, served: true } => ((true, since), "idle"),
                Phase::Unauthenticated { since } => ((false, since), "login_body"),
                Phase::Serving | Phase::Evicted => continue,
            };
            let waited = now.saturating_duration_since(key.1);
            if waited < GRACE {
                soonest = Some(soonest.map_or(GRACE - waited, |s| s.min(GRACE - waited)));
            } else if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                best = Some((key, why, slot));
            }
        }
        let Some(((_, since), why, slot)) = best else {
            return soonest.map_or(Evicted::None, Evicted::NotYet);
        };
        let waited = now.saturating_duration_since(since);
        let mut phase = slot.phase.lock().expect("connection phase");
        if !matches!(*phase, Phase::Waiting { .. } | Phase::Unauthenticated { .. }) {
            // Its request came in meanwhile: look again.
            return Evicted::NotYet(Duration::ZERO);
        }
        *phase = Phase::Evicted;
        drop(phase);
        slot.evict.notify_one();
        self.metrics.inc("vigil_http_evicted_total", &[("waiting", why)]);
        tracing::debug!("http: closed a connection waiting {waited:?} ({why}) to make room");
        Evicted::One
    }

    /// A place for a new connection: a free one, or one made by closing a waiting connection.
    async fn place(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(p) = self.places.clone().try_acquire_owned() {
                return p;
            }
            let wait = match self.evict() {
                Evicted::One => Duration::from_secs(1),
                Evicted::NotYet(d) => d,
                // A request that ends makes its connection wait again: look again soon.
                Evicted::None => GRACE / 2,
            };
            if let Ok(p) = tokio::time::timeout(wait, self.places.clone().acquire_owned()).await {
                return p.expect("the semaphore is never closed");
            }
        }
    }

    fn open(&self) -> (u64, Arc<Slot>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            phase: Mutex::new(Phase::Waiting { since: Instant::now(), served: false }),
            evict: Notify::new(),
        });
        let mut slots = self.slots.lock().expect("connections");
        slots.insert(id, slot.clone());
        self.metrics.set("vigil_http_connections", &[], slots.len() as f64);
        (id, slot)
    }

    fn close(&self, id: u64) {
        let mut slots = self.slots.lock().expect("connections");
        slots.remove(&id);
        self.metrics.set("vigil_http_connections", &[], slots.len() as f64);
    }
}

/// Serves `router` on `listener` until the task is dropped: at most `max_connections` at
/// once, request heads of at most `MAX_HEAD` bytes within `HEAD_TIMEOUT`.
pub async fn serve(listener: TcpListener, router: Router, max_connections: usize, metrics: Arc<Metrics>) {
    let table = Arc::new(Table {
        places: Arc::new(Semaphore::new(max_connections)),
        slots: Mutex::default(),
        next: AtomicU64::new(0),
        metrics,
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("http: accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // One accepted connection waits here for a place; the rest wait in the kernel's
        // backlog, as before there was eviction.
        let permit = table.place().await;
        let (id, slot) = table.open();
        let service = Tracked { inner: hyper_util::service::TowerToHyperService::new(router.clone()), slot, peer };
        let table = table.clone();
        tokio::spawn(async move {
            let evicted = service.slot.clone();
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(super::HEAD_TIMEOUT)
                .max_buf_size(super::MAX_HEAD)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                // Dropping the connection closes the socket at once.
                _ = evicted.evict.notified() => {}
            }
            table.close(id);
            drop(permit);
        });
    }
}

/// The router, marking its connection's phase as requests come and their answers go.
struct Tracked {
    inner: hyper_util::service::TowerToHyperService<Router>,
    slot: Arc<Slot>,
    peer: SocketAddr,
}

impl Service<hyper::Request<Incoming>> for Tracked {
    type Response = hyper::Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        self.slot.set(Phase::Serving);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        req.extensions_mut().insert(Handle(self.slot.clone()));
        let done = Done(self.slot.clone());
        let answer = self.inner.call(req);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|inner| TrackedBody { inner, _done: done }))
        })
    }
}

/// Marks the connection waiting again once the response is sent (or abandoned).
struct Done(Arc<Slot>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.set(Phase::Waiting { since: Instant::now(), served: true });
    }
}

/// A response body that says when it is gone: a live page's event stream is a request
/// being answered for as long as it is open.
pub struct TrackedBody {
    inner: Body,
    _done: Done,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
