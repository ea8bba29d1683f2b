// The explorer's in-browser overlay: the similarity map drawn on a canvas over the photo you point at.
// The server sends each image's unit-length patch features once (float16); the page computes the cosine
// similarity of the hovered cell with every cell itself, so the map follows the pointer without a round
// trip. Images whose features are too large arrive without them: the map then comes from the server on
// each click (query_overlay). Colours come from the same Matplotlib tables the server draws with.
if (!window.dinoscope) {
  const LUTS = __LUTS__;
  const SLOTS = ["A", "B"];
  const OTHER = "the other image";
  const half = new Float32Array(65536);  // float16 bit pattern -> value
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, f = h & 1023;
    half[h] = e === 0 ? s * f * 2 ** -24 : e === 31 ? (f ? NaN : s * Infinity) : s * (1 + f / 1024) * 2 ** (e - 15);
  }
  const ds = window.dinoscope = {
    live: {A: null, B: null},        // {meta, feats: Float32Array | null}
    shown: {A: null, B: null},       // {sims, cell, slot} drawn over each image
    settings: {cmap: "turbo", alpha: 0.55, target: "same image", show: true, follow: true},
    pinned: null,                    // {slot, cell: [row, col] | null (CLS)}
    drawMs: [],                      // time of each hover computation + drawing (benchmarks read it)
  };
  const $ = (sel) => document.querySelector(sel);
  const box = (slot) => $(`#image-${slot.toLowerCase()}`);
  const photo = (slot) => box(slot) && box(slot).querySelector("img");
  const other = (slot) => (slot === "A" ? "B" : "A");
  const targetOf = (slot) => (ds.settings.target === OTHER ? other(slot) : slot);

  function style() {
    const css = document.createElement("style");
    css.textContent = `.ds-hidden{display:none!important}
      .ds-canvas{position:absolute;pointer-events:none;z-index:5;left:0;top:0}
      .ds-bar{display:flex;align-items:center;gap:6px;font-size:13px;margin:4px 2px;min-height:20px}
      .ds-scale{position:relative;flex:0 0 160px;height:12px;border:1px solid #888}
      .ds-mark{position:absolute;top:-3px;width:2px;height:16px;background:#000;outline:1px solid #fff}
      .ds-sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
      [id^=image-]:focus-visible{outline:3px solid #2563eb;outline-offset:2px}`;
    document.head.appendChild(css);
    const live = document.createElement("div");
    live.id = "ds-announce";
    live.className = "ds-sr";
    live.setAttribute("aria-live", "polite");
    live.setAttribute("role", "status");
    document.body.appendChild(live);
  }

  function parts(slot) {  // the canvas and the scale bar of one image, made on first use
    const el = box(slot);
    if (!el) return null;
    let canvas = el.querySelector("canvas.ds-canvas");
    if (!canvas) {
      el.style.position = "relative";
      el.tabIndex = 0;
      el.setAttribute("aria-label", `image ${slot}: point at it or click it; arrow keys move the query patch`);
      canvas = document.createElement("canvas");
      canvas.className = "ds-canvas";
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", `similarity map over image ${slot}`);
      el.appendChild(canvas);
      const bar = document.createElement("div");
      bar.className = "ds-bar";
      bar.id = `readout-${slot.toLowerCase()}`;
      bar.innerHTML = `<span>-1</span><div class="ds-scale" title="cosine similarity, -1 to 1">` +
        `<div class="ds-mark" hidden></div></div><span>1</span><span class="ds-value"></span>`;
      el.insertAdjacentElement("afterend", bar);
      bar.querySelector(".ds-scale").style.background = gradient();
      listen(slot, el);
    }
    return {el, canvas, bar: document.getElementById(`readout-${slot.toLowerCase()}`)};
  }

  function placed(slot) {  // where the photo's pixels are on screen (object-fit: contain letterboxes them)
    const img = photo(slot), p = parts(slot);
    if (!img || !p || !img.naturalWidth) return null;
    const r = img.getBoundingClientRect(), host = p.el.getBoundingClientRect();
    const k = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
    const w = img.naturalWidth * k, h = img.naturalHeight * k;
    return {k, left: r.left - host.left + (r.width - w) / 2, top: r.top - host.top + (r.height - h) / 2,
            w, h, sx: r.left + (r.width - w) / 2, sy: r.top + (r.height - h) / 2, img};
  }

  function cellAt(slot, clientX, clientY) {
    const at = placed(slot), live = ds.live[slot];
    if (!at || !live) return null;
    const px = (clientX - at.sx) / at.k, py = (clientY - at.sy) / at.k;
    const m = live.meta;
    if (px < 0 || py < 0 || px >= m.width || py >= m.height) return null;
    // the uncovered margin goes to the nearest patch, as the server does for clicks
    return [Math.min(m.rows - 1, Math.floor(py / m.cell_h)), Math.min(m.cols - 1, Math.floor(px / m.cell_w))];
  }

  function compute(qslot, cell, tslot) {  // cosine similarities of one cell with every cell, or null
    const q = ds.live[qslot], t = ds.live[tslot];
    if (!q || !t || !q.feats || !t.feats || !cell) return null;
    const d = q.meta.dim, n = t.meta.rows * t.meta.cols, qi = (cell[0] * q.meta.cols + cell[1]) * d;
    const qv = q.feats.subarray(qi, qi + d), f = t.feats, out = new Float32Array(n);
    for (let i = 0, o = 0; i < n; i++, o += d) {
      let s = 0;
      for (let j = 0; j < d; j++) s += f[o + j] * qv[j];
      out[i] = Math.max(-1, Math.min(1, s));
    }
    return out;
  }

  function colour(v) {
    const lut = LUTS[ds.settings.cmap] || LUTS.turbo;
    const i = Math.max(0, Math.min(255, Math.round((v + 1) / 2 * 255)));
    return [lut[3 * i], lut[3 * i + 1], lut[3 * i + 2]];
  }

  function draw(tslot, sims, cell) {  // paint `sims` over image tslot, the query cell outlined when it is there
    const p = parts(tslot), at = placed(tslot), live = ds.live[tslot];
    if (!p) return;
    const c = p.canvas, ctx = c.getContext("2d");
    if (!at || !live || !sims || !ds.settings.show) {
      ctx.clearRect(0, 0, c.width, c.height);
      ds.shown[tslot] = sims ? {sims, cell} : null;
      return;
    }
    const m = live.meta, dpr = window.devicePixelRatio || 1;
    Object.assign(c.style, {left: `${at.left}px`, top: `${at.top}px`, width: `${at.w}px`, height: `${at.h}px`});
    c.width = Math.round(at.w * dpr);
    c.height = Math.round(at.h * dpr);
    const grid = new ImageData(m.cols, m.rows);
    for (let i = 0; i < sims.length; i++) {
      const [r, g, b] = colour(sims[i]);
      grid.data.set([r, g, b, 255], 4 * i);
    }
    const small = document.createElement("canvas");
    small.width = m.cols;
    small.height = m.rows;
    small.getContext("2d").putImageData(grid, 0, 0);
    const k = c.width / m.width;
    ctx.imageSmoothingEnabled = false;
    ctx.globalAlpha = ds.settings.alpha;
    ctx.fillStyle = "#000";  // the margin no patch covers is darkened, as in the server's pictures
    ctx.fillRect(0, 0, c.width, c.height);
    ctx.clearRect(0, 0, m.cols * m.cell_w * k, m.rows * m.cell_h * k);
    ctx.drawImage(small, 0, 0, m.cols * m.cell_w * k, m.rows * m.cell_h * k);
    ctx.globalAlpha = 1;
    if (cell) {  // white inside black: visible on every colormap
      const x = cell[1] * m.cell_w * k, y = cell[0] * m.cell_h * k, w = m.cell_w * k, h = m.cell_h * k;
      ctx.lineWidth = 3 * dpr;
      ctx.strokeStyle = "#000";
      ctx.strokeRect(x - 1.5 * dpr, y - 1.5 * dpr, w + 3 * dpr, h + 3 * dpr);
      ctx.lineWidth = 1.5 * dpr;
      ctx.strokeStyle = "#fff";
      ctx.strokeRect(x, y, w, h);
    }
    ds.shown[tslot] = {sims, cell};
  }

  function readout(slot, cell) {  // the value under the pointer on the scale bar and in words
    const p = parts(slot);
    if (!p || !p.bar) return;
    const shown = ds.shown[slot], mark = p.bar.querySelector(".ds-mark"), text = p.bar.querySelector(".ds-value");
    const live = ds.live[slot];
    if (!shown || !cell || !live) {
      mark.hidden = true;
      text.textContent = ds.pinned ? "" : "point at the photo";
      return;
    }
    const v = shown.sims[cell[0] * live.meta.cols + cell[1]];
    mark.hidden = false;
    mark.style.left = `${((v + 1) / 2) * 100}%`;
    text.textContent = `similarity ${v.toFixed(3)} at patch (row ${cell[0]}, col ${cell[1]})`;
    text.dataset.value = v.toFixed(4);
  }

  function query(slot, cell) {  // draw the map of one query, from the features here when they are here
    const started = performance.now();
    const t = targetOf(slot), sims = compute(slot, cell, t);
    if (!sims) return false;
    draw(t, sims, t === slot ? cell : null);
    if (t !== slot) draw(slot, null, null);
    ds.drawMs.push(performance.now() - started);
    return true;
  }

  function restore() {  // back to the pinned query (or nothing) when the pointer leaves
    for (const s of SLOTS) {
      if (!ds.pinned || targetOf(ds.pinned.slot) !== s) draw(s, null, null);
    }
    if (ds.pinned && ds.pinned.sims) draw(targetOf(ds.pinned.slot), ds.pinned.sims, ds.pinned.cellShown);
    else if (ds.pinned) query(ds.pinned.slot, ds.pinned.cell);
  }

  function listen(slot, el) {
    el.addEventListener("mousemove", (ev) => {
      const cell = cellAt(slot, ev.clientX, ev.clientY);
      if (!cell) return;
      if (ds.settings.follow && ds.live[slot] && ds.live[slot].feats) query(slot, cell);
      readout(slot, cell);
    });
    el.addEventListener("mouseleave", () => { if (ds.settings.follow) restore(); readout(slot, null); });
    el.addEventListener("click", (ev) => {
      const cell = cellAt(slot, ev.clientX, ev.clientY);
      if (cell) { ds.pinned = {slot, cell}; query(slot, cell); }
    });
    el.addEventListener("keydown", (ev) => {
      const moves = {ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1]};
      const live = ds.live[slot];
      if (!(ev.key in moves) || !live) return;
      ev.preventDefault();
      const m = live.meta, start = ds.pinned && ds.pinned.slot === slot && ds.pinned.cell
        ? ds.pinned.cell : [Math.floor(m.rows / 2), Math.floor(m.cols / 2)];
      const [dr, dc] = moves[ev.key];
      const cell = [Math.max(0, Math.min(m.rows - 1, start[0] + dr)), Math.max(0, Math.min(m.cols - 1, start[1] + dc))];
      ds.pinned = {slot, cell};
      query(slot, cell);
      readout(slot, cell);
      // tell the server (the Similarity tab's picture, attention's query, redraws): the centre of the cell
      ds.pending = [slot, (cell[1] + 0.5) * m.cell_w, (cell[0] + 0.5) * m.cell_h];
      const go = $("#key-query button") || $("#key-query");
      if (go) go.click();
    });
  }

  async function fetchFeatures(meta) {
    const root = (window.gradio_config && window.gradio_config.root) || "";
    const res = await fetch(`${root}/gradio_api/file=${meta.path}`);
    if (!res.ok) throw new Error(`features: HTTP ${res.status}`);
    const bits = new Uint16Array(await res.arrayBuffer());
    const out = new Float32Array(bits.length);
    for (let i = 0; i < bits.length; i++) out[i] = half[bits[i]];
    return out;
  }

  ds.setLive = async (data) => {  // from the server after every image load and setting change
    if (!data) return;
    for (const s of SLOTS) {
      const meta = data[s], old = ds.live[s];
      if (old && meta && old.meta.path === meta.path && meta.path) continue;
      if (ds.pinned && ds.pinned.slot === s) ds.pinned = null;
      ds.live[s] = meta ? {meta, feats: null} : null;
      draw(s, null, null);
      readout(s, null);
      if (meta && meta.path) {
        try {
          const feats = await fetchFeatures(meta);
          if (ds.live[s] && ds.live[s].meta === meta) ds.live[s].feats = feats;
        } catch (err) {
          console.warn("dinoscope: hover similarity unavailable, clicks still work", err);
        }
      }
      const el = box(s);
      if (el) el.dataset.live = meta ? (meta.path && ds.live[s] && ds.live[s].feats ? "browser" : "server") : "";
    }
    if (ds.pinned) restore();
  };

  ds.serverQuery = (q) => {  // the server's answer to a click, arrow key, CLS button or redraw
    if (!q) { ds.pinned = null; for (const s of SLOTS) draw(s, null, null); return; }
    const cellShown = q.target === q.slot ? q.cell : null;
    ds.pinned = {slot: q.slot, cell: q.cell, sims: q.sims ? Float32Array.from(q.sims) : null, cellShown};
    for (const s of SLOTS) if (s !== q.target) draw(s, null, null);
    if (ds.pinned.sims) draw(q.target, ds.pinned.sims, cellShown);
    else if (q.cell) query(q.slot, q.cell);
    else draw(q.target, null, null);  // CLS in live mode: the server's picture (Similarity tab) shows it
  };

  ds.set = (name, value) => {
    ds.settings[name] = value;
    for (const s of SLOTS) {
      const bar = parts(s) && parts(s).bar;
      if (bar) bar.querySelector(".ds-scale").style.background = gradient();
    }
    restore();
    return value;
  };

  function gradient() {
    const stops = [];
    for (let i = 0; i <= 8; i++) {
      const [r, g, b] = colour(-1 + i / 4);
      stops.push(`rgb(${r},${g},${b}) ${i * 12.5}%`);
    }
    return `linear-gradient(to right, ${stops.join(",")})`;
  }

  ds.announce = (text) => {
    const el = document.getElementById("ds-announce");
    if (el && text) el.textContent = String(text);
    return text;
  };

  const ALT = {"image-a": "image A, the photo to point at", "image-b": "image B, the photo to point at",
               "sim-out": "similarity map", "pca-out": "PCA colours of the patch features",
               "norms-out": "feature norms", "attention-out": "attention maps per head",
               "match-out": "matched patches between image A and image B"};
  function alts() {  // Gradio's pictures carry no description; add one, with the status line's words
    const status = ($("#status textarea") || {}).value || "";
    for (const [id, words] of Object.entries(ALT)) {
      const img = document.querySelector(`#${id} img`);
      if (img && img.dataset.alt !== img.src) {
        img.alt = id.startsWith("image-") ? words : `${words}: ${status}`;
        img.dataset.alt = img.src;
      }
    }
    for (const s of SLOTS) if (box(s)) parts(s);
  }

  style();
  new MutationObserver(alts).observe(document.body, {childList: true, subtree: true, attributes: true,
                                                     attributeFilter: ["src"]});
  window.addEventListener("resize", restore);
  alts();
}
