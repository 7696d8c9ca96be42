// dashboard.mjs - drive Debian's chromium (playwright-core) through normstatd's dashboard.
//
// Run by test_dashboard.py, which owns the daemon and the trainer:
//   node dashboard.mjs URL TOKEN RUN SCREENSHOT
// Protocol on stdout, one line each: "CHECK {json}" (ok, desc, detail), "PHASE name"
// (the page showed the trained run; the driver then waits for a line on stdin, sent
// once a worker stopped reporting), "DONE". The page's values are read from the
// DOM's data- attributes and compared with the API's JSON fetched here; the chart
// geometry (bar widths, point positions) is checked against the same numbers. The
// keyboard is driven with playwright's keyboard; the requests counted while the page
// is hidden are those playwright sees the page send.
// Every wait is a DOM condition with a bounded timeout. NS_PLAYWRIGHT names the
// folder holding node_modules/playwright-core (make browser-deps installs it).
import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

const WAIT_MS = 20000;
const [url, token, run, screenshot] = process.argv.slice(2);
const require = createRequire(resolve(process.env.NS_PLAYWRIGHT || ".", "node_modules") + "/");
const { chromium } = require("playwright-core");

let failed = 0;
function check(ok, desc, detail) {
  if (!ok) failed++;
  console.log("CHECK " + JSON.stringify({ ok: !!ok, desc, detail: ok ? "" : String(detail ?? "") }));
  return !!ok;
}
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const t0 = Date.now();
const progress = (what) => console.log(`${((Date.now() - t0) / 1000).toFixed(1)}s ${what}`);

async function api(path) {
  const r = await fetch(url + path, { headers: { Authorization: "Bearer " + token } });
  if (!r.ok) throw new Error(`GET ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

// ------------------------------------------------------------------ reading the page

// The bars of a bar chart: [{key, value, width, barWidth, max}].
const readBars = (page, sel) => page.$$eval(sel + " svg.bars", (svgs) => svgs.flatMap((svg) =>
  [...svg.querySelectorAll("g.bar")].map((g) => ({
    key: g.dataset.key,
    value: g.dataset.value === undefined ? null : Number(g.dataset.value),
    width: Number(g.querySelector("rect.fill").getAttribute("width")),
    barWidth: Number(svg.dataset.barWidth), max: Number(svg.dataset.max),
  }))));

// A line chart's points per series, with each point's position mapped back to a value
// through the scales the chart keeps on its <svg>.
const readLines = (page, sel) => page.$eval(sel + " svg.lines", (svg) => {
  const d = Object.fromEntries(["x0", "x1", "y0", "y1", "px0", "px1", "py0", "py1"]
    .map((k) => [k, Number(svg.dataset[k])]));
  const out = {};
  for (const c of svg.querySelectorAll("circle.pt")) {
    const s = (out[c.dataset.series] ||= []);
    const cy = Number(c.getAttribute("cy"));
    s.push({ x: Number(c.dataset.x), y: Number(c.dataset.y),
      yFromPixels: d.y0 + ((cy - d.py0) / (d.py1 - d.py0)) * (d.y1 - d.y0),
      pixelPerUnit: Math.abs(d.py1 - d.py0) / (d.y1 - d.y0) });
  }
  return out;
});

function checkSeries(points, want, desc) {
  check(same(points.map((p) => [p.x, p.y]), want), desc + ": the values the API serves",
    `page ${JSON.stringify(points.slice(0, 4).map((p) => [p.x, p.y]))}..., API ${JSON.stringify(want.slice(0, 4))}...`);
  const off = Math.max(0, ...points.map((p) => Math.abs(p.yFromPixels - p.y) * p.pixelPerUnit));
  check(off <= 0.5, desc + ": each point drawn at its value (within half a pixel)", `off by ${off} px`);
}

// ------------------------------------------------------------------ phases

async function trainedRun(page) {
  await page.waitForFunction(() => Number(document.body.dataset.refreshed || 0) >= 1, null, { timeout: WAIT_MS });
  check(page.url().endsWith("/ui/"), "GET / redirects to /ui/ and the token leaves the address bar", page.url());
  const status = await api(`/v1/runs/${run}`);
  const drift = await api(`/v1/runs/${run}/drift`);
  const domains = status.status.domains.map((d) => d.domain);
  check(same(domains.slice().sort(), ["photo", "sketch"]), "the run has two domains", domains);
  check(await page.$eval("#run-select", (s) => s.value) === run, "the run is chosen");
  const domain = await page.$eval("#domain-select", (s) => s.value);
  check(domain === "*", "several domains: the pooled view is shown first", domain);

  // Drift bars: one per layer of the pooled view, worst first, as /drift serves them.
  const want = drift.layers.filter((r) => r.domain === domain);
  check(want.length === Object.keys(status.status.layers).length && want.every((r) => r.drift),
    "/drift has a pooled row with drift for every layer", JSON.stringify(want));
  await page.waitForFunction((n) => document.querySelectorAll("#drift-bars g.bar").length === n,
    want.length, { timeout: WAIT_MS });
  const bars = await readBars(page, "#drift-bars");
  check(same(bars.map((b) => b.key), want.map((r) => r.layer)), "drift bars: the layers, worst first",
    `${bars.map((b) => b.key)} vs ${want.map((r) => r.layer)}`);
  check(same(bars.map((b) => b.value), want.map((r) => r.drift.mean_max)), "drift bars: mean_max of /drift",
    `${bars.map((b) => b.value)} vs ${want.map((r) => r.drift.mean_max)}`);
  const maxValue = Math.max(...want.map((r) => r.drift.mean_max));
  const widthErr = Math.max(...bars.map((b, i) => Math.abs(b.width - (b.barWidth * want[i].drift.mean_max) / maxValue)));
  check(widthErr < 1e-6, "drift bars: each bar's length is its drift over the worst", widthErr);

  // Choose the second-worst layer by clicking its bar: the per-step chart follows.
  const layer = want[1].layer;
  await page.click(`#drift-bars g.bar[data-key="${layer}"]`);
  await page.waitForFunction((l) => document.querySelector("#layer-select").value === l &&
    document.querySelector("#step-chart-title").textContent.includes(l), layer, { timeout: WAIT_MS });
  const channel = Number(await page.$eval("#channel-input", (i) => i.value));
  check(channel === want[1].drift.mean_max_channel, "the chart opens on the layer's worst channel",
    `${channel} vs ${want[1].drift.mean_max_channel}`);
  const hist = await api(`/v1/runs/${run}/history?layer=${layer}&domain=${encodeURIComponent(domain)}&channel=${channel}`);
  check(hist.steps.length >= 8 && hist.population, "/history has the trained steps and a population",
    JSON.stringify(hist).slice(0, 300));
  const lines = await readLines(page, "#step-chart");
  checkSeries(lines["batch mean"] || [], hist.steps.map((s) => [s.step, s.batch_mean]), "per-step chart, batch mean");
  checkSeries(lines["EMA mean"] || [], hist.steps.map((s) => [s.step, s.ema_mean]), "per-step chart, EMA mean");
  const pop = lines["PreciseBN population mean"] || [];
  check(pop.length === 1 && pop[0].y === hist.population.mean, "per-step chart, the PreciseBN population line",
    `${JSON.stringify(pop)} vs ${hist.population.mean}`);
  const driftLines = await readLines(page, "#drift-steps");
  const withDrift = hist.steps.filter((s) => s.drift);
  checkSeries(driftLines["mean drift, max"] || [], withDrift.map((s) => [s.step, s.drift.mean_max]), "drift over steps, max");
  checkSeries(driftLines["variance drift, max"] || [], withDrift.map((s) => [s.step, s.drift.var_max]), "drift over steps, variance");

  // Per-domain statistics side by side: one column per domain and the pooled view.
  for (const d of ["photo", "sketch", "*"]) {
    const ema = (await api(`/v1/runs/${run}/stats?source=ema&domain=${encodeURIComponent(d)}&layers=${layer}`)).layers[layer];
    const col = await page.$$eval("#domains thead th", (ths, dd) => ths.findIndex((th) => th.dataset.domain === dd), d);
    const cell = await page.$$eval(`#domains tbody tr`, (trs, c) => trs.map((tr) =>
      Number(tr.children[c].dataset.value)), col);
    check(col > 0 && cell[0] === ema.running_mean[channel] && cell[1] === ema.running_var[channel],
      `per-domain table, ${d}: the EMA of /stats`, `${cell.slice(0, 2)} vs ${ema.running_mean[channel]}, ${ema.running_var[channel]}`);
  }
  check(await page.$("#stall-none") !== null, "no stall while every worker reports");

  // Rejections by reason: this run's, as its status counts them.
  const rejected = await readBars(page, '#rejections .rejections[data-scope="run"]');
  const wantRejected = Object.entries(status.status.health.rejections).sort((a, b) => b[1] - a[1]);
  check(wantRejected.length > 0 && same(rejected.map((b) => [b.key, b.value]), wantRejected),
    "this run's rejections by reason, as the run status counts them",
    `${JSON.stringify(rejected.map((b) => [b.key, b.value]))} vs ${JSON.stringify(wantRejected)}`);
  return { domain, layers: want.map((r) => r.layer), chosen: layer };
}

// ------------------------------------------------------------------ keyboard

const focused = (page) => page.evaluate(() => {
  const a = document.activeElement;
  return { id: a.closest("[id]") ? a.closest("[id]").id : "", key: a.dataset ? a.dataset.key ?? null : null,
    role: a.getAttribute("role"), tag: a.tagName };
});

// Press Tab until the focus is in the element of that id; false after 'limit' presses.
async function tabTo(page, id, limit) {
  for (let i = 0; i < limit; i++) {
    await page.keyboard.press("Tab");
    if ((await focused(page)).id === id) return true;
  }
  return false;
}

const readout = (page) => page.$eval("#step-readout", (p) => ({
  text: p.textContent, step: Number(p.dataset.step), channel: Number(p.dataset.channel),
  batchMean: Number(p.dataset.batchMean), emaMean: Number(p.dataset.emaMean),
  populationMean: Number(p.dataset.populationMean),
}));

function checkReadout(got, hist, step, desc) {
  const s = hist.steps.find((x) => x.step === step);
  check(s && got.step === step && got.channel === hist.channel && got.batchMean === s.batch_mean &&
    got.emaMean === s.ema_mean && got.populationMean === hist.population.mean,
  desc + ": the readout gives /history's values at that step and channel",
  `${JSON.stringify(got)} vs step ${step}, channel ${hist.channel}: ${JSON.stringify(s)}, population ${hist.population.mean}`);
  check(got.text.includes(`Step ${step}, channel ${hist.channel} of ${hist.channels}`), desc + ": the readout's text names them", got.text);
}

// Tab to the drift bars, move with the arrow keys, Enter chooses the layer; Tab on to
// the per-step chart, where Left/Right move the step and Up/Down the channel.
async function keyboard(page, { domain, layers, chosen }) {
  await page.focus("#channel-input");
  check(await tabTo(page, "drift-bars", 10), "Tab reaches the drift bars", JSON.stringify(await focused(page)));
  let f = await focused(page);
  check(f.role === "option" && f.key === chosen, "Tab lands on the chosen layer's bar", JSON.stringify(f));
  const ring = await page.$eval("#drift-bars g.bar:focus .hit", (r) => getComputedStyle(r).stroke).catch((e) => e.message);
  check(ring !== "none" && !ring.includes("Error"), "the focused bar shows a focus ring", ring);
  const target = layers[layers.indexOf(chosen) + 1];
  await page.keyboard.press("ArrowDown");
  f = await focused(page);
  check(f.key === target, "ArrowDown moves the focus to the next bar", `${f.key} vs ${target}`);
  await page.keyboard.press("Enter");
  await page.waitForFunction((l) => document.querySelector("#layer-select").value === l &&
    document.querySelector("#step-chart-title").textContent.includes(l) &&
    document.querySelector(`#drift-bars g.bar[data-key="${l}"]`).getAttribute("aria-selected") === "true",
  target, { timeout: WAIT_MS });
  check(true, "Enter on a bar chooses its layer");
  f = await focused(page);
  check(f.id === "drift-bars" && f.key === target, "the chosen bar keeps the focus through the redraw", JSON.stringify(f));

  check(await tabTo(page, "step-chart", 5), "Tab goes on to the per-step chart", JSON.stringify(await focused(page)));
  const outline = await page.$eval("#step-chart svg", (s) => getComputedStyle(s).outlineStyle);
  check(outline === "solid", "the focused chart shows a focus outline", outline);
  const label = await page.$eval("#step-chart svg", (s) => s.getAttribute("aria-label") || "");
  check(label.includes(target), "the chart's aria-label names the layer", label);

  const drift = await api(`/v1/runs/${run}/drift`);
  const channel = drift.layers.find((r) => r.layer === target && r.domain === domain).drift.mean_max_channel;
  const histOf = (c) => api(`/v1/runs/${run}/history?layer=${target}&domain=${encodeURIComponent(domain)}&channel=${c}`);
  const hist = await histOf(channel);
  const steps = hist.steps.map((s) => s.step);
  checkReadout(await readout(page), hist, steps[steps.length - 1], "the cursor starts on the latest step");
  const back = 3; // the test's own choice: three steps before the latest
  for (let i = 0; i < back; i++) await page.keyboard.press("ArrowLeft");
  const step = steps[steps.length - 1 - back];
  await page.waitForFunction((st) => Number(document.querySelector("#step-readout").dataset.step) === st, step,
    { timeout: WAIT_MS });
  checkReadout(await readout(page), hist, step, `ArrowLeft ${back} times`);
  const cursor = await page.$eval("#step-chart svg line.cursor", (l) => Number(l.dataset.x)).catch(() => null);
  check(cursor === step, "the chart's cursor is on that step", cursor);

  // Up: the next channel (Down from the last one); the values shown are the new channel's
  const up = channel + 1 < hist.channels;
  const next = up ? channel + 1 : channel - 1;
  await page.keyboard.press(up ? "ArrowUp" : "ArrowDown");
  await page.waitForFunction((c) => Number(document.querySelector("#step-readout").dataset.channel) === c &&
    Number(document.querySelector("#channel-input").value) === c, next, { timeout: WAIT_MS });
  const hist2 = await histOf(next);
  const got = await readout(page);
  checkReadout(got, hist2, step, `${up ? "ArrowUp" : "ArrowDown"} to channel ${next}`);
  // the pooled EMA, computed here from the steps' batch means as PyTorch's BatchNorm does it
  // (running_mean starts at 0, momentum 0.1, every step 0..K-1 finalized)
  let ema = 0;
  for (const s of hist2.steps.filter((x) => x.step <= step)) ema = 0.9 * ema + 0.1 * s.batch_mean;
  check(steps[0] === 0 && steps.every((x, i) => x === i) && Math.abs(got.emaMean - ema) <= 1e-6 * Math.max(1, Math.abs(ema)),
    "the readout's EMA mean is the EMA of the batch means up to that step, computed here", `${got.emaMean} vs ${ema}`);
  const before = hist.steps.find((s) => s.step === step);
  check(got.batchMean !== before.batch_mean, "the values shown changed with the channel",
    `${got.batchMean} vs ${before.batch_mean}`);
  const lines = await readLines(page, "#step-chart");
  checkSeries(lines["batch mean"] || [], hist2.steps.map((s) => [s.step, s.batch_mean]), `per-step chart, channel ${next}`);
  f = await focused(page);
  check(f.id === "step-chart" && f.tag.toLowerCase() === "svg", "the chart keeps the focus through the redraw", JSON.stringify(f));
  await page.keyboard.press("End");
  await page.waitForFunction((st) => Number(document.querySelector("#step-readout").dataset.step) === st,
    steps[steps.length - 1], { timeout: WAIT_MS });
  check(true, "End moves the cursor back to the latest step");
}

// ------------------------------------------------------------------ hidden tab

// Headless chromium keeps every page visible (bringing another page to the front,
// minimizing the window and CDP's lifecycle states all leave visibilityState alone),
// so the page is told it is hidden the way a browser does: document.hidden and
// visibilityState turn, then a visibilitychange event. The requests counted are the
// real ones the page sends to the daemon's API.
async function hiddenTab(page, apiRequests) {
  const setVisibility = (v) => page.evaluate((state) => {
    if (!Object.getOwnPropertyDescriptor(document, "visibilityState")) {
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => window.__visibility });
      Object.defineProperty(document, "hidden", { configurable: true, get: () => window.__visibility === "hidden" });
    }
    window.__visibility = state;
    document.dispatchEvent(new Event("visibilitychange"));
  }, v);
  const seen = apiRequests.length;
  await page.waitForFunction(() => document.body.dataset.polling === "live", null, { timeout: WAIT_MS });
  await page.waitForRequest((r) => new URL(r.url()).pathname === "/v1/runs", { timeout: WAIT_MS });
  check(apiRequests.length > seen, "a visible page polls the API", `${apiRequests.length} requests`);

  await setVisibility("hidden");
  await page.waitForFunction(() => document.body.dataset.polling === "paused", null, { timeout: WAIT_MS });
  const paused = apiRequests.length;
  const refreshed = await page.evaluate(() => document.body.dataset.refreshed);
  // an observation window of several poll periods (2 s): a page still polling sends
  // a refresh's requests in it
  await page.waitForTimeout(4 * 2000);
  check(apiRequests.length === paused, "no API request in 8 s while the tab is hidden",
    `${apiRequests.length - paused} requests: ${apiRequests.slice(paused, paused + 6).join(" ")}`);
  check(await page.evaluate(() => document.body.dataset.refreshed) === refreshed, "no refresh while hidden");
  const updated = await page.textContent("#updated");
  check(updated.includes("paused"), "the page says it is paused", updated);

  const asked = page.waitForRequest((r) => new URL(r.url()).pathname === "/v1/runs", { timeout: WAIT_MS });
  await setVisibility("visible");
  await asked;
  await page.waitForFunction((n) => document.body.dataset.refreshed !== n && document.body.dataset.polling === "live",
    refreshed, { timeout: WAIT_MS });
  check(apiRequests.length > paused, "visible again: the page refreshes", `${apiRequests.length - paused} requests`);
}

async function stalled(page) {
  await page.waitForSelector('#stall-table tr.stall[data-waiting="2"]', { timeout: WAIT_MS });
  const status = await api(`/v1/runs/${run}`);
  const pending = status.status.pending;
  check(pending.length > 0 && pending.every((p) => same(p.waiting_for, [2])),
    "the API's stall report: every pending step waits for worker 2", JSON.stringify(pending));
  const rows = await page.$$eval("#stall-table tr.stall", (trs) => trs.map((tr) => [Number(tr.dataset.step), tr.dataset.waiting]));
  const steps = [...new Set(pending.map((p) => p.step))].sort((a, b) => a - b);
  check(same(rows, steps.map((s) => [s, "2"])), "the page's stall report: the pending steps, waiting for worker 2",
    `${JSON.stringify(rows)} vs ${steps}`);
  const lags = await readBars(page, "#lag");
  const want = status.status.workers.slice().sort((a, b) => a.worker - b.worker).map((w) => [String(w.worker), w.lag ?? 0]);
  check(same(lags.map((b) => [b.key, b.value]), want), "worker lag bars: the lags the API serves",
    `${JSON.stringify(lags.map((b) => [b.key, b.value]))} vs ${JSON.stringify(want)}`);
  check(want.find((w) => w[0] === "2")[1] > 0, "worker 2 lags behind", JSON.stringify(want));
}

// Without a token the page asks for one (its 401s and 403s are expected here, so
// this tab's console is not watched); an unknown one is refused (401); the right one shows the runs.
async function tokenPrompt(context) {
  const page = await context.newPage();
  await page.goto(url + "/ui/");
  await page.waitForSelector("#token-form:not([hidden])", { timeout: WAIT_MS });
  await page.fill("#token-input", token + "-wrong");
  await page.click("#token-form button");
  // an unknown token is 401 unauthorized (403 is a known token without the scope)
  await page.waitForFunction(() => document.querySelector("#token-refused").textContent.includes("unauthorized"),
    null, { timeout: WAIT_MS });
  check(true, "a wrong token is refused and the page says so");
  await page.fill("#token-input", token);
  await page.click("#token-form button");
  await page.waitForSelector(`#runs tr[data-run="${run}"]`, { timeout: WAIT_MS });
  check(await page.$eval("#token-form", (f) => f.hidden), "without a token the page asks for one, then shows the runs");
  await page.close();
}

// ------------------------------------------------------------------ main

async function main() {
  const profile = mkdtempSync(join(tmpdir(), "ns-chromium-"));
  let context;
  progress("starting chromium");
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: "/usr/bin/chromium", headless: true, timeout: WAIT_MS,
      viewport: { width: 1400, height: 1000 }, deviceScaleFactor: 1,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
  } catch (e) {
    check(false, "chromium starts (/usr/bin/chromium, headless)", e.message.split("\n").slice(0, 6).join(" | "));
    rmSync(profile, { recursive: true, force: true });
    return 1;
  }
  progress("chromium started");
  context.setDefaultTimeout(WAIT_MS);
  context.setDefaultNavigationTimeout(WAIT_MS);
  const page = context.pages()[0] || await context.newPage();
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("requestfailed", (r) => errors.push("request failed: " + r.url()));
  const elsewhere = [];
  page.on("request", (r) => { if (!r.url().startsWith(url + "/")) elsewhere.push(r.url()); });
  const apiRequests = []; // the page's requests to the API, not to /ui/ files
  page.on("request", (r) => {
    const path = new URL(r.url()).pathname;
    if (path.startsWith("/v1/") || path === "/metrics") apiRequests.push(path);
  });
  try {
    await tokenPrompt(context);
    progress("token prompt done");
    await page.goto(url + "/#token=" + encodeURIComponent(token));
    const shown = await trainedRun(page);
    progress("trained run checked");
    await keyboard(page, shown);
    progress("keyboard checked");
    await hiddenTab(page, apiRequests);
    progress("hidden tab checked");
    console.log("PHASE trained");
    await stdinLines.next(); // a worker stopped reporting
    await stalled(page);
    progress("stall checked");
    await page.screenshot({ path: screenshot, fullPage: true });
    check(true, "screenshot saved: " + screenshot);
  } catch (e) {
    check(false, "the dashboard answered every wait", e.stack);
    await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  }
  check(errors.length === 0, "no console error, page error or failed request", errors.join(" | "));
  check(elsewhere.length === 0, "every request of the page goes to the daemon", elsewhere.join(" "));
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  return failed ? 1 : 0;
}

main().then((rc) => { console.log("DONE"); process.exit(rc); },
  (e) => { check(false, "the driver ran", e.stack); process.exit(1); });
