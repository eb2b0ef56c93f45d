// Against a real running service: tests/integration/test_js_client.py starts one with the
// reference weights and runs `node --test` here with EDGESAM_TEST_URL, EDGESAM_TEST_IMAGE
// (a PNG) and EDGESAM_TEST_API_KEY set.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { before, test } from "node:test";

import * as ort from "onnxruntime-node";

import { EdgeSamClient, EdgeSamError, LocalDecoder, decodeRle, maskIou, parseNpy } from "../src/index.js";

const URL_ = process.env.EDGESAM_TEST_URL;
const IMAGE = process.env.EDGESAM_TEST_IMAGE;
const KEY = process.env.EDGESAM_TEST_API_KEY;

let client;
let embedded;
let embedding;
let decoder;

before(async () => {
  assert.ok(URL_ && IMAGE && KEY, "set EDGESAM_TEST_URL, EDGESAM_TEST_IMAGE and EDGESAM_TEST_API_KEY (tests/integration/test_js_client.py does)");
  client = new EdgeSamClient(URL_, { apiKey: KEY, timeoutMs: 120000 });
  embedded = await client.embed(readFileSync(IMAGE), "image/png");
  embedding = await client.getEmbedding(embedded.image_id);
  decoder = await LocalDecoder.create(ort, (await client.getDecoder("sam")).bytes);
});

test("models lists the fingerprint, the embedding and the decoder", async () => {
  const { models } = await client.models();
  assert.equal(models.length, 1);
  assert.deepEqual(models[0].embedding, { shape: [1, 256, 64, 64], dtype: "float32" });
  assert.equal(models[0].decoder_url, "/v1/models/decoder.onnx");
  assert.equal(models[0].fingerprint, embedding.fingerprint);
});

test("the embedding downloads as .npy, with an ETag that answers 304", async () => {
  assert.equal(embedding.shape.join("x"), "1x256x64x64");
  assert.equal(embedding.dtype, "float32");
  assert.equal(embedding.data.length, 256 * 64 * 64);
  assert.ok(embedding.data.some((v) => v !== 0));
  assert.equal(embedding.width, embedded.width);
  assert.equal(embedding.height, embedded.height);
  const again = await client.getEmbedding(embedded.image_id, { etag: embedding.etag });
  assert.equal(again.notModified, true);
  assert.equal(again.etag, embedding.etag);
});

test("parseNpy reads float16 files", () => {
  // np.save of np.array([1.0, -2.0, 0.5], "<f2")
  const header = "{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }";
  const pad = 64 - ((10 + header.length + 1) % 64);
  const text = header + " ".repeat(pad) + "\n";
  const bytes = new Uint8Array(10 + text.length + 6);
  bytes.set([0x93, ...Buffer.from("NUMPY"), 1, 0, text.length & 0xff, text.length >> 8]);
  bytes.set(Buffer.from(text, "latin1"), 10);
  new DataView(bytes.buffer).setUint16(10 + text.length, 0x3c00, true);
  new DataView(bytes.buffer).setUint16(12 + text.length, 0xc000, true);
  new DataView(bytes.buffer).setUint16(14 + text.length, 0x3800, true);
  const npy = parseNpy(bytes.buffer);
  assert.deepEqual(npy.shape, [3]);
  assert.deepEqual(Array.from(npy.data), [1, -2, 0.5]);
});

const size = () => ({ width: embedded.width, height: embedded.height });

test("three foreground points: the local single mask equals the service's", async () => {
  const points = [[250, 200], [300, 180], [270, 240]];
  const want = await client.segment({ image_id: embedded.image_id, points, labels: [1, 1, 1], num_masks: 1 });
  const got = await decoder.decode(embedding.data, { points, labels: [1, 1, 1], ...size() });
  assert.equal(got.masks.length, 1);
  const iou = maskIou(got.masks[0], decodeRle(want.masks[0].rle));
  assert.ok(iou >= 0.99, `IoU ${iou}`);
  assert.ok(Math.abs(got.iou[0] - want.masks[0].score) < 1e-3);
});

test("a box: the local mask is the best of the service's three", async () => {
  const box = [120, 90, 400, 330];
  const want = await client.segment({ image_id: embedded.image_id, box, num_masks: 3 });
  const best = want.masks.reduce((a, b) => (b.score > a.score ? b : a));
  const got = await decoder.decode(embedding.data, { box, ...size() });
  const iou = maskIou(got.masks[0], decodeRle(best.rle));
  assert.ok(iou >= 0.99, `IoU ${iou}`);
});

test("refinement with the previous low-res mask equals the service's mask_input_id", async () => {
  const first = await client.segment({ image_id: embedded.image_id, points: [[250, 200]], labels: [1], num_masks: 3 });
  const firstLocal = await decoder.decode(embedding.data, { points: [[250, 200]], labels: [1], ...size() });
  const points = [[250, 200], [330, 260]];
  const want = await client.segment({
    image_id: embedded.image_id, points, labels: [1, 0], num_masks: 1, mask_input_id: first.mask_input_id,
  });
  const got = await decoder.decode(embedding.data, { points, labels: [1, 0], maskInput: firstLocal.lowRes[0], ...size() });
  const iou = maskIou(got.masks[0], decodeRle(want.masks[0].rle));
  assert.ok(iou >= 0.99, `IoU ${iou}`);
  const plain = await decoder.decode(embedding.data, { points, labels: [1, 0], ...size() });
  assert.ok(maskIou(plain.masks[0], got.masks[0]) < 1, "the mask input changed nothing");
});

test("errors carry the service's code", async () => {
  await assert.rejects(client.getEmbedding("0".repeat(64)), (err) => {
    assert.ok(err instanceof EdgeSamError);
    assert.equal(err.status, 404);
    assert.equal(err.code, "embedding_not_found");
    return true;
  });
  const anonymous = new EdgeSamClient(URL_, { timeoutMs: 10000 });
  await assert.rejects(anonymous.models(), (err) => err.code === "unauthenticated" && err.status === 401);
});
