// Drives the saga console in headless Chromium: filter to failed sagas, open one, see its
// timeline and graph, retry it with a reason and see it complete; replay a dead letter.
// Usage: node console.mjs <console URL> <screenshot dir>. Exits non-zero with the reason on
// the first thing that does not hold. Run by tests/console_browser.rs.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [base, shots] = process.argv.slice(2);
if (!base || !shots) {
  console.error("usage: node console.mjs <console URL> <screenshot dir>");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

function check(condition, what) {
  if (!condition) throw new Error(what);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  const errors = [];
  page.on("pageerror", (err) => errors.push(String(err)));
  page.on("console", (msg) => { if (msg.type() === "error") errors.push(msg.text()); });

  // The list, then only the failed sagas.
  await page.goto(base);
  await page.waitForSelector("table#sagas");
  const all = await page.locator("table#sagas tbody tr").count();
  check(all >= 3, `the list shows ${all} sagas, expected at least 3`);
  await page.screenshot({ path: join(shots, "console-list.png"), fullPage: true });
  await page.selectOption("select[name=status]", "failed");
  await page.click("form.filters button[type=submit]");
  await page.waitForURL(/status=failed/);
  const failedRows = page.locator("table#sagas tbody tr");
  check((await failedRows.count()) === 1, `expected one failed saga, found ${await failedRows.count()}`);
  check((await failedRows.first().innerText()).includes("confirm_ticket"), "the failed saga is not at confirm_ticket");

  // Its page: timeline and graph with the path drawn.
  await failedRows.first().locator("a").first().click();
  await page.waitForSelector("table#timeline");
  const timeline = await page.locator("table#timeline").innerText();
  check(timeline.includes("parked"), "the timeline does not show the saga parking");
  check(timeline.includes("ConfirmCreateTicket"), "the timeline does not show the commands sent");
  check((await page.locator("#graph svg").count()) === 1, "no graph");
  check((await page.locator("#graph g.node.current").count()) === 1, "the graph marks no current step");
  check((await page.locator("#graph path.edge.taken").count()) >= 4, "the graph draws no path");
  await page.screenshot({ path: join(shots, "console-saga.png"), fullPage: true });

  // Retry it with a reason; it completes.
  await page.click("a[data-action=retry]");
  await page.waitForSelector("textarea[name=reason]");
  await page.fill("textarea[name=reason]", "the night shift is staffed now");
  await page.fill("input[name=actor]", "browser-test");
  await page.click("button[type=submit]");
  await page.waitForSelector(".notice");
  const notice = await page.locator(".notice").innerText();
  check(notice.includes("retry: applied"), `the retry was not applied: ${notice}`);
  const deadline = Date.now() + 30_000;
  for (;;) {
    const status = (await page.locator("#status").innerText()).trim();
    if (status === "completed") break;
    check(Date.now() < deadline, `the saga is still ${status} after the retry`);
    await page.waitForTimeout(300);
    await page.reload();
  }
  check((await page.locator("table#timeline").innerText()).includes("operator retry"), "the retry is not in the timeline");

  // A dead letter: open it, replay it with a reason.
  await page.click("header a[href$='/dead-letters']");
  await page.waitForSelector("table#dead-letters");
  await page.locator("table#dead-letters tbody tr a").first().click();
  await page.click("a[data-action=replay]");
  await page.fill("textarea[name=reason]", "the consumer is fixed");
  await page.click("button[type=submit]");
  await page.waitForSelector(".notice");
  const replayed = await page.locator(".notice").innerText();
  check(replayed.includes("replayed as message"), `the replay did not happen: ${replayed}`);
  check((await page.locator("#resolution").innerText()).includes("replayed as"), "the dead letter does not say it was replayed");

  check(errors.length === 0, `the pages logged errors: ${errors.join("; ")}`);

  // A malformed filter is a clear 4xx page.
  const bad = await page.goto(`${base}?status=exploded`);
  check(bad.status() === 400, `a malformed filter answered ${bad.status()}`);
  check((await page.locator("#error").innerText()).includes("unknown saga status"), "the error page does not say what is wrong");
  const missing = await page.goto(`${base}/sagas/01a0f0f0-0000-7000-8000-000000000000`);
  check(missing.status() === 404, `an unknown saga answered ${missing.status()}`);

  console.log("console browser test passed");
} catch (err) {
  console.error(`console browser test failed: ${err.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
