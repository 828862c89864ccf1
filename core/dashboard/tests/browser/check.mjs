// Drives Debian's Chromium (headless, through playwright-core) over every
// page of a live cluster's dashboard. Run by the integration test
// `dashboard::the_dashboard_works_in_a_real_browser`, which starts the
// cluster and a probe job and passes them in the environment:
//   BASE (http://host:port), TOKEN, JOB, NODES (comma-separated ids),
//   ACTOR (the id of actor "dash-counter"), SHOTS (screenshot folder),
//   CHROMIUM (the browser binary).
// Fails (exit 1) on a console error, a page that shows an error, missing
// content, a kill button that does not kill, job logs that do not follow,
// or markup from the cluster (an actor's name, a trial's, a job's output:
// see dashboard_probe.rs) that became elements instead of text.
import { openPage } from "./browser.mjs";
import { mkdirSync } from "node:fs";

const env = process.env;
const { BASE, TOKEN, JOB, ACTOR, SHOTS } = env;
const NODES = env.NODES.split(",");
mkdirSync(SHOTS, { recursive: true });

const { browser, page, errors, watching } = await openPage(false);

let step = "logging in";
function fail(msg) {
  console.error("FAIL: " + msg);
  process.exitCode = 1;
  throw new Error(msg);
}

// What the probe job names and prints: shown as text, never run.
const XSS_ACTOR = `<img src=x onerror="document.body.dataset.xss='actor'">`;
const XSS_LINE = "<script>document.body.dataset.xss='log'</script>";

// Markup from the cluster must stay text: no element it would make, and
// nothing it would run.
async function noInjection(path) {
  const found = await page.evaluate(() => ({
    ran: document.body.dataset.xss || null,
    made: document.querySelectorAll("main img[src=x], main script").length,
  }));
  if (found.ran || found.made) fail(`${path}: markup from the cluster became elements (${JSON.stringify(found)})`);
}

async function loaded(path) {
  await page.waitForSelector(`body[data-loaded]`, { timeout: 30000 });
  const got = await page.getAttribute("body", "data-loaded");
  if (got === "error") fail(`${path}: ${await page.textContent("#page-error")}`);
}

try {
  // Without the token: the login page; a wrong token is refused.
  await page.goto(BASE + "/actors");
  if (!page.url().includes("/login")) fail("no redirect to /login: " + page.url());
  await page.fill("#token", "not-the-token");
  await page.click("button[type=submit]");
  await page.waitForSelector("#login-error");
  await page.screenshot({ path: `${SHOTS}/login-wrong-token.png` });
  // The token: back to the page asked for, with the cookie set.
  await page.fill("#token", TOKEN);
  await Promise.all([page.waitForURL(BASE + "/actors"), page.click("button[type=submit]")]);
  watching.on = true;
  await loaded("/actors");

  const pages = [
    ["/", ["dash", ...NODES.map((n) => n.slice(0, 12)), JOB], "overview"],
    ["/nodes", NODES.map((n) => n.slice(0, 12)).concat(["alive"]), "nodes"],
    [`/nodes/${NODES[0]}`, ["Workers", "RSS"], "node"],
    ["/actors", ["dash-counter", "dash-other", XSS_ACTOR, "ALIVE"], "actors"],
    [`/actors/${ACTOR}`, ["dash-counter", "counter actor started"], "actor"],
    ["/tasks", ["dashboard_probe::square", "FINISHED", "NO_NODE_HAS_RESOURCES", "ARGS_NOT_READY"], "tasks"],
    ["/tasks?state=PENDING", ["PLACEMENT_GROUP_PENDING", "ALL_BUSY"], "tasks-pending"],
    ["/jobs", [JOB, "RUNNING"], "jobs"],
    ["/placement-groups", ["PENDING", "CPU: 64"], "placement-groups"],
    ["/objects", ["in memory"], "objects"],
    ["/logs", ["open"], "logs"],
    ["/events", ["NODE_JOINED"], "events"],
    ["/serve", ["Serve applications"], "serve"],
    ["/train", ["Train runs"], "train"],
    ["/tune", ["Tune experiments", "probe-experiment", "probe_trial_2", XSS_ACTOR, "RUNNING"], "tune"],
  ];
  for (const [path, want, shot] of pages) {
    step = "page " + path;
    // The cluster lives on while the pages are read (on a loaded machine a
    // state may be a moment behind): a page is read again until it shows
    // what it must, within 30 s.
    let text = "";
    let missing = want;
    for (const until = Date.now() + 30000; ;) {
      await page.goto(BASE + path);
      await loaded(path);
      text = await page.textContent("main");
      missing = want.filter((w) => !text.includes(w));
      if (missing.length === 0 || Date.now() > until) break;
      await page.waitForTimeout(500);
    }
    for (const w of missing) fail(`${path} does not show "${w}" (within 30 s): ${text.slice(0, 300)}`);
    if (/\[object |undefined|NaN/.test(text)) fail(`${path} shows a value the script failed to draw: ${text.slice(0, 300)}`);
    await noInjection(path);
    await page.screenshot({ path: `${SHOTS}/${shot}.png`, fullPage: shot !== "logs" });
  }

  // A job's logs follow live: more ticks arrive while the page is open.
  await page.goto(`${BASE}/jobs/${JOB}`);
  await loaded(`/jobs/${JOB}`);
  const ticks = async () => ((await page.textContent("#job-log")).match(/tick \d+/g) || []).length;
  const before = await ticks();
  step = "the job's logs follow";
  await page.waitForFunction((n) => (document.querySelector("#job-log").textContent.match(/tick \d+/g) || []).length >= n + 3, before, { timeout: 30000 });
  if ((await page.textContent("#follow-status")) !== "following…") fail("the job page is not following its logs");
  if (!(await page.textContent("#job-log")).includes(XSS_LINE)) fail("the job page does not show the printed markup as text");
  await noInjection(`/jobs/${JOB}`);
  await page.screenshot({ path: `${SHOTS}/job.png` });

  // A worker's log follows too.
  step = "a worker's log";
  await page.goto(`${BASE}/logs`);
  await loaded("/logs");
  await Promise.all([page.waitForURL(/\/logs\?pid=/), page.click("#logs-table a >> nth=0")]);
  await loaded("/logs?pid");
  await noInjection("/logs?pid");

  // The kill button kills the actor.
  step = "the kill button kills";
  await page.goto(BASE + "/actors");
  await loaded("/actors");
  await page.click(`button.kill[data-actor-id="${ACTOR}"]`);
  await page.waitForFunction((id) => {
    const row = [...document.querySelectorAll("#actors-table tr")].find((r) => r.textContent.includes(id));
    return row && row.textContent.includes("DEAD");
  }, ACTOR, { timeout: 30000 });
  await page.screenshot({ path: `${SHOTS}/actors-after-kill.png`, fullPage: true });

  if (errors.length) fail("console errors:\n" + errors.join("\n"));
  console.log(JSON.stringify({ ok: true, pages: pages.length, ticks_before: before }));
} catch (e) {
  if (!process.exitCode) console.error(`FAIL (${step}): ${e.message}`);
  await page.screenshot({ path: `${SHOTS}/failure.png`, fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
