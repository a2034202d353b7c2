"""The latent-space explorer's page: one HTML document with its CSS and JavaScript inline.

:mod:`pyro_vae.explorer` fills in the page data (a JSON object, placed in a
``<script type="application/json">`` element) and the title; nothing else varies. The page loads
nothing: its Content-Security-Policy forbids every fetch (``default-src 'none'``), so it works
offline and from a file, a mail attachment or a notebook's ``iframe srcdoc``.

What the script does with the data:

* **Map.** The test encodings μ(x) in the map's plane, coloured by label: z itself for D ≤ 2,
  else the first two principal components, z = c + u v₁ + w v₂ (c the mean encoding).
* **Decoding.** For an MLP decoder the page holds its weights (float32, base64) and runs it in
  Float64: for each operation of the program, ``label`` appends one_hot(y), ``linear`` is
  h ↦ W h + b (W as torch stores it, ``[out, in]``), ``act`` is the decoder's own activation;
  then E[x|z] = sigmoid(logits) (Bernoulli) or shift + spread · output (Gaussian). Any other decoder comes as images precomputed on a grid
  over the map's plane, and z shows the image of the grid point nearest its projection.
* **Hooks for tests.** ``window.pyroVaeDecode(z, label)`` returns E[x|z] as an array,
  ``window.pyroVaeState()`` the shown z, label and pixels, ``window.pyroVaePointOnScreen(i)`` the
  page coordinates of test encoding i.
"""

from __future__ import annotations

# The page, with __TITLE__ (HTML-escaped) and __DATA__ (JSON, "</" escaped) to fill in.
TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px 20px;
         color: #222; background: #fafafa; }
  h1 { font-size: 1.25rem; margin: 0 0 4px; }
  h2 { font-size: 1rem; margin: 0 0 6px; }
  p { margin: 4px 0; font-size: 0.9rem; }
  .note { background: #fff4d6; border: 1px solid #e8c66a; padding: 6px 10px; border-radius: 4px; }
  .hint { color: #555; font-size: 0.82rem; max-width: 480px; }
  main { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; margin-top: 10px; }
  section { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px 12px; }
  #map { cursor: crosshair; touch-action: none; display: block; background: #fff; }
  #image { image-rendering: pixelated; border: 1px solid #ccc; display: block; background: #000; }
  #legend span { display: inline-block; margin-right: 8px; font-size: 0.8rem; }
  #legend i { display: inline-block; width: 10px; height: 10px; border-radius: 50%;
              margin-right: 3px; vertical-align: -1px; }
  #sliders { max-height: 330px; overflow-y: auto; margin-top: 8px; padding-right: 6px; }
  .slider { display: grid; grid-template-columns: 42px 170px 58px; align-items: center;
            font-size: 0.8rem; gap: 4px; }
  .slider output { font-variant-numeric: tabular-nums; text-align: right; }
  #readout { font-size: 0.8rem; color: #444; max-width: 290px; min-height: 2.4em; }
  #strip { display: flex; gap: 4px; margin-top: 6px; flex-wrap: wrap; }
  #strip canvas { image-rendering: pixelated; border: 1px solid #ccc; cursor: pointer; }
  #strip canvas.on { outline: 2px solid #d62728; }
  button { font-size: 0.85rem; margin-right: 6px; }
  select { font-size: 0.85rem; }
  #interp-row { display: flex; align-items: center; gap: 8px; font-size: 0.85rem; }
</style>
</head>
<body>
<h1 id="title"></h1>
<p id="about"></p>
<p id="note" class="note" hidden></p>
<main>
  <section>
    <h2 id="map-title">Test encodings</h2>
    <canvas id="map" width="480" height="480" aria-label="map of the test encodings"></canvas>
    <div id="legend"></div>
    <p class="hint">Point at a test encoding to see it decoded. Drag (from a point or from
      anywhere) to move z through the map's plane; the image follows.</p>
  </section>
  <section>
    <h2>Decoded image E[x | z]</h2>
    <canvas id="image" width="224" height="224" aria-label="decoded image"></canvas>
    <p id="readout"></p>
    <p id="label-row" hidden><label>decode with label
      <select id="label"></select></label></p>
    <div id="sliders"></div>
  </section>
</main>
<section style="margin-top: 16px">
  <h2>Interpolation between two chosen points</h2>
  <div id="interp-row">
    <button id="set-a" type="button">A &larr; current z</button>
    <button id="set-b" type="button">B &larr; current z</button>
    <label>t <input id="t" type="range" min="0" max="1" step="0.01" value="0"></label>
    <output id="t-value">0.00</output>
  </div>
  <p class="hint">z(t) = (1 &minus; t) z<sub>A</sub> + t z<sub>B</sub>; click an image or move t to show it above.</p>
  <div id="strip"></div>
</section>
<script type="application/json" id="pyro-vae-data">__DATA__</script>
<script>
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("pyro-vae-data").textContent);
  const D = DATA.latent_dim;
  const [C, H, W] = DATA.image_shape;
  const P = C * H * W;
  const [LO, HI] = DATA.display_range;
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                   "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const STEPS = DATA.interpolation_steps;

  function bytes(b64) {
    const text = atob(b64);
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }
  function floats(b64) { return new Float32Array(bytes(b64).buffer); }
  function colour(label) {
    if (label === null || label === undefined) return "#1f77b4";
    if (label < PALETTE.length) return PALETTE[label];
    return "hsl(" + ((label * 47) % 360) + ", 60%, 45%)";
  }

  // ---- test encodings and the map's plane --------------------------------------------------
  const N = DATA.points.count;
  const pointZ = floats(DATA.points.z);        // [N, D]
  const pointXY = floats(DATA.points.xy);      // [N, 2]: (u, w) in the plane
  const pointLabels = DATA.points.labels;      // [N] or null
  const centre = Float64Array.from(DATA.plane.centre);
  const axes = DATA.plane.axes.map(a => Float64Array.from(a));
  const [U0, U1, W0, W1] = DATA.plane.extent;
  const LABELLED = DATA.labels !== null;
  const NUM_CLASSES = LABELLED ? DATA.labels.num_classes : 0;

  function pointZOf(i) { return Float64Array.from(pointZ.subarray(i * D, (i + 1) * D)); }
  function project(z) {  // (u, w) of z in the plane
    const out = [0, 0];
    for (let k = 0; k < 2; k++) {
      let s = 0;
      for (let d = 0; d < D; d++) s += (z[d] - centre[d]) * axes[k][d];
      out[k] = s;
    }
    return out;
  }
  function planePoint(u, w) {
    const z = new Float64Array(D);
    for (let d = 0; d < D; d++) z[d] = centre[d] + u * axes[0][d] + w * axes[1][d];
    return z;
  }

  // ---- the decoder --------------------------------------------------------------------------
  const dec = DATA.decoder;
  let program = null, grid = null;
  if (dec.kind === "mlp") {
    program = dec.program.map(op => op.op === "linear"
      ? {op: "linear", n_in: op.n_in, n_out: op.n_out, w: floats(op.weight), b: floats(op.bias)}
      : op);
    if (dec.output.kind === "gaussian_mean") {
      dec.output.shiftValues = dec.output.shift === null ? null : floats(dec.output.shift);
    }
  } else {
    grid = {size: dec.size, images: bytes(dec.images)};
  }

  function erf(x) {  // |error| < 1e-14: Taylor series near 0, continued fraction for erfc
    const a = Math.abs(x);
    let r;
    if (a < 2.5) {
      let term = a, sum = a;
      for (let n = 1; n < 200; n++) {
        term *= -a * a / n;
        const add = term / (2 * n + 1);
        sum += add;
        if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
      }
      r = 2 / Math.sqrt(Math.PI) * sum;
    } else {
      let f = 0;
      for (let n = 120; n >= 1; n--) f = (n / 2) / (a + f);
      r = 1 - Math.exp(-a * a) / Math.sqrt(Math.PI) / (a + f);
    }
    return x < 0 ? -r : r;
  }
  function activate(op, h) {
    const out = new Float64Array(h.length);
    for (let i = 0; i < h.length; i++) {
      const x = h[i];
      let y;
      switch (op.name) {
        case "relu": y = x > 0 ? x : 0; break;
        case "tanh": y = Math.tanh(x); break;
        case "sigmoid": y = 1 / (1 + Math.exp(-x)); break;
        case "elu": y = x > 0 ? x : op.alpha * Math.expm1(x); break;
        case "leaky_relu": y = x > 0 ? x : op.negative_slope * x; break;
        case "softplus":
          y = op.beta * x > op.threshold ? x : Math.log1p(Math.exp(op.beta * x)) / op.beta; break;
        case "gelu":
          if (op.approximate === "tanh") {
            y = 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
          } else {
            y = 0.5 * x * (1 + erf(x / Math.SQRT2));
          }
          break;
        case "identity": y = x; break;
        default: throw new Error("unknown activation " + op.name);
      }
      out[i] = y;
    }
    return out;
  }
  function runProgram(z, label) {
    let h = Float64Array.from(z);
    for (const op of program) {
      if (op.op === "label") {
        const next = new Float64Array(h.length + NUM_CLASSES);
        next.set(h);
        next[h.length + label] = 1;
        h = next;
      } else if (op.op === "linear") {
        const out = new Float64Array(op.n_out);
        const w = op.w, n = op.n_in;
        for (let j = 0; j < op.n_out; j++) {
          let s = op.b[j];
          const row = j * n;
          for (let i = 0; i < n; i++) s += w[row + i] * h[i];
          out[j] = s;
        }
        h = out;
      } else {
        h = activate(op, h);
      }
    }
    const o = dec.output;
    const x = new Float64Array(P);
    for (let p = 0; p < P; p++) {
      const v = h[p];
      if (o.kind === "sigmoid") {
        x[p] = 1 / (1 + Math.exp(-v));
      } else {
        x[p] = (o.shiftValues === null ? o.shift_scalar : o.shiftValues[p]) + o.spread * v;
      }
    }
    return x;
  }
  function gridDecode(z, label) {
    const [u, w] = project(z);
    const G = grid.size;
    const gx = Math.min(G - 1, Math.max(0, Math.round((u - U0) / (U1 - U0) * (G - 1))));
    const gy = Math.min(G - 1, Math.max(0, Math.round((w - W0) / (W1 - W0) * (G - 1))));
    const start = (((LABELLED ? label : 0) * G + gy) * G + gx) * P;
    const x = new Float64Array(P);
    for (let p = 0; p < P; p++) x[p] = LO + (HI - LO) * grid.images[start + p] / 255;
    return x;
  }
  function decode(z, label) { return program ? runProgram(z, label) : gridDecode(z, label); }

  // ---- drawing images -----------------------------------------------------------------------
  const imageCanvas = document.getElementById("image");
  imageCanvas.height = Math.max(24, Math.round(imageCanvas.width * H / W));
  const scratch = document.createElement("canvas");
  scratch.width = W; scratch.height = H;
  const scratchContext = scratch.getContext("2d");
  function drawImage(pixels, canvas) {
    const image = scratchContext.createImageData(W, H);
    const grey = v => Math.max(0, Math.min(255, Math.round(255 * (v - LO) / (HI - LO))));
    for (let i = 0; i < H * W; i++) {
      const r = grey(pixels[i]);
      const g = C === 3 ? grey(pixels[H * W + i]) : r;
      const b = C === 3 ? grey(pixels[2 * H * W + i]) : r;
      image.data[4 * i] = r; image.data[4 * i + 1] = g; image.data[4 * i + 2] = b;
      image.data[4 * i + 3] = 255;
    }
    scratchContext.putImageData(image, 0, 0);
    const context = canvas.getContext("2d");
    context.imageSmoothingEnabled = false;
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.drawImage(scratch, 0, 0, canvas.width, canvas.height);
  }

  // ---- the map ------------------------------------------------------------------------------
  const map = document.getElementById("map");
  const mapContext = map.getContext("2d");
  const PAD = 12;
  function toScreen(u, w) {
    return [PAD + (u - U0) / (U1 - U0) * (map.width - 2 * PAD),
            map.height - PAD - (w - W0) / (W1 - W0) * (map.height - 2 * PAD)];
  }
  function fromScreen(x, y) {
    return [U0 + (x - PAD) / (map.width - 2 * PAD) * (U1 - U0),
            W0 + (map.height - PAD - y) / (map.height - 2 * PAD) * (W1 - W0)];
  }
  const pointsLayer = document.createElement("canvas");
  pointsLayer.width = map.width; pointsLayer.height = map.height;
  (function drawPoints() {
    const context = pointsLayer.getContext("2d");
    context.globalAlpha = 0.75;
    for (let i = 0; i < N; i++) {
      const [x, y] = toScreen(pointXY[2 * i], pointXY[2 * i + 1]);
      context.fillStyle = colour(pointLabels ? pointLabels[i] : null);
      context.beginPath(); context.arc(x, y, 2.6, 0, 2 * Math.PI); context.fill();
    }
  })();
  function marker(u, w, style, text) {
    const [x, y] = toScreen(u, w);
    mapContext.strokeStyle = style; mapContext.lineWidth = 2;
    mapContext.beginPath(); mapContext.arc(x, y, 7, 0, 2 * Math.PI); mapContext.stroke();
    if (text) {
      mapContext.fillStyle = style; mapContext.font = "bold 13px sans-serif";
      mapContext.fillText(text, x + 9, y - 8);
    }
  }
  function drawMap() {
    mapContext.clearRect(0, 0, map.width, map.height);
    mapContext.strokeStyle = "#ccc"; mapContext.lineWidth = 1;
    mapContext.strokeRect(0.5, 0.5, map.width - 1, map.height - 1);
    mapContext.drawImage(pointsLayer, 0, 0);
    if (state.a && state.b) {
      const a = project(state.a), b = project(state.b);
      const [ax, ay] = toScreen(a[0], a[1]), [bx, by] = toScreen(b[0], b[1]);
      mapContext.strokeStyle = "#444"; mapContext.setLineDash([4, 3]); mapContext.lineWidth = 1.5;
      mapContext.beginPath(); mapContext.moveTo(ax, ay); mapContext.lineTo(bx, by);
      mapContext.stroke(); mapContext.setLineDash([]);
      marker(a[0], a[1], "#444", "A"); marker(b[0], b[1], "#444", "B");
    }
    const [u, w] = project(state.z);
    const [x, y] = toScreen(u, w);
    mapContext.strokeStyle = "#000"; mapContext.lineWidth = 2;
    mapContext.beginPath();
    mapContext.moveTo(x - 11, y); mapContext.lineTo(x - 4, y);
    mapContext.moveTo(x + 4, y); mapContext.lineTo(x + 11, y);
    mapContext.moveTo(x, y - 11); mapContext.lineTo(x, y - 4);
    mapContext.moveTo(x, y + 4); mapContext.lineTo(x, y + 11);
    mapContext.stroke();
  }
  function canvasXY(event) {
    const box = map.getBoundingClientRect();
    return [(event.clientX - box.left) * map.width / box.width,
            (event.clientY - box.top) * map.height / box.height];
  }
  function nearestPoint(x, y, radius) {
    let best = -1, bestDistance = radius * radius;
    for (let i = 0; i < N; i++) {
      const [px, py] = toScreen(pointXY[2 * i], pointXY[2 * i + 1]);
      const d = (px - x) * (px - x) + (py - y) * (py - y);
      if (d <= bestDistance) { best = i; bestDistance = d; }
    }
    return best;
  }

  // ---- state and its display ----------------------------------------------------------------
  const state = {z: pointZOf(0), point: 0, labelPoint: 0, a: null, b: null, t: 0,
                 pixels: null, drag: null};
  const labelSelect = document.getElementById("label");
  function currentLabel() {
    if (!LABELLED) return null;
    if (labelSelect.value !== "auto") return Number(labelSelect.value);
    return pointLabels ? pointLabels[state.labelPoint] : 0;
  }
  const sliders = [];
  function sliderCoordinates() {
    return DATA.sliders === "dimensions" ? Array.from(state.z) : project(state.z);
  }
  function update(options) {
    const label = currentLabel();
    state.pixels = decode(state.z, label);
    drawImage(state.pixels, imageCanvas);
    const values = sliderCoordinates();
    sliders.forEach((s, k) => { s.input.value = values[k]; s.output.value = values[k].toFixed(2); });
    const where = state.point >= 0
      ? "test encoding #" + state.point + (pointLabels ? " (label " + pointLabels[state.point] + ")" : "")
      : "a point you moved to";
    const shown = Array.from(state.z.slice(0, 6), v => v.toFixed(2)).join(", ") + (D > 6 ? ", …" : "");
    document.getElementById("readout").textContent =
      "z = (" + shown + "): " + where + (LABELLED ? "; decoded with label " + label : "");
    drawMap();
    if (!(options && options.keepStrip)) drawStrip();
  }

  // ---- sliders --------------------------------------------------------------------------------
  (function makeSliders() {
    const box = document.getElementById("sliders");
    const names = DATA.sliders === "dimensions"
      ? Array.from({length: D}, (_, d) => "z" + (d + 1)) : DATA.plane.names;
    names.forEach((name, k) => {
      const row = document.createElement("div");
      row.className = "slider";
      const span = document.createElement("span"); span.textContent = name;
      const input = document.createElement("input");
      input.type = "range";
      const [lo, hi] = DATA.slider_ranges[k];
      input.min = lo; input.max = hi; input.step = (hi - lo) / 1000;
      input.setAttribute("aria-label", name);
      const output = document.createElement("output");
      input.addEventListener("input", () => {
        const value = Number(input.value);
        if (DATA.sliders === "dimensions") {
          state.z[k] = value;
        } else {
          const old = project(state.z)[k];
          for (let d = 0; d < D; d++) state.z[d] += (value - old) * axes[k][d];
        }
        state.point = -1;
        update();
      });
      row.append(span, input, output);
      box.append(row);
      sliders.push({input, output});
    });
  })();

  // ---- label selector ------------------------------------------------------------------------
  if (LABELLED) {
    document.getElementById("label-row").hidden = false;
    const auto = document.createElement("option");
    auto.value = "auto"; auto.textContent = "the point's own label";
    labelSelect.append(auto);
    for (let c = 0; c < NUM_CLASSES; c++) {
      const option = document.createElement("option");
      option.value = String(c); option.textContent = String(c);
      labelSelect.append(option);
    }
    labelSelect.addEventListener("change", () => update());
  }

  // ---- pointing and dragging -------------------------------------------------------------------
  map.addEventListener("pointerdown", event => {
    const [x, y] = canvasXY(event);
    const i = nearestPoint(x, y, 7);
    if (i >= 0) {
      state.z = pointZOf(i); state.point = i; state.labelPoint = i;
    } else {
      const [u, w] = fromScreen(x, y);
      state.z = planePoint(u, w); state.point = -1;
    }
    state.drag = {xy: fromScreen(x, y), z: Float64Array.from(state.z)};
    map.setPointerCapture(event.pointerId);
    update();
    event.preventDefault();
  });
  map.addEventListener("pointermove", event => {
    const [x, y] = canvasXY(event);
    if (state.drag) {
      const [u, w] = fromScreen(x, y);
      const du = u - state.drag.xy[0], dw = w - state.drag.xy[1];
      for (let d = 0; d < D; d++) {
        state.z[d] = state.drag.z[d] + du * axes[0][d] + dw * axes[1][d];
      }
      state.point = -1;
      update();
      return;
    }
    const i = nearestPoint(x, y, 6);
    if (i >= 0 && i !== state.point) {
      state.z = pointZOf(i); state.point = i; state.labelPoint = i;
      update();
    }
  });
  function endDrag() { state.drag = null; }
  map.addEventListener("pointerup", endDrag);
  map.addEventListener("pointercancel", endDrag);

  // ---- interpolation -------------------------------------------------------------------------
  const strip = document.getElementById("strip");
  const stripCanvases = [];
  for (let k = 0; k < STEPS; k++) {
    const canvas = document.createElement("canvas");
    canvas.width = 64; canvas.height = Math.max(12, Math.round(64 * H / W));
    canvas.title = "t = " + (k / (STEPS - 1)).toFixed(2);
    canvas.addEventListener("click", () => setT(k / (STEPS - 1)));
    strip.append(canvas);
    stripCanvases.push(canvas);
  }
  function lerp(t) {
    const z = new Float64Array(D);
    for (let d = 0; d < D; d++) z[d] = (1 - t) * state.a[d] + t * state.b[d];
    return z;
  }
  function drawStrip() {
    if (!state.a || !state.b) return;
    const label = currentLabel();
    stripCanvases.forEach((canvas, k) => {
      drawImage(decode(lerp(k / (STEPS - 1)), label), canvas);
      canvas.classList.toggle("on", Math.abs(k / (STEPS - 1) - state.t) < 1e-9);
    });
  }
  function setT(t) {
    state.t = t;
    document.getElementById("t").value = t;
    document.getElementById("t-value").value = t.toFixed(2);
    state.z = lerp(t); state.point = -1;
    update();
  }
  document.getElementById("t").addEventListener("input", e => setT(Number(e.target.value)));
  document.getElementById("set-a").addEventListener("click", () => {
    state.a = Float64Array.from(state.z); update();
  });
  document.getElementById("set-b").addEventListener("click", () => {
    state.b = Float64Array.from(state.z); update();
  });

  // ---- text ------------------------------------------------------------------------------------
  document.getElementById("title").textContent = DATA.title;
  document.getElementById("about").textContent = DATA.about;
  document.getElementById("map-title").textContent = DATA.plane.description;
  if (DATA.notes.length) {
    const note = document.getElementById("note");
    note.textContent = DATA.notes.join(" ");
    note.hidden = false;
  }
  if (pointLabels) {
    const legend = document.getElementById("legend");
    const seen = Array.from(new Set(pointLabels)).sort((a, b) => a - b);
    for (const label of seen) {
      const item = document.createElement("span");
      const dot = document.createElement("i");
      dot.style.background = colour(label);
      item.append(dot, document.createTextNode(String(label)));
      legend.append(item);
    }
  }

  // ---- start: A = the first test encoding, B = the first with another label -------------------
  state.a = pointZOf(0);
  let other = N > 1 ? 1 : 0;
  if (pointLabels) {
    for (let i = 1; i < N; i++) if (pointLabels[i] !== pointLabels[0]) { other = i; break; }
  }
  state.b = pointZOf(other);
  update();

  window.pyroVaeDecode = function (z, label) {
    const chosen = label === undefined || label === null ? currentLabel() : label;
    return Array.from(decode(Float64Array.from(z), chosen));
  };
  window.pyroVaeState = function () {
    return {z: Array.from(state.z), label: currentLabel(), pixels: Array.from(state.pixels),
            point: state.point, decoder: dec.kind};
  };
  window.pyroVaePointOnScreen = function (i) {
    const box = map.getBoundingClientRect();
    const [x, y] = toScreen(pointXY[2 * i], pointXY[2 * i + 1]);
    return {x: box.left + x * box.width / map.width, y: box.top + y * box.height / map.height};
  };
})();
</script>
</body>
</html>
"""
