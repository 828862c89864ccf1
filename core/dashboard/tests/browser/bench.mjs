// Times the dashboard's pages in Debian's Chromium: from navigation to the
// page drawn (the script marks <body data-loaded>), the median of 3 loads
// each. Run by integration-tests' dashboard_bench with BASE, TOKEN and
// CHROMIUM in the environment; prints one line per page and a JSON line.
import { chromium } from "playwright-core";

const { BASE, TOKEN } = process.env;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
await page.goto(BASE + "/login");
await page.fill("#token", TOKEN);
await Promise.all([page.waitForURL(BASE + "/"), page.click("button[type=submit]")]);
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
