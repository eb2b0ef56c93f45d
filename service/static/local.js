// Decoding in the browser: the image's embedding (GET v1/embeddings/{id}, a .npy file) and
// the decoder in segment-anything's ONNX signature (GET v1/models/decoder.onnx, the multimask
// variant: all four candidates) run in onnxruntime-web (WebAssembly), served by this service
// at static/ort/ (no CDN). Every click is then answered here with no server work.
"use strict";

const EdgeSamLocal = (() => {
  const ORT_DIR = "static/ort/";
  const ORT_SCRIPT = ORT_DIR + "ort.wasm.min.js";
  const LONG_SIDE = 1024;
  const LOW_RES = 256;
  const STABILITY_OFFSET = 1.0;
  let ortPromise = null;

  function available() {
    return typeof WebAssembly === "object" && typeof WebAssembly.instantiate === "function";
  }

  /** Loads onnxruntime-web once (a classic script defining the global `ort`). */
  function loadOrt() {
    if (!ortPromise) {
      ortPromise = new Promise((resolve, reject) => {
        if (!available()) {
          reject(new Error("this browser has no WebAssembly"));
          return;
        }
        const script = document.createElement("script");
        script.src = ORT_SCRIPT;
        script.onload = () => {
          const ort = window.ort;
          if (!ort) {
            reject(new Error("onnxruntime-web did not load"));
            return;
          }
          ort.env.wasm.wasmPaths = new URL(ORT_DIR, document.baseURI).href;
          // Threads need a cross-origin-isolated page (SharedArrayBuffer); one is enough here.
          ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
          resolve(ort);
        };
        script.onerror = () =>
          reject(new Error("onnxruntime-web is not installed on this service (npm ci in service/webdeps)"));
        document.head.append(script);
      });
      ortPromise.catch(() => {
        ortPromise = null;
      });
    }
    return ortPromise;
  }

  /** A .npy file (version 1-3, little-endian float16/float32, C order) -> {shape, data}
   * with data a Float32Array. */
  function parseNpy(buffer) {
    const bytes = new Uint8Array(buffer);
    const magic = String.fromCharCode(...bytes.subarray(0, 6));
    if (magic !== "\x93NUMPY") throw new Error("not a .npy file");
    const major = bytes[6];
    const view = new DataView(buffer);
    const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
    const start = major === 1 ? 10 : 12;
    const header = new TextDecoder("latin1").decode(bytes.subarray(start, start + headerLen));
    const descr = /'descr':\s*'([^']+)'/.exec(header);
    const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
    if (!descr || !shape) throw new Error("unreadable .npy header");
    if (/'fortran_order':\s*True/.test(header)) throw new Error("Fortran-ordered .npy");
    const dims = shape[1].split(",").map((s) => s.trim()).filter(Boolean).map(Number);
    const count = dims.reduce((a, b) => a * b, 1);
    const offset = start + headerLen;
    let data;
    if (descr[1] === "<f4") {
      data = new Float32Array(buffer.slice(offset, offset + count * 4));
    } else if (descr[1] === "<f2") {
      data = halfToFloat(new Uint16Array(buffer.slice(offset, offset + count * 2)));
    } else {
      throw new Error(`unsupported .npy dtype ${descr[1]}`);
    }
    return { shape: dims, data, dtype: descr[1] === "<f2" ? "float16" : "float32" };
  }

  function halfToFloat(half) {
    const out = new Float32Array(half.length);
    for (let i = 0; i < half.length; i++) {
      const h = half[i];
      const sign = h & 0x8000 ? -1 : 1;
      const exp = (h >> 10) & 0x1f;
      const frac = h & 0x3ff;
      if (exp === 0) out[i] = sign * frac * 2 ** -24;
      else if (exp === 31) out[i] = frac ? NaN : sign * Infinity;
      else out[i] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
    }
    return out;
  }

  /** The 1024-frame size of an image, as the server's preprocessing rounds it. */
  function inputSize(width, height) {
    const scale = LONG_SIDE / Math.max(width, height);
    return [Math.floor(height * scale + 0.5), Math.floor(width * scale + 0.5)];
  }

  /** Points [[x, y]...] with labels and an optional box [x0, y0, x1, y1], in original pixels
   * -> the decoder's point_coords / point_labels (points, then box corners 2/3; SAM's padding
   * point (0, 0) labelled -1 when there is no box). */
  function promptTensors(points, labels, box, width, height) {
    const [newh, neww] = inputSize(width, height);
    const sx = neww / width;
    const sy = newh / height;
    const coords = [];
    const labs = [];
    points.forEach(([x, y], i) => {
      coords.push(x * sx, y * sy);
      labs.push(labels[i]);
    });
    if (box) {
      coords.push(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy);
      labs.push(2, 3);
    } else {
      coords.push(0, 0);
      labs.push(-1);
    }
    return { coords: new Float32Array(coords), labels: new Float32Array(labs) };
  }

  /** A decoder session from the ONNX bytes. */
  async function createSession(onnxBytes) {
    const ort = await loadOrt();
    return ort.InferenceSession.create(new Uint8Array(onnxBytes), {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
    });
  }

  /** Runs the multimask decoder: returns {masks: Float32Array 4*h*w logits, iou: [4],
   * lowRes: Float32Array 4*256*256, width, height, ms}. */
  async function decode(session, embedding, prompt, maskInput) {
    const ort = window.ort;
    const { width, height } = prompt;
    const t = promptTensors(prompt.points, prompt.labels, prompt.box, width, height);
    const n = t.labels.length;
    const feeds = {
      image_embeddings: new ort.Tensor("float32", embedding, [1, 256, 64, 64]),
      point_coords: new ort.Tensor("float32", t.coords, [1, n, 2]),
      point_labels: new ort.Tensor("float32", t.labels, [1, n]),
      mask_input: new ort.Tensor("float32", maskInput || new Float32Array(LOW_RES * LOW_RES), [1, 1, LOW_RES, LOW_RES]),
      has_mask_input: new ort.Tensor("float32", new Float32Array([maskInput ? 1 : 0]), [1]),
      orig_im_size: new ort.Tensor("float32", new Float32Array([height, width]), [2]),
    };
    const t0 = performance.now();
    const out = await session.run(feeds);
    const ms = performance.now() - t0;
    return {
      masks: out.masks.data,
      iou: Array.from(out.iou_predictions.data),
      lowRes: out.low_res_masks.data,
      width,
      height,
      ms,
    };
  }

  /** One candidate of a decode as the page's mask record (what /v1/segment's items hold,
   * plus the bits): score, stability, area, bbox [x, y, w, h], an uncompressed COCO RLE. */
  function maskRecord(result, k) {
    const { width: w, height: h } = result;
    const plane = w * h;
    const logits = result.masks.subarray(k * plane, (k + 1) * plane);
    const bits = new Uint8Array(plane);
    let area = 0;
    let x0 = w;
    let y0 = h;
    let x1 = -1;
    let y1 = -1;
    for (let y = 0; y < h; y++) {
      const row = y * w;
      for (let x = 0; x < w; x++) {
        if (logits[row + x] > 0) {
          bits[row + x] = 1;
          area++;
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          if (y < y0) y0 = y;
          if (y > y1) y1 = y;
        }
      }
    }
    const low = result.lowRes.subarray(k * LOW_RES * LOW_RES, (k + 1) * LOW_RES * LOW_RES);
    let inter = 0;
    let union = 0;
    for (let i = 0; i < low.length; i++) {
      if (low[i] > STABILITY_OFFSET) inter++;
      if (low[i] > -STABILITY_OFFSET) union++;
    }
    const record = {
      mask_index: k,
      score: result.iou[k],
      stability_score: union ? inter / union : 0,
      area,
      bbox: area ? [x0, y0, x1 - x0 + 1, y1 - y0 + 1] : [0, 0, 0, 0],
      lowRes: low,
      _bits: bits,
    };
    // Only an export reads the RLE: computed then, not on every click.
    let rle = null;
    Object.defineProperty(record, "rle", {
      enumerable: true,
      get: () => rle || (rle = { size: [h, w], counts: uncompressedRle(bits, w, h) }),
    });
    return record;
  }

  /** Column-major run lengths starting with 0s (COCO's uncompressed RLE). */
  function uncompressedRle(bits, w, h) {
    const counts = [];
    let value = 0;
    let run = 0;
    for (let x = 0; x < w; x++) {
      for (let y = 0; y < h; y++) {
        const b = bits[y * w + x];
        if (b !== value) {
          counts.push(run);
          run = 0;
          value = b;
        }
        run++;
      }
    }
    counts.push(run);
    return counts;
  }

  /** The candidates /v1/segment would answer for num_masks: token 0, tokens 1-3, or all. */
  function candidates(numMasks) {
    if (numMasks === 1) return [0];
    if (numMasks === 3) return [1, 2, 3];
    return [0, 1, 2, 3];
  }

  return { available, loadOrt, parseNpy, halfToFloat, inputSize, promptTensors, createSession, decode, maskRecord, candidates };
})();

if (typeof module !== "undefined") module.exports = EdgeSamLocal;
