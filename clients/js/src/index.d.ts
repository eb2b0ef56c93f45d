// Types of edgesam-client (src/index.js).

export interface ClientOptions {
  apiKey?: string;
  /** per request; default 60000 */
  timeoutMs?: number;
  fetch?: typeof fetch;
}

export interface EmbedResult {
  image_id: string;
  width: number;
  height: number;
  cached: boolean;
  expires_in: number;
}

export interface Rle {
  size: [number, number];
  counts: string;
}

export interface MaskItem {
  prompt_index: number;
  mask_index: number;
  score: number;
  stability_score: number;
  bbox: [number, number, number, number];
  area: number;
  rle?: Rle;
  png?: string;
  polygons?: number[][];
}

export interface SegmentRequest {
  image_id: string;
  points?: number[][];
  labels?: number[];
  box?: number[];
  boxes?: number[][];
  num_masks?: 1 | 3 | 4;
  mask_input_id?: string;
  output?: ("rle" | "png" | "polygons")[];
  [field: string]: unknown;
}

export interface SegmentResult {
  image_id: string;
  width: number;
  height: number;
  masks: MaskItem[];
  mask_input_id?: string;
  mask_input_ids?: string[];
}

export interface ModelInfo {
  id: string;
  fingerprint: string;
  backend: string;
  precision: string;
  random_weights: boolean;
  image_size: number;
  embedding: { shape: number[]; dtype: "float16" | "float32" };
  embedding_url: string;
  decoder_url: string;
  decoder_urls: Record<string, string>;
}

export interface Npy {
  shape: number[];
  dtype: "float16" | "float32";
  /** always float32 (float16 files are widened) */
  data: Float32Array;
}

export interface EmbeddingDownload extends Partial<Npy> {
  imageId: string;
  etag: string | null;
  width: number;
  height: number;
  fingerprint: string | null;
  /** true when the `etag` given still names the embedding (304: no bytes sent) */
  notModified: boolean;
  bytes?: number;
}

export class EdgeSamError extends Error {
  status: number;
  /** the service's stable code (embedding_not_found, unauthenticated, ...) or network_error */
  code: string;
  constructor(status: number, code: string, message: string);
}

export class EdgeSamClient {
  constructor(baseUrl: string, options?: ClientOptions);
  embed(image: BodyInit, contentType?: string): Promise<EmbedResult>;
  segment(request: SegmentRequest): Promise<SegmentResult>;
  models(): Promise<{ models: ModelInfo[] }>;
  getEmbedding(imageId: string, options?: { etag?: string }): Promise<EmbeddingDownload>;
  getDecoder(variant?: "sam" | "multimask" | "cvat"): Promise<{ bytes: Uint8Array; etag: string | null; variant: string }>;
}

export interface LocalPrompt {
  points?: number[][];
  labels?: number[];
  box?: number[] | null;
  /** the original image's size (the embed answer's width and height) */
  width: number;
  height: number;
  /** a previous answer's low-res logits (256x256) to refine */
  maskInput?: Float32Array;
}

export interface LocalResult {
  /** one 0/1 mask (height*width, row-major) per decoder output */
  masks: Uint8Array[];
  logits: Float32Array;
  iou: number[];
  lowRes: Float32Array[];
  width: number;
  height: number;
}

/** Anything shaped like onnxruntime-node's or onnxruntime-web's module. */
export interface OrtLike {
  InferenceSession: { create(model: Uint8Array, options?: object): Promise<any> };
  Tensor: new (type: "float32", data: Float32Array, dims: number[]) => any;
}

export class LocalDecoder {
  constructor(ort: OrtLike, session: any);
  static create(ort: OrtLike, decoderBytes: Uint8Array, sessionOptions?: object): Promise<LocalDecoder>;
  decode(embedding: Float32Array, prompt: LocalPrompt): Promise<LocalResult>;
}

export function parseNpy(buffer: ArrayBuffer | ArrayBufferView): Npy;
export function halfToFloat(half: Uint16Array): Float32Array;
export function promptTensors(prompt: LocalPrompt): {
  pointCoords: Float32Array;
  pointLabels: Float32Array;
  numPoints: number;
};
export function decodeRle(rle: Rle): Uint8Array;
export function maskIou(a: ArrayLike<number>, b: ArrayLike<number>): number;
