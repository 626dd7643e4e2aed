// The labelling page of `linkstyle labels open`: paint index masks over exported images.
// The mask of the open image is a Uint8Array of width*height part indices (row-major), the
// exact bytes the server saves as DIR/labels/NNNN.png. Everything runs in this file; nothing
// is fetched from anywhere but the local server.
"use strict";

const app = {
  state: null,       // GET api/state
  index: -1,         // the open image
  mask: null,        // Uint8Array(width * height)
  source: "",        // "saved", "proposal", "empty"
  dirty: false,      // changed since loaded or saved
  part: 1,
  tool: "brush",
  size: 5,
  opacity: 0.55,
  overlay: true,
  zoom: 1,
  undo: [],
  redo: [],
  busy: 0,           // requests in flight (tests wait for 0)
  proposalFor: null, // the trained_on list of the proposal shown, to notice newer ones
};
window.app = app;

const $ = (id) => document.getElementById(id);
const imageCanvas = $("image-canvas");
const labelCanvas = $("label-canvas");
const UNDO_LIMIT = 100;

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function request(path, options = {}) {
  app.busy += 1;
  try {
    const response = await fetch(path, { cache: "no-store", ...options });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return response;
  } finally {
    app.busy -= 1;
  }
}

const pad = (i) => String(i).padStart(4, "0");
const isLabelled = (i) => app.state.labelled.includes(i);

// -- drawing ---------------------------------------------------------------------------------
function drawLabels() {
  const { width, height, colours } = app.state;
  const ctx = labelCanvas.getContext("2d");
  const data = ctx.createImageData(width, height);
  for (let p = 0; p < app.mask.length; p++) {
    const v = app.mask[p];
    if (v === 0) continue;
    const c = colours[v] || [255, 255, 255];
    data.data[4 * p] = c[0];
    data.data[4 * p + 1] = c[1];
    data.data[4 * p + 2] = c[2];
    data.data[4 * p + 3] = 255;
  }
  ctx.putImageData(data, 0, 0);
  labelCanvas.style.opacity = app.overlay ? app.opacity : 0;
}

function applyZoom() {
  const { width, height } = app.state;
  for (const canvas of [imageCanvas, labelCanvas]) {
    canvas.style.width = `${width * app.zoom}px`;
    canvas.style.height = `${height * app.zoom}px`;
  }
  $("zoom-out-val").textContent = `${app.zoom}\u00d7`;
}

// the pixel under a pointer event: the canvas is width*zoom CSS pixels wide
function pixelAt(event) {
  const rect = labelCanvas.getBoundingClientRect();
  const x = Math.floor((event.clientX - rect.left) / rect.width * app.state.width);
  const y = Math.floor((event.clientY - rect.top) / rect.height * app.state.height);
  return { x, y };
}

// a round brush: pixels whose centre lies within size/2 of the centre pixel's
function dab(cx, cy, value) {
  const { width, height } = app.state;
  const reach = Math.ceil(app.size / 2);
  for (let dy = -reach; dy <= reach; dy++) {
    for (let dx = -reach; dx <= reach; dx++) {
      if (4 * (dx * dx + dy * dy) >= app.size * app.size) continue;
      const x = cx + dx, y = cy + dy;
      if (x < 0 || y < 0 || x >= width || y >= height) continue;
      app.mask[y * width + x] = value;
    }
  }
}

// a stroke segment: one dab per pixel step along the longer axis
function line(a, b, value) {
  const dx = b.x - a.x, dy = b.y - a.y;
  const n = Math.max(Math.abs(dx), Math.abs(dy));
  if (n === 0) { dab(a.x, a.y, value); return; }
  for (let k = 1; k <= n; k++) {
    dab(a.x + Math.floor(dx * k / n + 0.5), a.y + Math.floor(dy * k / n + 0.5), value);
  }
}

// flood fill of the 4-connected region of equal labels around (x, y)
function fill(x, y, value) {
  const { width, height } = app.state;
  const old = app.mask[y * width + x];
  if (old === value) return;
  const stack = [y * width + x];
  app.mask[y * width + x] = value;
  while (stack.length) {
    const p = stack.pop();
    const px = p % width, py = (p - px) / width;
    const next = [];
    if (px > 0) next.push(p - 1);
    if (px < width - 1) next.push(p + 1);
    if (py > 0) next.push(p - width);
    if (py < height - 1) next.push(p + width);
    for (const q of next) {
      if (app.mask[q] === old) { app.mask[q] = value; stack.push(q); }
    }
  }
}

function remember() {
  app.undo.push(app.mask.slice());
  if (app.undo.length > UNDO_LIMIT) app.undo.shift();
  app.redo = [];
}

function changed() {
  app.dirty = true;
  drawLabels();
  showSource();
}

function undo() {
  if (!app.undo.length) return;
  app.redo.push(app.mask);
  app.mask = app.undo.pop();
  changed();
}

function redo() {
  if (!app.redo.length) return;
  app.undo.push(app.mask);
  app.mask = app.redo.pop();
  changed();
}

let last = null;
labelCanvas.addEventListener("pointerdown", (event) => {
  if (!app.mask || event.button !== 0) return;
  const p = pixelAt(event);
  const value = app.tool === "eraser" ? 0 : app.part;
  remember();
  if (app.tool === "fill") {
    fill(p.x, p.y, value);
    changed();
    return;
  }
  labelCanvas.setPointerCapture(event.pointerId);
  last = p;
  dab(p.x, p.y, value);
  changed();
});
labelCanvas.addEventListener("pointermove", (event) => {
  if (last === null) return;
  // the browser may merge moves into one event per frame: follow every one of them
  const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const move of moves.length ? moves : [event]) {
    const p = pixelAt(move);
    line(last, p, app.tool === "eraser" ? 0 : app.part);
    last = p;
  }
  drawLabels();
});
const endStroke = () => { last = null; };
labelCanvas.addEventListener("pointerup", endStroke);
labelCanvas.addEventListener("pointercancel", endStroke);

// -- images ----------------------------------------------------------------------------------
function showSource() {
  const el = $("source");
  if (app.dirty) {
    el.textContent = "changed, not saved (S saves)";
    el.className = "changed";
  } else if (app.source === "proposal") {
    el.textContent = "pre-filled: correct it, then save (S)";
    el.className = "proposal";
  } else {
    el.textContent = app.source === "saved" ? "saved" : "not labelled";
    el.className = "";
  }
}

async function loadImage(index) {
  const { width, height } = app.state;
  // fetched first, so that a missing or damaged image shows the server's message
  const response = await request(`api/image/${index}.png`);
  const url = URL.createObjectURL(await response.blob());
  const img = new Image();
  img.src = url;
  app.busy += 1;
  try { await img.decode(); } finally { app.busy -= 1; URL.revokeObjectURL(url); }
  imageCanvas.width = labelCanvas.width = width;
  imageCanvas.height = labelCanvas.height = height;
  imageCanvas.getContext("2d").drawImage(img, 0, 0);
}

async function fetchMask(kind, index) {
  const response = await request(`api/${kind}/${index}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function open(index) {
  if (!app.state || index < 0 || index >= app.state.count) return;
  if (app.dirty && !(await save())) return;
  try {
    await loadImage(index);
  } catch (e) {
    status(`image ${pad(index)} cannot be shown: ${e.message}`, true);
    return;
  }
  let mask = null, source = "empty";
  if (isLabelled(index)) {
    mask = await fetchMask("mask", index);
    source = "saved";
  } else if (app.state.prefill.trained_on) {
    try {
      mask = await fetchMask("proposal", index);
      source = "proposal";
      app.proposalFor = app.state.prefill.trained_on.join(",");
    } catch (e) {
      if (e.status !== 404) throw e;
    }
  }
  app.index = index;
  app.mask = mask || new Uint8Array(app.state.width * app.state.height);
  app.source = source;
  app.dirty = false;
  app.undo = [];
  app.redo = [];
  $("image-name").textContent = `image ${pad(index)} (${index + 1} of ${app.state.count})`;
  location.hash = `#${index}`;
  drawLabels();
  showSource();
  renderList();
}

async function save() {
  if (app.index < 0) return false;
  try {
    const response = await request(`api/mask/${app.index}`, {
      method: "PUT", body: app.mask, headers: { "Content-Type": "application/octet-stream" },
    });
    app.state = await response.json();
    app.dirty = false;
    app.source = "saved";
    const warning = app.state.warning ? ` (${app.state.warning})` : "";
    status(`saved ${pad(app.index)}.png${warning}`, Boolean(warning));
    renderState();
    showSource();
    return true;
  } catch (e) {
    status(`not saved: ${e.message}`, true);
    return false;
  }
}

function nextUnlabelled() {
  const { count } = app.state;
  for (let k = 1; k <= count; k++) {
    const i = (app.index + k) % count;
    if (!isLabelled(i)) return open(i);
  }
  status("every image is labelled");
}

function nextUnsure() {
  const order = (app.state.prefill.least_sure || []).filter((i) => i !== app.index);
  if (order.length) return open(order[0]);
  return nextUnlabelled();
}

// -- panels ----------------------------------------------------------------------------------
function renderLegend() {
  const list = $("legend");
  list.innerHTML = "";
  app.state.parts.forEach((name, i) => {
    const li = document.createElement("li");
    const c = app.state.colours[i];
    li.innerHTML = `<span class="swatch"></span><span></span>` +
      (i < 10 ? `<kbd>${i}</kbd>` : "");
    li.firstChild.style.background = i === 0 ? "transparent" : `rgb(${c.join(",")})`;
    li.children[1].textContent = name;
    li.className = i === app.part ? "active" : "";
    li.addEventListener("click", () => selectPart(i));
    list.appendChild(li);
  });
}

function renderList() {
  const nav = $("images");
  const unsure = new Set((app.state.prefill.least_sure || []).slice(0, 3));
  if (nav.children.length !== app.state.count) {
    nav.innerHTML = "";
    for (let i = 0; i < app.state.count; i++) {
      const a = document.createElement("a");
      a.title = pad(i);
      a.innerHTML = `<img alt="${pad(i)}" src="api/image/${i}.png">`;
      a.addEventListener("click", () => open(i));
      nav.appendChild(a);
    }
  }
  [...nav.children].forEach((a, i) => {
    a.classList.toggle("labelled", isLabelled(i));
    a.classList.toggle("current", i === app.index);
    a.classList.toggle("unsure", unsure.has(i));
    const damaged = (app.state.damaged || {})[i];
    a.classList.toggle("damaged", Boolean(damaged));
    a.title = damaged ? `${pad(i)}: ${damaged}` : pad(i);
  });
  $("progress").textContent = `${app.state.labelled.length} of ${app.state.count} labelled`;
}

function renderPrefill() {
  const pf = app.state.prefill;
  const text = {
    off: "off: no generator (open with --config to pre-fill)",
    waiting: `label ${pf.need ?? 2} more image(s) to start the pre-fill`,
    features: "computing the generator's feature maps\u2026",
    training: `training on ${(pf.training_on || []).length} labelled images\u2026`,
    "held-out": `proposals from ${(pf.trained_on || []).length} images; ` +
      "leave-one-out running\u2026",
    ready: `proposals from ${(pf.trained_on || []).length} images`,
    error: `pre-fill failed: ${pf.error}`,
  }[pf.status] || pf.status;
  $("prefill").textContent = text;
  const table = $("heldout");
  table.innerHTML = "";
  if (pf.heldout) {
    const head = table.insertRow();
    head.innerHTML = `<td colspan="3"><b>held-out mIoU ${pf.heldout.miou.toFixed(2)}</b> ` +
      `(leave-one-out, ${pf.heldout.folds} images)</td>`;
    app.state.parts.forEach((name, i) => {
      const v = pf.heldout.per_part[i];
      const row = table.insertRow();
      row.insertCell().textContent = name;
      row.insertCell().textContent = v === null ? "\u2013" : v.toFixed(2);
      row.insertCell().innerHTML = v === null ? "" :
        `<span class="bar" style="width:${Math.round(v * 80)}px"></span>`;
    });
  }
  const unsure = $("unsure");
  unsure.innerHTML = "";
  const order = (pf.least_sure || []).slice(0, 6);
  if (order.length) {
    unsure.append("least sure, label next: ");
    for (const i of order) {
      const a = document.createElement("a");
      a.textContent = pad(i);
      a.addEventListener("click", () => open(i));
      unsure.appendChild(a);
    }
  }
}

function renderState() {
  $("folder").textContent = app.state.folder;
  renderList();
  renderPrefill();
}

function selectPart(i) {
  if (i >= app.state.parts.length) return;
  app.part = i;
  if (app.tool === "eraser") selectTool("brush");
  renderLegend();
}

function selectTool(tool) {
  app.tool = tool;
  document.querySelectorAll("#tools button").forEach((b) => {
    b.classList.toggle("active", b.dataset.tool === tool);
  });
}

function setSize(size) {
  app.size = Math.max(1, Math.min(41, size));
  $("size").value = app.size;
  $("size-out").textContent = app.size;
}

function setOpacity(percent) {
  app.opacity = percent / 100;
  $("opacity").value = percent;
  $("opacity-out").textContent = `${percent}%`;
  if (app.mask) drawLabels();
}

function setZoom(zoom) {
  app.zoom = Math.max(1, Math.min(32, zoom));
  applyZoom();
}

// -- polling: the pre-fill trains in the background ---------------------------------------
async function poll() {
  try {
    const response = await request("api/state");
    app.state = await response.json();
    renderState();
    const pf = app.state.prefill;
    // a newer proposal replaces the one shown, unless the person has started correcting it
    if (pf.trained_on && !app.dirty && !isLabelled(app.index) && app.index >= 0 &&
        app.proposalFor !== pf.trained_on.join(",")) {
      await open(app.index);
    }
  } catch (e) {
    status(`the server does not answer (${e.message}); is \`linkstyle labels open\` running?`,
           true);
  }
}

// -- keys and buttons --------------------------------------------------------------------------
document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" && event.target.type !== "range") return;
  const key = event.key;
  const ctrl = event.ctrlKey || event.metaKey;
  if (ctrl && (key === "z" || key === "Z")) {
    if (event.shiftKey) redo(); else undo();
  } else if (ctrl && (key === "y" || key === "Y")) {
    redo();
  } else if (ctrl && (key === "s" || key === "S")) {
    save();
  } else if (ctrl || event.altKey) {
    return;
  } else if (/^[0-9]$/.test(key)) {
    selectPart(Number(key));
  } else if (key === "b" || key === "B") {
    selectTool("brush");
  } else if (key === "e" || key === "E") {
    selectTool("eraser");
  } else if (key === "f" || key === "F") {
    selectTool("fill");
  } else if (key === "[") {
    setSize(app.size - 2);
  } else if (key === "]") {
    setSize(app.size + 2);
  } else if (key === "+" || key === "=") {
    setZoom(app.zoom + 1);
  } else if (key === "-") {
    setZoom(app.zoom - 1);
  } else if (key === "o" || key === "O") {
    app.overlay = !app.overlay;
    drawLabels();
  } else if (key === "s" || key === "S") {
    save();
  } else if (key === "n" || key === "N") {
    nextUnlabelled();
  } else if (key === "u" || key === "U") {
    nextUnsure();
  } else if (key === "ArrowRight") {
    open(app.index + 1);
  } else if (key === "ArrowLeft") {
    open(app.index - 1);
  } else {
    return;
  }
  event.preventDefault();
});

document.querySelectorAll("#tools button").forEach((b) => {
  b.addEventListener("click", () => selectTool(b.dataset.tool));
});
$("size").addEventListener("input", (e) => setSize(Number(e.target.value)));
$("opacity").addEventListener("input", (e) => setOpacity(Number(e.target.value)));
$("zoom-in").addEventListener("click", () => setZoom(app.zoom + 1));
$("zoom-out").addEventListener("click", () => setZoom(app.zoom - 1));
$("undo").addEventListener("click", undo);
$("redo").addEventListener("click", redo);
$("save").addEventListener("click", save);
$("next").addEventListener("click", nextUnlabelled);
$("next-unsure").addEventListener("click", nextUnsure);
window.addEventListener("beforeunload", (event) => {
  if (app.dirty) event.preventDefault();
});

async function start() {
  const response = await request("api/state");
  app.state = await response.json();
  setZoom(Math.max(1, Math.floor(512 / Math.max(app.state.width, app.state.height))));
  setSize(app.size);
  setOpacity(Math.round(app.opacity * 100));
  selectTool("brush");
  renderLegend();
  renderState();
  const fromHash = Number(location.hash.slice(1));
  await open(Number.isInteger(fromHash) && location.hash ? fromHash : 0);
  app.ready = true;
  setInterval(poll, 1500);
}

app.open = open;
app.save = save;
start().catch((e) => status(`could not start: ${e.message}`, true));
