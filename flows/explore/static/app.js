// The page of `linkstyle explore`: pick a unit, drag it under a slider and watch the generated
// image change; walk a counterfactual path across the decision boundary. Every frame comes from
// the local server (api/...); nothing is fetched from anywhere else.
//
// Frames: at most one request is in flight. While it is, a newer slider position replaces the
// one waiting (never a queue of them); when the answer arrives, the newest position is sent.
// Each request carries this page's id and a number, so the server drops (409) one that a newer
// request has overtaken before it rendered.
"use strict";

const app = {
  run: null,           // GET api/run
  units: [],           // GET api/units
  sample: null,        // GET api/sample: the base frame and the sample's r
  moved: [],           // [{unit, value, detail}], the selected unit first
  mode: "units",       // which slider the shown frame follows: "units" or "path"
  path: null,          // GET api/counterfactual for cf.target
  target: null,
  frame: null,         // the last frame drawn
  drawn: 0,            // frames drawn (tests count them)
  busy: 0,             // requests in flight
  ready: false,
  client: Math.random().toString(36).slice(2, 12),
  queue: { inFlight: false, want: null, seq: 0 },
};
window.app = app;

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 2) => (x === null || x === undefined ? "-" : Number(x).toFixed(digits));

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function request(path) {
  app.busy += 1;
  try {
    const response = await fetch(path, { cache: "no-store" });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return await response.json();
  } finally {
    app.busy -= 1;
  }
}

app.idle = () => app.busy === 0 && !app.queue.inFlight && !app.queue.want;

// -- the sample ----------------------------------------------------------------------------------
function sampleQuery() {
  const cls = $("sample-class").value;
  const kind = document.querySelector("input[name=sample-kind]:checked").value;
  return kind === "seed" ? `class=${cls}&seed=${$("sample-seed").value}`
    : `class=${cls}&index=${$("sample-index").value}`;
}

async function loadSample() {
  try {
    app.sample = await request(`api/sample?${sampleQuery()}`);
  } catch (e) {
    status(`sample: ${e.message}`, true);
    return;
  }
  $("sample-name").textContent = app.sample.sample;
  $("base-image").src = app.sample.image;
  for (const m of app.moved) m.value = app.sample.r[m.unit];
  app.path = null;
  $("cf-slider-row").hidden = true;
  $("cf-units").hidden = true;
  $("cf-status").textContent = "";
  fillTargets();
  renderSliders();
  app.mode = "units";
  requestFrame();
}

function fillTargets() {
  const select = $("cf-target");
  select.innerHTML = "";
  app.run.classes.forEach((name, c) => {
    if (c === app.sample.label) return;
    select.add(new Option(`${c}: ${name}`, c));
  });
}

// -- units ---------------------------------------------------------------------------------------
function renderUnits() {
  const words = $("search").value.trim().toLowerCase();
  const part = $("filter-part").value;
  const verdict = $("filter-verdict").value;
  const shown = app.units.filter((u) =>
    (!part || u.part === part) && (!verdict || u.verdict === verdict) &&
    (!words || String(u.unit) === words || u.part.includes(words) ||
     u.verdict.startsWith(words)));
  const body = $("unit-list").tBodies[0];
  body.innerHTML = "";
  for (const u of shown) {
    const tr = body.insertRow();
    tr.dataset.unit = u.unit;
    tr.className = (app.moved[0] && app.moved[0].unit === u.unit ? "current " : "") +
      `verdict-${u.verdict}`;
    for (const text of [u.unit, u.part, u.verdict + (u.weak ? " (weak)" : ""),
      u.q === null ? "-" : Number(u.q).toPrecision(2), fmt(u.concentration)]) {
      tr.insertCell().textContent = text;
    }
    tr.addEventListener("click", () => selectUnit(u.unit));
  }
  $("unit-count").textContent = `${shown.length} of ${app.units.length} units`;
}

async function unitDetail(unit) {
  return request(`api/unit/${unit}`);
}

async function selectUnit(unit) {
  let detail;
  try {
    detail = await unitDetail(unit);
  } catch (e) {
    status(`unit ${unit}: ${e.message}`, true);
    return;
  }
  const value = app.sample ? app.sample.r[unit] : detail.low;
  app.moved = [{ unit, value, detail }, ...app.moved.slice(1).filter((m) => m.unit !== unit)];
  $("unit-title").textContent = `unit ${unit}: ${detail.part}`;
  $("unit-summary").textContent = `verdict ${detail.verdict}${detail.weak ? " (weak label)" : ""}`
    + `, q ${detail.q === null ? "-" : detail.q.toPrecision(2)}, concentration `
    + `${fmt(detail.concentration)}, closed-loop gain ${fmt(detail.gain)}, tuned range `
    + `${fmt(detail.low)} to ${fmt(detail.high)}`;
  $("unit-charts").innerHTML = detail.charts;
  $("unit-strip").hidden = !detail.strip;
  if (detail.strip) $("unit-strip").src = `api/unit/${unit}/strip.png`;
  history.replaceState(null, "", `#unit=${unit}`);
  renderUnits();
  renderSliders();
  app.mode = "units";
  requestFrame();
}

async function addUnit() {
  const unit = Number($("second-unit").value);
  if (!Number.isInteger(unit) || $("second-unit").value === "") return;
  if (app.moved.some((m) => m.unit === unit)) return;
  try {
    const detail = await unitDetail(unit);
    app.moved.push({ unit, value: app.sample ? app.sample.r[unit] : detail.low, detail });
  } catch (e) {
    status(`unit ${unit}: ${e.message}`, true);
    return;
  }
  renderSliders();
  app.mode = "units";
  requestFrame();
}

function renderSliders() {
  const box = $("sliders");
  box.innerHTML = "";
  app.moved.forEach((m, k) => {
    const d = m.detail;
    const span = d.max - d.min;
    const at = (v) => `${Math.max(0, Math.min(100, (v - d.min) / span * 100))}%`;
    const div = document.createElement("div");
    div.className = "slider";
    div.innerHTML = `<div class="head"><b>unit ${m.unit}</b><span>${d.part}, verdict ${d.verdict}</span>
      <span class="readout"></span>${k ? '<button class="remove">remove</button>' : ""}</div>
      <div class="track"><div class="band"></div><div class="own"></div>
      <input type="range" aria-label="value of unit ${m.unit}"></div>
      <div class="scale"><span>${fmt(d.min)}</span><span>tuned range ${fmt(d.low)} to
      ${fmt(d.high)} (green); orange: the sample's own value</span><span>${fmt(d.max)}</span></div>`;
    const band = div.querySelector(".band");
    band.style.left = at(d.low);
    band.style.width = `calc(${at(d.high)} - ${at(d.low)})`;
    if (app.sample) div.querySelector(".own").style.left = at(app.sample.r[m.unit]);
    const input = div.querySelector("input");
    Object.assign(input, { min: d.min, max: d.max, step: span / 400, value: m.value });
    input.id = k === 0 ? "unit-slider" : `unit-slider-${k}`;
    input.addEventListener("input", () => {
      m.value = Number(input.value);
      app.mode = "units";
      requestFrame();
    });
    const remove = div.querySelector(".remove");
    if (remove) {
      remove.addEventListener("click", () => {
        app.moved.splice(k, 1);
        renderSliders();
        requestFrame();
      });
    }
    box.appendChild(div);
  });
  showReadouts();
}

function showReadouts() {
  const boxes = $("sliders").querySelectorAll(".slider .readout");
  app.moved.forEach((m, k) => {
    const got = app.frame && app.mode === "units" && (app.frame.units || [])
      .find((u) => u.unit === m.unit);
    boxes[k].textContent = `set ${fmt(m.value)}` + (app.sample ? `, own ${fmt(app.sample.r[m.unit])}`
      : "") + (got ? `, re-encoded ${fmt(got.reencoded)}` : "");
  });
}

// -- frames --------------------------------------------------------------------------------------
function frameUrl() {
  if (app.mode === "path" && app.path) {
    return `api/path?${sampleQuery()}&target=${app.target}&t=${$("cf-t").value}`;
  }
  if (!app.moved.length) return null;
  return `api/frame?${sampleQuery()}&units=${app.moved.map((m) => m.unit).join(",")}` +
    `&values=${app.moved.map((m) => m.value).join(",")}`;
}

function requestFrame() {
  if (!app.sample) return;
  const url = frameUrl();
  if (!url) return;
  app.queue.want = url;  // replaces a position not sent yet
  pump();
}

async function pump() {
  const q = app.queue;
  if (q.inFlight || !q.want) return;
  const url = q.want;
  q.want = null;
  q.inFlight = true;
  q.seq += 1;
  const t0 = performance.now();
  try {
    const frame = await request(`${url}&client=${app.client}&seq=${q.seq}`);
    drawFrame(frame, performance.now() - t0);
  } catch (e) {
    if (e.status !== 409) status(e.message, true);  // 409: overtaken, a newer one follows
  } finally {
    q.inFlight = false;
    pump();
  }
}

function drawFrame(frame, roundTrip) {
  app.frame = frame;
  app.drawn += 1;
  $("frame-image").src = frame.image;
  $("frame-outlines").src = frame.outlines;
  $("difference").src = frame.difference;
  $("timing").textContent = `frame ${frame.frame_ms.toFixed(0)} ms (render, segment, ` +
    `re-encode on ${app.run.device}), ${roundTrip.toFixed(0)} ms round trip`;
  $("pixel-change").textContent = `mean pixel change ${(frame.pixel_change * 255).toFixed(1)} ` +
    "grey levels";
  const probs = $("probs");
  probs.innerHTML = "";
  frame.probs.forEach((p, k) => {
    const row = document.createElement("div");
    row.className = `prob${k === 0 ? " top" : ""}`;
    row.innerHTML = `<span class="name"></span><span class="bar"></span><span>${fmt(p.p, 3)}</span>`;
    row.firstChild.textContent = `${p.class}: ${p.name}`;
    row.children[1].style.width = `${Math.round(p.p * 220)}px`;
    probs.appendChild(row);
  });
  if (app.mode === "path") drawPathUnits(frame);
  showReadouts();
  status("");  // a frame arrived: an earlier error is over
}

// -- counterfactual path -------------------------------------------------------------------------
async function findPath() {
  const target = Number($("cf-target").value);
  $("cf-status").textContent = "searching\u2026";
  try {
    app.path = await request(`api/counterfactual?${sampleQuery()}&target=${target}`);
  } catch (e) {
    $("cf-status").textContent = "";
    status(`counterfactual: ${e.message}`, true);
    return;
  }
  app.target = target;
  const p = app.path;
  $("cf-status").textContent = (p.success ? `flipped after ${p.steps} steps` : "not flipped") +
    `; p(target) ${fmt(p.prob_before, 3)} \u2192 ${fmt(p.prob_after, 3)}`;
  $("cf-slider-row").hidden = false;
  $("cf-units").hidden = false;
  $("cf-t").value = 0;
  $("cf-t-out").textContent = "0.00";
  app.mode = "path";
  requestFrame();
}

function drawPathUnits(frame) {
  const body = $("cf-units").tBodies[0];
  body.innerHTML = "";
  for (const b of app.path.top_units) {
    const got = (frame.units || []).find((u) => u.unit === b.unit) || {};
    const tr = body.insertRow();
    for (const text of [b.unit, b.part || "-", b.verdict || "-", fmt(-b.shift), fmt(got.set),
      fmt(got.reencoded)]) {
      tr.insertCell().textContent = text;
    }
    tr.title = "explore this unit";
    tr.addEventListener("click", () => selectUnit(b.unit));
  }
}

// -- start ---------------------------------------------------------------------------------------
function wire() {
  for (const id of ["search", "filter-part", "filter-verdict"]) {
    $(id).addEventListener("input", renderUnits);
  }
  for (const id of ["sample-class", "sample-index", "sample-seed"]) {
    $(id).addEventListener("change", loadSample);
  }
  for (const radio of document.querySelectorAll("input[name=sample-kind]")) {
    radio.addEventListener("change", loadSample);
  }
  $("new-seed").addEventListener("click", () => {
    $("sample-seed").value = Math.floor(Math.random() * 1e6);
    document.querySelector("input[name=sample-kind][value=seed]").checked = true;
    loadSample();
  });
  $("add-unit").addEventListener("click", addUnit);
  $("show-outlines").addEventListener("change", () => {
    $("frame-outlines").hidden = !$("show-outlines").checked;
  });
  $("cf-find").addEventListener("click", findPath);
  $("cf-t").addEventListener("input", () => {
    $("cf-t-out").textContent = Number($("cf-t").value).toFixed(2);
    app.mode = "path";
    requestFrame();
  });
}

async function start() {
  wire();
  app.run = await request("api/run");
  const run = app.run;
  $("run").textContent = `run ${run.run_id}: ${run.tuned} tuned units, ${run.generator} ` +
    `generator, ${run.classifier} classifier`;
  run.classes.forEach((name, c) => {
    $("sample-class").add(new Option(`${c}: ${name} (${run.per_class[c]} held out)`, c));
  });
  run.parts.forEach((name, i) => {
    if (i === 0) return;
    $("filter-part").add(new Option(name, name));
    const li = document.createElement("li");
    li.innerHTML = `<span class="swatch"></span>${name}`;
    li.firstChild.style.background = `rgb(${run.colours[i].join(",")})`;
    $("legend").appendChild(li);
  });
  app.units = await request("api/units");
  const hash = /unit=(\d+)/.exec(location.hash);
  const first = hash ? Number(hash[1])
    : (app.units.find((u) => u.verdict === "significant") || app.units[0]).unit;
  await loadSample();
  await selectUnit(first);
  app.ready = true;
}

start().catch((e) => status(`could not start: ${e.message}`, true));
