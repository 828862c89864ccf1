// A stand-in head for the dashboard's charts: serves the three assets from
// core/dashboard/assets (index.html for any other page) and fake JSON for
// the endpoints the pages call, no login. With --expect FILE it writes what
// charts.mjs must find on the pages (see there), computed from the same data.
//   node mock.mjs [--port 0] [--expect /tmp/expect.json] [--old-head]
// --old-head: no /api/v0/cluster/history (a head from before it: the
// overview draws without its "Last hour"; the 404 is a console error).
// Prints `listening http://127.0.0.1:PORT` once it serves.
import { createServer } from "node:http";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const args = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const PORT = Number(arg("--port", "0"));
const EXPECT = arg("--expect", null);
const OLD_HEAD = args.includes("--old-head");
const ASSETS = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "assets");

// Markup in a name must stay text (charts.mjs fails when it runs).
const XSS_METRIC = `<img src=x onerror="document.body.dataset.xss='metric'">`;
const XSS_ENV = `<img src=x onerror="document.body.dataset.xss='env'">`;

// A deterministic pseudo-random stream (the same data on every run).
let seed = 12345;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
const noise = (a) => (rand() - 0.5) * 2 * a;
const round = (v, d = 4) => Number(v.toFixed(d));

// Keeps every k-th of `n` reports (counted back from the last, which is
// always kept) so at most `max` remain: what a server publishes.
function downsample(n, max, at) {
  const k = Math.ceil(n / max);
  const idx = [];
  for (let i = (n - 1) % k; i < n; i += k) idx.push(i);
  return idx.map(at);
}
function curve(steps, series, total) {
  return { steps, series, total: total === undefined ? steps.length : total };
}

// ---------- the cluster ----------
const NOW = Date.now();
const GiB = 1024 ** 3;
const NODES = ["a1b2c3d4e5f60718293a4b5c6d7e8f9001122334", "ffeeddccbbaa99887766554433221100aabbccdd"];
const cluster = {
  head: "10.0.0.1:6379",
  resources: {
    total: { CPU: 16, GPU: 1, memory: 32 * GiB, object_store_memory: 8 * GiB },
    used: { CPU: 6, GPU: 0, memory: 4 * GiB, object_store_memory: 1.5 * GiB },
  },
  nodes: NODES.map((id, i) => ({
    node_id: id, address: "10.0.0." + (i + 1), alive: true, is_head: i === 0,
    total: { CPU: 8, GPU: i, memory: 16 * GiB }, available: { CPU: 5, GPU: i, memory: 14 * GiB }, num_workers: 3 + i,
  })),
  jobs: [{ job_id: "02000000", state: "RUNNING", entrypoint: "python train.py", start_ms: NOW - 600000, submitted: true }],
  actors: { ALIVE: 4, DEAD: 1 },
  serve: [],
  events: [{ time_ms: NOW - 5000, severity: "INFO", kind: "NODE_JOINED", message: "node joined" }],
  autoscaler: null,
};
// The last hour every 5 s (720 samples), with a gap where the head restarted.
const T = [...Array(720).keys()].map((i) => NOW - (719 - i) * 5000);
const GAP = (i) => i >= 300 && i < 306;
const sample = (f) => T.map((_, i) => (GAP(i) ? null : f(i)));
const history = {
  interval_s: 5,
  t: T,
  series: {
    cpu_used: sample((i) => round(Math.max(0, 6 + 4 * Math.sin(i / 40) + noise(1)), 2)),
    cpu_total: sample(() => 16),
    memory_used_bytes: sample((i) => Math.round((6 + 2 * Math.sin(i / 90) + noise(0.3)) * GiB)),
    memory_total_bytes: sample(() => 32 * GiB),
    store_used_bytes: sample((i) => Math.round((1 + i / 360 + noise(0.05)) * GiB)),
    store_capacity_bytes: sample(() => 8 * GiB),
    running_tasks: sample((i) => Math.max(0, Math.round(20 + 15 * Math.sin(i / 25) + noise(3)))),
    alive_actors: sample((i) => (i < 400 ? 4 : 5)),
  },
};

// ---------- Train ----------
// A finished run of 60 reports: checkpoints every 10, a restart at 35 (and
// the report after it lacks accuracy), a metric named with markup.
const it60 = [...Array(60).keys()].map((i) => i + 1);
const finished = {
  status: "FINISHED", workers: 4, iteration: 60, metrics: { loss: 0.05, accuracy: 0.97 },
  latest_checkpoint: "file:///tmp/runs/mnist/checkpoint_000060", failures: 1, error: "", path: "file:///tmp/runs/mnist",
  history: curve(it60, {
    loss: it60.map((i) => round(2 * Math.exp(-i / 15) + 0.05 + noise(0.02))),
    accuracy: it60.map((i) => (i === 36 ? null : round(1 - 0.9 * Math.exp(-i / 12) + noise(0.01)))),
    [XSS_METRIC]: it60.map((i) => i % 7),
  }),
  checkpoints: it60.filter((i) => i % 10 === 0),
  restarts: [{ iteration: 35, cause: "rank 2 died: node 10.0.0.2 lost" }],
};
// A running one: 23 reports, a learning rate that never changes.
const it23 = [...Array(23).keys()].map((i) => i + 1);
const running = {
  status: "RUNNING", workers: 2, iteration: 23, metrics: { loss: 0.8, lr: 0.001 },
  latest_checkpoint: "file:///tmp/runs/resnet/checkpoint_000020", failures: 0, error: "", path: "file:///tmp/runs/resnet",
  history: curve(it23, { loss: it23.map((i) => round(3 / Math.sqrt(i) + noise(0.05))), lr: it23.map(() => 0.001) }),
  checkpoints: [5, 10, 15, 20], restarts: [],
};
// 100,000 reports downsampled to at most 1000 points.
const HUGE = 100000;
const hugeIdx = downsample(HUGE, 1000, (i) => i);
const huge = {
  status: "RUNNING", workers: 8, iteration: HUGE, metrics: { loss: 0.01 },
  latest_checkpoint: "file:///tmp/runs/huge/checkpoint_100000", failures: 2, error: "", path: "file:///tmp/runs/huge",
  history: curve(hugeIdx.map((i) => i + 1), {
    loss: hugeIdx.map((i) => round(1 / Math.log(i + 3) + noise(0.01))),
    throughput: hugeIdx.map((i) => round(1000 + 50 * Math.sin(i / 3000) + noise(20), 1)),
  }, HUGE),
  checkpoints: [...Array(20).keys()].map((i) => (i + 1) * 5000),
  restarts: [{ iteration: 31000, cause: "preempted" }, { iteration: 77000, cause: "OOM killed" }],
};
// An older library: no history, drawn as tables.
const legacyRun = { status: "RUNNING", workers: 1, iteration: 3, metrics: { loss: 1.5 } };
const train = [
  { name: "mnist", status: finished },
  { name: "resnet", status: running },
  { name: "huge", status: huge },
  { name: "legacy", status: legacyRun },
];

// ---------- Tune ----------
const STATUSES = ["TERMINATED", "STOPPED", "TERMINATED", "PAUSED", "RUNNING", "ERROR", "PENDING", "RUNNING"];
const ITERS = [20, 5, 20, 10, 7, 3, 0, 1];
const ACTS = ["relu", "tanh", "gelu", "relu", "tanh", "gelu", "relu", "relu"];
const LRS = [3e-4, 0.05, 1e-3, 2e-4, 0.01, 0.08, 5e-5, 1e-4];
const BATCH = [32, 64, 128, 32, 64, 256, 128, 32];
const trials = STATUSES.map((st, t) => {
  const steps = [...Array(ITERS[t]).keys()].map((i) => i + 1);
  const base = 0.2 + t * 0.07;
  // Trial 3's second report lacked the metric (a gap).
  const values = steps.map((i) => (t === 2 && i === 2 ? null : round(base + 1.5 * Math.exp(-i / 4) + noise(0.02))));
  const last = values.filter((v) => v !== null).pop();
  return {
    trial: "trial_" + String(t).padStart(5, "0"), status: st, iterations: ITERS[t],
    loss: last === undefined ? null : last, failures: st === "ERROR" ? 1 : 0,
    config: { lr: LRS[t], act: ACTS[t], batch_size: BATCH[t] },
    curve: { steps, values },
  };
});
const bestTrial = trials.filter((t) => t.loss !== null).reduce((a, b) => (b.loss < a.loss ? b : a));
const tune = [
  { name: "mnist-asha", status: {
    status: "RUNNING", metric: "loss", mode: "min", scheduler: "AsyncHyperBand", elapsed_s: 123.4, path: "file:///tmp/tune/mnist-asha",
    best: { trial: bestTrial.trial, config: bestTrial.config, loss: bestTrial.loss },
    params: ["lr", "act", "batch_size"], trials,
  } },
  // An older library: no params, no curves (what dashboard_probe publishes).
  { name: "legacy-exp", status: { status: "RUNNING", metric: "loss", trials: [{ trial: "t1", loss: 0.25 }, { trial: XSS_METRIC, loss: 1.0 }] } },
];

// ---------- RLlib ----------
const ITERS_RL = 40;
const rlSteps = [...Array(ITERS_RL).keys()].map((i) => (i + 1) * 4000);
const mean = rlSteps.map((s) => round(20 + 180 * (1 - Math.exp(-s / 60000)) + noise(5), 2));
const rllib = [{ name: "ppo-cartpole", status: {
  status: "RUNNING", algo: "PPO", env: "CartPole-v1 " + XSS_ENV, iteration: ITERS_RL, env_steps: rlSteps[ITERS_RL - 1],
  metrics: { episode_return_mean: mean[ITERS_RL - 1] },
  history: curve(rlSteps, {
    episode_return_mean: mean,
    // One report without min/max: a gap in the band only.
    episode_return_min: mean.map((m, i) => (i === 12 ? null : round(m * 0.4, 2))),
    episode_return_max: mean.map((m, i) => (i === 12 ? null : Math.min(500, round(m * 1.6, 2)))),
    policy_loss: rlSteps.map(() => round(-0.02 + noise(0.01))),
    vf_loss: rlSteps.map((s) => round(50 * Math.exp(-s / 40000) + noise(1))),
    entropy: rlSteps.map((s) => round(0.69 * Math.exp(-s / 200000))),
    total_loss: rlSteps.map((s) => round(25 * Math.exp(-s / 40000) + noise(0.5))),
    num_env_steps_sampled: rlSteps,
  }),
} }];

// ---------- what the pages must show ----------
const finite = (ys) => ys.filter((y) => typeof y === "number" && Number.isFinite(y)).length;
function expectations() {
  const trainCharts = {};
  for (const { name, status } of train) {
    if (!status.history) continue;
    for (const [m, ys] of Object.entries(status.history.series)) {
      const inRange = (x) => x >= status.history.steps[0] && x <= status.history.steps[status.history.steps.length - 1];
      trainCharts[`train-${name}-${m}`] = {
        [m]: finite(ys),
        ".mark-restart": { count: status.restarts.filter((r) => inRange(r.iteration)).length },
        ".mark-checkpoint": { count: status.checkpoints.filter(inRange).length },
      };
    }
  }
  const tuneCharts = {};
  const s = tune[0].status;
  const trialSeries = Object.fromEntries(s.trials.map((t) => [t.trial, finite(t.curve.values)]));
  trialSeries[".end-stopped"] = { count: s.trials.filter((t) => ["STOPPED", "ERROR"].includes(t.status) && finite(t.curve.values)).length };
  trialSeries[".end-paused"] = { count: s.trials.filter((t) => t.status === "PAUSED" && finite(t.curve.values)).length };
  tuneCharts["tune-mnist-asha-trials"] = trialSeries;
  const done = s.trials.filter((t) => ["TERMINATED", "STOPPED"].includes(t.status) && t.loss !== null).length;
  tuneCharts["tune-mnist-asha-history"] = { trials: done, "best so far": done };
  tuneCharts["tune-mnist-asha-parallel"] = { ".pc-line": { count: s.trials.length, points: s.params.length + 1 } };
  const rl = rllib[0].status.history.series;
  const rllibCharts = {
    "rllib-ppo-cartpole-return": { episode_return_mean: finite(rl.episode_return_mean), ".band": { count: 2 } },
    "rllib-ppo-cartpole-losses": Object.fromEntries(Object.keys(rl).filter((k) => k.endsWith("loss") || k === "entropy").map((k) => [k, finite(rl[k])])),
  };
  const hs = history.series;
  const overview = {
    "cluster-cpu": { used: finite(hs.cpu_used), total: finite(hs.cpu_total) },
    "cluster-memory": { used: finite(hs.memory_used_bytes), total: finite(hs.memory_total_bytes) },
    "cluster-store": { used: finite(hs.store_used_bytes), capacity: finite(hs.store_capacity_bytes) },
    "cluster-work": { "running tasks": finite(hs.running_tasks), "alive actors": finite(hs.alive_actors) },
  };
  return {
    pages: [
      { path: "/", charts: overview, text: ["Last hour", "Resources"], max_ms: { "cluster-cpu": 3000 } },
      { path: "/train", charts: trainCharts, text: ["Train runs", "legacy", "rank 2 died", XSS_METRIC],
        max_ms: { "train-huge-loss": 3000, "train-huge-throughput": 3000 } },
      { path: "/tune", charts: tuneCharts, text: ["Tune experiments", "trial_00003", "PAUSED", "legacy-exp", XSS_METRIC] },
      { path: "/rllib", charts: rllibCharts, text: ["RLlib runs", "PPO", XSS_ENV] },
      { path: "/serve", charts: {}, text: ["Nothing published yet."] },
    ],
  };
}

// ---------- serving ----------
const API = {
  "/api/v0/cluster": () => cluster,
  "/api/v0/cluster/history": OLD_HEAD ? null : () => history,
  "/api/v0/train": () => train,
  "/api/v0/tune": () => tune,
  "/api/v0/rllib": () => rllib,
  "/api/v0/serve": () => [],
};
const TYPES = { "app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html; charset=utf-8" };
const send = (res, code, type, body) => {
  res.writeHead(code, { "content-type": type, "cache-control": "no-store" });
  res.end(body);
};
const server = createServer((req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path.startsWith("/api/")) {
    const f = API[path];
    return f ? send(res, 200, "application/json", JSON.stringify(f())) : send(res, 404, "application/json", JSON.stringify({ error: "no such endpoint: " + path }));
  }
  if (path.startsWith("/assets/")) {
    const file = path.slice("/assets/".length);
    return TYPES[file] && file !== "index.html" ? send(res, 200, TYPES[file], readFileSync(join(ASSETS, file))) : send(res, 404, "text/plain", "not found");
  }
  send(res, 200, TYPES["index.html"], readFileSync(join(ASSETS, "index.html")));
});
if (EXPECT) writeFileSync(EXPECT, JSON.stringify(expectations(), null, 1));
server.listen(PORT, "127.0.0.1", () => console.log(`listening http://127.0.0.1:${server.address().port}`));
