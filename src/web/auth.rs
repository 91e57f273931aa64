//! The page's token and who may do what: reading the page is open on loopback and needs the
//! token elsewhere; every write (threshold, verdict) needs the token, compared in constant
//! time, and is refused when a browser sends it from another origin. The login form trades
//! the token for a session cookie that expires and does not hold the token.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::App;

/// The cookie the login form sets: `<expiry, Unix seconds>.<HMAC of it, hex>`.
pub const COOKIE: &str = "vigil_session";
/// How long a login lasts: a shift, so a cookie left on a shared screen or copied from a
/// browser stops working by the next one.
pub const SESSION: Duration = Duration::from_secs(12 * 3600);
/// Shortest token accepted from `token_file`.
const MIN_LEN: usize = 16;

/// The page's token (kept as its SHA-256, so comparisons take the same time whatever the
/// length or content of what is presented), and the key of the session cookies derived from
/// it: a cookie reveals nothing of the token, and a new token ends every session.
#[derive(Clone)]
pub struct Token {
    hash: [u8; 32],
    session_key: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from its text.
    pub fn new(text: &str) -> Token {
        let mut key = <Hmac<Sha256>>::new_from_slice(text.as_bytes()).expect("HMAC takes keys of any length");
        key.update(b"vigil page session key");
        Token { hash: Sha256::digest(text.as_bytes()).into(), session_key: key.finalize().into_bytes().into() }
    }

    /// Reads `token_file`, or the default `<state_dir>/http-token` (created, readable by the
    /// daemon's user only, when it does not exist).
    pub fn load(token_file: Option<&Path>, state_dir: &Path) -> anyhow::Result<Token> {
        let path = match token_file {
            Some(p) => p.to_path_buf(),
            None => {
                let p = state_dir.join("http-token");
                if !p.exists() {
                    create(&p)?;
                    tracing::info!(
                        "the page's token is in {} (needed to change thresholds and give verdicts)",
                        p.display()
                    );
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "http.token_file {}: cannot read it; create it (`openssl rand -hex 32 > FILE`) or fix its permissions",
                path.display()
            )
        })?;
        let text = text.trim();
        if text.len() < MIN_LEN {
            anyhow::bail!(
                "http.token_file {}: the token is {} characters; use at least {MIN_LEN} (`openssl rand -hex 32 > FILE`)",
                path.display(),
                text.len()
            );
        }
        Ok(Token::new(text))
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let other: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let diff = self.hash.iter().zip(other.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }

    fn session_mac(&self, expires: u64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.session_key).expect("HMAC takes keys of any length");
        mac.update(format!("vigil session until {expires}").as_bytes());
        mac
    }

    /// The session cookie's value for a login that lasts until `expires` (Unix seconds).
    pub fn session(&self, expires: u64) -> String {
        let tag = self.session_mac(expires).finalize().into_bytes();
        let hex: String = vigil_model::digest::hex(&tag);
        format!("{expires}.{hex}")
    }

    /// Whether `value` is a session cookie of this token that has not expired at `now` (Unix
    /// seconds); the tag is compared in constant time.
    pub fn session_valid(&self, value: &str, now: u64) -> bool {
        let Some((expires, hex)) = value.split_once('.') else { return false };
        let Ok(expires) = expires.parse::<u64>() else { return false };
        // Not expired, and not longer than a session (one issued before the clock was set is
        // refused once it is).
        if expires <= now || expires > now.saturating_add(SESSION.as_secs() + 60) {
            return false;
        }
        let Some(tag) = vigil_model::digest::unhex(hex).filter(|t| t.len() == 32) else { return false };
        self.session_mac(expires).verify_slice(&tag).is_ok()
    }
}

/// Now, in Unix seconds.
pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn create(path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random)).context("reading /dev/urandom")?;
    let hex: String = vigil_model::digest::hex(&random);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).with_context(|| {
        format!("{}: cannot create the page's token; check state_dir's permissions", path.display())
    })?;
    writeln!(f, "{hex}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// How a request presented the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    Header,
    Cookie,
}

fn presented(headers: &HeaderMap) -> Option<(String, Via)> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ")
    {
        return Some((t.trim().to_owned(), Via::Header));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(|t| (t.to_owned(), Via::Cookie)))
}

/// A refusal after which the connection is closed (its body, if any, is left unread).
pub fn closing(mut r: Response) -> Response {
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

pub(super) fn refuse(status: StatusCode, why: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{why}\n")).into_response()
}

/// A 401 says which scheme it takes (RFC 9110).
fn bearer(mut r: Response) -> Response {
    r.headers_mut().insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer realm=\"vigil\""));
    r
}

fn authorised(app: &App, headers: &HeaderMap) -> Option<Via> {
    presented(headers).and_then(|(t, via)| {
        let ok = match via {
            Via::Header => app.token.matches(&t),
            Via::Cookie => app.token.session_valid(&t, unix_now()),
        };
        ok.then_some(via)
    })
}

/// Whether the page may be read: with the token, or without one from this machine itself.
pub fn may_read(app: &App, headers: &HeaderMap) -> bool {
    authorised(app, headers).is_some() || local_request(app, headers)
}

/// A request from this machine: a loopback listener, a loopback name in `Host` (not a DNS
/// name rebound to 127.0.0.1 by another site's page), and no proxy in between (a reverse
/// proxy on the box forwards the network's requests from loopback).
fn local_request(app: &App, headers: &HeaderMap) -> bool {
    if !app.http.listen.is_none_or(|a| a.ip().is_loopback()) {
        return false;
    }
    if ["forwarded", "x-forwarded-for", "x-real-ip", "via"].iter().any(|h| headers.contains_key(*h)) {
        return false;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    matches!(name.to_ascii_lowercase().as_str(), "localhost" | "127.0.0.1" | "::1")
}

/// `Ok` when a read is allowed, else the refusal.
pub fn check_read(app: &App, headers: &HeaderMap) -> Result<(), Response> {
    if may_read(app, headers) {
        Ok(())
    } else {
        Err(bearer(refuse(StatusCode::UNAUTHORIZED, "this page needs the token: log in at /login")))
    }
}

/// Refuses a browser request sent from another origin (a page elsewhere posting to vigil).
pub(super) fn same_origin(headers: &HeaderMap, via: Via) -> Result<(), Response> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            &format!("refused: a {site} request; send it from vigil's own page"),
        ));
    }
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some(origin) => {
            let bare = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")).unwrap_or("");
            if host.is_empty() || bare != host {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    &format!("refused: origin `{}` is not this page's ({host})", origin.escape_default()),
                ));
            }
            Ok(())
        }
        // Browsers always send an origin with a POST; a cookie without one is not a browser's.
        None if via == Via::Cookie => Err(refuse(StatusCode::FORBIDDEN, "refused: a write without an Origin header")),
        None => Ok(()),
    }
}

/// `Ok` when a write is allowed: the token, from this page's origin.
pub fn check_write(app: &App, headers: &HeaderMap) -> Result<(), Response> {
    match authorised(app, headers) {
        Some(via) => same_origin(headers, via),
        None if presented(headers).is_some() => {
            Err(bearer(refuse(StatusCode::UNAUTHORIZED, "wrong token, or the login expired: log in at /login again")))
        }
        None => Err(bearer(refuse(
            StatusCode::UNAUTHORIZED,
            "this needs the page's token: log in at /login, or send `Authorization: Bearer TOKEN`",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_content_and_headers_are_read() {
        let t = Token::new("0123456789abcdef0123");
        assert!(t.matches("0123456789abcdef0123"));
        assert!(!t.matches("0123456789abcdef012"));
        assert!(!t.matches(""));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=b; vigil_session=xyz; c=d".parse().unwrap());
        assert_eq!(presented(&h), Some(("xyz".into(), Via::Cookie)));
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(presented(&h), Some(("abc".into(), Via::Header)));
        let mut o = HeaderMap::new();
        o.insert(header::HOST, "127.0.0.1:9187".parse().unwrap());
        o.insert(header::ORIGIN, "http://127.0.0.1:9187".parse().unwrap());
        assert!(same_origin(&o, Via::Cookie).is_ok());
        o.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(same_origin(&o, Via::Cookie).is_err());
        o.remove(header::ORIGIN);
        assert!(same_origin(&o, Via::Cookie).is_err(), "cookie without origin");
        assert!(same_origin(&o, Via::Header).is_ok(), "a script with the bearer token");
        o.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(same_origin(&o, Via::Header).is_err());
    }

    #[test]
    fn a_session_cookie_holds_no_token_expires_and_cannot_be_altered() {
        let text = "0123456789abcdef0123";
        let t = Token::new(text);
        let now = 1_800_000_000;
        let cookie = t.session(now + SESSION.as_secs());
        assert!(!cookie.contains(text) && cookie.len() == 10 + 1 + 64, "{cookie}");
        assert!(t.session_valid(&cookie, now));
        assert!(t.session_valid(&cookie, now + SESSION.as_secs() - 1));
        assert!(!t.session_valid(&cookie, now + SESSION.as_secs()), "expired");
        // A later expiry with the old tag, a tag of another token, a session far too long.
        let (_, tag) = cookie.split_once('.').unwrap();
        assert!(!t.session_valid(&format!("{}.{tag}", now + SESSION.as_secs() + 10), now));
        assert!(!Token::new("another-token-0123456789").session_valid(&cookie, now));
        assert!(!t.session_valid(&t.session(now + 10 * SESSION.as_secs()), now));
        assert!(!t.session_valid(text, now) && !t.session_valid("", now) && !t.session_valid("1.zz", now));
    }
}
