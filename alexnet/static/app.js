// alexnet serve: the pages' shared helpers. Plain JavaScript, no build step.
"use strict";

async function getJSON(url, options) {
  const r = await fetch(url, options);
  let body;
  try { body = await r.json(); } catch (e) { body = { error: `${r.status} ${r.statusText}` }; }
  if (!r.ok) throw new Error(body.error || `${r.status}`);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

const fmt = (v, d = 4) => (v === null || v === undefined ? "–" : typeof v === "number" ? v.toFixed(d) : v);
// A run's own pages and endpoints follow "/-/", which no run name holds: a run named grp/report
// is /api/runs/grp/report and its report /api/runs/grp/report/-/report.
const encodeRun = (name) => name.split("/").map(encodeURIComponent).join("/");
const runURL = (name, page) => "/runs/" + encodeRun(name) + (page ? "/-/" + page : "");
const apiURL = (name, what) => "/api/runs/" + encodeRun(name) + (what ? "/-/" + what : "");
const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d"];

// A line chart as SVG: series = [{label, colour, dash, points: [[x, y], ...]}].
function lineChart(series, { title = "", width = 420, height = 260, yMin = null, yMax = null } = {}) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "chart"); svg.setAttribute("width", width); svg.setAttribute("height", height);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e); return e;
  };
  const pts = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[1]));
  const L = 46, R = 10, T = 24, B = 30;
  add("text", { x: L, y: 15, "font-weight": "600" }, title);
  if (!pts.length) { add("text", { x: L, y: height / 2 }, "no finished epoch yet"); return svg; }
  let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
  let y0 = yMin ?? Math.min(...pts.map((p) => p[1])), y1 = yMax ?? Math.max(...pts.map((p) => p[1]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.06; if (yMin === null) y0 -= pad; if (yMax === null) y1 += pad;
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (width - L - R);
  const Y = (y) => height - B - ((y - y0) / (y1 - y0)) * (height - T - B);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    add("line", { x1: L, x2: width - R, y1: Y(y), y2: Y(y), stroke: "#eef0f4" });
    add("text", { x: L - 6, y: Y(y) + 4, "text-anchor": "end" }, y.toFixed(y1 - y0 < 0.1 ? 3 : 2));
  }
  const ticks = Math.min(8, Math.round(x1 - x0));
  for (let i = 0; i <= ticks; i++) {
    const x = x0 + ((x1 - x0) * i) / Math.max(ticks, 1);
    add("text", { x: X(x), y: height - B + 16, "text-anchor": "middle" }, Number.isInteger(x) ? x : x.toFixed(1));
  }
  add("text", { x: width - R, y: height - 4, "text-anchor": "end" }, "epoch");
  for (const s of series) {
    const ok = s.points.filter((p) => Number.isFinite(p[1]));
    if (!ok.length) continue;
    add("polyline", { points: ok.map((p) => `${X(p[0])},${Y(p[1])}`).join(" "), fill: "none", stroke: s.colour,
      "stroke-width": 2, "stroke-dasharray": s.dash || "", class: "series" });
    for (const p of ok) add("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: s.colour });
  }
  return svg;
}

function legend(series) {
  return el("div", { class: "legend" }, ...series.map((s) =>
    el("span", {}, el("i", { style: s.dash ? `background: repeating-linear-gradient(90deg, ${s.colour} 0 4px, transparent 4px 7px)`
      : `background:${s.colour}` }), s.label)));
}

const col = (metrics, key) => metrics.map((m) => [m.epoch, m[key] ?? NaN]);

// The two charts of a run (or of several, overlaid): loss and accuracy per epoch.
function curves(runs) {
  const many = runs.length > 1;
  const loss = [], acc = [];
  runs.forEach((r, i) => {
    const c = many ? COLOURS[i % COLOURS.length] : null;
    const tag = many ? `${r.name} ` : "";
    loss.push({ label: tag + "train loss", colour: c || COLOURS[0], dash: many ? "5 3" : "", points: col(r.metrics, "train_loss") });
    loss.push({ label: tag + "val loss", colour: c || COLOURS[1], points: col(r.metrics, "val_loss") });
    acc.push({ label: tag + "train acc", colour: c || COLOURS[0], dash: many ? "5 3" : "", points: col(r.metrics, "train_acc") });
    acc.push({ label: tag + "val acc", colour: c || COLOURS[2], points: col(r.metrics, "val_acc") });
  });
  return el("div", { class: "row" },
    el("div", {}, lineChart(loss, { title: "loss" }), legend(loss)),
    el("div", {}, lineChart(acc, { title: "accuracy" }), legend(acc)));
}

function table(rows, columns) {
  const t = el("table", {});
  t.append(el("tr", {}, ...columns.map((c) => el("th", { class: c.num ? "num" : "" }, c.label))));
  for (const r of rows) t.append(el("tr", {}, ...columns.map((c) => {
    const v = c.value(r);
    return el("td", { class: c.num ? "num" : "" }, v);
  })));
  return t;
}

function nav(here, name) {
  const h = document.querySelector("header");
  const links = [["Runs", "/", "runs"]];
  if (name) links.push([name, runURL(name), "run"], ["Explore", runURL(name, "explore"), "explore"]);
  links.push(["Compare", "/compare", "compare"]);
  h.append(el("b", {}, "alexnet serve"), ...links.map(([t, u, k]) => el("a", { href: u, class: k === here ? "here" : "" }, t)));
}

function badge(status) { return el("span", { class: `badge ${status}` }, status); }
