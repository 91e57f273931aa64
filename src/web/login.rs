//! Logging in to the page: the form (`GET /login`) and the session cookie it gives for the
//! right token (`POST /login`), rate-limited per client address.

use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::App;
use super::auth::{COOKIE, SESSION, Via, closing, refuse, same_origin, unix_now};
use super::conn::Handle;
use super::gate::read_body;
use super::limit::LoginLimiter;
use super::page::{esc, shell};

/// The login page, with `error` shown above the form.
pub fn login_page(error: Option<&str>) -> String {
    let error = error.map(|e| format!("<p class=\"error\" id=\"login-error\">{}</p>", esc(e))).unwrap_or_default();
    shell(
        "vigil: log in",
        &format!(
            "<main class=\"login\"><h1>vigil</h1>{error}<form method=\"post\" action=\"/login\">\
             <label>Token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\" required></label>\
             <button type=\"submit\" id=\"login\">Log in</button></form>\
             <p class=\"hint\">The token is in <code>http.token_file</code>, by default <code>&lt;state_dir&gt;/http-token</code>.</p></main>"
        ),
    )
}

/// `GET /login`.
pub async fn login_form() -> Html<String> {
    Html(login_page(None))
}

/// The login form's fields.
#[derive(serde::Deserialize)]
pub struct Login {
    token: String,
}

/// Whether the login came through a reverse proxy that says the browser used HTTPS
/// (`X-Forwarded-Proto: https`, or `proto=https` in `Forwarded`). Believed from anyone: a
/// client that lies only makes its own cookie `Secure`.
fn forwarded_https(headers: &HeaderMap) -> bool {
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').next().is_some_and(|p| p.trim().eq_ignore_ascii_case("https")));
    let forwarded = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|kv| kv.trim().eq_ignore_ascii_case("proto=https"));
    proto || forwarded
}

/// `POST /login`: sets the session cookie when the token is right. In this order, each step
/// before anything is read of the body: the origin, the rate limit (429 with `Retry-After`),
/// then the form within `BODY_TIMEOUT`, its connection open to eviction while it arrives.
pub async fn login(
    State(app): State<Arc<App>>,
    axum::Extension(limiter): axum::Extension<Arc<LoginLimiter>>,
    req: Request,
) -> Response {
    // The origin first: another site learns nothing, not even whether its form was well made.
    if let Err(r) = same_origin(req.headers(), Via::Cookie) {
        return closing(r);
    }
    let from = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    if let Err(wait) = limiter.take(from) {
        app.metrics.inc("vigil_errors_total", &[("kind", "http_login_limited")]);
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        tracing::warn!("http: login attempts from {from} refused for {seconds} s: too many wrong tokens");
        let mut r = refuse(StatusCode::TOO_MANY_REQUESTS, &format!("too many wrong tokens: try again in {seconds} s"));
        r.headers_mut().insert(header::RETRY_AFTER, seconds.into());
        return closing(r);
    }
    let conn = req.extensions().get::<Handle>().cloned();
    if let Some(c) = &conn {
        c.unauthenticated();
    }
    let req = match read_body(&app, req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Some(c) = &conn {
        c.serving();
    }
    let secure = app.http.secure_cookie || forwarded_https(req.headers());
    let form = match axum::Form::<Login>::from_request(req, &()).await {
        Ok(f) => f,
        Err(e) => {
            let message = format!("{e}: send the form field `token` (application/x-www-form-urlencoded)");
            return (e.status(), axum::response::Html(login_page(Some(&message)))).into_response();
        }
    };
    let token = form.token.trim();
    if !app.token.matches(token) {
        app.metrics.inc("vigil_errors_total", &[("kind", "http_auth")]);
        return (StatusCode::UNAUTHORIZED, axum::response::Html(login_page(Some("wrong token")))).into_response();
    }
    limiter.give_back(from);
    let session = app.token.session(unix_now() + SESSION.as_secs());
    // HttpOnly: scripts never see it; SameSite=Strict: other sites' requests never carry it;
    // Max-Age: it ends with the session (the value says so too, and is checked).
    let mut cookie = format!("{COOKIE}={session}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict", SESSION.as_secs());
    if secure {
        cookie.push_str("; Secure");
    }
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}
