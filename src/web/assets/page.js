// vigil's page: keeps the server-rendered cards live from /api/events (Server-Sent Events).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
// The same look as the reports' charts (pipeline/src/chart.rs): palette, threshold in black.
const STYLE = { score: "#1f77b4", threshold: "#000000", text: "#222222", axis: "#555555", grid: "#e3e3e3", font: "12px 'Noto Sans', sans-serif", title: "bold 14px 'Noto Sans', sans-serif" };
const series = new Map(); // camera -> [{t, score, threshold}]
const current = new Map(); // camera -> the threshold in force now (an edit shows at once)
let historySeconds = 6 * 3600;

function card(camera) {
  return document.querySelector(`section.camera[data-camera="${CSS.escape(camera)}"]`);
}

function el(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function ticks(lo, hi, n) {
  const span = hi - lo || 1;
  const step = Math.pow(10, Math.floor(Math.log10(span / n)));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => span / s <= n) || step * 10;
  const out = [];
  for (let v = Math.ceil(lo / nice) * nice; v <= hi + 1e-12; v += nice) out.push(v);
  return out;
}

function fmt(v) {
  return Math.abs(v) >= 100 || v === 0 ? v.toFixed(0) : v.toPrecision(3);
}

// `v` to `digits` significant digits without trailing zeros, as the server renders it
// (`number` in page.rs).
function sig(v, digits) {
  if (!isFinite(v)) return "-";
  if (v === 0) return "0";
  const decimals = Math.max(0, digits - 1 - Math.floor(Math.log10(Math.abs(v))));
  return String(Number(v.toFixed(decimals)));
}

function draw(camera) {
  const c = card(camera);
  if (!c) return;
  const svg = c.querySelector("svg.score-chart");
  const W = 520, H = 260, L = 64, R = 16, T = 30, B = 44;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const pts = series.get(camera) || [];
  const now = Date.now();
  const t0 = now - historySeconds * 1000;
  const threshold = current.has(camera) ? current.get(camera) : pts.length ? pts[pts.length - 1].threshold : Number(c.querySelector("input[name=threshold]").value);
  const scores = pts.map((p) => p.score).filter((s) => s !== null && isFinite(s));
  let hi = Math.max(threshold * 1.5 || 1, ...scores);
  let lo = Math.min(0, ...scores);
  const x = (t) => L + ((t - t0) / (now - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo || 1)) * (H - T - B);
  svg.append(el("text", { x: W / 2, y: 18, "text-anchor": "middle", style: `font:${STYLE.title}`, fill: STYLE.text }, `Score of ${camera}, last ${historySeconds / 3600} h`));
  for (const v of ticks(lo, hi, 5)) {
    svg.append(el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: STYLE.grid }));
    svg.append(el("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", style: `font:${STYLE.font}`, fill: STYLE.axis }, fmt(v)));
  }
  const hour = 3600 * 1000;
  const step = historySeconds > 3 * 3600 ? hour : hour / 2;
  for (let t = Math.ceil(t0 / step) * step; t <= now; t += step) {
    const d = new Date(t);
    const label = `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
    svg.append(el("line", { x1: x(t), x2: x(t), y1: H - B, y2: H - B + 5, stroke: STYLE.axis }));
    svg.append(el("text", { x: x(t), y: H - B + 18, "text-anchor": "middle", style: `font:${STYLE.font}`, fill: STYLE.axis }, label));
  }
  svg.append(el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: STYLE.axis }));
  svg.append(el("line", { x1: L, x2: L, y1: T, y2: H - B, stroke: STYLE.axis }));
  svg.append(el("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", style: `font:${STYLE.font}` }, "time"));
  svg.append(el("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle", transform: `rotate(-90 14 ${(T + H - B) / 2})`, style: `font:${STYLE.font}` }, "anomaly score"));
  const line = pts.filter((p) => p.t >= t0 && p.score !== null).map((p) => `${x(p.t).toFixed(1)},${y(p.score).toFixed(1)}`).join(" ");
  svg.append(el("polyline", { points: line, fill: "none", stroke: STYLE.score, "stroke-width": 1.5, class: "score-line" }));
  if (isFinite(threshold)) {
    svg.append(el("line", { x1: L, x2: W - R, y1: y(threshold), y2: y(threshold), stroke: STYLE.threshold, "stroke-dasharray": "6 4", "stroke-width": 1.5 }));
  }
  // Legend, top right.
  const lx = W - R - 170;
  svg.append(el("line", { x1: lx, x2: lx + 18, y1: T + 10, y2: T + 10, stroke: STYLE.score, "stroke-width": 2 }));
  svg.append(el("text", { x: lx + 24, y: T + 14, style: `font:${STYLE.font}` }, "score (max per second)"));
  svg.append(el("line", { x1: lx, x2: lx + 18, y1: T + 28, y2: T + 28, stroke: STYLE.threshold, "stroke-dasharray": "6 4", "stroke-width": 2 }));
  svg.append(el("text", { x: lx + 24, y: T + 32, style: `font:${STYLE.font}`, class: "threshold-label" }, `threshold ${fmt(threshold)}`));
}

const pending = new Set();
function redraw(camera) {
  if (pending.has(camera)) return;
  pending.add(camera);
  setTimeout(() => { pending.delete(camera); draw(camera); refreshLatest(camera); }, 500);
}

function refreshLatest(camera) {
  const img = card(camera)?.querySelector("img.latest-img");
  if (img) img.src = `/api/cameras/${encodeURIComponent(camera)}/latest.jpg?t=${Date.now()}`;
}

function addPoint(camera, t, score, threshold) {
  const pts = series.get(camera) || [];
  const second = Math.floor(t / 1000) * 1000;
  const last = pts[pts.length - 1];
  if (last && last.t === second) {
    if (score === null || score > last.score) last.score = score;
    last.threshold = threshold;
  } else if (!last || last.t < second) {
    pts.push({ t: second, score, threshold });
  }
  const oldest = Date.now() - historySeconds * 1000;
  while (pts.length && pts[0].t < oldest) pts.shift();
  series.set(camera, pts);
}

// Rows come rendered by the server (the same code as the page's first load).
const inserting = new Set();
async function insertAlert(camera, id, verdict) {
  const body = card(camera)?.querySelector("table.alerts tbody");
  if (!body || inserting.has(id) || body.querySelector(`tr.alert[data-id="${CSS.escape(id)}"]`)) return;
  inserting.add(id);
  try {
    const r = await fetch(`/api/cameras/${encodeURIComponent(camera)}/alerts/${encodeURIComponent(id)}/row`, { credentials: "same-origin" });
    if (!r.ok || body.querySelector(`tr.alert[data-id="${CSS.escape(id)}"]`)) return;
    const t = document.createElement("template");
    t.innerHTML = (await r.text()).trim();
    const row = t.content.firstElementChild;
    // The snapshot is written just after the alert is announced: try again once if early.
    const img = row.querySelector("img.thumb");
    if (img) img.addEventListener("error", () => setTimeout(() => { img.src = img.src.split("?")[0] + "?retry=1"; }, 1000), { once: true });
    body.prepend(row);
    if (verdict) markVerdict(camera, id, verdict);
  } finally {
    inserting.delete(id);
  }
}

function status(c, text, error) {
  const s = c.querySelector(".status");
  if (!s) return;
  s.textContent = text;
  s.classList.toggle("error", !!error);
}

async function post(url, body) {
  const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), credentials: "same-origin" });
  let data = {};
  try { data = await r.json(); } catch (_) { data = { error: await r.text().catch(() => "") }; }
  if (r.status === 401) throw new Error("needs the token: log in (link at the top)");
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

function showThreshold(camera, state) {
  const c = card(camera);
  if (!c || !state) return;
  const input = c.querySelector("input[name=threshold]");
  if (document.activeElement !== input) input.value = sig(Number(state.threshold), 4);
  current.set(camera, Number(state.threshold));
  c.querySelector(".threshold-source").textContent = `(${state.source})`;
  draw(camera);
}

async function loadState() {
  const r = await fetch("/api/state", { credentials: "same-origin" });
  if (!r.ok) return;
  const state = await r.json();
  historySeconds = state.history_seconds || historySeconds;
  for (const cam of state.cameras) {
    const c = card(cam.id);
    if (!c) { location.reload(); return; }
    for (const [k, v] of Object.entries(cam.counters)) {
      const s = c.querySelector(`[data-counter="${k}"]`);
      if (s) s.textContent = v;
    }
    showThreshold(cam.id, cam.threshold);
    showDrift(cam.id, cam.drift);
    for (const a of cam.alerts) {
      insertAlert(cam.id, a.alert.id, a.verdict);
      markVerdict(cam.id, a.alert.id, a.verdict);
    }
  }
}

// The banner that says a camera's view no longer matches its model (drift), or nothing.
function showDrift(camera, drift) {
  const p = card(camera)?.querySelector("p.drift");
  if (!p) return;
  p.hidden = !(drift && drift.state === "ON");
  p.textContent = p.hidden ? "" : drift.message;
}

function markVerdict(camera, id, verdict) {
  const row = card(camera)?.querySelector(`tr.alert[data-id="${CSS.escape(id)}"]`);
  if (!row) return;
  for (const b of row.querySelectorAll("button.verdict")) b.setAttribute("aria-pressed", String(b.dataset.verdict === verdict));
  if (viewing && viewing.dataset.camera === camera && viewing.dataset.id === id) syncViewer();
}

// Gives a verdict and says so in the camera's card; returns what was said, and whether it
// was an error, for the full-size view to show too.
async function giveVerdict(camera, id, verdict, label) {
  const c = card(camera);
  try {
    await post(`/api/cameras/${encodeURIComponent(camera)}/alerts/${encodeURIComponent(id)}/verdict`, { verdict });
    markVerdict(camera, id, verdict);
    const text = `alert ${id.slice(-6)}: ${label}, saved to the data set`;
    status(c, text);
    return [text, false];
  } catch (e) {
    status(c, e.message, true);
    return [e.message, true];
  }
}

// The full-size view of one alert: the clean frame, the anomaly map over it (M), the region
// outlined, verdicts from the keyboard (F, C), the next and previous alerts (arrows), Esc.
const viewer = document.getElementById("viewer");
let viewing = null; // the alert's link in the table

function alertLinks() {
  return [...document.querySelectorAll("a.open-viewer")];
}

function openViewer(link) {
  viewing = link;
  const d = link.dataset;
  const base = `/api/cameras/${encodeURIComponent(d.camera)}/alerts/${encodeURIComponent(d.id)}`;
  const frame = viewer.querySelector("img.frame");
  const map = viewer.querySelector("img.map");
  const svg = viewer.querySelector("svg.region");
  const rect = svg.querySelector("rect");
  // The region is in the frame's pixels; without the frame only the snapshot (box drawn in).
  const [x, y, w, h] = (d.bbox || "").split(",").map(Number);
  const kept = d.frame === "true";
  svg.style.display = kept && w > 0 && h > 0 ? "" : "none";
  for (const [k, v] of Object.entries({ x, y, width: w, height: h })) rect.setAttribute(k, v);
  frame.onload = () => {
    const [nw, nh] = [frame.naturalWidth, frame.naturalHeight];
    svg.setAttribute("viewBox", `0 0 ${nw} ${nh}`);
    // As large as the window allows, small frames scaled up too; the map and the region
    // follow the frame's box.
    const scale = Math.min((0.92 * innerWidth) / nw, (0.72 * innerHeight) / nh);
    frame.style.width = `${Math.round(nw * scale)}px`;
  };
  frame.src = kept ? `${base}/frame` : `${base}/snapshot.jpg`;
  map.src = `${base}/snapshot.jpg`;
  viewer.querySelector("#viewer-title").textContent = `${d.camera} · ${d.time}`;
  viewer.querySelector(".viewer-score").textContent =
    `score ${sig(Number(d.score), 3)} (normalized ${sig(Number(d.normalized), 2)}, 0.5 at the threshold) · threshold ${sig(Number(d.threshold), 4)}`;
  viewer.querySelector(".viewer-status").textContent = "";
  syncViewer();
  if (!viewer.open) viewer.showModal();
}

function syncViewer() {
  const row = viewing.closest("tr.alert");
  const map = viewer.querySelector("img.map");
  map.hidden = !viewer.querySelector("#viewer-map").checked;
  for (const b of viewer.querySelectorAll("button.viewer-verdict")) {
    const same = row.querySelector(`button.verdict[data-verdict="${b.dataset.verdict}"]`);
    b.disabled = !same;
    b.setAttribute("aria-pressed", same ? same.getAttribute("aria-pressed") || "false" : "false");
  }
}

async function viewerVerdict(verdict) {
  const b = viewer.querySelector(`button.viewer-verdict[data-verdict="${verdict}"]`);
  if (!viewing || b.disabled) return;
  const [text, error] = await giveVerdict(viewing.dataset.camera, viewing.dataset.id, verdict, b.textContent.replace(/[A-Z]$/, "").trim().toLowerCase());
  const s = viewer.querySelector(".viewer-status");
  s.textContent = text;
  s.classList.toggle("error", error);
}

function stepViewer(by) {
  const links = alertLinks();
  const next = links[links.indexOf(viewing) + by];
  if (next) openViewer(next);
}

viewer.addEventListener("click", (ev) => {
  const b = ev.target.closest("button");
  if (ev.target === viewer || b?.classList.contains("viewer-close")) viewer.close();
  else if (b?.classList.contains("viewer-verdict")) viewerVerdict(b.dataset.verdict);
  else if (b?.classList.contains("viewer-prev")) stepViewer(-1);
  else if (b?.classList.contains("viewer-next")) stepViewer(1);
});
viewer.querySelector("#viewer-map").addEventListener("change", syncViewer);
viewer.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const key = ev.key.toLowerCase();
  if (key === "m") {
    const toggle = viewer.querySelector("#viewer-map");
    toggle.checked = !toggle.checked;
    syncViewer();
  } else if (key === "f") viewerVerdict("false_alarm");
  else if (key === "c") viewerVerdict("confirmed");
  else if (ev.key === "ArrowLeft") stepViewer(-1);
  else if (ev.key === "ArrowRight") stepViewer(1);
  else return;
  ev.preventDefault();
});
viewer.addEventListener("close", () => { viewing = null; });

document.addEventListener("click", (ev) => {
  const link = ev.target.closest("a.open-viewer");
  if (!link || ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
  ev.preventDefault();
  openViewer(link);
});

async function loadHistory(camera) {
  const r = await fetch(`/api/cameras/${encodeURIComponent(camera)}/history`, { credentials: "same-origin" });
  if (r.ok) series.set(camera, await r.json());
  draw(camera);
}

function follow() {
  const live = document.getElementById("live");
  const events = new EventSource("/api/events");
  events.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  events.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  events.onmessage = (m) => {
    const e = JSON.parse(m.data);
    if (e.type === "resync") { loadState(); return; }
    const c = card(e.camera);
    if (!c) { loadState(); return; }
    if (e.type === "score") {
      addPoint(e.camera, e.t, e.score, e.threshold);
      current.set(e.camera, e.threshold);
      const n = c.querySelector('[data-counter="normal"]');
      redraw(e.camera);
      if (n && e.score !== null && e.score <= e.threshold) n.textContent = Number(n.textContent) + 1;
    } else if (e.type === "alert") {
      insertAlert(e.camera, e.alert.id);
      const n = c.querySelector('[data-counter="alerts"]');
      if (n) n.textContent = Number(n.textContent) + 1;
    } else if (e.type === "threshold") {
      showThreshold(e.camera, e.state);
    } else if (e.type === "verdict") {
      markVerdict(e.camera, e.id, e.verdict);
    } else if (e.type === "drift") {
      showDrift(e.camera, e.drift);
    }
  };
}

document.addEventListener("submit", async (ev) => {
  const form = ev.target.closest("form.threshold");
  if (!form) return;
  ev.preventDefault();
  const c = form.closest("section.camera");
  const raw = form.querySelector("input[name=threshold]").value.trim();
  try {
    const state = await post(`/api/cameras/${encodeURIComponent(c.dataset.camera)}/threshold`, { threshold: raw === "" ? null : Number(raw) });
    showThreshold(c.dataset.camera, state);
    status(c, "saved");
  } catch (e) {
    status(c, e.message, true);
  }
});

document.addEventListener("click", (ev) => {
  const b = ev.target.closest("button.verdict");
  if (!b) return;
  giveVerdict(b.closest("section.camera").dataset.camera, b.closest("tr.alert").dataset.id, b.dataset.verdict, b.textContent.toLowerCase());
});

for (const c of document.querySelectorAll("section.camera")) loadHistory(c.dataset.camera);
setInterval(loadState, 10000);
follow();
