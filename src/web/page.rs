//! The operator's page: server-rendered HTML (one card per camera: the latest frame with its
//! heatmap, the score chart, the threshold, the recent alerts with verdict buttons, counters)
//! and the small script and style compiled into the binary that keep it live.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::App;
use super::auth::may_read;

const SCRIPT: &str = include_str!("assets/page.js");
const STYLE: &str = include_str!("assets/page.css");

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn shell(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/static/page.css\"></head><body>{body}</body></html>\n",
        esc(title)
    )
}

/// `GET /static/{file}`: the script and the style (nothing is read from disk).
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "page.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "page.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return super::api::not_found().await,
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// `v` to `digits` significant digits, without trailing zeros (`26.7264` to 3: `26.7`): a
/// score or threshold as an operator reads it; the exact value stays in the data.
pub fn number(v: f64, digits: i32) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let decimals = (digits - 1 - v.abs().log10().floor() as i32).max(0) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text }
}

fn alert_row(camera: &str, a: &serde_json::Value) -> String {
    let alert = &a["alert"];
    let id = alert["id"].as_str().unwrap_or("");
    let verdict = a["verdict"].as_str().unwrap_or("");
    let region = alert["region"]["bbox"]
        .as_array()
        .map(|b| b.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))
        .map(|b| format!("[{b}]"))
        .unwrap_or_else(|| "-".into());
    let model = format!("{} v{}", alert["model"]["name"].as_str().unwrap_or(""), alert["model"]["version"]);
    let snapshot = format!("/api/cameras/{}/alerts/{}/snapshot.jpg", esc(camera), esc(id));
    let buttons = if a["frame"].as_bool().unwrap_or(false) {
        format!(
            "<button class=\"verdict\" data-verdict=\"false_alarm\"{}>False alarm</button>\
             <button class=\"verdict\" data-verdict=\"confirmed\"{}>Confirmed</button>",
            if verdict == "false_alarm" { " aria-pressed=\"true\"" } else { "" },
            if verdict == "confirmed" { " aria-pressed=\"true\"" } else { "" },
        )
    } else {
        "<span class=\"hint\">frame no longer kept</span>".into()
    };
    let bbox = alert["region"]["bbox"]
        .as_array()
        .map(|b| b.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    let value = |key: &str| alert[key].as_f64().unwrap_or(f64::NAN);
    // The link opens the full-size view (the script); without the script, the snapshot.
    format!(
        "<tr class=\"alert\" data-id=\"{id}\"><td><a class=\"open-viewer\" href=\"{snapshot}\" target=\"_blank\" \
         data-camera=\"{camera}\" data-id=\"{id}\" data-frame=\"{frame}\" data-time=\"{time}\" data-score=\"{score}\" \
         data-normalized=\"{normalized}\" data-threshold=\"{threshold}\" data-bbox=\"{bbox}\">\
         <img class=\"thumb\" src=\"{snapshot}\" alt=\"snapshot of alert {id}\" loading=\"lazy\"></a></td>\
         <td><time>{time}</time><br><span class=\"score\">score {score_text}</span> \
         <span class=\"normalized\" title=\"normalized score: 0.5 at the threshold, 1 far above it\">({normalized_text})</span></td>\
         <td>{region}</td><td>{model}</td><td class=\"verdicts\">{buttons}</td></tr>",
        id = esc(id),
        camera = esc(camera),
        frame = a["frame"].as_bool().unwrap_or(false),
        time = esc(alert["frame_time"].as_str().unwrap_or("")),
        score = value("score"),
        normalized = value("normalized_score"),
        threshold = value("threshold"),
        score_text = number(value("score"), 3),
        normalized_text = number(value("normalized_score"), 2),
        bbox = esc(&bbox),
        region = esc(&region),
        model = esc(&model),
    )
}

fn camera_card(c: &serde_json::Value) -> String {
    let id = c["id"].as_str().unwrap_or("");
    let model = match c["model"].as_object() {
        Some(m) => {
            format!("{} v{} ({})", m["name"].as_str().unwrap_or(""), m["version"], m["family"].as_str().unwrap_or(""))
        }
        None => "-".into(),
    };
    let t = &c["threshold"];
    // Four significant digits: what the operator reads and would type; the exact value is in
    // `threshold/state` and the API.
    let threshold = t["threshold"].as_f64().map(|v| number(v, 4)).unwrap_or_default();
    let counters = &c["counters"];
    let alerts: String =
        c["alerts"].as_array().map(|a| a.iter().map(|a| alert_row(id, a)).collect()).unwrap_or_default();
    format!(
        "<section class=\"camera\" id=\"camera-{id}\" data-camera=\"{id}\">\
         <h2>{id} <small class=\"model\">{model}</small></h2>\
         <p class=\"drift\" role=\"alert\"{drift_hidden}>{drift}</p>\
         <div class=\"row\"><figure class=\"latest\"><img class=\"latest-img\" alt=\"latest frame of {id} with its anomaly map\" src=\"/api/cameras/{id}/latest.jpg\"><figcaption>Latest frame, anomaly map over it</figcaption></figure>\
         <figure class=\"chart\"><svg class=\"score-chart\" role=\"img\" aria-label=\"score of {id} over time\"></svg></figure></div>\
         <form class=\"threshold\"><label>Threshold <input type=\"number\" step=\"any\" name=\"threshold\" value=\"{threshold}\"></label>\
         <button type=\"submit\">Set</button><span class=\"threshold-source\">({source})</span><span class=\"status\" role=\"status\"></span></form>\
         <p class=\"counters\">frames: <span data-counter=\"normal\">{normal}</span> normal, <span data-counter=\"anomalous\">{anomalous}</span> anomalous, \
         <span data-counter=\"rejected\">{rejected}</span> rejected; <span data-counter=\"alerts\">{nalerts}</span> alerts</p>\
         <table class=\"alerts\"><thead><tr><th>Snapshot</th><th>Frame time</th><th>Region [x, y, w, h]</th><th>Model</th><th>Verdict</th></tr></thead><tbody>{alerts}</tbody></table>\
         </section>",
        id = esc(id),
        model = esc(&model),
        threshold = esc(&threshold),
        source = esc(t["source"].as_str().unwrap_or("")),
        normal = counters["normal"],
        anomalous = counters["anomalous"],
        rejected = counters["rejected"],
        nalerts = counters["alerts"],
        drift_hidden = if c["drift"]["state"] == "ON" { "" } else { " hidden" },
        drift = esc(c["drift"]["message"].as_str().unwrap_or("")),
    )
}

/// `GET /api/cameras/{camera}/alerts/{id}/row`: one alert's table row, rendered as on the
/// page, for the script to insert when the alert arrives live (one renderer, not two).
pub async fn alert_row_html(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((camera, id)): Path<(String, String)>,
) -> Response {
    if let Err(r) = super::auth::check_read(&app, &headers) {
        return r;
    }
    match app.board.alerts(&camera).into_iter().find(|a| a.id == id) {
        Some(alert) => {
            let row = alert_row(&camera, &super::api::alert_entry(&app, &camera, alert));
            ([(header::CACHE_CONTROL, "no-store")], Html(row)).into_response()
        }
        None => super::api::not_found().await,
    }
}

/// The full-size view of one alert, filled and opened by the script: the clean frame, the
/// snapshot with the anomaly map over it (a toggle), the region outlined, and the verdicts,
/// each with its key.
const VIEWER: &str = "<dialog id=\"viewer\" aria-labelledby=\"viewer-title\"><div class=\"viewer-head\">\
     <h2 id=\"viewer-title\"></h2><p class=\"viewer-score\"></p></div>\
     <div class=\"viewer-stage\"><img class=\"frame\" alt=\"the alert's frame\"><img class=\"map\" alt=\"the anomaly map over the frame\">\
     <svg class=\"region\" preserveAspectRatio=\"none\" aria-hidden=\"true\"><rect fill=\"none\" stroke=\"#00e5ff\" stroke-width=\"3\" vector-effect=\"non-scaling-stroke\"></rect></svg></div>\
     <div class=\"viewer-controls\"><label><input type=\"checkbox\" id=\"viewer-map\" checked> Anomaly map <kbd>M</kbd></label>\
     <button class=\"viewer-verdict\" data-verdict=\"false_alarm\">False alarm <kbd>F</kbd></button>\
     <button class=\"viewer-verdict\" data-verdict=\"confirmed\">Confirmed <kbd>C</kbd></button>\
     <button class=\"viewer-prev\">Newer <kbd>←</kbd></button><button class=\"viewer-next\">Older <kbd>→</kbd></button>\
     <button class=\"viewer-close\">Close <kbd>Esc</kbd></button><span class=\"viewer-status\" role=\"status\"></span></div></dialog>";

/// `GET /`: the page.
pub async fn index(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if !may_read(&app, &headers) {
        return Redirect::to("/login").into_response();
    }
    let cards: String =
        super::api::cameras(&app).iter().map(|c| camera_card(&super::api::camera_state(&app, c))).collect();
    let body = format!(
        "<header><h1>vigil <small>{device}</small></h1><span id=\"live\" class=\"live\">connecting…</span>\
         <a class=\"login-link\" href=\"/login\">token</a></header><main id=\"cameras\">{cards}</main>\
         <footer>vigil {version} · <a href=\"/metrics\">metrics</a></footer>{viewer}<script src=\"/static/page.js\"></script>",
        viewer = VIEWER,
        device = esc(&app.device_id),
        version = esc(crate::VERSION),
    );
    (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")], Html(shell(&format!("vigil · {}", app.device_id), &body)))
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_are_shown_to_sensible_precision() {
        use super::number;
        assert_eq!(number(26.72640609, 4), "26.73");
        assert_eq!(number(26.72640609, 3), "26.7");
        assert_eq!(number(0.7349, 2), "0.73");
        assert_eq!(number(1234.6, 3), "1235");
        assert_eq!(number(0.000123456, 3), "0.000123");
        assert_eq!(number(2.0, 3), "2");
        assert_eq!((number(0.0, 3), number(f64::NAN, 3)), ("0".into(), "-".into()));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(super::esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
