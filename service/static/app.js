// EdgeSAM interactive page: embeds an image once (POST v1/embed), then every click or box is
// decoded in the browser (local.js: the embedding and the decoder downloaded once, run in
// onnxruntime-web) or, as a switch, by v1/segment on the server; everything mode calls
// v1/everything. Plain browser JavaScript; RLE decoding lives in rle.js.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    randomBanner: $("random-banner"),
    errorBanner: $("error-banner"),
    errorText: $("error-text"),
    errorClose: $("error-close"),
    keyForm: $("key-form"),
    keyInput: $("key-input"),
    fileInput: $("file-input"),
    status: $("status"),
    stage: $("stage"),
    dropzone: $("dropzone"),
    wrap: $("canvas-wrap"),
    image: $("image"),
    overlay: $("overlay"),
    highlight: $("highlight"),
    ui: $("ui"),
    progress: $("progress"),
    progressLabel: $("progress-label"),
    progressBar: $("progress-bar"),
    progressTime: $("progress-time"),
    labelFg: $("label-fg"),
    labelBg: $("label-bg"),
    undo: $("undo"),
    reset: $("reset"),
    everything: $("everything"),
    candidates: $("candidates"),
    promptSummary: $("prompt-summary"),
    exportPng: $("export-png"),
    exportCoco: $("export-coco"),
    exportCutout: $("export-cutout"),
    rttLast: $("rtt-last"),
    clickBrowser: $("click-browser"),
    clickServer: $("click-server"),
    localStatus: $("local-status"),
    rttLog: $("rtt-log"),
    amgPps: $("amg-pps"),
    amgIou: $("amg-iou"),
    amgStab: $("amg-stab"),
    amgNms: $("amg-nms"),
    shortcuts: $("shortcuts"),
  };

  const ACCEPTED = ["image/png", "image/jpeg", "image/webp"];
  const DRAG_THRESHOLD_PX = 6; // CSS pixels a pointer must move before a press becomes a box
  const FILL_ALPHA = 115; // of 255, the translucent mask fill
  const PROMPT_RGB = [30, 144, 255];
  const KEY_STORAGE = "edgesam.apiKey";

  const S = {
    file: null, // the Blob as uploaded (kept to re-embed when the cache forgot it)
    fileName: "image",
    imageUrl: null,
    imageId: null,
    width: 0,
    height: 0,
    history: [], // prompt states, newest last: {points, labels, box, numMasks, sentMaskInputId, result, chosen}
    numMasks: 1,
    labelMode: 1,
    mode: "prompt", // or "everything"
    ev: null, // everything mode: {masks, labelMap, hover, chosen}
    busy: 0,
    queued: false,
    pumping: false,
    drag: null,
    cursor: null, // keyboard cursor in image pixels
    showCursor: false,
    apiKey: sessionStorage.getItem(KEY_STORAGE) || "",
    onKey: null, // what to retry once the user typed an API key
    randomWeights: false,
    renderCount: 0,
    lastSegmentRequest: null,
    lastRender: null,
    calls: [],
    // "browser" (the default where WebAssembly runs) or "server"; ?decode= overrides
    decodeMode: initialDecodeMode(),
    local: { sessionPromise: null, session: null, embedding: null, embeddingFor: null, download: null },
    clickTimes: [], // {mode, ms}: click (or prompt change) to overlay drawn
    lastDecode: null,
    lastLocalRequest: null,
  };

  function initialDecodeMode() {
    const asked = new URLSearchParams(location.search).get("decode");
    if (asked === "server" || asked === "browser") return asked;
    return typeof EdgeSamLocal !== "undefined" && EdgeSamLocal.available() ? "browser" : "server";
  }

  // ---------------------------------------------------------------- HTTP

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders() {
    return S.apiKey ? { Authorization: "Bearer " + S.apiKey } : {};
  }

  function noteRandomWeights(value) {
    if (value === "true" || value === true) {
      S.randomWeights = true;
      el.randomBanner.hidden = false;
    }
  }

  function recordCall(route, ms, status, extra) {
    const entry = { route, ms, status, extra: extra || "", at: Date.now() };
    S.calls.push(entry);
    if (S.calls.length > 50) S.calls.shift();
    renderTiming();
    return entry;
  }

  function renderTiming() {
    const last = S.calls[S.calls.length - 1];
    if (!last) return;
    el.rttLast.textContent = `${last.route} ${Math.round(last.ms)} ms${last.extra}`;
    el.rttLog.replaceChildren(
      ...S.calls.slice(-10).reverse().map((c) => {
        const li = document.createElement("li");
        li.textContent = `${c.route}: ${Math.round(c.ms)} ms (${c.status})${c.extra}`;
        return li;
      })
    );
  }

  async function parseError(status, text) {
    let code = "http_" + status;
    let message = text || `HTTP ${status}`;
    try {
      const body = JSON.parse(text);
      if (body && body.code) code = body.code;
      if (body && body.message) message = body.message;
    } catch (_) {
      /* not JSON */
    }
    return new ApiError(status, code, message);
  }

  /** POST JSON, returns {data, ms, entry}; throws ApiError. */
  async function postJson(route, body) {
    const t0 = performance.now();
    let response;
    try {
      response = await fetch(route, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify(body),
      });
    } catch (err) {
      recordCall(route, performance.now() - t0, "network error");
      throw new ApiError(0, "network_error", "the service cannot be reached: " + err.message);
    }
    const text = await response.text();
    const ms = performance.now() - t0;
    noteRandomWeights(response.headers.get("X-EdgeSAM-Random-Weights"));
    const entry = recordCall(route, ms, response.status);
    if (!response.ok) throw await parseError(response.status, text);
    return { data: JSON.parse(text), ms, entry };
  }

  /** POST the image bytes with upload progress (XMLHttpRequest: fetch has none). */
  function postImage(blob, onUpload) {
    return new Promise((resolve, reject) => {
      const t0 = performance.now();
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "v1/embed");
      xhr.setRequestHeader("Content-Type", blob.type);
      for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
      xhr.upload.onprogress = (e) => onUpload(e.lengthComputable ? e.loaded / e.total : null);
      xhr.upload.onload = () => onUpload(1);
      xhr.onerror = () => {
        recordCall("v1/embed", performance.now() - t0, "network error");
        reject(new ApiError(0, "network_error", "the service cannot be reached"));
      };
      xhr.onload = async () => {
        const ms = performance.now() - t0;
        noteRandomWeights(xhr.getResponseHeader("X-EdgeSAM-Random-Weights"));
        recordCall("v1/embed", ms, xhr.status);
        if (xhr.status < 200 || xhr.status >= 300) {
          reject(await parseError(xhr.status, xhr.responseText));
          return;
        }
        resolve({ data: JSON.parse(xhr.responseText), ms });
      };
      xhr.send(blob);
    });
  }

  async function checkReady() {
    try {
      const response = await fetch("readyz", { headers: authHeaders() });
      noteRandomWeights(response.headers.get("X-EdgeSAM-Random-Weights"));
      const body = await response.json();
      noteRandomWeights(body.random_weights);
      if (!body.ready) {
        setStatus(body.status === "loading" ? "The model is loading…" : `Service: ${body.status}`);
        if (body.status === "loading") setTimeout(checkReady, 2000);
      } else if (!S.imageId) {
        setStatus("Ready: open, drop or paste an image");
      }
    } catch (_) {
      setStatus("The service cannot be reached");
    }
  }

  // ---------------------------------------------------------------- messages

  function setStatus(text) {
    el.status.textContent = text;
  }

  function showError(err) {
    if (err instanceof ApiError && err.code === "unauthenticated") {
      el.keyForm.hidden = false;
      el.keyInput.focus();
      return;
    }
    const code = err instanceof ApiError ? ` [${err.code}]` : "";
    el.errorText.textContent = (err.message || String(err)) + code;
    el.errorBanner.hidden = false;
  }

  function clearError() {
    el.errorBanner.hidden = true;
  }

  /** Runs fn; when it fails for want of an API key, asks for one and runs it again after. */
  async function withKey(fn) {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof ApiError && err.code === "unauthenticated") {
        S.onKey = fn;
      }
      showError(err);
      return undefined;
    }
  }

  // ---------------------------------------------------------------- busy state (tests wait on it)

  function setBusy(delta) {
    S.busy += delta;
    document.body.dataset.busy = S.busy > 0 ? "true" : "false";
  }

  function noteRender(kind, ms) {
    S.renderCount += 1;
    S.lastRender = { kind, ms };
    document.body.dataset.renderCount = String(S.renderCount);
  }

  // ---------------------------------------------------------------- image loading

  function showProgress(label, fraction) {
    el.progress.hidden = false;
    el.progressLabel.textContent = label;
    if (fraction == null) {
      el.progressBar.classList.add("indeterminate");
    } else {
      el.progressBar.classList.remove("indeterminate");
      el.progressBar.style.width = `${Math.round(fraction * 100)}%`;
    }
  }

  function hideProgress() {
    el.progress.hidden = true;
    el.progressTime.textContent = "";
  }

  async function toAcceptedBlob(blob) {
    if (ACCEPTED.includes(blob.type)) return blob;
    // Other types the browser can decode (GIF, BMP, AVIF…) are sent as PNG.
    const bitmap = await createImageBitmap(blob);
    const canvas = document.createElement("canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    return new Promise((resolve, reject) =>
      canvas.toBlob((b) => (b ? resolve(b) : reject(new Error("cannot convert the image"))), "image/png")
    );
  }

  async function openImage(blob, name) {
    clearError();
    let upload;
    try {
      upload = await toAcceptedBlob(blob);
    } catch (_) {
      showError(new Error("This file is not an image the browser can read."));
      return;
    }
    S.file = upload;
    S.fileName = (name || "image").replace(/\.[^.]+$/, "") || "image";
    S.imageId = null;
    resetPrompts(false);
    leaveEverything(false);
    if (S.imageUrl) URL.revokeObjectURL(S.imageUrl);
    S.imageUrl = URL.createObjectURL(upload);
    el.image.src = S.imageUrl;
    try {
      await el.image.decode();
    } catch (_) {
      showError(new Error("The browser cannot display this image."));
      return;
    }
    el.dropzone.hidden = true;
    el.wrap.hidden = false;
    sizeLayers(el.image.naturalWidth, el.image.naturalHeight);
    await withKey(embed);
  }

  async function embed(prepare = true) {
    setBusy(1);
    const t0 = performance.now();
    const timer = setInterval(() => {
      el.progressTime.textContent = `${((performance.now() - t0) / 1000).toFixed(1)} s`;
    }, 100);
    try {
      showProgress("Uploading…", 0);
      setStatus("Embedding the image…");
      const { data, ms } = await postImage(S.file, (f) => {
        if (f !== null && f < 1) showProgress("Uploading…", f);
        else showProgress("Running the image encoder…", null);
      });
      S.imageId = data.image_id;
      if (data.width !== S.width || data.height !== S.height) {
        // The server applied an orientation the browser did not (or vice versa): trust it.
        sizeLayers(data.width, data.height);
      }
      setStatus(
        `${data.width}×${data.height} · embedded in ${(ms / 1000).toFixed(2)} s` +
          (data.cached ? " (cached)" : "") + " · click, right-click or drag on the image"
      );
      el.ui.focus({ preventScroll: true });
      if (prepare && S.decodeMode === "browser") {
        showProgress("Downloading the embedding and the decoder…", null);
        try {
          await prepareLocal();
        } catch (err) {
          if (err instanceof ApiError) throw err;
          setDecodeMode("server", false);
          el.localStatus.textContent = `Decoding on the server: ${err.message}`;
        }
      }
    } finally {
      clearInterval(timer);
      hideProgress();
      setBusy(-1);
      updateButtons();
    }
  }

  function sizeLayers(w, h) {
    S.width = w;
    S.height = h;
    for (const c of [el.overlay, el.highlight]) {
      c.width = w;
      c.height = h;
    }
    S.cursor = [Math.floor(w / 2), Math.floor(h / 2)];
    sizeUi();
  }

  function sizeUi() {
    const r = el.ui.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(r.width * dpr));
    const h = Math.max(1, Math.round(r.height * dpr));
    if (el.ui.width !== w || el.ui.height !== h) {
      el.ui.width = w;
      el.ui.height = h;
    }
    drawUi();
  }

  // ---------------------------------------------------------------- prompts and segmentation

  function current() {
    return S.history[S.history.length - 1] || null;
  }

  function pushPrompt(change) {
    const top = current();
    const next = {
      points: top ? top.points.slice() : [],
      labels: top ? top.labels.slice() : [],
      box: top ? top.box : null,
      numMasks: S.numMasks,
      sentMaskInputId: undefined,
      result: null,
      chosen: 0,
      clickedAt: performance.now(),
    };
    change(next);
    S.history.push(next);
    drawUi();
    schedule();
  }

  function addPoint(x, y, label) {
    if (!S.imageId) return;
    pushPrompt((p) => {
      p.points.push([x, y]);
      p.labels.push(label);
    });
  }

  function setBox(box) {
    if (!S.imageId) return;
    pushPrompt((p) => {
      p.box = box;
    });
  }

  function schedule() {
    S.queued = true;
    if (!S.pumping) pump();
  }

  /** One /v1/segment in flight at a time; the newest prompt state wins, and it is sent with
   * the previous answer's mask_input_id (as SAM's demo refines). */
  async function pump() {
    S.pumping = true;
    setBusy(1);
    try {
      while (S.queued) {
        S.queued = false;
        const entry = current();
        if (!entry || entry.result) continue;
        if (entry.sentMaskInputId === undefined) {
          const idx = S.history.indexOf(entry);
          entry.sentMaskInputId = idx > 0 ? previousAnswerMaskIdBefore(idx) : null;
        }
        await withKey(() => (S.decodeMode === "browser" ? localSegment(entry) : segment(entry)));
      }
    } finally {
      S.pumping = false;
      setBusy(-1);
    }
  }

  function previousAnswerMaskIdBefore(idx) {
    for (let i = idx - 1; i >= 0; i--) {
      const r = S.history[i].result;
      if (r && r.mask_input_id) return r.mask_input_id;
    }
    return null;
  }

  function segmentBody(entry) {
    const body = { image_id: S.imageId, num_masks: entry.numMasks, output: ["rle"] };
    if (entry.points.length) {
      body.points = entry.points;
      body.labels = entry.labels;
    }
    if (entry.box) body.box = entry.box;
    if (entry.sentMaskInputId) body.mask_input_id = entry.sentMaskInputId;
    return body;
  }

  async function segment(entry) {
    let body = segmentBody(entry);
    let answer;
    try {
      answer = await postJson("v1/segment", body);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      if (err.code === "embedding_not_found") {
        await embed(); // the cache forgot the image: embed it again, then retry once
        body = segmentBody(entry);
        body.image_id = S.imageId;
        answer = await postJson("v1/segment", body);
      } else if (err.code === "mask_input_not_found") {
        entry.sentMaskInputId = null;
        body = segmentBody(entry);
        answer = await postJson("v1/segment", body);
      } else {
        throw err;
      }
    }
    S.lastSegmentRequest = body;
    const tAnswer = performance.now();
    entry.result = answer.data;
    entry.chosen = bestIndex(answer.data.masks);
    S.lastDecode = "server";
    if (entry === current() && S.mode === "prompt") {
      renderPrompt();
      const drawMs = performance.now() - tAnswer;
      answer.entry.extra = ` · drawn in ${drawMs.toFixed(1)} ms`;
      renderTiming();
      recordClick("server", entry);
    }
  }

  // ---------------------------------------------------------------- decoding in the browser

  function recordClick(mode, entry) {
    const ms = performance.now() - entry.clickedAt;
    S.clickTimes.push({ mode, ms });
    if (S.clickTimes.length > 200) S.clickTimes.shift();
    const mine = S.clickTimes.filter((c) => c.mode === mode).map((c) => c.ms);
    const sorted = mine.slice().sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)];
    const target = mode === "browser" ? el.clickBrowser : el.clickServer;
    target.textContent = `${ms.toFixed(1)} ms (median ${median.toFixed(1)} ms of ${mine.length})`;
  }

  /** GET a binary resource with the API key; returns {buffer, ms, response}. */
  async function getBytes(route, name) {
    const t0 = performance.now();
    let response;
    try {
      response = await fetch(route, { headers: authHeaders() });
    } catch (err) {
      recordCall(route, performance.now() - t0, "network error");
      throw new ApiError(0, "network_error", "the service cannot be reached: " + err.message);
    }
    if (!response.ok) {
      const text = await response.text();
      recordCall(route, performance.now() - t0, response.status);
      throw await parseError(response.status, text);
    }
    const buffer = await response.arrayBuffer();
    const ms = performance.now() - t0;
    recordCall(name || route, ms, response.status, ` · ${(buffer.byteLength / 1048576).toFixed(2)} MiB`);
    return { buffer, ms, response };
  }

  /** The decoder session (once per page) and this image's embedding (once per image). */
  async function prepareLocal() {
    const L = S.local;
    if (!L.sessionPromise) {
      L.sessionPromise = (async () => {
        const got = await getBytes("v1/models/decoder.onnx?variant=multimask", "v1/models/decoder.onnx");
        const t0 = performance.now();
        const session = await EdgeSamLocal.createSession(got.buffer);
        // One throwaway run: the first one pays WebAssembly's warm-up, not the first click.
        const blank = { points: [[0, 0]], labels: [1], box: null, width: 64, height: 64 };
        await EdgeSamLocal.decode(session, new Float32Array(256 * 64 * 64), blank, null);
        L.session = session;
        L.decoderInfo = { bytes: got.buffer.byteLength, ms: got.ms, sessionMs: performance.now() - t0 };
        return L.session;
      })();
      L.sessionPromise.catch(() => {
        L.sessionPromise = null;
      });
    }
    await L.sessionPromise;
    if (L.embeddingFor !== S.imageId) {
      const imageId = S.imageId;
      let got;
      try {
        got = await getBytes(`v1/embeddings/${imageId}`, "v1/embeddings/{id}");
      } catch (err) {
        if (!(err instanceof ApiError) || err.code !== "embedding_not_found") throw err;
        await embed(false); // the cache forgot the image: embed it again, then download
        got = await getBytes(`v1/embeddings/${S.imageId}`, "v1/embeddings/{id}");
      }
      const npy = EdgeSamLocal.parseNpy(got.buffer);
      L.embedding = npy.data;
      L.embeddingFor = S.imageId;
      L.download = { bytes: got.buffer.byteLength, ms: got.ms, dtype: npy.dtype };
      el.localStatus.textContent =
        `Embedding downloaded: ${(got.buffer.byteLength / 1048576).toFixed(2)} MiB (${npy.dtype}) ` +
        `in ${got.ms.toFixed(0)} ms; decoder ${(L.decoderInfo.bytes / 1048576).toFixed(1)} MiB.`;
    }
  }

  function previousLowResBefore(idx) {
    for (let i = idx - 1; i >= 0; i--) {
      const r = S.history[i].result;
      if (r && r.lowRes) return r.lowRes;
    }
    return null;
  }

  /** As `segment`, answered in the browser: the same candidates (num_masks 1: the single
   * mask; 3: the multimask outputs) and the same refinement (the previous answer's best
   * low-res logits as mask input) as v1/segment. */
  async function localSegment(entry) {
    try {
      await prepareLocal();
    } catch (err) {
      if (err instanceof ApiError) throw err;
      // No WebAssembly runtime here: decode on the server from now on.
      setDecodeMode("server", false);
      el.localStatus.textContent = `Decoding on the server: ${err.message}`;
      return segment(entry);
    }
    const idx = S.history.indexOf(entry);
    const maskInput = idx > 0 ? previousLowResBefore(idx) : null;
    entry.sentMaskInputId = maskInput ? "local" : null;
    const prompt = { points: entry.points, labels: entry.labels, box: entry.box, width: S.width, height: S.height };
    const res = await EdgeSamLocal.decode(S.local.session, S.local.embedding, prompt, maskInput);
    const masks = EdgeSamLocal.candidates(entry.numMasks).map((k) => EdgeSamLocal.maskRecord(res, k));
    const best = bestIndex(masks);
    entry.result = { image_id: S.imageId, width: S.width, height: S.height, masks, lowRes: masks[best].lowRes };
    entry.chosen = best;
    S.lastLocalRequest = {
      points: entry.points,
      labels: entry.labels,
      box: entry.box,
      num_masks: entry.numMasks,
      refined: !!maskInput,
    };
    S.lastDecode = "browser";
    recordCall("local decode", res.ms, "wasm");
    if (entry === current() && S.mode === "prompt") {
      renderPrompt();
      recordClick("browser", entry);
    }
  }

  function setDecodeMode(mode, rerun = true) {
    S.decodeMode = mode;
    for (const r of document.querySelectorAll('input[name="decode-mode"]')) r.checked = r.value === mode;
    const top = current();
    if (rerun && top && S.mode === "prompt") {
      // The same prompt answered the other way (refinement state is per mode).
      for (const h of S.history) {
        h.result = null;
        h.sentMaskInputId = undefined;
      }
      top.clickedAt = performance.now();
      schedule();
    } else if (rerun && mode === "browser" && S.imageId) {
      withKey(async () => {
        setBusy(1);
        try {
          await prepareLocal();
        } finally {
          setBusy(-1);
        }
      });
    }
  }

  function bestIndex(masks) {
    let best = 0;
    for (let i = 1; i < masks.length; i++) if (masks[i].score > masks[best].score) best = i;
    return best;
  }

  function undo() {
    if (S.mode === "everything") {
      leaveEverything(true);
      return;
    }
    if (!S.history.length) return;
    S.history.pop();
    const top = current();
    if (top && !top.result) schedule();
    renderPrompt();
  }

  function resetPrompts(render = true) {
    S.history = [];
    S.drag = null;
    if (render) {
      leaveEverything(false);
      renderPrompt();
    }
  }

  function setNumMasks(n) {
    S.numMasks = n;
    for (const r of document.querySelectorAll('input[name="num-masks"]')) r.checked = Number(r.value) === n;
    const top = current();
    if (top && top.numMasks !== n && S.mode === "prompt") {
      // Same prompt, another candidate count: ask again with the same mask_input_id.
      top.numMasks = n;
      top.result = null;
      top.clickedAt = performance.now();
      schedule();
    }
  }

  function pickCandidate(i) {
    if (S.mode === "everything") return;
    const top = current();
    if (!top || !top.result || i < 0 || i >= top.result.masks.length) return;
    top.chosen = i;
    renderPrompt();
  }

  // ---------------------------------------------------------------- drawing

  function maskBits(m) {
    if (!m._bits) m._bits = EdgeSamRle.decode(m.rle);
    return m._bits;
  }

  /** Outline thickness in image pixels so that it stays visible when the image is shrunk. */
  function outlineWidth() {
    const r = el.ui.getBoundingClientRect();
    if (!r.width) return 1;
    return Math.max(1, Math.min(8, Math.round(S.width / r.width)));
  }

  /** Paints one mask into `ctx` (a canvas of image size): translucent fill plus an opaque
   * outline on the mask's own border pixels, so the painted pixels are exactly the mask. */
  function paintMask(ctx, bits, bbox, rgb, fillAlpha, t) {
    const w = S.width;
    const h = S.height;
    let [bx, by, bw, bh] = bbox || [0, 0, w, h];
    if (bw <= 0 || bh <= 0) return;
    bx = Math.max(0, bx);
    by = Math.max(0, by);
    bw = Math.min(w - bx, bw);
    bh = Math.min(h - by, bh);
    const img = ctx.createImageData(bw, bh);
    const px = new Uint32Array(img.data.buffer); // one RGBA pixel per element (little-endian)
    const [r, g, b] = rgb;
    const fill = ((fillAlpha << 24) | (b << 16) | (g << 8) | r) >>> 0;
    const line = ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
    for (let y = by; y < by + bh; y++) {
      let o = (y - by) * bw;
      const row = y * w;
      for (let x = bx; x < bx + bw; x++, o++) {
        const p = row + x;
        if (!bits[p]) continue;
        let edge = false;
        for (let k = 1; k <= t && !edge; k++) {
          edge =
            (x - k >= 0 && !bits[p - k]) ||
            (x + k < w && !bits[p + k]) ||
            (y - k >= 0 && !bits[p - k * w]) ||
            (y + k < h && !bits[p + k * w]);
        }
        px[o] = edge ? line : fill;
      }
    }
    ctx.putImageData(img, bx, by);
  }

  function chosenPromptMask() {
    const top = current();
    if (!top || !top.result || !top.result.masks.length) return null;
    return top.result.masks[top.chosen] || null;
  }

  function renderPrompt() {
    const ctx = el.overlay.getContext("2d");
    ctx.clearRect(0, 0, el.overlay.width, el.overlay.height);
    el.highlight.getContext("2d").clearRect(0, 0, el.highlight.width, el.highlight.height);
    const t0 = performance.now();
    const m = chosenPromptMask();
    if (m) paintMask(ctx, maskBits(m), m.bbox, PROMPT_RGB, FILL_ALPHA, outlineWidth());
    renderCandidates();
    drawUi();
    updateButtons();
    noteRender("prompt", performance.now() - t0);
  }

  function renderCandidates() {
    const top = current();
    const masks = top && top.result ? top.result.masks : [];
    el.candidates.replaceChildren(
      ...masks.map((m, i) => {
        const li = document.createElement("li");
        const b = document.createElement("button");
        b.type = "button";
        b.setAttribute("aria-pressed", String(i === top.chosen));
        b.title = `Pick this mask (${i + 1})`;
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = i === top.chosen ? `rgb(${PROMPT_RGB})` : "#c4cad3";
        const text = document.createElement("span");
        text.textContent =
          `${i + 1}. score ${m.score.toFixed(3)} · stability ${m.stability_score.toFixed(3)} · ` +
          `${m.area.toLocaleString()} px`;
        b.append(sw, text);
        b.addEventListener("click", () => pickCandidate(i));
        li.append(b);
        return li;
      })
    );
    const p = top ? top.points.length : 0;
    el.promptSummary.textContent = top
      ? `${p} point${p === 1 ? "" : "s"}${top.box ? " + box" : ""}` +
        (top.sentMaskInputId ? " · refined from the previous mask" : "")
      : "";
  }

  function updateButtons() {
    const has = !!chosenMask();
    el.exportPng.disabled = !has;
    el.exportCoco.disabled = !(has || (S.mode === "everything" && S.ev && S.ev.masks.length));
    el.exportCutout.disabled = !has;
    el.undo.disabled = !S.imageId || (S.mode === "prompt" && !S.history.length);
    el.reset.disabled = !S.imageId;
    el.everything.disabled = !S.imageId;
    el.everything.classList.toggle("active-mode", S.mode === "everything");
    el.everything.setAttribute("aria-pressed", String(S.mode === "everything"));
  }

  function imageToUi(x, y) {
    const sx = el.ui.width / S.width;
    const sy = el.ui.height / S.height;
    return [(x + 0.5) * sx, (y + 0.5) * sy];
  }

  function drawUi() {
    const ctx = el.ui.getContext("2d");
    ctx.clearRect(0, 0, el.ui.width, el.ui.height);
    if (!S.width) return;
    const dpr = window.devicePixelRatio || 1;
    const top = S.mode === "prompt" ? current() : null;
    const box = S.drag && S.drag.moved ? S.drag.box : top && top.box;
    if (box) {
      const [x0, y0] = imageToUi(box[0], box[1]);
      const [x1, y1] = imageToUi(box[2], box[3]);
      ctx.lineWidth = 2 * dpr;
      ctx.setLineDash(S.drag && S.drag.moved ? [6 * dpr, 4 * dpr] : []);
      ctx.strokeStyle = "#000";
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      ctx.strokeStyle = "#ffd400";
      ctx.lineWidth = 1.2 * dpr;
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      ctx.setLineDash([]);
    }
    if (top) {
      top.points.forEach(([x, y], i) => {
        const [u, v] = imageToUi(x, y);
        ctx.beginPath();
        ctx.arc(u, v, 5.5 * dpr, 0, Math.PI * 2);
        ctx.fillStyle = top.labels[i] === 1 ? "#18c964" : "#f31260";
        ctx.fill();
        ctx.lineWidth = 2 * dpr;
        ctx.strokeStyle = "#fff";
        ctx.stroke();
      });
    }
    if (S.showCursor && S.cursor) {
      const [u, v] = imageToUi(S.cursor[0], S.cursor[1]);
      ctx.strokeStyle = S.labelMode === 1 ? "#18c964" : "#f31260";
      ctx.lineWidth = 2 * dpr;
      ctx.beginPath();
      ctx.moveTo(u - 10 * dpr, v);
      ctx.lineTo(u + 10 * dpr, v);
      ctx.moveTo(u, v - 10 * dpr);
      ctx.lineTo(u, v + 10 * dpr);
      ctx.stroke();
    }
  }

  // ---------------------------------------------------------------- everything mode

  function colourFor(i) {
    // Golden-angle hues: neighbours in the list get far-apart colours.
    const hue = (i * 137.508) % 360;
    return hslToRgb(hue / 360, 0.75, 0.55);
  }

  function hslToRgb(h, s, l) {
    const f = (n) => {
      const k = (n + h * 12) % 12;
      const a = s * Math.min(l, 1 - l);
      return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
    };
    return [f(0), f(8), f(4)];
  }

  async function runEverything() {
    if (!S.imageId) return;
    if (S.mode === "everything") {
      leaveEverything(true);
      return;
    }
    clearError();
    const body = {
      image_id: S.imageId,
      points_per_side: clampInt(el.amgPps.value, 1, 64, 16),
      pred_iou_thresh: clampNum(el.amgIou.value, 0, 1, 0.88),
      stability_score_thresh: clampNum(el.amgStab.value, 0, 1, 0.95),
      box_nms_thresh: clampNum(el.amgNms.value, 0, 1, 0.7),
      output: ["rle"],
    };
    setBusy(1);
    const t0 = performance.now();
    const timer = setInterval(() => {
      el.progressTime.textContent = `${((performance.now() - t0) / 1000).toFixed(1)} s`;
    }, 100);
    showProgress("Segmenting everything…", null);
    try {
      let answer;
      try {
        answer = await postJson("v1/everything", body);
      } catch (err) {
        if (!(err instanceof ApiError) || err.code !== "embedding_not_found") throw err;
        await embed();
        body.image_id = S.imageId;
        answer = await postJson("v1/everything", body);
      }
      const tAnswer = performance.now();
      enterEverything(answer.data.masks);
      answer.entry.extra = ` · ${answer.data.masks.length} masks drawn in ${(performance.now() - tAnswer).toFixed(1)} ms`;
      renderTiming();
    } finally {
      clearInterval(timer);
      hideProgress();
      setBusy(-1);
    }
  }

  function clampInt(v, lo, hi, dflt) {
    const n = parseInt(v, 10);
    return Number.isFinite(n) ? Math.max(lo, Math.min(hi, n)) : dflt;
  }

  function clampNum(v, lo, hi, dflt) {
    const n = parseFloat(v);
    return Number.isFinite(n) ? Math.max(lo, Math.min(hi, n)) : dflt;
  }

  function enterEverything(masks) {
    const t0 = performance.now();
    S.mode = "everything";
    const w = S.width;
    const h = S.height;
    // Largest first, so smaller masks stay visible on top; labelMap: topmost mask per pixel.
    const order = masks.map((_, i) => i).sort((a, b) => masks[b].area - masks[a].area);
    const sorted = order.map((i) => masks[i]);
    const labelMap = new Int32Array(w * h).fill(-1);
    sorted.forEach((m, i) => {
      EdgeSamRle.forEachRun(m.rle, (start, len) => {
        let x = Math.floor(start / h);
        let y = start - x * h;
        for (let k = 0; k < len; k++) {
          labelMap[y * w + x] = i;
          if (++y === h) {
            y = 0;
            x += 1;
          }
        }
      });
    });
    S.ev = { masks: sorted, labelMap, hover: -1, chosen: -1, buildMs: performance.now() - t0 };
    renderEverything();
    setStatus(`Everything mode: ${sorted.length} masks · hover to highlight, click to choose, Esc to leave`);
  }

  function renderEverything() {
    const t0 = performance.now();
    const w = S.width;
    const h = S.height;
    const ctx = el.overlay.getContext("2d");
    ctx.clearRect(0, 0, w, h);
    const { masks, labelMap } = S.ev;
    const pack = (c, a) => ((a << 24) | (c[2] << 16) | (c[1] << 8) | c[0]) >>> 0;
    const fills = new Uint32Array(masks.map((_, i) => pack(colourFor(i), 130)));
    const lines = new Uint32Array(masks.map((_, i) => pack(colourFor(i), 230)));
    const img = ctx.createImageData(w, h);
    const px = new Uint32Array(img.data.buffer);
    for (let y = 0, p = 0; y < h; y++) {
      for (let x = 0; x < w; x++, p++) {
        const i = labelMap[p];
        if (i < 0) continue;
        const edge =
          (x > 0 && labelMap[p - 1] !== i) ||
          (x + 1 < w && labelMap[p + 1] !== i) ||
          (y > 0 && labelMap[p - w] !== i) ||
          (y + 1 < h && labelMap[p + w] !== i);
        px[p] = edge ? lines[i] : fills[i];
      }
    }
    ctx.putImageData(img, 0, 0);
    renderHighlight();
    renderEverythingList();
    drawUi();
    updateButtons();
    noteRender("everything", performance.now() - t0);
  }

  function renderHighlight() {
    const ctx = el.highlight.getContext("2d");
    ctx.clearRect(0, 0, el.highlight.width, el.highlight.height);
    if (S.mode !== "everything" || !S.ev) return;
    const t = outlineWidth();
    for (const i of [S.ev.chosen, S.ev.hover]) {
      if (i < 0) continue;
      const m = S.ev.masks[i];
      paintMask(ctx, maskBits(m), m.bbox, i === S.ev.hover ? [255, 255, 255] : colourFor(i), 150, t);
    }
  }

  function renderEverythingList() {
    const { masks, chosen, hover } = S.ev;
    el.candidates.replaceChildren(
      ...masks.slice(0, 50).map((m, i) => {
        const li = document.createElement("li");
        const b = document.createElement("button");
        b.type = "button";
        b.setAttribute("aria-pressed", String(i === chosen));
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = `rgb(${colourFor(i)})`;
        const text = document.createElement("span");
        text.textContent = `score ${m.score.toFixed(3)} · ${m.area.toLocaleString()} px`;
        b.append(sw, text);
        if (i === hover) b.style.outline = "2px solid #888";
        b.addEventListener("click", () => chooseEverything(i));
        b.addEventListener("mouseenter", () => hoverEverything(i));
        li.append(b);
        return li;
      })
    );
    el.promptSummary.textContent =
      `${masks.length} masks` + (masks.length > 50 ? " (the 50 largest listed)" : "");
  }

  function hoverEverything(i) {
    if (!S.ev || S.ev.hover === i) return;
    S.ev.hover = i;
    renderHighlight();
    if (i >= 0) {
      const m = S.ev.masks[i];
      setStatus(`Mask ${i + 1}/${S.ev.masks.length}: score ${m.score.toFixed(3)}, ${m.area} px`);
    }
  }

  function chooseEverything(i) {
    if (!S.ev) return;
    S.ev.chosen = i;
    renderHighlight();
    renderEverythingList();
    updateButtons();
  }

  function leaveEverything(render) {
    if (S.mode !== "everything") return;
    S.mode = "prompt";
    S.ev = null;
    if (render) {
      renderPrompt();
      setStatus("Prompt mode: click, right-click or drag on the image");
    }
  }

  // ---------------------------------------------------------------- export

  function chosenMask() {
    if (S.mode === "everything") {
      return S.ev && S.ev.chosen >= 0 ? S.ev.masks[S.ev.chosen] : null;
    }
    return chosenPromptMask();
  }

  function download(blob, name) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  function canvasBlob(canvas) {
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }

  async function exportPng() {
    const m = chosenMask();
    if (!m) return;
    const bits = maskBits(m);
    const c = document.createElement("canvas");
    c.width = S.width;
    c.height = S.height;
    const ctx = c.getContext("2d");
    const img = ctx.createImageData(S.width, S.height);
    const d = img.data;
    for (let p = 0; p < bits.length; p++) {
      const v = bits[p] ? 255 : 0;
      d[4 * p] = v;
      d[4 * p + 1] = v;
      d[4 * p + 2] = v;
      d[4 * p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    download(await canvasBlob(c), `${S.fileName}_mask.png`);
  }

  function exportCoco() {
    let masks;
    if (S.mode === "everything") {
      masks = S.ev.chosen >= 0 ? [S.ev.masks[S.ev.chosen]] : S.ev.masks;
    } else {
      const m = chosenMask();
      masks = m ? [m] : [];
    }
    if (!masks.length) return;
    const doc = {
      info: { description: "EdgeSAM masks", date_created: new Date().toISOString() },
      images: [{ id: 1, file_name: S.fileName, width: S.width, height: S.height }],
      categories: [{ id: 1, name: "object" }],
      annotations: masks.map((m, i) => ({
        id: i + 1,
        image_id: 1,
        category_id: 1,
        segmentation: { size: m.rle.size, counts: m.rle.counts },
        area: m.area,
        bbox: m.bbox,
        iscrowd: 0,
        score: m.score,
        stability_score: m.stability_score,
      })),
    };
    const blob = new Blob([JSON.stringify(doc, null, 1)], { type: "application/json" });
    download(blob, `${S.fileName}_coco.json`);
  }

  async function exportCutout() {
    const m = chosenMask();
    if (!m) return;
    const bits = maskBits(m);
    const [bx, by, bw, bh] = m.bbox;
    if (bw <= 0 || bh <= 0) return;
    const c = document.createElement("canvas");
    c.width = bw;
    c.height = bh;
    const ctx = c.getContext("2d");
    ctx.drawImage(el.image, bx, by, bw, bh, 0, 0, bw, bh);
    const img = ctx.getImageData(0, 0, bw, bh);
    const d = img.data;
    for (let y = 0; y < bh; y++) {
      for (let x = 0; x < bw; x++) {
        if (!bits[(by + y) * S.width + bx + x]) d[(y * bw + x) * 4 + 3] = 0;
      }
    }
    ctx.putImageData(img, 0, 0);
    download(await canvasBlob(c), `${S.fileName}_cutout.png`);
  }

  // ---------------------------------------------------------------- input: pointer

  function toImage(clientX, clientY) {
    const r = el.ui.getBoundingClientRect();
    const x = Math.floor(((clientX - r.left) * S.width) / r.width);
    const y = Math.floor(((clientY - r.top) * S.height) / r.height);
    return [Math.max(0, Math.min(S.width - 1, x)), Math.max(0, Math.min(S.height - 1, y))];
  }

  el.ui.addEventListener("contextmenu", (e) => e.preventDefault());

  el.ui.addEventListener("pointerdown", (e) => {
    if (!S.imageId || S.busy && !S.pumping) return;
    if (e.button !== 0 && e.button !== 2) return;
    e.preventDefault();
    el.ui.focus({ preventScroll: true });
    el.ui.setPointerCapture(e.pointerId);
    S.showCursor = false;
    S.drag = {
      id: e.pointerId,
      x: e.clientX,
      y: e.clientY,
      start: toImage(e.clientX, e.clientY),
      background: e.button === 2 || e.shiftKey || e.altKey,
      moved: false,
      box: null,
    };
  });

  el.ui.addEventListener("pointermove", (e) => {
    if (!S.imageId) return;
    const d = S.drag;
    if (d && d.id === e.pointerId) {
      if (!d.moved && Math.hypot(e.clientX - d.x, e.clientY - d.y) >= DRAG_THRESHOLD_PX) d.moved = true;
      if (d.moved && S.mode === "prompt") {
        const [x, y] = toImage(e.clientX, e.clientY);
        d.box = [Math.min(d.start[0], x), Math.min(d.start[1], y), Math.max(d.start[0], x), Math.max(d.start[1], y)];
        drawUi();
      }
      return;
    }
    if (S.mode === "everything" && S.ev) {
      const [x, y] = toImage(e.clientX, e.clientY);
      hoverEverything(S.ev.labelMap[y * S.width + x]);
    }
  });

  el.ui.addEventListener("pointerup", (e) => {
    const d = S.drag;
    if (!d || d.id !== e.pointerId) return;
    S.drag = null;
    if (S.mode === "everything") {
      if (!d.moved && S.ev) {
        const [x, y] = toImage(e.clientX, e.clientY);
        const i = S.ev.labelMap[y * S.width + x];
        if (i >= 0) chooseEverything(i);
      }
      return;
    }
    if (d.moved && d.box && d.box[2] > d.box[0] && d.box[3] > d.box[1]) {
      setBox(d.box);
    } else if (!d.moved) {
      const [x, y] = d.start;
      addPoint(x, y, d.background ? 0 : S.labelMode);
    } else {
      drawUi();
    }
  });

  el.ui.addEventListener("pointercancel", () => {
    S.drag = null;
    drawUi();
  });

  el.ui.addEventListener("pointerleave", () => {
    if (S.mode === "everything" && S.ev && !S.drag) hoverEverything(-1);
  });

  // ---------------------------------------------------------------- input: keyboard

  function setLabelMode(label) {
    S.labelMode = label;
    el.labelFg.classList.toggle("active", label === 1);
    el.labelBg.classList.toggle("active", label === 0);
    el.labelFg.setAttribute("aria-pressed", String(label === 1));
    el.labelBg.setAttribute("aria-pressed", String(label === 0));
    drawUi();
  }

  function moveCursor(dx, dy, fast) {
    if (!S.imageId) return;
    const step = Math.max(1, Math.round(Math.max(S.width, S.height) / (fast ? 20 : 200)));
    S.cursor = [
      Math.max(0, Math.min(S.width - 1, S.cursor[0] + dx * step)),
      Math.max(0, Math.min(S.height - 1, S.cursor[1] + dy * step)),
    ];
    S.showCursor = true;
    if (S.mode === "everything" && S.ev) hoverEverything(S.ev.labelMap[S.cursor[1] * S.width + S.cursor[0]]);
    drawUi();
  }

  document.addEventListener("keydown", (e) => {
    const t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
    if (e.metaKey || (e.ctrlKey && e.key.toLowerCase() !== "z")) return; // leave Ctrl+V etc. alone
    const onCanvas = t === el.ui;
    const key = e.key;
    let handled = true;
    switch (key) {
      case "ArrowLeft": onCanvas ? moveCursor(-1, 0, e.shiftKey) : (handled = false); break;
      case "ArrowRight": onCanvas ? moveCursor(1, 0, e.shiftKey) : (handled = false); break;
      case "ArrowUp": onCanvas ? moveCursor(0, -1, e.shiftKey) : (handled = false); break;
      case "ArrowDown": onCanvas ? moveCursor(0, 1, e.shiftKey) : (handled = false); break;
      case "Enter":
      case " ":
        if (!onCanvas || !S.cursor) { handled = false; break; }
        if (S.mode === "everything" && S.ev) {
          const i = S.ev.labelMap[S.cursor[1] * S.width + S.cursor[0]];
          if (i >= 0) chooseEverything(i);
        } else {
          addPoint(S.cursor[0], S.cursor[1], e.shiftKey ? 0 : S.labelMode);
        }
        break;
      case "z": case "Z": undo(); break;
      case "r": case "R": resetPrompts(); break;
      case "Escape":
        if (S.mode === "everything") leaveEverything(true);
        else resetPrompts();
        break;
      case "e": case "E": withKey(runEverything); break;
      case "m": case "M": setNumMasks(S.numMasks === 1 ? 3 : S.numMasks === 3 ? 4 : 1); break;
      case "1": case "2": case "3": case "4": pickCandidate(Number(key) - 1); break;
      case "f": case "F": setLabelMode(1); break;
      case "g": case "G": setLabelMode(0); break;
      case "o": case "O": el.fileInput.click(); break;
      case "s": case "S": exportPng(); break;
      case "j": case "J": exportCoco(); break;
      case "c": case "C": exportCutout(); break;
      case "?": el.shortcuts.open = !el.shortcuts.open; break;
      default: handled = false;
    }
    if (handled) e.preventDefault();
  });

  // ---------------------------------------------------------------- input: files

  el.fileInput.addEventListener("change", () => {
    const f = el.fileInput.files && el.fileInput.files[0];
    if (f) openImage(f, f.name);
    el.fileInput.value = "";
  });

  for (const type of ["dragenter", "dragover"]) {
    el.stage.addEventListener(type, (e) => {
      e.preventDefault();
      el.stage.classList.add("dragover");
    });
  }
  el.stage.addEventListener("dragleave", () => el.stage.classList.remove("dragover"));
  el.stage.addEventListener("drop", (e) => {
    e.preventDefault();
    el.stage.classList.remove("dragover");
    const f = e.dataTransfer && e.dataTransfer.files[0];
    if (f) openImage(f, f.name);
  });

  document.addEventListener("paste", (e) => {
    const items = e.clipboardData ? e.clipboardData.items : [];
    for (const item of items) {
      if (item.kind === "file" && item.type.startsWith("image/")) {
        e.preventDefault();
        openImage(item.getAsFile(), "pasted");
        return;
      }
    }
  });

  // ---------------------------------------------------------------- buttons

  el.labelFg.addEventListener("click", () => setLabelMode(1));
  el.labelBg.addEventListener("click", () => setLabelMode(0));
  el.undo.addEventListener("click", undo);
  el.reset.addEventListener("click", () => resetPrompts());
  el.everything.addEventListener("click", () => withKey(runEverything));
  for (const r of document.querySelectorAll('input[name="decode-mode"]')) {
    r.checked = r.value === S.decodeMode;
    r.addEventListener("change", () => setDecodeMode(r.value));
  }
  for (const r of document.querySelectorAll('input[name="num-masks"]')) {
    r.addEventListener("change", () => setNumMasks(Number(r.value)));
  }
  el.exportPng.addEventListener("click", exportPng);
  el.exportCoco.addEventListener("click", exportCoco);
  el.exportCutout.addEventListener("click", exportCutout);
  el.errorClose.addEventListener("click", clearError);
  el.keyForm.addEventListener("submit", (e) => {
    e.preventDefault();
    S.apiKey = el.keyInput.value.trim();
    sessionStorage.setItem(KEY_STORAGE, S.apiKey);
    el.keyForm.hidden = true;
    const retry = S.onKey;
    S.onKey = null;
    if (retry) withKey(retry);
    else checkReady();
  });

  new ResizeObserver(() => {
    sizeUi();
    if (S.mode === "prompt") renderPrompt(); // outline width follows the display scale
  }).observe(el.wrap);

  // ---------------------------------------------------------------- test and debugging hooks

  window.EdgeSamPage = {
    /** A JSON summary of the page state. */
    state() {
      const top = current();
      return {
        imageId: S.imageId,
        width: S.width,
        height: S.height,
        mode: S.mode,
        busy: S.busy,
        renderCount: S.renderCount,
        lastRender: S.lastRender,
        randomWeights: S.randomWeights,
        numMasks: S.numMasks,
        cursor: S.cursor,
        prompt: top ? { points: top.points, labels: top.labels, box: top.box, chosen: top.chosen } : null,
        answered: !!(top && top.result),
        candidates: top && top.result ? top.result.masks.map((m) => m.score) : [],
        lastSegmentRequest: S.lastSegmentRequest,
        maskInputId: top && top.result ? top.result.mask_input_id : null,
        everythingCount: S.ev ? S.ev.masks.length : 0,
        decodeMode: S.decodeMode,
        lastDecode: S.lastDecode,
        localReady: !!(S.local.session && S.local.embeddingFor === S.imageId),
        embeddingDownload: S.local.download,
        decoderDownload: S.local.decoderInfo || null,
        lastLocalRequest: S.lastLocalRequest,
        clickTimes: S.clickTimes.slice(),
        calls: S.calls.map((c) => ({ route: c.route, ms: c.ms, status: c.status })),
      };
    },
    /** The overlay canvas read back at image resolution: a PNG data URL, white where any
     * overlay pixel is painted (alpha > 0), black elsewhere. */
    overlayMask() {
      return readBack(el.overlay, (d, o) => d[o + 3] > 0);
    },
    /** The RLEs of the everything-mode masks as the API sent them. */
    everythingRles() {
      return S.ev ? S.ev.masks.map((m) => m.rle) : [];
    },
    /** The number of distinct colours painted on the overlay (0 = nothing drawn). */
    overlayColours() {
      const d = el.overlay.getContext("2d").getImageData(0, 0, S.width, S.height).data;
      const seen = new Set();
      for (let o = 0; o < d.length; o += 4) {
        if (d[o + 3] > 0) seen.add((d[o] << 16) | (d[o + 1] << 8) | d[o + 2]);
      }
      return seen.size;
    },
  };

  function readBack(canvas, test) {
    const w = canvas.width;
    const h = canvas.height;
    const src = canvas.getContext("2d").getImageData(0, 0, w, h).data;
    const out = document.createElement("canvas");
    out.width = w;
    out.height = h;
    const ctx = out.getContext("2d");
    const img = ctx.createImageData(w, h);
    for (let o = 0; o < src.length; o += 4) {
      const v = test(src, o) ? 255 : 0;
      img.data[o] = v;
      img.data[o + 1] = v;
      img.data[o + 2] = v;
      img.data[o + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    return out.toDataURL("image/png");
  }

  document.body.dataset.busy = "false";
  document.body.dataset.renderCount = "0";
  updateButtons();
  checkReady();
})();
