// fbrs annotation UI. Plain JS, no build step, nothing loaded from outside the app.
// Coordinates sent to the server are (x, y) full-resolution image pixels.
"use strict";

const $ = (id) => document.getElementById(id);

const ui = {
  info: null,
  images: [],
  imageIndex: -1,
  session: null,        // last session state from the server
  picture: null,        // HTMLImageElement of the display-size image
  overlay: null,        // HTMLImageElement of the RGBA overlay
  overlayVersion: -1,
  pendingClicks: [],    // clicks sent but not answered yet (drawn hollow)
  queue: Promise.resolve(),
  queued: 0,
};

// ------------------------------------------------------------------------------------------ server

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const payload = await response.json();
      detail = typeof payload.detail === "string" ? payload.detail : JSON.stringify(payload.detail);
    } catch (_) { /* not JSON */ }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

// A request to the session `session` (the state the user acted on). The server rebuilds evicted sessions
// itself; if it has lost one all the same (it was restarted, or the session was deleted), a folder image
// is opened again, which resumes it from its saved click log, and the request is sent once more.
async function sessionRequest(session, method, action, body) {
  const path = (id) => `/api/sessions/${id}${action ? `/${action}` : ""}`;
  try {
    return await api(method, path(session.session_id), body);
  } catch (error) {
    if (error.status !== 404 || !session.image_name) throw error;
    const state = await api("POST", `/api/images/${encodeURIComponent(session.image_name)}/session`);
    if (ui.session && ui.session.image_name === session.image_name) {
      ui.session = state;
      ui.overlayVersion = -1;
    }
    session.session_id = state.session_id;
    showMessage(`reopened ${session.image_name} from its saved clicks`, "info");
    return api(method, path(state.session_id), body);
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`cannot load ${url}`));
    image.src = url;
  });
}

// Every request that changes the session runs through this queue, so they reach the server in the
// order the user made them, while the page keeps handling input (clicks are drawn at once).
function enqueue(task) {
  ui.queued += 1;
  setBusy(true);
  ui.queue = ui.queue
    .then(task)
    .catch((error) => showMessage(error.message))
    .finally(() => {
      ui.queued -= 1;
      if (ui.queued === 0) setBusy(false);
    });
  return ui.queue;
}

function setBusy(busy) {
  document.body.dataset.busy = busy ? "true" : "false";
  $("busy").hidden = !busy;
}

// What the busy badge says: "preparing image…" while the server encodes a new image (the SAM family's
// image encoder takes seconds; clicks made meanwhile are drawn and sent once it is ready), else "predicting…".
function setBusyText(text) {
  $("busy").textContent = text;
}

function showMessage(text, kind = "error") {
  const element = $("message");
  element.textContent = text;
  element.className = kind;
  if (text) {
    clearTimeout(showMessage.timer);
    showMessage.timer = setTimeout(() => { element.textContent = ""; }, 8000);
  }
}

// --------------------------------------------------------------------------------------- rendering

function render() {
  const canvas = $("canvas");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!ui.picture || !ui.session) return;
  context.globalAlpha = 1;
  context.drawImage(ui.picture, 0, 0, canvas.width, canvas.height);
  if (ui.overlay) {
    context.globalAlpha = Number($("opacity").value);
    context.drawImage(ui.overlay, 0, 0, canvas.width, canvas.height);
    context.globalAlpha = 1;
  }
  const scale = canvas.width / ui.session.width;
  const radius = Number($("radius").value);
  const drawClick = (click, pending) => {
    context.beginPath();
    context.arc((click.x + 0.5) * scale, (click.y + 0.5) * scale, radius, 0, 2 * Math.PI);
    context.lineWidth = 2;
    context.strokeStyle = "white";
    context.fillStyle = click.positive ? "#22c55e" : "#ef4444";
    if (!pending) context.fill();
    context.stroke();
  };
  ui.session.clicks.forEach((click) => drawClick(click, false));
  ui.pendingClicks.forEach((click) => drawClick(click, true));
}

// The canvas keeps the display image's pixels; CSS scales it to fill the stage, keeping its aspect.
function fitCanvas() {
  const canvas = $("canvas");
  const wrap = $("canvas-wrap");
  if (!canvas.width || !canvas.height) return;
  const scale = Math.min(wrap.clientWidth / canvas.width, wrap.clientHeight / canvas.height);
  canvas.style.width = `${Math.floor(canvas.width * scale)}px`;
  canvas.style.height = `${Math.floor(canvas.height * scale)}px`;
}

function renderImageList() {
  const list = $("image-list");
  list.replaceChildren();
  ui.images.forEach((image, index) => {
    const item = document.createElement("li");
    item.dataset.name = image.name;
    item.classList.toggle("active", index === ui.imageIndex);
    item.classList.toggle("done", image.done);
    const name = document.createElement("span");
    name.textContent = image.name;
    const state = document.createElement("span");
    state.className = "state";
    state.textContent = image.done ? `\u2713 ${image.objects}` : image.objects ? `${image.objects}` : "";
    state.title = image.done ? "done" : "not done";
    item.append(name, state);
    item.addEventListener("click", () => openImage(index));
    list.append(item);
  });
  const done = ui.images.filter((image) => image.done).length;
  $("progress").textContent = `${done}/${ui.images.length} done`;
}

function renderSession() {
  const session = ui.session;
  if (!session) return;
  $("undo").disabled = !session.can_undo;
  $("redo").disabled = !session.can_redo;
  $("finish").disabled = session.clicks.length === 0;
  $("current-swatch").style.background = session.current_object.color;
  $("click-count").textContent =
    `${session.clicks.length} click${session.clicks.length === 1 ? "" : "s"}, ${session.current_object.area} px`;
  $("label").value = session.current_object.label;
  $("mode").value = session.settings.mode;
  $("zoom-in").checked = session.settings.zoom_in;
  $("flip").checked = session.settings.flip;
  $("threshold").value = session.settings.prob_threshold;
  $("threshold-value").textContent = Number(session.settings.prob_threshold).toFixed(2);
  if (session.latency_ms === null && session.prepare_ms !== null) {
    $("latency").textContent = `image ready in ${Math.round(session.prepare_ms)} ms`;
  }
  if (session.latency_ms !== null) {
    const roundTrip = ui.lastRoundTripMs === undefined ? "" : ` / ${Math.round(ui.lastRoundTripMs)} ms round trip`;
    $("latency").textContent = `latency: ${Math.round(session.latency_ms)} ms${roundTrip}`;
  }
  const list = $("object-list");
  list.replaceChildren();
  session.objects.forEach((object) => {
    const item = document.createElement("li");
    item.dataset.objectId = object.id;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = object.color;
    const label = document.createElement("span");
    label.textContent = `Object ${object.id}`;
    const category = document.createElement("select");
    category.className = "object-label";
    category.title = `Label of object ${object.id}`;
    (ui.info.labels || []).forEach((entry) => category.append(new Option(entry.name, entry.name)));
    if (![...category.options].some((option) => option.value === object.label)) {
      category.append(new Option(object.label, object.label));  // saved with a label the list no longer has
    }
    category.value = object.label;
    category.addEventListener("change", (event) => enqueue(() => applyState(
      sessionRequest(session, "PUT", `objects/${object.id}/label`, { label: event.target.value }))));
    const area = document.createElement("span");
    area.className = "area";
    area.textContent = `${object.area} px`;
    const remove = document.createElement("button");
    remove.textContent = "\u00d7";
    remove.title = `Delete object ${object.id}`;
    remove.addEventListener("click", () => enqueue(() => applyState(
      sessionRequest(session, "DELETE", `objects/${object.id}`))));
    item.append(swatch, label, category, area, remove);
    list.append(item);
  });
  const caption = session.image_name || "uploaded image";
  $("image-caption").textContent = `${caption} \u2014 ${session.width}\u00d7${session.height}`;
}

async function refreshOverlay() {
  const session = ui.session;
  if (!session || session.version === ui.overlayVersion) return;
  const maxSide = Math.max(ui.picture.naturalWidth, ui.picture.naturalHeight);
  const version = session.version;
  const overlay = await loadImage(
    `/api/sessions/${session.session_id}/overlay.png?max_side=${maxSide}&v=${version}`);
  if (ui.session && ui.session.session_id === session.session_id) {
    ui.overlay = overlay;
    ui.overlayVersion = version;
  }
}

async function applyState(request) {
  const started = performance.now();
  const state = await request;
  ui.lastRoundTripMs = performance.now() - started;
  ui.session = state;
  const image = ui.images.find((entry) => entry.name === state.image_name);
  if (image) {
    image.objects = state.objects.length;
    image.done = state.done;
  }
  await refreshOverlay();
  renderSession();
  renderImageList();
  render();
  return state;
}

// ----------------------------------------------------------------------------------------- actions

async function openImage(index) {
  if (index < 0 || index >= ui.images.length) return;
  return enqueue(async () => {
    ui.imageIndex = index;
    ui.pendingClicks = [];
    const name = ui.images[index].name;
    const state = await api("POST", `/api/images/${encodeURIComponent(name)}/session`);
    const canvas = $("canvas");
    const maxSide = ui.info.limits.display_max_side;
    ui.picture = await loadImage(`/api/sessions/${state.session_id}/image?max_side=${maxSide}`);
    canvas.width = ui.picture.naturalWidth;
    canvas.height = ui.picture.naturalHeight;
    fitCanvas();
    ui.overlay = null;
    ui.overlayVersion = -1;
    await prepareIfNeeded(await applyState(Promise.resolve(state)));
  });
}

// The first click on a new image (or after a change of mode) would block on the image encoder: do that
// work now, visibly. For a folder image the server then encodes the next one in the background.
async function prepareIfNeeded(state) {
  if (state.prepared) return state;
  setBusyText("preparing image\u2026");
  document.body.dataset.preparing = "true";
  try {
    return await applyState(sessionRequest(state, "POST", "prepare"));
  } finally {
    setBusyText("predicting\u2026");
    document.body.dataset.preparing = "false";
  }
}

function canvasToImage(event) {
  const rectangle = $("canvas").getBoundingClientRect();
  const x = Math.floor(((event.clientX - rectangle.left) / rectangle.width) * ui.session.width);
  const y = Math.floor(((event.clientY - rectangle.top) / rectangle.height) * ui.session.height);
  return {
    x: Math.min(Math.max(x, 0), ui.session.width - 1),
    y: Math.min(Math.max(y, 0), ui.session.height - 1),
  };
}

function addClick(event, negative) {
  event.preventDefault();
  if (!ui.session) return;
  const point = canvasToImage(event);
  const click = { x: point.x, y: point.y, positive: !negative };
  ui.pendingClicks.push(click);
  render();
  const session = ui.session;
  enqueue(async () => {
    try {
      await applyState(sessionRequest(session, "POST", "clicks", click));
    } finally {
      ui.pendingClicks = ui.pendingClicks.filter((pending) => pending !== click);
      render();
    }
  });
}

function sessionAction(action) {
  if (!ui.session) return;
  const session = ui.session;
  enqueue(() => applyState(sessionRequest(session, "POST", action)));
}

function saveImage() {
  if (!ui.session) return;
  const session = ui.session;
  enqueue(async () => {
    const state = await applyState(sessionRequest(session, "POST", "save"));
    const count = state.objects.length;
    showMessage(`saved ${count} object${count === 1 ? "" : "s"} to ${state.files.click_log.replace(/clicks\/[^/]*$/, "")}`, "info");
  });
}

function updateSettings(values) {
  if (!ui.session) return;
  const session = ui.session;
  enqueue(async () => prepareIfNeeded(await applyState(sessionRequest(session, "PUT", "settings", values))));
}

// ------------------------------------------------------------------------------------------ wiring

function bindControls() {
  const canvas = $("canvas");
  canvas.addEventListener("click", (event) => addClick(event, event.shiftKey || $("negative-mode").checked));
  canvas.addEventListener("contextmenu", (event) => addClick(event, true));
  $("undo").addEventListener("click", () => sessionAction("undo"));
  $("redo").addEventListener("click", () => sessionAction("redo"));
  $("reset").addEventListener("click", () => sessionAction("reset"));
  $("finish").addEventListener("click", () => sessionAction("finish"));
  $("save").addEventListener("click", saveImage);
  $("previous-image").addEventListener("click", () => openImage(ui.imageIndex - 1));
  $("next-image").addEventListener("click", () => openImage(ui.imageIndex + 1));
  $("mode").addEventListener("change", (event) => updateSettings({ mode: event.target.value }));
  $("label").addEventListener("change", (event) => {
    if (!ui.session) return;
    const session = ui.session;
    enqueue(() => applyState(sessionRequest(session, "PUT", "label", { label: event.target.value })));
  });
  $("zoom-in").addEventListener("change", (event) => updateSettings({ zoom_in: event.target.checked }));
  $("flip").addEventListener("change", (event) => updateSettings({ flip: event.target.checked }));
  $("threshold").addEventListener("input", (event) => {
    $("threshold-value").textContent = Number(event.target.value).toFixed(2);
  });
  $("threshold").addEventListener("change", (event) =>
    updateSettings({ prob_threshold: Number(event.target.value) }));
  $("opacity").addEventListener("input", render);
  $("radius").addEventListener("input", render);
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", fitCanvas);
}

function onKey(event) {
  if (event.target instanceof HTMLInputElement && event.target.type !== "checkbox") return;
  if (event.target instanceof HTMLSelectElement) return;
  const key = event.key.toLowerCase();
  const control = event.ctrlKey || event.metaKey;
  let handled = true;
  if (key === " ") sessionAction("finish");
  else if (key === "z" && control && event.shiftKey) sessionAction("redo");
  else if (key === "z") sessionAction("undo");
  else if (key === "y") sessionAction("redo");
  else if (key === "escape") sessionAction("reset");
  else if (key === "s" && !event.altKey) saveImage();
  else if (key === "n" || key === "arrowright") openImage(ui.imageIndex + 1);
  else if (key === "p" || key === "arrowleft") openImage(ui.imageIndex - 1);
  else if (key === "t") $("negative-mode").checked = !$("negative-mode").checked;
  else handled = false;
  if (handled) event.preventDefault();
}

async function start() {
  bindControls();
  try {
    ui.info = await api("GET", "/api/info");
    $("model-name").textContent = ui.info.model ? `model: ${ui.info.model}` : "no model: classical modes only";
    (ui.info.labels || []).forEach((entry) => $("label").append(new Option(entry.name, entry.name)));
    const select = $("mode");
    ui.info.modes.forEach((mode) => {
      const option = document.createElement("option");
      option.value = mode.name;
      option.textContent = mode.available ? mode.name : `${mode.name} (needs a model)`;
      option.disabled = !mode.available;
      select.append(option);
    });
    if (!ui.info.folder) {
      showMessage("started without an images folder: use the HTTP API (/docs)", "info");
      return;
    }
    ui.images = await api("GET", "/api/images");
    renderImageList();
    const skipped = Object.keys(ui.info.folder.skipped || {});
    if (skipped.length) {
      showMessage(`skipped ${skipped.length} unreadable file${skipped.length === 1 ? "" : "s"}: ${skipped.join(", ")}`);
    }
    const firstOpen = ui.images.findIndex((image) => !image.done);
    await openImage(firstOpen === -1 ? 0 : firstOpen);
  } catch (error) {
    showMessage(error.message);
  }
}

window.fbrsApp = ui;  // for the browser test and for debugging from the console
start();
