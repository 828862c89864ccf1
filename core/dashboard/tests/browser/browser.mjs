// What the browser scripts (check.mjs, charts.mjs, bench.mjs) share:
// Debian's Chromium (CHROMIUM, default /usr/bin/chromium) headless through
// playwright-core, one 1440x1000 page, and the login through /login.
import { chromium } from "playwright-core";

// The browser and its page. `errors` collects uncaught exceptions, and
// console errors while `watching.on` is true (from the start unless
// `watchFromStart` is false: check.mjs shows a wrong token first).
export async function openPage(watchFromStart = true) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
  const errors = [];
  const watching = { on: watchFromStart };
  page.on("console", (m) => { if (watching.on && m.type() === "error") errors.push(`${page.url()}: console: ${m.text()}`); });
  page.on("pageerror", (e) => errors.push(`${page.url()}: uncaught: ${e.message}`));
  return { browser, page, errors, watching };
}

// Logs in with `token`, landing on the overview.
export async function logIn(page, base, token) {
  await page.goto(base + "/login");
  await page.fill("#token", token);
  await Promise.all([page.waitForURL(base + "/"), page.click("button[type=submit]")]);
}
