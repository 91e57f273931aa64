//! What a request must show before its body is read, how long the body may take, and the
//! headers every response carries: a write without the token is answered at once and its
//! connection closed, so no one without the token can make vigil wait on a body.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::closing;
use super::{App, MAX_BODY};

/// A request body (at most `MAX_BODY` bytes: a small JSON object or the login form) must
/// arrive whole within this time.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// The page is never framed by another (clickjacking), loads nothing from elsewhere, and no
/// response is read as another type than it says.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Adds the security headers to every response of the router.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    // For browsers that predate `frame-ancestors`.
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn plain(status: StatusCode, message: String) -> Response {
    closing((status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message + "\n").into_response())
}

/// In front of every write (threshold, verdict): the token and the origin are checked on the
/// head alone; only then is the body read, within `BODY_TIMEOUT`.
pub async fn write(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Err(r) = super::auth::check_write(&app, req.headers()) {
        app.metrics.inc("vigil_errors_total", &[("kind", "http_auth")]);
        return closing(r);
    }
    match read_body(&app, req).await {
        Ok(req) => next.run(req).await,
        Err(r) => r,
    }
}

/// Reads the whole body of `req` (at most `MAX_BODY` bytes, within `BODY_TIMEOUT`) and gives
/// the request back with it, or the refusal (413, 408) after which the connection closes.
pub async fn read_body(app: &App, req: Request) -> Result<Request, Response> {
    let too_large = || plain(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {MAX_BODY} bytes"));
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let (parts, mut body) = req.into_parts();
    let mut bytes = Vec::new();
    let read = async {
        loop {
            let frame =
                std::future::poll_fn(|cx| hyper::body::Body::poll_frame(std::pin::Pin::new(&mut body), cx)).await;
            match frame {
                None => return Ok(()),
                Some(Err(_)) => return Err(None),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if bytes.len() + data.len() > MAX_BODY {
                            return Err(Some(too_large()));
                        }
                        bytes.extend_from_slice(&data);
                    }
                }
            }
        }
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(Request::from_parts(parts, Body::from(bytes))),
        Ok(Err(Some(refusal))) => Err(refusal),
        // The client broke off: no one reads the answer.
        Ok(Err(None)) => Err(plain(StatusCode::BAD_REQUEST, "the body was cut short".into())),
        Err(_) => {
            app.metrics.inc("vigil_errors_total", &[("kind", "http_timeout")]);
            Err(plain(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {} s; send it at once", BODY_TIMEOUT.as_secs()),
            ))
        }
    }
}
