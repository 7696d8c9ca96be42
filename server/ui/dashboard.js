// dashboard.js - normstat's live dashboard: polls the daemon's API and draws plain SVG.
//
// Uses only the documented API (proto/openapi.yaml): GET /v1/runs, the run status
// (layers, stall report, health), /drift, /history, /stats and /metrics. Paths are
// relative to /ui/, so the page also works behind a proxy that adds a prefix.
// Every number drawn carries its value in a data- attribute, so tests read what
// the page shows without parsing text.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "normstat.token";
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  run: null,
  domain: null, // a domain name, or "*" for all domains pooled
  layer: null,
  channel: null, // null: the layer's worst channel
  step: null, // the step the charts' cursor is on; null: the latest
  hist: null, // the /history drawn, so the cursor moves without a fetch
  timer: null,
  busy: false, // a refresh is under way
  seq: 0, // the latest refresh; an older one still under way is discarded
};

// ------------------------------------------------------------------ API

class AuthError extends Error {}

async function api(path, asText) {
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  const resp = await fetch("../" + path, { headers, cache: "no-store" });
  if (!resp.ok) {
    let msg = resp.status + " " + resp.statusText;
    try {
      const body = await resp.json();
      if (body.error) msg = body.error.code + ": " + body.error.message;
    } catch (e) { /* not JSON: keep the status line */ }
    // 401: no token or an unknown one; 403: this token may not read what the page shows
    throw new (resp.status === 401 || resp.status === 403 ? AuthError : Error)(path.split("?")[0] + ": " + msg);
  }
  return asText ? resp.text() : resp.json();
}

const enc = encodeURIComponent;
const runPath = (suffix) => "v1/runs/" + enc(state.run) + suffix;

// ------------------------------------------------------------------ helpers

const $ = (id) => document.getElementById(id);
const byName = (a, b) => a.localeCompare(b, undefined, { numeric: true }); // layer2 before layer10

function fmt(x, digits) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (Number.isInteger(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(digits || 3);
  return x.toPrecision(digits || 4);
}

function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG_NS, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function fillRows(table, rows) {
  table.tBodies[0].replaceChildren(...rows);
}

function emptyNote(text) {
  return el("p", { class: "empty" }, text);
}

// Ticks at 1, 2 or 5 times a power of ten, as close to n of them as that allows.
function ticks(lo, hi, n) {
  const span = hi - lo;
  if (!(span > 0)) return [lo];
  const pow = Math.pow(10, Math.floor(Math.log10(span / n)));
  const count = (s) => Math.abs(span / s - n);
  const step = [1, 2, 5, 10].map((m) => m * pow).reduce((a, b) => (count(b) < count(a) ? b : a));
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}

function tickLabel(t) {
  const a = Math.abs(t);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? t.toExponential(1) : String(+t.toPrecision(6));
}

function bytes(n) {
  if (n === undefined || n === null) return "–";
  if (n < 1024) return n + " B";
  if (n < 1048576) return fmt(n / 1024, 3) + " KiB";
  return fmt(n / 1048576, 3) + " MiB";
}

// ------------------------------------------------------------------ charts

// The key of the bar that has the keyboard focus in container, if any.
function focusedKey(container) {
  const a = document.activeElement;
  return a && container.contains(a) && a.dataset ? a.dataset.key ?? null : null;
}

// Horizontal bars, largest on top. items: [{label, value, key, title, cls}].
// With opts.onClick the bars are a listbox: Tab reaches the chosen bar, arrow keys
// move between bars, Enter or Space chooses; without, the chart is one image
// whose label lists every bar for a screen reader.
function barChart(container, items, opts) {
  const keep = focusedKey(container); // a redraw must not take the focus away
  container.replaceChildren();
  if (items.length === 0) {
    container.append(emptyNote(opts.empty));
    return;
  }
  const rowH = opts.rowHeight || 22, labelW = opts.labelWidth || 190, valueW = 110;
  const width = Math.max(container.clientWidth, 360); // one SVG unit per pixel: text keeps its size
  const barW = width - labelW - valueW;
  const max = Math.max(...items.map((i) => i.value || 0), opts.minScale || 0) || 1;
  const valueText = (it) => (it.value === null ? opts.noValue || "no value" : fmt(it.value));
  const svg = el("svg:svg", {
    viewBox: `0 0 ${width} ${items.length * rowH + 4}`, class: "bars", "data-max": max,
    "data-bar-width": barW, role: opts.onClick ? "listbox" : "img",
    "aria-label": opts.onClick ? opts.label
      : opts.label + ": " + items.map((it) => `${it.label} ${valueText(it)}`).join("; "),
  });
  const focusable = keep ?? (items.find((it) => (it.cls || "").includes("chosen")) || items[0]).key;
  items.forEach((it, i) => {
    const w = it.value === null ? 0 : (barW * it.value) / max;
    const g = el("svg:g", {
      class: "bar " + (it.cls || ""), "data-key": it.key, "data-value": it.value,
      transform: `translate(0 ${i * rowH + 2})`,
    }, el("svg:title", {}, it.title || it.label));
    g.append(
      el("svg:text", { x: labelW - 8, y: rowH / 2 + 4, class: "label", "text-anchor": "end" },
        it.label.length > 30 ? "…" + it.label.slice(-29) : it.label),
      el("svg:rect", { x: labelW, y: 3, width: Math.max(w, 0), height: rowH - 6, rx: 2,
        class: "fill", "data-width": w }),
      el("svg:text", { x: labelW + Math.max(w, 0) + 6, y: rowH / 2 + 4, class: "value" }, valueText(it)));
    if (opts.onClick) {
      // the whole row takes clicks and shows the focus ring
      g.append(el("svg:rect", { x: 1, y: 1, width: width - 2, height: rowH - 2, rx: 3, class: "hit" }));
      Object.entries({
        role: "option", tabindex: it.key === focusable ? 0 : -1, "aria-label": `${it.label}: ${valueText(it)}`,
        "aria-selected": String((it.cls || "").includes("chosen")),
      }).forEach(([k, v]) => g.setAttribute(k, v));
      g.addEventListener("click", () => opts.onClick(it));
      g.addEventListener("keydown", (ev) => barKey(ev, svg, it, opts.onClick));
    }
    svg.append(g);
  });
  container.append(svg);
  const again = keep === null ? null : svg.querySelector(`g.bar[data-key="${CSS.escape(keep)}"]`);
  if (again) again.focus({ preventScroll: true });
}

// Arrow keys, Home and End move the focus between the bars; Enter or Space chooses.
function barKey(ev, svg, it, onChoose) {
  const bars = [...svg.querySelectorAll("g.bar")];
  const i = bars.indexOf(ev.currentTarget);
  const to = { ArrowDown: i + 1, ArrowRight: i + 1, ArrowUp: i - 1, ArrowLeft: i - 1, Home: 0, End: bars.length - 1 }[ev.key];
  if (ev.key === "Enter" || ev.key === " ") {
    ev.preventDefault();
    onChoose(it);
  } else if (to !== undefined) {
    ev.preventDefault();
    const next = bars[Math.max(0, Math.min(bars.length - 1, to))];
    bars.forEach((b) => b.setAttribute("tabindex", b === next ? 0 : -1));
    next.focus();
  }
}

// A line chart over steps. series: [{name, cls, points: [[x, y]], kind: "line"|"dots"|"hline"}].
// The plot's scales are kept on the <svg> (data-x0 … data-py1), every point on a
// <circle data-series data-x data-y>, so a reader can map pixels back to values.
// opts.cursor: the chosen step, drawn as a vertical line; opts.onKey makes the
// chart focusable and hands it the keys, opts.label names it for screen readers.
function lineChart(container, series, opts) {
  const hadFocus = container.contains(document.activeElement);
  container.replaceChildren();
  const pts = series.flatMap((s) => s.points);
  if (pts.length === 0) {
    container.append(emptyNote(opts.empty));
    return;
  }
  const W = Math.max(container.clientWidth, 360), H = opts.height || 240, L = 64, R = 16, T = 12, B = 34;
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (opts.zeroBased) y0 = Math.min(0, y0);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
  const pad = (y1 - y0) * 0.06;
  y1 += pad;
  if (!opts.zeroBased || y0 < 0) y0 -= pad;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const svg = el("svg:svg", {
    viewBox: `0 0 ${W} ${H}`, class: "lines", role: opts.onKey ? "application" : "img",
    "aria-label": opts.label, "aria-describedby": opts.describedBy, tabindex: opts.onKey ? 0 : null,
    "data-x0": x0, "data-x1": x1, "data-y0": y0, "data-y1": y1,
    "data-px0": sx(x0), "data-px1": sx(x1), "data-py0": sy(y0), "data-py1": sy(y1),
  });
  for (const t of ticks(y0, y1, 5)) {
    svg.append(el("svg:line", { x1: L, x2: W - R, y1: sy(t), y2: sy(t), class: "grid" }),
      el("svg:text", { x: L - 6, y: sy(t) + 4, "text-anchor": "end", class: "tick" }, tickLabel(t)));
  }
  for (const t of ticks(x0, x1, 8).filter(Number.isInteger)) {
    svg.append(el("svg:text", { x: sx(t), y: H - B + 16, "text-anchor": "middle", class: "tick" }, t));
  }
  svg.append(el("svg:text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "axis" },
    opts.xLabel || "step"));
  for (const s of series) {
    const g = el("svg:g", { class: "series " + s.cls, "data-series": s.name });
    if (s.kind === "hline" && s.points.length) {
      const y = s.points[0][1];
      g.append(el("svg:line", { x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: "hline" }));
    } else if (s.kind !== "dots" && s.points.length > 1) {
      g.append(el("svg:polyline", {
        points: s.points.map((p) => sx(p[0]) + "," + sy(p[1])).join(" "), class: "path",
      }));
    }
    for (const [x, y] of s.points) {
      g.append(el("svg:circle", {
        cx: s.kind === "hline" ? W - R : sx(x), cy: sy(y), r: s.kind === "dots" ? 3.5 : 2,
        class: "pt", "data-series": s.name, "data-x": x, "data-y": y,
      }, el("svg:title", {}, `${s.name} at step ${x}: ${fmt(y, 6)}`)));
    }
    svg.append(g);
  }
  if (opts.cursor !== null && opts.cursor !== undefined) {
    svg.append(el("svg:line", { x1: sx(opts.cursor), x2: sx(opts.cursor), y1: T, y2: H - B,
      class: "cursor", "data-x": opts.cursor }));
  }
  if (opts.onKey) svg.addEventListener("keydown", opts.onKey);
  container.append(svg, legend(series));
  if (hadFocus && opts.onKey) svg.focus({ preventScroll: true });
}

function legend(series) {
  return el("div", { class: "legend" }, ...series.map((s) =>
    el("span", { class: "key " + s.cls }, el("i", { class: s.kind || "line" }), s.name)));
}

// ------------------------------------------------------------------ sections

// The chosen run, domain, layer and channel, kept while they exist.
function chooseRun(runs) {
  if (!runs.some((r) => r.run === state.run)) {
    // the most advanced run first: that is usually the one training now
    const best = runs.reduce((a, b) => ((b.step ?? -1) > (a.step ?? -1) ? b : a), runs[0]);
    state.run = best ? best.run : null;
    state.layer = null;
  }
}

function chooseLayer(status, drift) {
  const domains = domainOptions(status);
  if (!domains.includes(state.domain)) state.domain = domains[0] || null;
  const rows = drift.layers.filter((r) => r.domain === state.domain);
  if (!rows.some((r) => r.layer === state.layer)) {
    state.layer = rows.length ? rows[0].layer : null; // the worst one
    state.channel = null;
  }
  const row = rows.find((r) => r.layer === state.layer);
  if (state.channel === null || (row && state.channel >= row.channels)) {
    state.channel = row && row.drift ? row.drift.mean_max_channel : 0;
  }
  return rows;
}

function renderRuns(runs) {
  runs.sort((a, b) => byName(a.run, b.run));
  const select = $("run-select");
  select.replaceChildren(...runs.map((r) => el("option", { value: r.run }, r.run)));
  if (state.run) select.value = state.run;
  if (runs.length === 0) {
    fillRows($("runs"), [el("tr", {}, el("td", { colspan: 7, class: "empty" },
      "No run yet: runs appear when a trainer reports its first step."))]);
    return;
  }
  fillRows($("runs"), runs.map((r) => {
    const tr = el("tr", { "data-run": r.run, class: r.run === state.run ? "chosen" : "" },
      el("td", {}, r.run), el("td", {}, r.world_size), el("td", {}, r.layers ?? "–"),
      el("td", {}, r.domains ?? "–"), el("td", {}, r.step ?? "–"),
      el("td", { class: r.pending_steps ? "warn" : "" }, r.pending_steps ?? "–"),
      el("td", {}, bytes(r.memory_bytes)));
    tr.addEventListener("click", () => choose({ run: r.run, layer: null, domain: null, step: null }));
    return tr;
  }));
}

function renderLayers(status) {
  const h = (status.status || {}).health;
  $("health").textContent = h
    ? `steps applied ${h.steps_applied} · pending ${h.pending} · skipped (global batch below 2) ${h.skipped}`
    : "";
  const layers = Object.entries((status.status || {}).layers || {}).sort((a, b) => byName(a[0], b[0]));
  fillRows($("layers"), layers.map(([name, l]) => el("tr", { "data-layer": name },
    el("td", {}, name), el("td", {}, l.channels), el("td", {}, l.step), el("td", {}, l.finalized_step),
    el("td", {}, l.num_batches_tracked), el("td", { class: l.pending_steps ? "warn" : "" }, l.pending_steps))));
}

function domainOptions(status) {
  const names = ((status.status || {}).domains || []).map((d) => d.domain);
  return names.length > 1 ? ["*", ...names] : names;
}

function renderSelectors(status, rows) {
  const domains = domainOptions(status);
  $("domain-select").replaceChildren(...domains.map((d) =>
    el("option", { value: d }, d === "*" ? "all domains (pooled)" : d)));
  if (state.domain) $("domain-select").value = state.domain;
  const layers = rows.map((r) => r.layer).sort(byName);
  $("layer-select").replaceChildren(...layers.map((l) => el("option", { value: l }, l)));
  if (state.layer) $("layer-select").value = state.layer;
  const row = rows.find((r) => r.layer === state.layer);
  const input = $("channel-input");
  input.max = row ? row.channels - 1 : 0;
  if (document.activeElement !== input) input.value = state.channel;
}

function renderDriftBars(rows, status) {
  const worst = ((status.status || {}).drift || {}).worst;
  $("drift-worst").textContent = worst
    ? `Worst of the run: ${worst.layer} (${worst.domain === "*" ? "pooled" : worst.domain}), ` +
      `EMA mean ${fmt(worst.mean_max)} population standard deviations from PreciseBN`
    : "";
  $("drift-domain").textContent = !state.domain ? "" : state.domain === "*" ? "· all domains pooled" : "· " + state.domain;
  barChart($("drift-bars"), rows.map((r) => ({
    key: r.layer, label: r.layer, value: r.drift ? r.drift.mean_max : null,
    cls: r.layer === state.layer ? "chosen" : "",
    title: r.drift
      ? `${r.layer} (${r.domain}): mean drift max ${fmt(r.drift.mean_max)} at channel ${r.drift.mean_max_channel}, ` +
        `avg ${fmt(r.drift.mean_avg)}; variance drift max ${fmt(r.drift.var_max)}, avg ${fmt(r.drift.var_avg)}`
      : `${r.layer}: no PreciseBN batch yet`,
  })), {
    empty: "No layer has statistics yet.", rowHeight: 28, noValue: "no PreciseBN yet",
    label: "Layers by EMA vs PreciseBN drift, worst first: Enter chooses a layer",
    onClick: (it) => choose({ layer: it.key, channel: null, step: null }),
  });
}

// The step the charts' cursor is on: the chosen one while /history has it, else the latest.
function cursorStep(steps) {
  if (steps.some((s) => s.step === state.step)) return state.step;
  return steps.length ? steps[steps.length - 1].step : null;
}

// Left/Right (and Home/End) move the cursor over the drawn steps, without a fetch;
// the cursor on the latest step follows new steps as they come.
function moveStep(delta) {
  const steps = state.hist ? state.hist.steps : [];
  if (steps.length === 0) return;
  const at = steps.findIndex((s) => s.step === cursorStep(steps));
  const i = Math.max(0, Math.min(steps.length - 1, at + delta));
  state.step = i === steps.length - 1 ? null : steps[i].step;
  renderHistory(state.hist);
}

// Up/Down: the next or previous channel of the layer, fetched at once.
function moveChannel(delta) {
  if (!state.hist || state.channel === null) return;
  const c = Math.max(0, Math.min(state.hist.channels - 1, state.channel + delta));
  if (c !== state.channel) choose({ channel: c });
}

function chartKeys(withChannel) {
  const moves = {
    ArrowLeft: () => moveStep(-1), ArrowRight: () => moveStep(1),
    Home: () => moveStep(-Infinity), End: () => moveStep(Infinity),
    ...(withChannel ? { ArrowUp: () => moveChannel(1), ArrowDown: () => moveChannel(-1) } : {}),
  };
  return (ev) => {
    if (!moves[ev.key]) return;
    ev.preventDefault();
    moves[ev.key]();
  };
}

// The text alternative of the charts: the cursor step's values, also kept in data- attributes.
function renderReadout(hist, at) {
  const p = $("step-readout");
  const s = hist ? hist.steps.find((x) => x.step === at) : null;
  const values = !s ? {} : {
    step: s.step, channel: hist.channel, "batch-mean": s.batch_mean, "ema-mean": s.ema_mean,
    "population-mean": hist.population ? hist.population.mean : null,
    "mean-drift-max": s.drift ? s.drift.mean_max : null,
  };
  for (const k of ["step", "channel", "batch-mean", "ema-mean", "population-mean", "mean-drift-max"]) {
    if (values[k] === undefined || values[k] === null) p.removeAttribute("data-" + k);
    else p.setAttribute("data-" + k, values[k]);
  }
  const text = !s ? "" : `Step ${s.step}, channel ${hist.channel} of ${hist.channels}: batch mean ${fmt(s.batch_mean, 6)}, ` +
    `EMA mean ${fmt(s.ema_mean, 6)}, PreciseBN population mean ${fmt(values["population-mean"], 6)}` +
    (s.drift ? `; mean drift max ${fmt(s.drift.mean_max)}, variance drift max ${fmt(s.drift.var_max)}` : "");
  if (p.textContent !== text) p.textContent = text; // unchanged: nothing new to announce
}

function renderHistory(hist) {
  state.hist = hist;
  const steps = hist ? hist.steps : [];
  const at = cursorStep(steps);
  const title = hist ? `· ${hist.layer} (${hist.domain})` : "";
  $("drift-steps-title").textContent = title;
  $("step-chart-title").textContent = hist ? `${title}, channel ${hist.channel} of ${hist.channels}` : "";
  const withDrift = steps.filter((s) => s.drift);
  lineChart($("drift-steps"), [
    { name: "mean drift, max", cls: "s1", points: withDrift.map((s) => [s.step, s.drift.mean_max]) },
    { name: "mean drift, avg", cls: "s2", points: withDrift.map((s) => [s.step, s.drift.mean_avg]) },
    { name: "variance drift, max", cls: "s3", points: withDrift.map((s) => [s.step, s.drift.var_max]) },
  ], {
    empty: "No finalized step with a PreciseBN estimate yet.", zeroBased: true,
    cursor: withDrift.some((s) => s.step === at) ? at : null, onKey: chartKeys(false),
    describedBy: "step-readout",
    label: `Drift over steps of ${hist ? hist.layer : "the chosen layer"}: Left and Right choose the step`,
  });
  const pop = hist && hist.population;
  const last = steps.length ? steps[steps.length - 1].step : 0;
  lineChart($("step-chart"), [
    { name: "batch mean", cls: "s4", kind: "dots", points: steps.map((s) => [s.step, s.batch_mean]) },
    { name: "EMA mean", cls: "s1", points: steps.map((s) => [s.step, s.ema_mean]) },
    { name: "PreciseBN population mean", cls: "s5", kind: "hline", points: pop ? [[last, pop.mean]] : [] },
  ], {
    empty: "No finalized step yet for this layer.", height: 300, cursor: at, onKey: chartKeys(true),
    describedBy: "step-readout",
    label: `Batch mean per step of ${hist ? hist.layer + ", channel " + hist.channel : "the chosen layer"}: ` +
      "Left and Right choose the step, Up and Down the channel",
  });
  renderReadout(hist, at);
}

// One column per domain (and the pooled view), for the chosen layer and channel.
function renderDomains(columns) {
  const c = state.channel;
  $("domains-title").textContent = state.layer ? `· ${state.layer}, channel ${c}` : "";
  const table = $("domains");
  table.tHead.replaceChildren(el("tr", {}, el("th", {}, ""),
    ...columns.map((col) => el("th", { "data-domain": col.domain }, col.domain === "*" ? "pooled" : col.domain))));
  const at = (layer, key) => (layer && layer[key] ? layer[key][c] : null);
  const rows = [
    ["EMA mean", (col) => at(col.ema, "running_mean")],
    ["EMA var", (col) => at(col.ema, "running_var")],
    ["PreciseBN mean", (col) => at(col.precise, "running_mean")],
    ["PreciseBN var", (col) => at(col.precise, "running_var")],
    ["num_batches_tracked", (col) => (col.ema ? col.ema.num_batches_tracked : null)],
    ["PreciseBN batches", (col) => (col.precise ? col.precise.num_batches : null)],
    ["mean drift (max)", (col) => (col.drift ? col.drift.mean_max : null)],
    ["variance drift (max)", (col) => (col.drift ? col.drift.var_max : null)],
  ];
  if (columns.length === 0) {
    fillRows(table, [el("tr", {}, el("td", { class: "empty" }, "No domain has statistics yet."))]);
    return;
  }
  fillRows(table, rows.map(([name, get]) => el("tr", {}, el("th", {}, name),
    ...columns.map((col) => { const v = get(col); return el("td", { "data-value": v }, fmt(v)); }))));
}

// Pending steps grouped by (step, workers waited for): one line per stall.
function renderStall(status) {
  const st = status.status || {};
  const pending = st.pending || [];
  const box = $("stall");
  box.replaceChildren();
  if (pending.length === 0) {
    box.append(el("p", { class: "ok", id: "stall-none" }, "No pending step: every worker is keeping up."));
  } else {
    const groups = new Map();
    for (const p of pending) {
      const key = p.step + "|" + p.waiting_for.join(",");
      const g = groups.get(key) || { step: p.step, waiting: p.waiting_for, layers: [], age: 0 };
      g.layers.push(p.layer);
      g.age = Math.max(g.age, p.age_ms);
      groups.set(key, g);
    }
    const rows = [...groups.values()].sort((a, b) => a.step - b.step).map((g) => el("tr",
      { class: "stall", "data-step": g.step, "data-waiting": g.waiting.join(",") },
      el("td", {}, g.step), el("td", {}, g.layers.length === 1 ? g.layers[0] : `${g.layers.length} layers`),
      el("td", {}, fmt(g.age / 1000, 3) + " s"),
      el("td", { class: "warn" }, g.waiting.length ? "worker " + g.waiting.join(", ") : "–")));
    const table = el("table", { id: "stall-table" }, el("thead", {}, el("tr", {},
      el("th", {}, "step"), el("th", {}, "layers"), el("th", {}, "waiting since"), el("th", {}, "waits for"))),
    el("tbody", {}, ...rows));
    box.append(table);
  }
  const workers = (st.workers || []).slice().sort((a, b) => a.worker - b.worker);
  barChart($("lag"), workers.map((w) => ({
    key: String(w.worker), label: `worker ${w.worker} (step ${w.step})`, value: w.lag ?? 0,
    cls: w.lag ? "warn" : "", title: `worker ${w.worker}: last step ${w.step}, ${w.lag ?? 0} steps behind`,
  })), { empty: "No worker has reported yet.", labelWidth: 160, minScale: 1, label: "Steps behind, per worker" });
}

function parseRejections(metrics) {
  const out = {};
  const re = /^normstat_rejections_total\{reason="([^"]+)"\} (\S+)$/gm;
  for (const m of metrics.matchAll(re)) if (+m[2] > 0) out[m[1]] = +m[2];
  return out;
}

function renderRejections(status, metrics) {
  const box = $("rejections");
  box.replaceChildren();
  const health = (status.status || {}).health || {};
  const sections = [];
  if (health.rejections) sections.push(["this run", health.rejections, "run"]);
  sections.push(["whole daemon (/metrics)", parseRejections(metrics), "daemon"]);
  for (const [title, counts, scope] of sections) {
    const items = Object.entries(counts).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
    const div = el("div", { class: "rejections", "data-scope": scope });
    box.append(el("h3", {}, title), div);
    barChart(div, items.map(([reason, n]) => ({ key: reason, label: reason, value: n, cls: "warn" })),
      { empty: "None.", labelWidth: 160, label: `Rejections by reason, ${title}` });
  }
}

// ------------------------------------------------------------------ refresh loop

async function domainColumns(status, drift) {
  if (!state.layer) return [];
  const query = (source, d) => runPath(`/stats?source=${source}&domain=${enc(d)}&layers=${enc(state.layer)}`);
  return Promise.all(domainOptions(status).map(async (d) => {
    const [ema, precise] = await Promise.all([api(query("ema", d)), api(query("precise", d))]);
    const row = drift.layers.find((r) => r.layer === state.layer && r.domain === d);
    return {
      domain: d, ema: ema.layers[state.layer], precise: precise.layers[state.layer],
      drift: row ? row.drift : null,
    };
  }));
}

// Fetch everything first, then draw it all at once, so the sections never
// disagree; a refresh overtaken by a newer one (the user chose something) draws nothing.
async function refresh(seq) {
  const runs = (await api("v1/runs")).runs;
  chooseRun(runs);
  if (!state.run) {
    if (seq === state.seq) renderRuns(runs); // nothing reported yet: the runs table says so
    return;
  }
  const [status, drift, metrics] = await Promise.all([
    api(runPath("")), api(runPath("/drift")), api("metrics", true),
  ]);
  const rows = chooseLayer(status, drift);
  const [hist, columns] = await Promise.all([
    state.layer ? api(runPath(`/history?layer=${enc(state.layer)}&domain=${enc(state.domain)}&channel=${state.channel}`)) : null,
    domainColumns(status, drift),
  ]);
  if (seq !== state.seq) return;
  renderRuns(runs);
  renderLayers(status);
  renderSelectors(status, rows);
  renderDriftBars(rows, status);
  renderStall(status);
  renderRejections(status, metrics);
  renderHistory(hist);
  renderDomains(columns);
}

// body[data-polling]: "live", "pausing" (hidden, a refresh still under way) or
// "paused" (hidden: no request until the tab is shown again).
function showPolling() {
  document.body.dataset.polling = !document.hidden ? "live" : state.busy ? "pausing" : "paused";
  if (document.hidden && !state.busy) $("updated").textContent = "paused while this tab is hidden";
}

async function tick() {
  clearTimeout(state.timer);
  state.timer = null;
  if (document.hidden) return showPolling(); // a background tab asks for nothing
  const seq = ++state.seq;
  state.busy = true;
  showPolling();
  try {
    await refresh(seq);
    if (seq !== state.seq) return; // overtaken: the newer refresh reports and schedules
    $("error").hidden = true;
    $("token-form").hidden = true;
    $("updated").textContent = "live · updated " + new Date().toLocaleTimeString();
    document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
  } catch (e) {
    if (seq !== state.seq) return;
    const auth = e instanceof AuthError;
    $("token-form").hidden = !auth;
    $("token-refused").textContent = auth && state.token ? "Refused: " + e.message : "";
    $("error").hidden = auth;
    $("error").textContent = "Refresh failed: " + e.message + " (retrying)";
    $("updated").textContent = auth ? "waiting for a token" : "refresh failed";
  }
  state.busy = false;
  if (!document.hidden) state.timer = setTimeout(tick, POLL_MS);
  showPolling();
}

// Hidden: stop polling (a refresh under way finishes); shown: refresh at once.
function visibilityChanged() {
  if (document.hidden) {
    clearTimeout(state.timer);
    state.timer = null;
    showPolling();
  } else {
    tick();
  }
}

function choose(change) {
  Object.assign(state, change);
  tick();
}

function start() {
  // #token=… in the URL: keep it for this tab, then take it out of the address bar.
  const m = location.hash.match(/(?:^#|&)token=([^&]*)/);
  if (m) {
    state.token = decodeURIComponent(m[1]);
    sessionStorage.setItem(TOKEN_KEY, state.token);
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("token-input").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    tick();
  });
  $("run-select").addEventListener("change", (ev) => choose({ run: ev.target.value, layer: null, domain: null, step: null }));
  $("domain-select").addEventListener("change", (ev) => choose({ domain: ev.target.value }));
  $("layer-select").addEventListener("change", (ev) => choose({ layer: ev.target.value, channel: null, step: null }));
  $("channel-input").addEventListener("change", (ev) => {
    const c = parseInt(ev.target.value, 10);
    if (Number.isInteger(c) && c >= 0) choose({ channel: c });
  });
  document.addEventListener("visibilitychange", visibilityChanged);
  tick();
}

document.addEventListener("DOMContentLoaded", start);
