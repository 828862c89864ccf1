// Times the dashboard's pages in Debian's Chromium: from navigation to the
// page drawn (the script marks <body data-loaded>), the median of 3 loads
// each. Run by integration-tests' dashboard_bench with BASE, TOKEN and
// CHROMIUM in the environment; prints one line per page and a JSON line.
import { logIn, openPage } from "./browser.mjs";

const { BASE, TOKEN } = process.env;
const { browser, page } = await openPage();
await logIn(page, BASE, TOKEN);
const results = [];
for (const path of ["/", "/nodes", "/actors", "/tasks", "/events", "/jobs", "/placement-groups"]) {
  const times = [];
  for (let i = 0; i < 3; i++) {
    const t = Date.now();
    await page.goto(BASE + path);
    await page.waitForSelector("body[data-loaded]", { timeout: 60000 });
    times.push(Date.now() - t);
  }
  times.sort((a, b) => a - b);
  console.log(`${path.padEnd(40)} ${String(times[1]).padStart(10)} ms`);
  results.push({ page: path, median_ms: times[1] });
}
console.log(JSON.stringify({ bench: "dashboard_pages", pages: results }));
await browser.close();
