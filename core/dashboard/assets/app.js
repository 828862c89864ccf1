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

// ---------- pages ----------

async function overview() {
  const c = await api("/api/v0/cluster");
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

function publishedPage(kind, title) {
  return async () => {
    const items = await api("/api/v0/" + kind);
    show(h("h1", {}, title),
      items.length === 0 ? h("p", { class: "muted", id: "none-published" }, "Nothing published yet.") : "",
      items.map((i) => [h("h2", {}, i.name), render(i.status)]));
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
  [/^\/train$/, publishedPage("train", "Train runs"), true],
  [/^\/tune$/, publishedPage("tune", "Tune experiments"), true],
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
