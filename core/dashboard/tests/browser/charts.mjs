// Checks the dashboard's charts in Debian's Chromium (headless, through
// playwright-core). Environment:
//   BASE (http://host:port), SHOTS (screenshot folder), CHROMIUM (the
//   browser binary), TOKEN (optional: logs in through /login first; the
//   mock in mock.mjs needs none), EXPECT (a JSON file of what to find):
//   {"pages": [{"path": "/train",
//               "charts": {CHART_ID: {SERIES_NAME: POINTS or {"min": N}, ...}, ...},
//               "max_ms": {CHART_ID: MS, ...},
//               "text": ["...", ...]}]}
// A chart is <svg data-chart=CHART_ID>; its series are exactly the listed
// ones, each a <path data-series=NAME data-points=POINTS> whose `d` holds
// POINTS M/L commands. A key starting with "." instead counts the chart's
// elements of that class: {".mark-restart": {"count": 1}}, and with
// "points" each one's data-points and M/L commands too (".pc-line").
// max_ms: the chart is in the page within that many ms of the navigation's
// start. text: strings the page's <main> shows.
// Fails (exit 1) on a console error, a page that shows an error, a chart
// missing or off, "NaN"/"Infinity"/"undefined" anywhere in <main>'s markup,
// or markup from the cluster that became elements instead of text.
import { logIn, openPage } from "./browser.mjs";
import { mkdirSync, readFileSync } from "node:fs";

const env = process.env;
const { BASE, TOKEN, SHOTS } = env;
const expect = JSON.parse(readFileSync(env.EXPECT, "utf8"));
mkdirSync(SHOTS, { recursive: true });

const { browser, page, errors } = await openPage();
// When each chart first appears, in ms since the navigation started.
await page.addInitScript(() => {
  window.__chartSeen = {};
  new MutationObserver(() => {
    for (const c of document.querySelectorAll("svg[data-chart]")) {
      const id = c.getAttribute("data-chart");
      if (!(id in window.__chartSeen)) window.__chartSeen[id] = performance.now();
    }
  }).observe(document, { childList: true, subtree: true });
});

let step = "starting";
const problems = [];
function fail(msg) {
  console.error("FAIL: " + msg);
  process.exitCode = 1;
  throw new Error(msg);
}

try {
  if (TOKEN) {
    step = "logging in";
    await logIn(page, BASE, TOKEN);
  }
  const report = [];
  for (const want of expect.pages) {
    const path = want.path;
    step = "page " + path;
    await page.goto(BASE + path);
    await page.waitForSelector("body[data-loaded]", { timeout: 30000 });
    const loaded = await page.getAttribute("body", "data-loaded");
    if (loaded === "error") fail(`${path}: ${await page.textContent("#page-error")}`);
    const ids = Object.keys(want.charts || {});
    // Read in the page: no CSS selector is built from a cluster's name.
    const got = await page.evaluate((ids) => {
      const count = (d) => ((d || "").match(/[ML]/g) || []).length;
      const charts = [...document.querySelectorAll("main svg[data-chart]")];
      const out = { charts: {}, all: charts.map((c) => c.getAttribute("data-chart")) };
      for (const id of ids) {
        const c = charts.find((x) => x.getAttribute("data-chart") === id);
        if (!c) continue;
        const series = {};
        for (const p of c.querySelectorAll("path[data-series]")) {
          series[p.getAttribute("data-series")] = { points: Number(p.getAttribute("data-points")), commands: count(p.getAttribute("d")) };
        }
        out.charts[id] = { series, classes: {} };
        for (const el of c.querySelectorAll("[class]")) {
          for (const cls of el.classList) {
            const k = "." + cls;
            (out.charts[id].classes[k] = out.charts[id].classes[k] || []).push({
              points: el.hasAttribute("data-points") ? Number(el.getAttribute("data-points")) : null,
              commands: el.tagName === "path" ? count(el.getAttribute("d")) : null,
            });
          }
        }
        out.charts[id].legend = c.querySelectorAll(".legend-entry").length;
      }
      const html = document.querySelector("main").innerHTML;
      out.bad = ["NaN", "Infinity", "undefined"].filter((w) => html.includes(w)).map((w) => {
        const i = html.indexOf(w);
        return w + " in …" + html.slice(Math.max(0, i - 120), i + 40) + "…";
      });
      out.text = document.querySelector("main").textContent;
      out.seen = window.__chartSeen;
      out.drawMs = Number(document.body.dataset.drawMs);
      out.injected = { ran: document.body.dataset.xss || null, made: document.querySelectorAll("main img[src=x], main script").length };
      return out;
    }, ids);
    const pageProblems = [];
    const bad = (m) => pageProblems.push(`${path}: ${m}`);
    for (const id of ids) {
      const c = got.charts[id];
      if (!c) { bad(`no chart ${JSON.stringify(id)} (charts: ${JSON.stringify(got.all)})`); continue; }
      const spec = want.charts[id];
      const listed = Object.keys(spec).filter((k) => !k.startsWith("."));
      for (const name of listed) {
        const s = c.series[name];
        if (!s) { bad(`chart ${JSON.stringify(id)} has no series ${JSON.stringify(name)} (has ${JSON.stringify(Object.keys(c.series))})`); continue; }
        // {"min": N}: a live series (the cluster's history) with at least N points.
        const min = typeof spec[name] === "object" ? spec[name].min : null;
        const ok = min === null ? s.points === spec[name] : s.points >= min;
        const want = min === null ? spec[name] : `at least ${min}`;
        if (!ok) bad(`chart ${JSON.stringify(id)} series ${JSON.stringify(name)}: data-points ${s.points}, want ${want}`);
        if (s.commands !== s.points) bad(`chart ${JSON.stringify(id)} series ${JSON.stringify(name)}: ${s.commands} points in its path, data-points ${s.points}`);
      }
      for (const name of Object.keys(c.series)) if (!listed.includes(name)) bad(`chart ${JSON.stringify(id)} has a series not expected: ${JSON.stringify(name)}`);
      for (const k of Object.keys(spec).filter((k) => k.startsWith("."))) {
        const els = c.classes[k] || [];
        const w = spec[k];
        if (w.count !== undefined && els.length !== w.count) bad(`chart ${JSON.stringify(id)}: ${els.length} ${k}, want ${w.count}`);
        if (w.points !== undefined) {
          for (const e of els) {
            if (e.points !== w.points || e.commands !== w.points) { bad(`chart ${JSON.stringify(id)}: a ${k} with data-points ${e.points} and ${e.commands} points in its path, want ${w.points}`); break; }
          }
        }
      }
      if (c.legend > 14) bad(`chart ${JSON.stringify(id)}: ${c.legend} legend entries (at most 12 series, "+N more" and the marks)`);
    }
    for (const [id, max] of Object.entries(want.max_ms || {})) {
      const t = got.seen && got.seen[id] !== undefined ? got.seen[id] : got.drawMs;
      if (!(t <= max)) bad(`chart ${JSON.stringify(id)} took ${Math.round(t)} ms from navigation, over ${max} ms`);
    }
    for (const t of want.text || []) if (!got.text.includes(t)) bad(`does not show ${JSON.stringify(t)}`);
    for (const b of got.bad) bad(`markup holds ${b}`);
    if (got.injected.ran || got.injected.made) bad(`markup from the cluster became elements (${JSON.stringify(got.injected)})`);
    const shot = (path.replace(/[^a-z0-9]+/gi, "-").replace(/^-|-$/g, "") || "overview");
    await page.screenshot({ path: `${SHOTS}/charts-${shot}.png`, fullPage: true });
    report.push({ page: path, charts: ids.length, draw_ms: got.drawMs, seen_ms: Object.fromEntries(Object.keys(want.max_ms || {}).map((id) => [id, got.seen && got.seen[id] !== undefined ? Math.round(got.seen[id]) : null])) });
    problems.push(...pageProblems);
  }
  if (errors.length) problems.push("console errors:\n" + errors.join("\n"));
  if (problems.length) fail(problems.join("\n"));
  console.log(JSON.stringify({ ok: true, pages: report }));
} catch (e) {
  if (!process.exitCode) console.error(`FAIL (${step}): ${e.message}`);
  await page.screenshot({ path: `${SHOTS}/charts-failure.png`, fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
