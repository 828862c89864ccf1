// The rayforge dashboard: one script drawing every page from the JSON
// endpoints under /api/v0/ (no framework, no build step).
"use strict";

const main = document.getElementById("main");
let refreshTimer = null;

// ---------- helpers ----------

async function api(path, opts) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin", headers: { Accept: "application/json" } }, opts || {}));
  if (r.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
    throw new Error("not logged in");
  }
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new Error((body && body.error) || (r.status + " " + r.statusText));
  return body;
}

// h("tag", {attrs}, children...): children are nodes, strings or arrays.
function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  const add = (c) => {
    if (c === null || c === undefined) return;
    if (Array.isArray(c)) c.forEach(add);
    else e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  };
  kids.forEach(add);
  return e;
}

function table(headers, rows, opts) {
  const nums = (opts && opts.num) || [];
  return h("table", opts && opts.id ? { id: opts.id } : {},
    h("thead", {}, h("tr", {}, headers.map((t, i) => h("th", nums.includes(i) ? { class: "num" } : {}, t)))),
    h("tbody", {}, rows.length === 0
      ? h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "none"))
      : rows.map((r) => h("tr", {}, r.map((c, i) => h("td", nums.includes(i) ? { class: "num" } : {}, c))))));
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + u[i];
}
const num = (x, d) => (x === null || x === undefined ? "–" : Number(x).toFixed(d === undefined ? 1 : d));
const when = (ms) => (ms ? new Date(ms).toLocaleString() : "–");
const state = (s) => h("span", { class: "state-" + s }, s);
const short = (id) => (id || "").slice(0, 12);
const link = (href, text) => h("a", { href }, text);
function bar(used, total) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  return h("div", { class: "bar", title: pct.toFixed(0) + "%" }, h("span", { style: "width:" + pct.toFixed(1) + "%" }));
}
function resources(total, avail) {
  return Object.keys(total || {}).filter((k) => k !== "memory" && !k.includes("_group_")).sort()
    .map((k) => k + " " + num(total[k] - ((avail || {})[k] || 0), 1) + "/" + num(total[k], 1)).join(", ");
}
function show(...kids) {
  main.replaceChildren(...kids.flat(Infinity).filter((k) => k !== ""));
}
function fail(e) {
  show(h("p", { class: "error", id: "page-error" }, "Error: " + e.message));
}
// Follows server-sent events into a <pre>, closing on `end`.
function follow(url, pre, status) {
  const es = new EventSource(url);
  es.addEventListener("data", (e) => {
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent += e.data + "\n";
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  });
  es.addEventListener("end", (e) => { status.textContent = e.data; es.close(); });
  es.addEventListener("error", (e) => {
    if (e.data) status.textContent = "error: " + e.data;
    es.close();
  });
  status.textContent = "following…";
  window.addEventListener("beforeunload", () => es.close());
  return es;
}

// ---------- charts: plain SVG of our own ----------
// Everything from the cluster (names, labels) goes in as text nodes or
// attributes; no coordinate is ever written unless it is finite.

const SVGNS = "http://www.w3.org/2000/svg";
function sv(tag, attrs, ...kids) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    e.setAttribute(k, String(v));
  }
  for (const c of kids.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const fin = (v) => typeof v === "number" && Number.isFinite(v);
// A coordinate, one decimal (0 where it would not be finite).
const r1 = (v) => (fin(v) ? Math.round(v * 10) / 10 : 0);
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2",
  "#db2777", "#65a30d", "#475569", "#ea580c", "#0d9488", "#9333ea"];
const CHAR_W = 6.2; // about the width of a character of the charts' 11px text
const LEGEND_MAX = 12;
const clip = (s, n) => (s.length > n ? s.slice(0, n - 1) + "…" : s);
const svgTitle = (text) => sv("title", {}, text);

// A number short enough for an axis or a cell: 4 significant digits,
// k/M/G above 10,000, an exponent below 0.001.
function fmtNum(v, step) {
  if (!fin(v)) return "–";
  const a = Math.abs(v);
  if (a === 0) return "0";
  const digits = step > 0 ? Math.min(8, Math.max(3, Math.ceil(Math.log10(a / step)) + 1)) : 4;
  for (const [lim, div, suf] of [[1e12, 1e12, "T"], [1e9, 1e9, "G"], [1e6, 1e6, "M"], [1e4, 1e3, "k"]]) {
    if (a >= lim && !(step > 0 && step < div / 1000)) return String(Number((v / div).toPrecision(digits))) + suf;
  }
  // On an axis, the decimals its step needs (the same on every tick).
  const decimals = step > 0 ? Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) : null;
  if (decimals !== null && decimals <= 5) return v.toFixed(decimals);
  if (a < 1e-3) return v.toExponential(Math.max(0, Math.min(3, digits - 1))).replace(/\.?0+e/, "e").replace("e+", "e");
  return String(Number(v.toPrecision(4)));
}
// A value from the cluster for a table cell.
function fmtVal(v) {
  if (v === null || v === undefined || v === "") return "–";
  if (typeof v === "number") return Number.isInteger(v) && Math.abs(v) < 1e15 ? String(v) : fmtNum(v);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function niceStep(span, n) {
  const raw = span / Math.max(1, n);
  if (!(raw > 0) || !fin(raw)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / p;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
}
// The multiples of `step` within [lo, hi].
function ticksOf(lo, hi, step) {
  const out = [];
  const k0 = Math.ceil(lo / step - 1e-9), k1 = Math.floor(hi / step + 1e-9);
  for (let k = k0; k <= k1 && out.length < 50; k++) out.push(Number((k * step).toPrecision(15)));
  return out;
}
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400].map((s) => s * 1000);
const pad2 = (n) => String(n).padStart(2, "0");
function clock(t, withSeconds) {
  const d = new Date(t);
  return pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + (withSeconds ? ":" + pad2(d.getSeconds()) : "");
}

// The y scale: its domain (padded and widened to round ticks) and ticks.
function yAxis(lo, hi, o) {
  if (o.logY) {
    let a = Math.floor(lo), b = Math.ceil(hi);
    if (a === b) { a -= 1; b += 1; }
    const every = Math.max(1, Math.ceil((b - a) / 5));
    const t = [];
    for (let k = a; k <= b; k += every) t.push(k);
    return { lo: a, hi: b, ticks: t.map((k) => [k, fmtNum(Math.pow(10, k))]) };
  }
  // A little room above and below the data (not below 0 for data >= 0).
  const room = (hi - lo) * 0.04;
  lo = lo >= 0 && lo - room < 0 ? 0 : lo - room;
  hi = hi <= 0 && hi + room > 0 ? 0 : hi + room;
  if (o.yZero) { lo = Math.min(lo, 0); hi = Math.max(hi, 0); }
  if (lo === hi) {
    const p = Math.abs(lo) * 0.1 || (o.yBytes ? 1024 : 1);
    lo -= p; hi += p;
    if (o.yZero && lo < 0 && hi - p >= 0) lo = 0;
  }
  let unit = 1;
  if (o.yBytes) unit = Math.pow(1024, Math.max(0, Math.floor(Math.log(Math.max(Math.abs(lo), Math.abs(hi))) / Math.log(1024))));
  const step = Math.max(o.yInteger ? 1 : 0, niceStep((hi - lo) / unit, 4) * unit);
  lo = Math.floor(lo / step + 1e-9) * step;
  hi = Math.ceil(hi / step - 1e-9) * step;
  const f = o.yFormat || ((v) => fmtNum(v, step));
  return { lo, hi, ticks: ticksOf(lo, hi, step).map((v) => [v, f(v)]) };
}
function xAxis(lo, hi, o) {
  if (o.xTime) {
    const step = TIME_STEPS.find((s) => (hi - lo) / s <= 6) || 86400000 * Math.ceil((hi - lo) / 86400000 / 6);
    const tz = new Date(lo).getTimezoneOffset() * 60000;
    const out = [];
    for (let t = Math.ceil((lo + tz) / step) * step - tz; t <= hi && out.length < 50; t += step) out.push([t, clock(t, step < 60000)]);
    return out;
  }
  const step = Math.max(o.xInteger ? 1 : 0, niceStep(hi - lo, 5));
  const f = o.xFormat || ((v) => fmtNum(v, step));
  return ticksOf(lo, hi, step).map((v) => [v, f(v)]);
}

// Legend entries ({text, full?, swatch(x, y)}) laid out in rows under the plot.
function legendRows(entries, x0, x1) {
  const rows = [[]];
  let x = x0;
  for (const e of entries) {
    const w = 22 + e.text.length * CHAR_W + 14;
    if (x + w > x1 && rows[rows.length - 1].length) { rows.push([]); x = x0; }
    rows[rows.length - 1].push([x, e]);
    x += w;
  }
  return rows;
}
function drawLegend(g, entries, x0, x1, y0) {
  const rows = legendRows(entries, x0, x1);
  rows.forEach((row, i) => {
    const y = y0 + i * 16;
    for (const [x, e] of row) {
      g.appendChild(sv("g", { class: "legend-entry" }, e.swatch(x, y), sv("text", { x: r1(x + 22), y: r1(y + 4) }, e.text), e.full ? svgTitle(e.full) : null));
    }
  });
  return rows.length * 16;
}

// A line chart, returned as <svg class="chart" data-chart=ID>. Options:
// {id, title, xLabel, yLabel, series: [{name, xs, ys, color?, dash?, width?,
//   dots?, step?, band?: {lo, hi}, end?: "stopped"|"paused"|null}],
//  marks: [{x, kind: "checkpoint"|"restart", label}], logY?, yZero?,
//  yBytes?, yFormat?, xTime?, xFormat?, last?}
// Each series is one <path data-series=NAME data-points=N>, N the points
// drawn (one M or L each); a point with a y that is missing or not finite
// is a gap.
function lineChart(o) {
  const W = 560, PH = 170, top = 30;
  const series = (o.series || []).map((se, i) => Object.assign({ color: PALETTE[i % PALETTE.length] }, se));
  const ty = o.logY ? (v) => (fin(v) && v > 0 ? Math.log10(v) : null) : (v) => (fin(v) ? v : null);
  let xlo = Infinity, xhi = -Infinity, ylo = Infinity, yhi = -Infinity;
  for (const se of series) {
    const xs = Array.isArray(se.xs) ? se.xs : [], ys = Array.isArray(se.ys) ? se.ys : [];
    const n = Math.min(xs.length, ys.length);
    const px = [], py = [];
    for (let i = 0; i < n; i++) {
      const x = xs[i], y = ty(ys[i]);
      if (!fin(x) || y === null) { px.push(null); py.push(null); continue; }
      px.push(x); py.push(y);
      if (x < xlo) xlo = x;
      if (x > xhi) xhi = x;
      if (y < ylo) ylo = y;
      if (y > yhi) yhi = y;
    }
    se.px = px; se.py = py;
    se.bandPts = [];
    if (se.band && Array.isArray(se.band.lo) && Array.isArray(se.band.hi)) {
      let seg = [];
      for (let i = 0; i < n; i++) {
        const x = xs[i], a = ty(se.band.lo[i]), b = ty(se.band.hi[i]);
        if (!fin(x) || a === null || b === null) { if (seg.length) se.bandPts.push(seg); seg = []; continue; }
        seg.push([x, Math.min(a, b), Math.max(a, b)]);
        if (x < xlo) xlo = x;
        if (x > xhi) xhi = x;
        ylo = Math.min(ylo, a, b); yhi = Math.max(yhi, a, b);
      }
      if (seg.length) se.bandPts.push(seg);
    }
  }
  let marks = (o.marks || []).filter((m) => m && fin(m.x));
  const empty = xlo > xhi;
  if (empty) {
    for (const m of marks) { xlo = Math.min(xlo, m.x); xhi = Math.max(xhi, m.x); }
    if (xlo > xhi) { xlo = 0; xhi = 1; }
    if (ylo > yhi) { ylo = 0; yhi = 1; }
  }
  if (Array.isArray(o.xDomain) && !empty) { xlo = Math.min(xlo, o.xDomain[0]); xhi = Math.max(xhi, o.xDomain[1]); }
  if (xlo === xhi) { const p = o.xTime ? 60000 : Math.abs(xlo) * 0.05 || 1; xlo -= p; xhi += p; }
  const ya = yAxis(ylo, yhi, o);
  const xt = xAxis(xlo, xhi, o);

  const left = (o.yLabel ? 20 : 6) + Math.min(80, Math.max(26, 8 + Math.max(...ya.ticks.map((t) => t[1].length)) * CHAR_W));
  const right = W - 16, bottom = top + PH, pw = right - left;
  const sx = (x) => left + ((x - xlo) / (xhi - xlo)) * pw;
  const sy = (y) => bottom - ((y - ya.lo) / (ya.hi - ya.lo)) * PH;

  const grid = sv("g", { class: "grid" });
  const axes = sv("g", { class: "axes" });
  for (const [v, label] of ya.ticks) {
    const y = r1(sy(v));
    grid.appendChild(sv("line", { x1: r1(left), x2: r1(right), y1: y, y2: y }));
    axes.appendChild(sv("text", { x: r1(left - 6), y: r1(y + 3.5), "text-anchor": "end" }, label));
  }
  for (const [v, label] of xt) {
    const x = r1(sx(v));
    axes.appendChild(sv("line", { class: "tick", x1: x, x2: x, y1: bottom, y2: bottom + 4 }));
    axes.appendChild(sv("text", { x, y: bottom + 15, "text-anchor": "middle" }, label));
  }
  axes.appendChild(sv("path", { class: "axis", d: `M ${r1(left)} ${top} V ${bottom} H ${r1(right)}` }));
  if (o.xLabel) axes.appendChild(sv("text", { class: "axis-label", x: r1((left + right) / 2), y: bottom + 30, "text-anchor": "middle" }, o.xLabel));
  if (o.yLabel) axes.appendChild(sv("text", { class: "axis-label", x: 0, y: 0, "text-anchor": "middle", transform: `translate(12 ${r1(top + PH / 2)}) rotate(-90)` }, o.yLabel));

  // Vertical marks within the x range (at most 300 checkpoints drawn).
  const markG = sv("g", { class: "marks" });
  const kinds = new Set();
  const inRange = marks.filter((m) => m.x >= xlo && m.x <= xhi);
  const cps = inRange.filter((m) => m.kind !== "restart");
  const every = Math.ceil(cps.length / 300);
  for (const [i, m] of cps.entries()) {
    if (i % every && i !== cps.length - 1) continue;
    const x = r1(sx(m.x));
    kinds.add("checkpoint");
    markG.appendChild(sv("line", { class: "mark-checkpoint", x1: x, x2: x, y1: top, y2: bottom }, m.label ? svgTitle(m.label) : null));
  }
  for (const m of inRange.filter((m) => m.kind === "restart")) {
    const x = r1(sx(m.x));
    kinds.add("restart");
    markG.appendChild(sv("line", { class: "mark-restart", x1: x, x2: x, y1: top, y2: bottom }, svgTitle(m.label || "restart")));
  }

  const bands = sv("g", { class: "bands" });
  const lines = sv("g", { class: "lines" });
  const ends = sv("g", { class: "ends" });
  for (const se of series) {
    for (const seg of se.bandPts) {
      const up = seg.map(([x, , b], i) => (i ? "L " : "M ") + r1(sx(x)) + " " + r1(sy(b)));
      const down = seg.slice().reverse().map(([x, a]) => "L " + r1(sx(x)) + " " + r1(sy(a)));
      bands.appendChild(sv("path", { class: "band", "data-band": se.name, fill: se.color, d: up.concat(down).join(" ") + " Z" }));
    }
    const parts = [];
    let pen = false, count = 0, last = -1;
    for (let i = 0; i < se.py.length; i++) {
      if (se.py[i] === null) { pen = false; continue; }
      const X = r1(sx(se.px[i])), Y = r1(sy(se.py[i]));
      if (se.dots) parts.push("M " + X + " " + Y + " h0");
      else if (!pen) parts.push("M " + X + " " + Y);
      else if (se.step) parts.push("H " + X + " L " + X + " " + Y);
      else parts.push("L " + X + " " + Y);
      pen = true; count++; last = i;
      // A point alone (gaps or ends both sides) gets a dot to be seen.
      if (!se.dots && (i === 0 || se.py[i - 1] === null) && (i === se.py.length - 1 || se.py[i + 1] === null)) {
        ends.appendChild(sv("circle", { class: "point", cx: X, cy: Y, r: 2.6, fill: se.color }));
      }
    }
    lines.appendChild(sv("path", {
      class: "series" + (se.dots ? " dots" : ""), "data-series": String(se.name), "data-points": count, d: parts.join(" "),
      stroke: se.color, "stroke-width": se.dots ? 6 : se.width || 1.7, "stroke-dasharray": se.dash || null,
    }, svgTitle(String(se.name))));
    if (se.end && last >= 0) {
      const X = r1(sx(se.px[last])), Y = r1(sy(se.py[last]));
      if (se.end === "stopped") {
        ends.appendChild(sv("path", { class: "end-stopped", stroke: se.color, d: `M ${r1(X - 4)} ${r1(Y - 4)} L ${r1(X + 4)} ${r1(Y + 4)} M ${r1(X - 4)} ${r1(Y + 4)} L ${r1(X + 4)} ${r1(Y - 4)}` },
          svgTitle(se.name + ": stopped")));
      } else {
        ends.appendChild(sv("circle", { class: "end-paused", stroke: se.color, cx: X, cy: Y, r: 4.5 }, svgTitle(se.name + ": paused")));
      }
    }
  }

  // The legend: the first 12 series, then what the marks mean.
  const entries = [];
  const banded = series.filter((se) => se.bandPts.length);
  if (series.length > 1 || kinds.size || banded.length) {
    for (const se of series.slice(0, LEGEND_MAX)) {
      const name = String(se.name);
      entries.push({ text: clip(name, 28), full: name, swatch: (x, y) => se.dots
        ? sv("circle", { cx: r1(x + 9), cy: y, r: 3, fill: se.color })
        : sv("line", { x1: r1(x), x2: r1(x + 18), y1: y, y2: y, stroke: se.color, "stroke-width": 2, "stroke-dasharray": se.dash || null }) });
    }
    for (const se of banded.slice(0, LEGEND_MAX)) {
      const text = se.band.label || String(se.name) + " range";
      entries.push({ text: clip(text, 28), full: text, swatch: (x, y) => sv("rect", { x: r1(x), y: y - 5, width: 18, height: 10, fill: se.color, "fill-opacity": 0.16 }) });
    }
    if (series.length > LEGEND_MAX) entries.push({ text: "+" + (series.length - LEGEND_MAX) + " more", swatch: () => null });
    if (kinds.has("checkpoint")) entries.push({ text: "checkpoint", swatch: (x, y) => sv("line", { class: "swatch-checkpoint", x1: r1(x + 9), x2: r1(x + 9), y1: y - 6, y2: y + 6, "stroke-dasharray": "2 2" }) });
    if (kinds.has("restart")) entries.push({ text: "restart", swatch: (x, y) => sv("line", { class: "swatch-restart", x1: r1(x + 9), x2: r1(x + 9), y1: y - 6, y2: y + 6, "stroke-dasharray": "4 2" }) });
  }
  const legend = sv("g", { class: "legend" });
  const ly = bottom + (o.xLabel ? 48 : 34);
  const lh = entries.length ? drawLegend(legend, entries, left, right, ly) : 0;
  const H = lh ? ly + lh - 4 : bottom + (o.xLabel ? 38 : 24);

  const head = sv("g", {}, sv("text", { class: "chart-title", x: 12, y: 19 }, clip(String(o.title || ""), 60), svgTitle(String(o.title || ""))));
  if (o.last !== undefined) head.appendChild(sv("text", { class: "chart-last", x: right, y: 19, "text-anchor": "end" }, o.last));
  if (empty) head.appendChild(sv("text", { class: "chart-empty", x: r1((left + right) / 2), y: r1(top + PH / 2), "text-anchor": "middle" }, "no data yet"));
  return sv("svg", { class: "chart", "data-chart": o.id, viewBox: `0 0 ${W} ${r1(H)}`, width: W, height: r1(H), role: "img", "aria-label": String(o.title || o.id) },
    head, grid, markG, bands, lines, ends, axes, legend);
}

// A value of a parallel-coordinates axis, for a category's label.
const catLabel = (v) => (typeof v === "string" ? v : JSON.stringify(v));
// The metric's color, t in [0, 1] from the best (deep blue) through
// green to the worst (orange): hue, saturation and lightness in between.
function metricColor(t) {
  const m = (a, b) => Math.round(a + (b - a) * Math.min(1, Math.max(0, t)));
  return `hsl(${m(228, 32)} ${m(70, 92)}% ${m(38, 52)}%)`;
}
const PC_NONE = "#c0c6d0";

// Parallel coordinates: {id, title?, dims: [{name, values, log?}],
// color: {name, values, mode?: "min"|"max"}, labels?: [text per line]}.
// One <path class="pc-line" data-points=dims.length> per line; numeric
// axes run min..max (log10 with `log` where every value is > 0), other
// values are evenly spaced categories; a missing value sits under its axis.
function parallelCoordinates(o) {
  const dims = o.dims || [];
  const color = o.color || { values: [] };
  const n = Math.max(0, ...dims.map((d) => (Array.isArray(d.values) ? d.values.length : 0)));
  const W = Math.max(560, 60 + dims.length * 120), top = 48, PH = 160, bottom = top + PH, missY = bottom + 18;
  const left = 56, right = W - 70;
  const nameChars = dims.length < 2 ? 40 : Math.max(4, Math.floor(((right - left) / (dims.length - 1) - 8) / CHAR_W));
  const ax = (j) => (dims.length < 2 ? (left + right) / 2 : left + (j * (right - left)) / (dims.length - 1));
  const axesG = sv("g", { class: "axes" });
  const scales = dims.map((d, j) => {
    const vals = Array.isArray(d.values) ? d.values : [];
    const present = vals.filter((v) => v !== null && v !== undefined);
    const x = r1(ax(j));
    let y;
    const tickLabels = [];
    if (present.length && present.every(fin)) {
      const log = d.log && present.every((v) => v > 0);
      const tf = log ? Math.log10 : (v) => v;
      let lo = Math.min(...present.map(tf)), hi = Math.max(...present.map(tf));
      if (lo === hi) { const p = Math.abs(lo) * 0.1 || 1; lo -= p; hi += p; }
      y = (v) => (fin(v) && (!log || v > 0) ? bottom - ((tf(v) - lo) / (hi - lo)) * PH : null);
      if (log) {
        const ks = ticksOf(lo, hi, Math.max(1, Math.ceil((hi - lo) / 4)));
        for (const k of ks) tickLabels.push([bottom - ((k - lo) / (hi - lo)) * PH, fmtNum(Math.pow(10, k))]);
        if (ks.length < 2) for (const k of [lo, hi]) tickLabels.push([bottom - ((k - lo) / (hi - lo)) * PH, fmtNum(Math.pow(10, k))]);
      } else {
        const step = niceStep(hi - lo, 4);
        for (const v of ticksOf(lo, hi, step)) tickLabels.push([y(v), fmtNum(v, step)]);
      }
    } else {
      const cats = [...new Set(present.map(catLabel))].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
      const at = new Map(cats.map((c, i) => [c, cats.length < 2 ? top + PH / 2 : bottom - (i * PH) / (cats.length - 1)]));
      y = (v) => (v === null || v === undefined ? null : at.get(catLabel(v)));
      const every = Math.ceil(cats.length / 12);
      cats.forEach((c, i) => { if (i % every === 0) tickLabels.push([at.get(c), clip(c, 14)]); });
    }
    axesG.appendChild(sv("line", { class: "axis", x1: x, x2: x, y1: top, y2: bottom }));
    axesG.appendChild(sv("text", { class: "axis-label", x, y: top - 12, "text-anchor": "middle" }, clip(String(d.name), nameChars), svgTitle(String(d.name))));
    for (const [ty, label] of tickLabels) {
      axesG.appendChild(sv("line", { class: "tick", x1: x - 3, x2: x, y1: r1(ty), y2: r1(ty) }));
      axesG.appendChild(sv("text", { class: "pc-label", x: r1(x + 5), y: r1(ty + 3.5) }, label));
    }
    if (present.length < vals.length || vals.length < n) axesG.appendChild(sv("text", { class: "pc-label muted", x: r1(x + 5), y: missY + 3.5 }, "n/a"));
    return y;
  });
  const cv = Array.isArray(color.values) ? color.values : [];
  const cf = cv.filter(fin);
  const cmin = cf.length ? Math.min(...cf) : 0, cmax = cf.length ? Math.max(...cf) : 1;
  const best = color.mode === "max" ? cmax : cmin, worst = color.mode === "max" ? cmin : cmax;
  const tOf = (v) => (cmax > cmin ? (v - best) / (worst - best) : 0);
  // Lines without a metric first (grey, beneath), the best on top.
  const order = [...Array(n).keys()].sort((a, b) => {
    const va = cv[a], vb = cv[b];
    if (!fin(va) || !fin(vb)) return (fin(va) ? 1 : 0) - (fin(vb) ? 1 : 0);
    return color.mode === "max" ? va - vb : vb - va;
  });
  const linesG = sv("g", { class: "lines" });
  for (const i of order) {
    const d = dims.map((dim, j) => {
      const y = scales[j](Array.isArray(dim.values) ? dim.values[i] : null);
      return (j ? "L " : "M ") + r1(ax(j)) + " " + r1(y === null || y === undefined ? missY : y);
    }).join(" ");
    const v = cv[i];
    const label = (o.labels && o.labels[i] !== undefined ? String(o.labels[i]) + " · " : "") + (color.name || "value") + " " + fmtNum(v);
    linesG.appendChild(sv("path", { class: "pc-line", "data-points": dims.length, d, stroke: fin(v) ? metricColor(tOf(v)) : PC_NONE }, svgTitle(label)));
  }
  // The color scale.
  const leg = sv("g", { class: "legend" });
  const ly = missY + 24;
  let x = left;
  const first = clip(String(color.name || ""), 24) + (color.mode ? " best " : " ") + fmtNum(best);
  leg.appendChild(sv("text", { x, y: ly + 4 }, first));
  x += first.length * CHAR_W + 6;
  for (let k = 0; k < 24; k++) leg.appendChild(sv("rect", { x: r1(x + k * 5), y: ly - 4, width: 5.2, height: 8, fill: metricColor(k / 23) }));
  x += 24 * 5 + 6;
  leg.appendChild(sv("text", { x: r1(x), y: ly + 4 }, fmtNum(worst)));
  x += fmtNum(worst).length * CHAR_W + 18;
  leg.appendChild(sv("line", { x1: r1(x), x2: r1(x + 18), y1: ly, y2: ly, stroke: PC_NONE, "stroke-width": 2 }));
  leg.appendChild(sv("text", { x: r1(x + 22), y: ly + 4 }, "no value"));
  const H = ly + 14;
  return sv("svg", { class: "chart" + (W > 560 ? " wide" : ""), "data-chart": o.id, viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": String(o.title || o.id) },
    sv("text", { class: "chart-title", x: 12, y: 19 }, String(o.title || "")), axesG, linesG, leg);
}

// ---------- pages ----------

// The last hour of the cluster (an older head has none: no section).
function clusterHistory(hist) {
  if (!hist || typeof hist !== "object" || !Array.isArray(hist.t) || !hist.series || typeof hist.series !== "object") return [];
  const ser = hist.series;
  const line = (name, key, more) => (Array.isArray(ser[key]) ? [Object.assign({ name, xs: hist.t, ys: ser[key] }, more || {})] : []);
  const total = { dash: "5 3", color: "#64748b" };
  const chart = (id, title, series, more) => lineChart(Object.assign({ id, title, xTime: true, yZero: true, series }, more || {}));
  return [h("h2", {}, "Last hour"), h("div", { class: "charts", id: "cluster-history" },
    chart("cluster-cpu", "CPU", [...line("used", "cpu_used"), ...line("total", "cpu_total", total)], { yLabel: "cores" }),
    chart("cluster-memory", "Memory", [...line("used", "memory_used_bytes"), ...line("total", "memory_total_bytes", total)], { yBytes: true, yFormat: bytes }),
    chart("cluster-store", "Object store", [...line("used", "store_used_bytes"), ...line("capacity", "store_capacity_bytes", total)], { yBytes: true, yFormat: bytes }),
    chart("cluster-work", "Tasks and actors", [...line("running tasks", "running_tasks"), ...line("alive actors", "alive_actors", { color: "#16a34a" })], { yInteger: true }))];
}

async function overview() {
  const [c, hist] = await Promise.all([api("/api/v0/cluster"), api("/api/v0/cluster/history").catch(() => null)]);
  const alive = c.nodes.filter((n) => n.alive).length;
  const running = c.jobs.filter((j) => j.state === "RUNNING").length;
  const card = (k, v, id) => h("div", { class: "card", id }, h("div", { class: "v" }, v), h("div", { class: "k" }, k));
  const res = c.resources;
  show(
    h("h1", {}, "Cluster ", h("span", { class: "muted" }, c.head)),
    h("div", { class: "cards" },
      card("nodes alive", alive + " / " + c.nodes.length, "card-nodes"),
      card("CPU used", num(res.used.CPU || 0) + " / " + num(res.total.CPU || 0), "card-cpu"),
      card("GPU used", num(res.used.GPU || 0) + " / " + num(res.total.GPU || 0)),
      card("actors alive", c.actors.ALIVE || 0, "card-actors"),
      card("jobs running", running + " / " + c.jobs.length, "card-jobs")),
    ...clusterHistory(hist),
    h("h2", {}, "Resources"),
    table(["resource", "used", "total", ""], Object.keys(res.total).filter((k) => !k.includes("_group_")).sort()
      .map((k) => [k, k === "memory" ? bytes(res.used[k]) : num(res.used[k]), k === "memory" ? bytes(res.total[k]) : num(res.total[k]), bar(res.used[k], res.total[k])]), { num: [1, 2] }),
    h("h2", {}, "Nodes"),
    table(["node", "address", "state", "resources used/total", "workers"], c.nodes.map((n) => [
      link("/nodes/" + n.node_id, short(n.node_id) + (n.is_head ? " (head)" : "")), n.address,
      state(n.alive ? "alive" : "dead"), resources(n.total, n.available), n.num_workers]), { id: "nodes-table", num: [4] }),
    h("h2", {}, "Jobs"),
    table(["job", "state", "entrypoint", "started"], c.jobs.slice().reverse().slice(0, 10).map((j) => [
      link("/jobs/" + j.job_id, j.job_id), state(j.state), j.entrypoint, when(j.start_ms)]), { id: "jobs-table" }),
    ...autoscalerSection(c.autoscaler),
    h("h2", {}, "Serve applications"),
    table(["application", "status"], c.serve.map((a) => [a.name, a.status.status || JSON.stringify(a.status).slice(0, 120)])),
    h("h2", {}, "Recent events"),
    eventsTable(c.events));
}

// The autoscaler's nodes with the reason of each, and the demand that
// waits (none without an autoscaler).
function autoscalerSection(a) {
  if (!a) return [];
  const waiting = a.infeasible.map((t) => ["infeasible", t]).concat(a.at_limit.map((t) => ["waiting on a limit", t]));
  return [
    h("h2", {}, "Autoscaler"),
    table(["node", "type", "phase", "reason"], a.nodes.map((n) => [
      n.node_id ? link("/nodes/" + n.node_id, n.id) : n.id, n.node_type, state(n.phase), n.reason]), { id: "autoscaler-table" }),
    ...(waiting.length ? [table(["demand", "why"], waiting, { id: "autoscaler-waiting" })] : []),
  ];
}

function eventsTable(evs) {
  return table(["time", "severity", "kind", "message"], evs.map((e) => [
    when(e.time_ms), h("span", { class: "sev-" + e.severity }, e.severity), e.kind, e.message]), { id: "events-table" });
}

async function nodesPage() {
  const nodes = await api("/api/v0/nodes");
  show(h("h1", {}, "Nodes"),
    table(["node", "address", "state", "CPU %", "memory", "disk", "object store", "spilled", "workers", "logical"], nodes.map((n) => {
      const s = n.stats;
      return [
        link("/nodes/" + n.node_id, short(n.node_id) + (n.is_head ? " (head)" : "")), n.address,
        n.alive ? state("alive") : h("span", {}, state("dead"), " ", h("span", { class: "muted" }, n.death_cause)),
        s ? h("div", {}, num(s.cpu_percent) + "%", bar(s.cpu_percent, 100)) : h("span", { class: "muted" }, n.error || "–"),
        s ? h("div", {}, bytes(s.mem_used_bytes) + " / " + bytes(s.mem_total_bytes), bar(s.mem_used_bytes, s.mem_total_bytes)) : "–",
        s ? bytes(s.disk_used_bytes) + " / " + bytes(s.disk_total_bytes) : "–",
        s ? h("div", {}, bytes(s.store_used_bytes) + " / " + bytes(s.store_capacity_bytes), bar(s.store_used_bytes, s.store_capacity_bytes)) : "–",
        s ? bytes(s.store_spilled_bytes) : "–",
        s ? s.workers.length : n.num_workers,
        resources(n.total, n.available)];
    }), { id: "nodes-table", num: [8] }));
}

async function nodePage(id) {
  const n = await api("/api/v0/nodes/" + encodeURIComponent(id));
  const s = n.stats;
  show(h("h1", {}, "Node ", n.node_id, n.is_head ? " (head)" : ""),
    table(["field", "value"], [
      ["address", n.address], ["state", n.alive ? state("alive") : state("dead")],
      ["death cause", n.death_cause || "–"], ["host", s ? s.hostname : "–"],
      ["CPU", s ? num(s.cpu_percent) + "% of " + s.num_cores + " cores" : "–"],
      ["memory", s ? bytes(s.mem_used_bytes) + " / " + bytes(s.mem_total_bytes) : "–"],
      ["disk", s ? bytes(s.disk_used_bytes) + " / " + bytes(s.disk_total_bytes) : "–"],
      ["object store", s ? bytes(s.store_used_bytes) + " / " + bytes(s.store_capacity_bytes) + " in " + s.store_num_objects + " objects, " + bytes(s.store_spilled_bytes) + " spilled" : "–"],
      ["logical resources", resources(n.total, n.available)],
      ["pending", (n.pending || []).join("; ") || "–"],
      ["metrics", n.http_address ? "http://" + n.http_address + "/metrics" : "–"],
      ["error", n.error || "–"]]),
    h("h2", {}, "Workers"),
    table(["pid", "worker", "job", "state", "RSS", "CPU %", "actor", ""], (s ? s.workers : []).map((w) => [
      w.pid, String(w.worker_id), w.job_id || "–", w.state, bytes(w.rss_bytes), num(w.cpu_percent),
      w.actor_id ? link("/actors/" + w.actor_id, w.actor_id) : "–", link("/logs?pid=" + w.pid, "logs")]), { id: "workers-table", num: [0, 4, 5] }));
}

function killButton(a, after) {
  if (a.state === "DEAD") return "";
  const b = h("button", { class: "danger kill", "data-actor-id": a.actor_id, onclick: async () => {
    b.disabled = true;
    try {
      await api("/api/v0/actors/" + a.actor_id + "/kill?no_restart=true", { method: "POST" });
      b.textContent = "killed";
      setTimeout(after, 300);
    } catch (e) { b.textContent = "error: " + e.message; }
  } }, "Kill");
  return b;
}

// Rows a list page draws at once (a cluster may hold 10,000s of actors).
const PER_PAGE = 200;

// Filters and a page of a list kept in the URL's query, so back and reload work.
function listControls(path, states, total) {
  const q = new URLSearchParams(location.search);
  const page = Math.max(1, parseInt(q.get("page") || "1", 10));
  const pages = Math.max(1, Math.ceil(total / PER_PAGE));
  const go = (over) => {
    const p = new URLSearchParams(location.search);
    Object.entries(over).forEach(([k, v]) => (v ? p.set(k, v) : p.delete(k)));
    history.pushState(null, "", path + "?" + p);
    route();
  };
  const sel = h("select", { id: "state-filter", onchange: () => go({ state: sel.value, page: "" }) },
    ["", ...states].map((s) => h("option", { value: s, selected: (q.get("state") || "") === s }, s || "any state")));
  const name = h("input", { id: "name-filter", placeholder: "name contains", value: q.get("name") || "",
    onchange: () => go({ name: name.value, page: "" }) });
  const bar = h("div", { class: "toolbar" }, sel, name,
    h("button", { disabled: page <= 1, onclick: () => go({ page: String(page - 1) }) }, "‹ prev"),
    h("span", {}, "page " + Math.min(page, pages) + " of " + pages + " (" + total + ")"),
    h("button", { disabled: page >= pages, onclick: () => go({ page: String(page + 1) }) }, "next ›"));
  return { bar, page, state: q.get("state") || "", name: q.get("name") || "" };
}

async function actorsPage() {
  const actors = await api("/api/v0/actors");
  const counts = {};
  actors.forEach((a) => { counts[a.state] = (counts[a.state] || 0) + 1; });
  const q = new URLSearchParams(location.search);
  const want = (a) => (!q.get("state") || a.state === q.get("state")) &&
    (!q.get("name") || (a.name + " " + a.class_name + " " + a.actor_id).includes(q.get("name")));
  // Alive ones first, then the newest records.
  const rank = (a) => (a.state === "ALIVE" ? 0 : a.state === "DEAD" ? 2 : 1);
  const shown = actors.filter(want).sort((a, b) => rank(a) - rank(b));
  const c = listControls("/actors", Object.keys(counts).sort(), shown.length);
  const rows = shown.slice((c.page - 1) * PER_PAGE, c.page * PER_PAGE);
  show(h("h1", {}, "Actors"),
    h("p", { class: "muted", id: "actor-counts" }, Object.entries(counts).map(([k, v]) => k + ": " + v).join(" · ") || "no actors"),
    c.bar,
    table(["actor", "class", "name", "state", "node", "pid", "restarts", "death cause", ""], rows.map((a) => [
      link("/actors/" + a.actor_id, h("code", {}, a.actor_id)), a.class_name, a.name || "–", state(a.state),
      a.node || "–", a.pid || "–", a.num_restarts, a.death_cause || "–", killButton(a, route)]), { id: "actors-table", num: [6] }));
}

async function actorPage(id) {
  const r = await api("/api/v0/actors/" + encodeURIComponent(id));
  const a = r.actor;
  const logs = h("pre", { class: "log", id: "actor-log" }, r.logs.map((l) => l.text).join("") || "(no output)");
  show(h("h1", {}, "Actor ", a.class_name, a.name ? " “" + a.name + "”" : ""),
    table(["field", "value"], [
      ["id", a.actor_id], ["state", state(a.state)], ["node", a.node || "–"], ["pid", a.pid || "–"],
      ["job", a.job_id || "–"], ["restarts", a.num_restarts], ["detached", a.detached ? "yes" : "no"],
      ["death cause", a.death_cause || "–"]]),
    h("div", { class: "toolbar" }, killButton(a, route), a.pid ? link("/logs?pid=" + a.pid, "follow its log") : ""),
    h("h2", {}, "Log (tail)"), logs);
}

async function tasksPage() {
  const q = new URLSearchParams(location.search);
  const params = new URLSearchParams({ page: q.get("page") || "1", per_page: String(PER_PAGE) });
  if (q.get("state")) params.set("state", q.get("state"));
  if (q.get("name")) params.set("name", q.get("name"));
  const t = await api("/api/v0/tasks?" + params);
  const c = listControls("/tasks", ["PENDING", "RUNNING", "FINISHED", "FAILED"], t.total);
  c.bar.appendChild(h("a", { href: "/api/v0/timeline", download: "rayforge-timeline.json", id: "timeline-link" }, "Download timeline"));
  const dur = (x) => (x.end_us ? num((x.end_us - x.start_us) / 1000, 1) + " ms" : "–");
  show(h("h1", {}, "Tasks"),
    h("h2", {}, "By name and state"),
    table(["name", "state", "count"], t.counts.map((c) => [c.name, state(c.state), c.count]), { id: "task-counts", num: [2] }),
    h("h2", {}, "List"),
    c.bar,
    table(["task", "name", "kind", "state", "node", "pid", "started", "duration", "waits for / error"], t.items.map((x) => [
      h("code", {}, x.task_id), x.name, x.kind, state(x.state), short(x.node_id), x.pid, when(x.start_us / 1000), dur(x),
      x.wait_reason || x.error || ""]), { id: "tasks-table", num: [5] }),
    t.unreachable.length ? h("p", { class: "error" }, "unreachable: " + t.unreachable.join("; ")) : "");
}

async function jobsPage() {
  const jobs = await api("/api/v0/jobs");
  show(h("h1", {}, "Jobs"),
    table(["job", "state", "entrypoint", "submitted", "started", "ended", "message"], jobs.slice().reverse().map((j) => [
      link("/jobs/" + j.job_id, j.job_id), state(j.state), j.entrypoint, j.submitted ? "yes" : "driver",
      when(j.start_ms), when(j.end_ms), j.message || ""]), { id: "jobs-table" }));
}

async function jobPage(id) {
  const r = await api("/api/v0/jobs/" + encodeURIComponent(id));
  const j = r.job;
  const pre = h("pre", { class: "log", id: "job-log" }, r.logs);
  const status = h("span", { class: "muted", id: "follow-status" });
  show(h("h1", {}, "Job ", j.job_id),
    table(["field", "value"], [["state", state(j.state)], ["entrypoint", j.entrypoint], ["started", when(j.start_ms)],
      ["ended", when(j.end_ms)], ["message", j.message || "–"]]),
    h("h2", {}, "Logs ", status), pre);
  if (j.submitted) follow("/api/v0/jobs/" + encodeURIComponent(id) + "/logs/stream?offset=" + r.next_offset, pre, status);
  else status.textContent = "(a driver that joined: its output is in its own terminal)";
}

async function groupsPage() {
  const gs = await api("/api/v0/placement_groups");
  show(h("h1", {}, "Placement groups"),
    table(["group", "name", "strategy", "state", "bundles", "nodes", "why pending"], gs.map((g) => [
      g.id, g.name || "–", g.strategy, state(g.state),
      g.bundles.map((b) => "{" + Object.entries(b).map(([k, v]) => k + ": " + v).join(", ") + "}").join(" "),
      g.nodes.map((n) => n || "unplaced").join(", "), g.reason || "–"]), { id: "groups-table" }));
}

async function objectsPage() {
  const o = await api("/api/v0/objects");
  show(h("h1", {}, "Objects and memory"),
    table(["node", "objects", "in memory", "spilled"], o.summary.map((s) => [short(s.node_id), s.objects, bytes(s.memory_bytes), bytes(s.spilled_bytes)]), { id: "objects-summary", num: [1, 2, 3] }),
    h("h2", {}, "Largest objects"),
    table(["object", "size", "where", "node"], o.largest.map((x) => [x.object_id, bytes(x.size), x.spilled ? "spilled" : "memory", short(x.node_id)]), { id: "objects-table", num: [1] }));
}

async function logsPage() {
  const q = new URLSearchParams(location.search);
  const pid = q.get("pid");
  const all = await api("/api/v0/logs?tail=0");
  const list = table(["node", "pid", "job", "alive", "size", ""], all.logs.map((l) => [
    short(l.node_id), l.pid, l.job_id || "–", l.alive ? "yes" : "no", bytes(l.size), link("/logs?pid=" + l.pid, "open")]), { id: "logs-table", num: [1, 4] });
  if (!pid) { show(h("h1", {}, "Worker logs"), list); return; }
  const pre = h("pre", { class: "log", id: "worker-log" });
  const status = h("span", { class: "muted", id: "follow-status" });
  show(h("h1", {}, "Log of pid " + pid, " ", status), pre, h("h2", {}, "Every worker"), list);
  stopRefresh();
  follow("/api/v0/logs/stream?pid=" + encodeURIComponent(pid), pre, status);
}

async function eventsPage() {
  const evs = await api("/api/v0/events");
  show(h("h1", {}, "Events"), eventsTable(evs));
}

// Serve, Train and Tune publish JSON objects; arrays of objects become tables.
function render(v) {
  if (Array.isArray(v)) {
    if (v.length && typeof v[0] === "object" && v[0] !== null && !Array.isArray(v[0])) {
      const keys = [...new Set(v.flatMap((x) => Object.keys(x)))];
      return table(keys, v.map((x) => keys.map((k) => (typeof x[k] === "object" && x[k] !== null ? JSON.stringify(x[k]) : x[k] === undefined ? "" : String(x[k])))));
    }
    return v.map(String).join(", ");
  }
  if (typeof v === "object" && v !== null) {
    return table(["field", "value"], Object.entries(v).map(([k, x]) => [k, render(x)]));
  }
  return v === null ? "–" : String(v);
}

// A library's curve: {steps: [..], series: {NAME: [number|null ..]}, total}.
const isCurve = (c) => c !== null && typeof c === "object" && Array.isArray(c.steps) &&
  c.series !== null && typeof c.series === "object" && !Array.isArray(c.series);
const arr = (v) => (Array.isArray(v) ? v : []);
const stateOf = (s) => (typeof s === "string" && s ? state(s) : "–");
// A one-row table of a run's fields: [[header, value]...].
const summary = (cols) => table(cols.map((c) => c[0]), [cols.map((c) => (c[1] instanceof Node ? c[1] : fmtVal(c[1])))]);
const charts = (...kids) => h("div", { class: "charts" }, kids);
const lastOf = (ys) => { for (let i = ys.length - 1; i >= 0; i--) if (fin(ys[i])) return "last " + fmtNum(ys[i]); return undefined; };

// A Train run: its fields, then one chart per metric against the
// iteration, with its checkpoints and restarts (null without a history).
function trainRun(name, s) {
  if (!s || typeof s !== "object" || !isCurve(s.history)) return null;
  const hist = s.history;
  const marks = arr(s.checkpoints).map((x) => ({ x, kind: "checkpoint", label: "checkpoint at iteration " + x }))
    .concat(arr(s.restarts).filter((r) => r && typeof r === "object").map((r) => ({
      x: r.iteration, kind: "restart", label: "restart at iteration " + r.iteration + (r.cause ? ": " + r.cause : "") })));
  const cols = [["status", stateOf(s.status)], ["workers", s.workers], ["iteration", s.iteration], ["failures", s.failures],
    ["latest checkpoint", s.latest_checkpoint], ["reports", hist.total], ["path", s.path]];
  if (s.error) cols.push(["error", h("span", { class: "error" }, fmtVal(s.error))]);
  return [summary(cols), charts(Object.keys(hist.series).map((m) => {
    const ys = arr(hist.series[m]);
    return lineChart({ id: "train-" + name + "-" + m, title: m, xLabel: "iteration", last: lastOf(ys),
      series: [{ name: m, xs: hist.steps, ys }], marks });
  }))];
}

// A config's value by name ("a/b" or "a.b" reach into nested objects).
function param(config, name) {
  if (!config || typeof config !== "object") return null;
  if (name in config) return config[name];
  let v = config;
  for (const k of name.split(/[/.]/)) { if (v === null || typeof v !== "object" || !(k in v)) return null; v = v[k]; }
  return v;
}
const FINISHED = new Set(["TERMINATED", "STOPPED"]);

// A Tune experiment: its fields, its trials' curves, the optimization
// history, the params against the metric, and the trials (null when the
// status is not an experiment's).
function tuneExperiment(name, s) {
  if (!s || typeof s !== "object" || !Array.isArray(s.trials) || typeof s.metric !== "string") return null;
  const metric = s.metric, mode = s.mode === "max" ? "max" : "min";
  const trials = s.trials.filter((t) => t && typeof t === "object");
  const best = s.best && typeof s.best === "object" ? s.best : null;
  const counts = {};
  trials.forEach((t) => { if (t.status) counts[t.status] = (counts[t.status] || 0) + 1; });
  const out = [summary([["status", stateOf(s.status)], ["metric", metric + (s.mode ? " (" + s.mode + ")" : "")],
    ["scheduler", s.scheduler], ["elapsed", fin(s.elapsed_s) ? num(s.elapsed_s) + " s" : null],
    ["trials", trials.length + (Object.keys(counts).length ? " — " + Object.entries(counts).map(([k, v]) => k + " " + v).join(", ") : "")],
    ["best", best ? fmtVal(best.trial) + ": " + metric + " " + fmtNum(best[metric]) : null], ["path", s.path]])];
  const kids = [];
  const curved = trials.filter((t) => t.curve && typeof t.curve === "object");
  if (curved.length) {
    kids.push(lineChart({ id: "tune-" + name + "-trials", title: metric + " per trial", xLabel: "iteration", yLabel: metric,
      series: curved.map((t) => ({ name: String(t.trial), xs: arr(t.curve.steps), ys: arr(t.curve.values),
        width: best && t.trial === best.trial ? 2.6 : 1.5,
        end: t.status === "STOPPED" || t.status === "ERROR" ? "stopped" : t.status === "PAUSED" ? "paused" : null })) }));
  }
  // Optimization history: each finished trial's metric by trial number,
  // and the best so far.
  const xs = [], ys = [], bests = [];
  let run = null;
  trials.forEach((t, i) => {
    const v = t[metric];
    if (!FINISHED.has(t.status) || !fin(v)) return;
    run = run === null ? v : mode === "min" ? Math.min(run, v) : Math.max(run, v);
    xs.push(i + 1); ys.push(v); bests.push(run);
  });
  if (xs.length) {
    kids.push(lineChart({ id: "tune-" + name + "-history", title: "Optimization history", xLabel: "trial", yLabel: metric, xDomain: [0.5, trials.length + 0.5],
      xInteger: true,
      series: [{ name: "trials", xs, ys, dots: true, color: "#2563eb" }, { name: "best so far", xs, ys: bests, step: true, color: "#dc2626", width: 2 }] }));
  }
  const params = arr(s.params).map(String);
  if (params.length && trials.length) {
    const dims = params.map((p) => {
      const values = trials.map((t) => param(t.config, p));
      const nums = values.filter(fin);
      return { name: p, values, log: nums.length === values.filter((v) => v !== null && v !== undefined).length && nums.length > 1 && Math.min(...nums) > 0 && Math.max(...nums) / Math.min(...nums) >= 50 };
    });
    const mv = trials.map((t) => (fin(t[metric]) ? t[metric] : null));
    dims.push({ name: metric, values: mv });
    kids.push(parallelCoordinates({ id: "tune-" + name + "-parallel", title: "Params against " + metric, dims,
      color: { name: metric, values: mv, mode }, labels: trials.map((t) => t.trial) }));
  }
  if (kids.length) out.push(charts(kids));
  const cfg = (c) => (c && typeof c === "object" ? Object.entries(c).map(([k, v]) => k + "=" + (typeof v === "number" ? fmtNum(v) : fmtVal(v))).join(", ") : fmtVal(c));
  out.push(table(["trial", "status", "iterations", metric, "config"], trials.map((t) => [
    best && t.trial === best.trial ? h("span", {}, fmtVal(t.trial), " ", h("span", { class: "badge" }, "best")) : fmtVal(t.trial),
    stateOf(t.status), fmtVal(t.iterations), fmtNum(t[metric]), cfg(t.config)]), { num: [2, 3] }));
  return out;
}

const isLoss = (k) => k.endsWith("loss") || k === "entropy";
// An RLlib run: its fields, the episode return (mean, min..max) and its
// losses against env steps (null without a history).
function rllibRun(name, s) {
  if (!s || typeof s !== "object" || !isCurve(s.history)) return null;
  const hist = s.history, ser = hist.series;
  const m = s.metrics && typeof s.metrics === "object" ? s.metrics : {};
  const out = [summary([["status", stateOf(s.status)], ["algo", s.algo], ["env", s.env], ["iteration", s.iteration],
    ["env steps", s.env_steps], ["episode return", fin(m.episode_return_mean) ? fmtNum(m.episode_return_mean) : null], ["reports", hist.total]])];
  const kids = [];
  if (Array.isArray(ser.episode_return_mean)) {
    const band = Array.isArray(ser.episode_return_min) && Array.isArray(ser.episode_return_max) ? { lo: ser.episode_return_min, hi: ser.episode_return_max, label: "min–max" } : null;
    kids.push(lineChart({ id: "rllib-" + name + "-return", title: "Episode return" + (band ? " (mean, min–max)" : ""), xLabel: "env steps",
      last: lastOf(ser.episode_return_mean), series: [{ name: "episode_return_mean", xs: hist.steps, ys: ser.episode_return_mean, band }] }));
  }
  const losses = Object.keys(ser).filter(isLoss);
  if (losses.length) {
    kids.push(lineChart({ id: "rllib-" + name + "-losses", title: "Losses", xLabel: "env steps",
      series: losses.map((k) => ({ name: k, xs: hist.steps, ys: arr(ser[k]) })) }));
  }
  if (kids.length) out.push(charts(kids));
  return out;
}

// A page of what a library published: each item drawn by `draw`, or as
// tables where `draw` does not know its shape (an older library).
function publishedPage(kind, title, draw) {
  return async () => {
    const items = await api("/api/v0/" + kind);
    show(h("h1", {}, title),
      items.length === 0 ? h("p", { class: "muted", id: "none-published" }, "Nothing published yet.") : "",
      items.map((i) => [h("h2", {}, i.name), (draw && draw(String(i.name), i.status)) || render(i.status)]));
  };
}

// ---------- routing ----------

const routes = [
  [/^\/$/, overview, true],
  [/^\/nodes$/, nodesPage, true],
  [/^\/nodes\/([^/]+)$/, nodePage, true],
  [/^\/actors$/, actorsPage, true],
  [/^\/actors\/([^/]+)$/, actorPage, false],
  [/^\/tasks$/, tasksPage, true],
  [/^\/jobs$/, jobsPage, true],
  [/^\/jobs\/([^/]+)$/, jobPage, false],
  [/^\/placement-groups$/, groupsPage, true],
  [/^\/objects$/, objectsPage, true],
  [/^\/logs$/, logsPage, false],
  [/^\/events$/, eventsPage, true],
  [/^\/serve$/, publishedPage("serve", "Serve applications"), true],
  [/^\/train$/, publishedPage("train", "Train runs", trainRun), true],
  [/^\/tune$/, publishedPage("tune", "Tune experiments", tuneExperiment), true],
  [/^\/rllib$/, publishedPage("rllib", "RLlib runs", rllibRun), true],
];

function stopRefresh() {
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = null;
}

async function route() {
  stopRefresh();
  const path = location.pathname;
  for (const a of document.querySelectorAll("#nav a")) {
    const href = a.getAttribute("href");
    a.classList.toggle("active", href === "/" ? path === "/" : path.startsWith(href));
  }
  for (const [re, fn, refresh] of routes) {
    const m = path.match(re);
    if (!m) continue;
    try {
      await fn(...m.slice(1).map(decodeURIComponent));
      // When the page was first drawn, in ms since navigation started.
      document.body.dataset.drawMs = String(Math.round(performance.now()));
      document.body.setAttribute("data-loaded", path);
    } catch (e) {
      fail(e);
      document.body.setAttribute("data-loaded", "error");
      return;
    }
    if (refresh) {
      refreshTimer = setInterval(() => {
        // Keep a page still while someone types in it.
        if (document.activeElement && ["INPUT", "SELECT"].includes(document.activeElement.tagName)) return;
        fn(...m.slice(1).map(decodeURIComponent)).catch(fail);
      }, 3000);
    }
    return;
  }
  fail(new Error("no such page: " + path));
}

window.addEventListener("popstate", route);
route();
