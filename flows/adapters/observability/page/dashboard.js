// The live page of bytewax-model-serving: polls ./cluster (the same document as /state, merged over the
// cluster's processes where SERVING_STATE_PEERS names them) and draws it. No library, no build step.
//
// Everything shown comes from model messages or events that whoever writes the models topic controls
// (names, descriptions, reasons): it is only ever put in the page as text (textContent, createTextNode),
// never as markup, and the server's Content-Security-Policy refuses inline scripts besides.
"use strict";

const POLL_MS = 2000;
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const SVG = "http://www.w3.org/2000/svg";

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function svgElement(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
  return node;
}

function number(value, digits) {
  if (typeof value !== "number" || !isFinite(value)) return "–";
  return value.toLocaleString("en", { maximumFractionDigits: digits === undefined ? 0 : digits });
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString("en-GB", { hour12: false });
}

// A line chart of named series of [time ms, value] points; `threshold` draws a dashed line.
function lineChart(container, series, options) {
  const width = 460, height = 170, left = 48, right = 8, top = 8, bottom = 22;
  container.replaceChildren();
  const points = series.flatMap((line) => line.points);
  if (!points.length) {
    container.append(element("p", "no data yet", "muted"));
    return;
  }
  const times = points.map((point) => point[0]);
  const values = points.map((point) => point[1]).concat(options && options.threshold ? [options.threshold] : []);
  const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1);
  const v1 = Math.max(...values, 1e-9) * 1.1;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => top + (1 - v / v1) * (height - top - bottom);
  const svg = svgElement("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  svg.append(svgElement("line", { x1: left, x2: left, y1: top, y2: height - bottom, stroke: "#98a2b3" }));
  svg.append(svgElement("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, stroke: "#98a2b3" }));
  for (const [value, label] of [[0, "0"], [v1 / 1.1, number(v1 / 1.1, v1 < 10 ? 3 : 0)]]) {
    const text = svgElement("text", { x: left - 4, y: y(value) + 4, "text-anchor": "end", "font-size": 10 });
    text.textContent = label;
    svg.append(text);
  }
  for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
    const text = svgElement("text", { x: x(t), y: height - 6, "text-anchor": anchor, "font-size": 10 });
    text.textContent = clock(t);
    svg.append(text);
  }
  if (options && options.threshold) {
    svg.append(svgElement("line", { x1: left, x2: width - right, y1: y(options.threshold), y2: y(options.threshold),
      stroke: "#b42318", "stroke-dasharray": "4 3" }));
  }
  const legend = element("div", null, "legend");
  series.forEach((line, index) => {
    const color = COLORS[index % COLORS.length];
    const path = line.points.map((point, i) => `${i ? "L" : "M"}${x(point[0]).toFixed(1)},${y(point[1]).toFixed(1)}`);
    svg.append(svgElement("path", { d: path.join(" "), fill: "none", stroke: color, "stroke-width": 1.6 }));
    for (const point of line.points.length === 1 ? line.points : []) {
      svg.append(svgElement("circle", { cx: x(point[0]), cy: y(point[1]), r: 2.5, fill: color }));
    }
    const item = element("span");
    const swatch = element("span", null, "swatch");
    swatch.style.background = color;
    item.append(swatch, document.createTextNode(line.name));
    legend.append(item);
  });
  if (options && options.threshold) legend.append(element("span", `threshold ${options.threshold}`, "drifting"));
  container.append(svg, legend);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = element("td", cell.text !== undefined ? cell.text : cell, cell.className);
    tr.append(td);
  }
  return tr;
}

function drawModels(state) {
  const champions = new Set(Object.values(state.shards || {}));
  const challengers = new Set((state.challengers || []).map((entry) => entry.challenger));
  const body = document.querySelector("#models tbody");
  body.replaceChildren(...(state.models || []).map((model) => row([
    model.name,
    champions.has(model.name) ? "champion" : challengers.has(model.name) ? "challenger" : "retired",
    { text: number(model.usage), className: "number" },
    { text: number(model.average, 4), className: "number" },
    { text: number(model.max), className: "number" },
    { text: number((model.shards || []).length), className: "number" },
    new Date(model.since).toLocaleString("en-GB"),
  ])));
  const history = state.history || {};
  const bucketS = history.bucket_s || 5;
  const throughput = Object.entries(history.throughput || {});
  // The newest bucket is still filling: its rate is over the seconds it has had so far.
  const seconds = (bucket) => Math.min(bucketS, Math.max(1, ((state.time || Date.now()) - bucket.t) / 1000));
  lineChart(document.getElementById("chart-throughput"), throughput.map(([name, buckets]) => ({
    name, points: buckets.map((bucket) => [bucket.t, bucket.records / seconds(bucket)]) })));
  lineChart(document.getElementById("chart-latency"), throughput.map(([name, buckets]) => ({
    name, points: buckets.filter((bucket) => bucket.calls).map((bucket) => [bucket.t, bucket.call_ms / bucket.calls]) })));
}

function drawChallengers(state) {
  const body = document.querySelector("#challengers tbody");
  body.replaceChildren(...(state.challengers || []).map((entry) => row([
    entry.challenger, entry.champion, `${entry.mode} ${number(entry.fraction * 100)}%`,
    { text: number(entry.records), className: "number" },
    { text: number(entry.challenger_records), className: "number" },
    { text: number(entry.challenger_errors), className: "number" },
    { text: entry.mode === "shadow" ? number(entry.top_k_agreement, 3) : "–", className: "number" },
    { text: entry.mode === "shadow" ? number(entry.mean_abs_diff, 4) : "–", className: "number" },
    { text: number(entry.windows), className: "number" },
  ])));
  const reports = Object.entries((state.history || {}).challengers || {});
  lineChart(document.getElementById("chart-agreement"), reports
    .map(([name, points]) => ({ name, points: points.filter((p) => p.mode === "shadow").map((p) => [p.t, p.top_k_agreement]) }))
    .filter((line) => line.points.length));
  lineChart(document.getElementById("chart-canary"), reports
    .map(([name, points]) => ({ name, points: points.filter((p) => p.mode === "canary").map((p) => [p.t, p.challenger_records]) }))
    .filter((line) => line.points.length));
}

function drawDrift(state) {
  const container = document.getElementById("drift");
  container.replaceChildren();
  const windows = Object.entries((state.history || {}).drift || {});
  if (!windows.length) container.append(element("p", "no drift window closed yet", "muted"));
  for (const [model, points] of windows) {
    const figure = element("figure");
    const caption = element("figcaption", `${model}: PSI per feature over drift windows`);
    const current = (state.drift || {})[model];
    if (current && current.drifting) caption.append(document.createTextNode(" "), element("span", "drifting", "drifting"));
    const chart = element("div", null, "chart");
    figure.append(caption, chart);
    container.append(figure);
    const features = [...new Set(points.flatMap((point) => Object.keys(point.psi)))];
    const threshold = points.length ? points[points.length - 1].threshold : undefined;
    lineChart(chart, features.map((feature) => ({
      name: feature, points: points.filter((point) => feature in point.psi).map((point) => [point.t, point.psi[feature]]) })),
      { threshold });
  }
}

function drawOutliers(state) {
  const windows = Object.entries((state.history || {}).outliers || {});
  const thresholds = windows.flatMap(([, points]) => points.map((point) => point.threshold)).filter((t) => t);
  lineChart(document.getElementById("chart-outliers"), windows.map(([name, points]) => ({
    name, points: points.map((point) => [point.t, point.rate]) })),
    { threshold: thresholds.length ? thresholds[thresholds.length - 1] : undefined });
  const body = document.querySelector("#outliers tbody");
  body.replaceChildren(...Object.entries(state.outliers || {}).map(([model, entry]) => {
    const rates = entry.rates || [];
    const detector = entry.unfit ? entry.unfit : entry.fitted ? "fitted on its reference" : "taking its reference";
    const last = rates.length ? `${number(rates[rates.length - 1] * 100, 1)}%` : "–";
    return row([
      model,
      { text: detector, className: entry.unfit ? "drifting" : "" },
      { text: number(entry.scored), className: "number" },
      { text: number(entry.outliers), className: "number" },
      { text: last, className: entry.alerting ? "number drifting" : "number" },
      { text: number(entry.windows), className: "number" },
    ]);
  }));
}

function drawExplanations(state) {
  const body = document.querySelector("#explanations tbody");
  const rows = [];
  for (const [model, entry] of Object.entries(state.explanations || {})) {
    for (const explanation of (entry.latest || []).slice(0, 5)) {
      const user = `${explanation.user}${explanation.requested ? " (asked)" : ""}`;
      if (explanation.errors || !(explanation.products || []).length) {
        rows.push(row([model, user, { text: explanation.errors || "no products", className: "muted" }, "", "", "", "", ""]));
        continue;
      }
      const part = explanation.products[0];  // the record's best product
      rows.push(row([
        model,
        user,
        String(part.product),
        { text: number(part.score, 2), className: "number" },
        { text: number(explanation.baseline, 2), className: "number" },
        { text: number(part.user_part, 2), className: "number" },
        { text: number(part.product_part, 2), className: "number" },
        (part.similar_products || []).join(", "),
      ]));
    }
  }
  body.replaceChildren(...rows);
  if (!rows.length) body.append(row([{ text: "no record explained yet", className: "muted" }]));
}

function drawLag(state) {
  const partitions = state.lag || [];
  const total = partitions.reduce((sum, entry) => sum + entry.lag, 0);
  document.getElementById("lag-total").textContent = partitions.length
    ? `${number(total)} messages behind over ${partitions.length} data partitions`
    : "no data partition measured (the embedded default reads no Kafka topic)";
  const series = Object.entries((state.history || {}).lag || {});
  lineChart(document.getElementById("chart-lag"), series.map(([name, points]) => ({
    name, points: points.map((point) => [point.t, point.lag]) })));
}

function drawEvents(state) {
  const events = ((state.history || {}).events || []).slice().reverse();
  const list = document.getElementById("events");
  list.replaceChildren(...events.map((event) => {
    const item = element("li");
    item.dataset.kind = event.kind;
    item.append(element("span", `${clock(event.t)} `, "muted"), element("span", event.kind, `kind kind-${event.kind}`),
      element("span", event.model || "(no name)", "model"));
    if (event.previous) item.append(document.createTextNode(` replacing ${event.previous}`));
    if (event.shards > 1) item.append(element("span", ` on ${event.shards} shards`, "muted"));
    if (event.reason) item.append(document.createTextNode(`: ${event.reason}`));
    return item;
  }));
  if (!events.length) list.append(element("li", "no model event yet", "muted"));
}

function drawScope(state) {
  const processes = state.processes || [];
  const scope = document.getElementById("scope");
  const answered = processes.filter((process) => !process.error);
  if (processes.length > 1) {
    scope.textContent = `The cluster: ${answered.length} of ${processes.length} processes answered (${processes.map((p) => p.url).join(", ")}).`;
  } else {
    scope.textContent = "This process only: set SERVING_STATE_PEERS to the /state URLs of every process to see the whole cluster here.";
  }
  for (const process of processes.filter((process) => process.error)) {
    scope.append(element("span", ` ${process.url}: ${process.error}.`, "drifting"));
  }
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const response = await fetch("cluster", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const state = await response.json();
    for (const draw of [drawScope, drawModels, drawChallengers, drawDrift, drawOutliers, drawExplanations, drawLag, drawEvents]) draw(state);
    status.textContent = `updated ${clock(state.time || Date.now())}, every ${POLL_MS / 1000} s`;
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (error) {
    status.textContent = `cannot read the state: ${error.message}`;
  }
  setTimeout(poll, POLL_MS);
}

poll();
