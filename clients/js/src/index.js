// EdgeSAM service client: embed, segment, the embedding download (.npy) and the
// SAM-signature decoder, and a local decode helper over ONNX Runtime (pass the runtime you
// use: `onnxruntime-node` in Node, `onnxruntime-web` in browsers). Uses the platform's fetch
// (Node >= 18, browsers); no other dependency.

const LONG_SIDE = 1024;
const LOW_RES = 256;
const EMBEDDING_SHAPE = [1, 256, 64, 64];

/** An error answered by the service: `code` is its stable machine-readable code. */
export class EdgeSamError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "EdgeSamError";
    this.status = status;
    this.code = code;
  }
}

export class EdgeSamClient {
  /**
   * @param {string} baseUrl e.g. "http://127.0.0.1:8000"
   * @param {{apiKey?: string, timeoutMs?: number, fetch?: typeof fetch}} [options]
   */
  constructor(baseUrl, options = {}) {
    this.baseUrl = String(baseUrl).replace(/\/+$/, "") + "/";
    this.apiKey = options.apiKey || null;
    this.timeoutMs = options.timeoutMs ?? 60000;
    this.fetch = options.fetch || globalThis.fetch.bind(globalThis);
  }

  async request(path, init = {}) {
    const headers = { ...(init.headers || {}) };
    if (this.apiKey) headers["X-API-Key"] = this.apiKey;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.timeoutMs);
    let response;
    try {
      response = await this.fetch(new URL(path, this.baseUrl), {
        ...init,
        headers,
        signal: controller.signal,
      });
    } catch (err) {
      const reason = controller.signal.aborted ? `no answer within ${this.timeoutMs} ms` : err.message;
      throw new EdgeSamError(0, "network_error", `${path}: ${reason}`);
    } finally {
      clearTimeout(timer);
    }
    if (!response.ok && response.status !== 304) {
      const text = await response.text();
      let code = `http_${response.status}`;
      let message = text || `HTTP ${response.status}`;
      try {
        const body = JSON.parse(text);
        code = body.code || code;
        message = body.message || message;
      } catch {
        /* not JSON */
      }
      throw new EdgeSamError(response.status, code, message);
    }
    return response;
  }

  async json(path, body) {
    const init = body === undefined
      ? {}
      : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    return (await this.request(path, init)).json();
  }

  /** Image bytes (PNG, JPEG or WebP) -> {image_id, width, height, cached, expires_in}. */
  async embed(image, contentType = "image/png") {
    const response = await this.request("v1/embed", {
      method: "POST",
      headers: { "Content-Type": contentType },
      body: image,
    });
    return response.json();
  }

  /** POST v1/segment: {image_id, points?, labels?, box?, boxes?, num_masks?, mask_input_id?, output?}. */
  async segment(request) {
    return this.json("v1/segment", request);
  }

  /** GET v1/models: the loaded model, its fingerprint, the embedding's shape and dtype. */
  async models() {
    return this.json("v1/models");
  }

  /**
   * The cached embedding, as float32 whatever the cache keeps. With `etag` (from an earlier
   * answer) an unchanged embedding answers {notModified: true} without the bytes.
   */
  async getEmbedding(imageId, { etag } = {}) {
    const headers = etag ? { "If-None-Match": etag } : {};
    const response = await this.request(`v1/embeddings/${imageId}`, { headers });
    const meta = {
      imageId,
      etag: response.headers.get("etag"),
      width: Number(response.headers.get("x-edgesam-width")),
      height: Number(response.headers.get("x-edgesam-height")),
      fingerprint: response.headers.get("x-edgesam-fingerprint"),
    };
    if (response.status === 304) return { ...meta, notModified: true };
    const buffer = await response.arrayBuffer();
    const npy = parseNpy(buffer);
    return { ...meta, notModified: false, bytes: buffer.byteLength, ...npy };
  }

  /** The decoder ONNX: variant "sam" (segment-anything's single-mask signature), "multimask"
   * (all four masks) or "cvat". */
  async getDecoder(variant = "sam") {
    const response = await this.request(`v1/models/decoder.onnx?variant=${encodeURIComponent(variant)}`);
    return { bytes: new Uint8Array(await response.arrayBuffer()), etag: response.headers.get("etag"), variant };
  }
}

/** A .npy file (little-endian float16 or float32, C order) -> {shape, dtype, data: Float32Array}. */
export function parseNpy(buffer) {
  const ab = buffer instanceof ArrayBuffer ? buffer : buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.byteLength);
  const bytes = new Uint8Array(ab);
  if (bytes[0] !== 0x93 || String.fromCharCode(...bytes.subarray(1, 6)) !== "NUMPY") {
    throw new Error("not a .npy file");
  }
  const view = new DataView(ab);
  const major = bytes[6];
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder("latin1").decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const shapeMatch = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !shapeMatch) throw new Error("unreadable .npy header");
  if (/'fortran_order':\s*True/.test(header)) throw new Error("Fortran-ordered .npy files are not read");
  const shape = shapeMatch[1].split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = start + headerLen;
  if (descr[1] === "<f4") {
    return { shape, dtype: "float32", data: new Float32Array(ab.slice(offset, offset + 4 * count)) };
  }
  if (descr[1] === "<f2") {
    return { shape, dtype: "float16", data: halfToFloat(new Uint16Array(ab.slice(offset, offset + 2 * count))) };
  }
  throw new Error(`unsupported .npy dtype ${descr[1]}`);
}

/** IEEE half-precision bits -> Float32Array. */
export function halfToFloat(half) {
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

/** The prompt in original pixels -> the decoder's point_coords / point_labels in the 1024
 * frame (points, then box corners labelled 2 and 3; SAM's padding point (0, 0) labelled -1
 * when there is no box), scaled per axis as the server's preprocessing rounds the image. */
export function promptTensors({ points = [], labels = [], box = null, width, height }) {
  const scale = LONG_SIDE / Math.max(width, height);
  const sx = Math.floor(width * scale + 0.5) / width;
  const sy = Math.floor(height * scale + 0.5) / height;
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
  return { pointCoords: new Float32Array(coords), pointLabels: new Float32Array(labs), numPoints: labs.length };
}

/** Runs the service's decoder ONNX (variant "sam" or "multimask") locally. */
export class LocalDecoder {
  constructor(ort, session) {
    this.ort = ort;
    this.session = session;
  }

  /** @param ort the onnxruntime module (onnxruntime-node or onnxruntime-web) */
  static async create(ort, decoderBytes, sessionOptions = {}) {
    const session = await ort.InferenceSession.create(decoderBytes, sessionOptions);
    return new LocalDecoder(ort, session);
  }

  /**
   * @param {Float32Array} embedding 1x256x64x64
   * @param {{points?: number[][], labels?: number[], box?: number[], width: number,
   *          height: number, maskInput?: Float32Array}} prompt
   * @returns masks: Uint8Array per output mask (h*w, 1 inside), logits, iou, lowRes (the
   *   256x256 logits of each mask; pass one as maskInput to refine)
   */
  async decode(embedding, prompt) {
    const { Tensor } = this.ort;
    const { pointCoords, pointLabels, numPoints } = promptTensors(prompt);
    const maskInput = prompt.maskInput || null;
    const out = await this.session.run({
      image_embeddings: new Tensor("float32", embedding, EMBEDDING_SHAPE),
      point_coords: new Tensor("float32", pointCoords, [1, numPoints, 2]),
      point_labels: new Tensor("float32", pointLabels, [1, numPoints]),
      mask_input: new Tensor("float32", maskInput || new Float32Array(LOW_RES * LOW_RES), [1, 1, LOW_RES, LOW_RES]),
      has_mask_input: new Tensor("float32", new Float32Array([maskInput ? 1 : 0]), [1]),
      orig_im_size: new Tensor("float32", new Float32Array([prompt.height, prompt.width]), [2]),
    });
    const [, k, h, w] = out.masks.dims;
    const plane = h * w;
    const logits = out.masks.data;
    const masks = [];
    const lowRes = [];
    for (let i = 0; i < k; i++) {
      const bits = new Uint8Array(plane);
      for (let p = 0; p < plane; p++) bits[p] = logits[i * plane + p] > 0 ? 1 : 0;
      masks.push(bits);
      lowRes.push(out.low_res_masks.data.slice(i * LOW_RES * LOW_RES, (i + 1) * LOW_RES * LOW_RES));
    }
    return { masks, logits, iou: Array.from(out.iou_predictions.data), lowRes, width: w, height: h };
  }
}

/** COCO compressed RLE ({size: [h, w], counts}) -> Uint8Array h*w, row-major, 1 inside. */
export function decodeRle(rle) {
  const [h, w] = rle.size;
  const runs = [];
  const s = rle.counts;
  let pos = 0;
  while (pos < s.length) {
    let value = 0;
    let shift = 0;
    let group;
    do {
      group = s.charCodeAt(pos++) - 48;
      value |= (group & 0x1f) << shift;
      shift += 5;
    } while (group & 0x20);
    if (group & 0x10) value |= -1 << shift;
    if (runs.length > 2) value += runs[runs.length - 2];
    runs.push(value);
  }
  const out = new Uint8Array(h * w);
  let idx = 0;
  runs.forEach((len, i) => {
    if (i % 2 === 1) {
      for (let k = idx; k < idx + len; k++) {
        const x = Math.floor(k / h);
        out[(k - x * h) * w + x] = 1;
      }
    }
    idx += len;
  });
  return out;
}

/** Intersection over union of two 0/1 masks of one size. */
export function maskIou(a, b) {
  let inter = 0;
  let union = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i] && b[i]) inter++;
    if (a[i] || b[i]) union++;
  }
  return union ? inter / union : 1;
}
