// COCO compressed RLE (the `counts` string pycocotools writes) decoding for the browser.
//
// Format: the mask is flattened column-major (x outer, y inner) and stored as alternating run
// lengths, starting with a run of 0s (possibly empty). Each run length is written as a
// little-endian sequence of 5-bit groups, one character each (char code - 48); bit 0x20 of a
// group says "another group follows", bit 0x10 of the last group is the sign. From the third
// run on, the stored value is the difference to the run two places earlier.
"use strict";

const EdgeSamRle = (() => {
  /** counts string -> Uint32Array of run lengths (0s, 1s, 0s, ...). */
  function decodeCounts(counts) {
    const runs = [];
    let pos = 0;
    const n = counts.length;
    while (pos < n) {
      let value = 0;
      let shift = 0;
      let more = true;
      let group = 0;
      while (more) {
        if (pos >= n) throw new Error("truncated RLE counts string");
        group = counts.charCodeAt(pos) - 48;
        if (group < 0 || group > 63) throw new Error("invalid character in RLE counts string");
        value |= (group & 0x1f) << shift;
        more = (group & 0x20) !== 0;
        shift += 5;
        pos += 1;
      }
      if (group & 0x10) value |= -1 << shift; // sign-extend
      const m = runs.length;
      if (m > 2) value += runs[m - 2];
      runs.push(value);
    }
    return runs;
  }

  /** {size: [h, w], counts} -> Uint8Array h*w in row-major order (1 inside the mask). */
  function decode(rle) {
    const h = rle.size[0];
    const w = rle.size[1];
    const out = new Uint8Array(h * w);
    forEachRun(rle, (start, len) => {
      // Column-major [start, start+len) -> row-major writes.
      let x = Math.floor(start / h);
      let y = start - x * h;
      for (let k = 0; k < len; k++) {
        out[y * w + x] = 1;
        y += 1;
        if (y === h) {
          y = 0;
          x += 1;
        }
      }
    });
    return out;
  }

  /** Calls fn(start, length) for every run of 1s, in column-major flat indices. */
  function forEachRun(rle, fn) {
    const runs = decodeCounts(rle.counts);
    const total = rle.size[0] * rle.size[1];
    let idx = 0;
    for (let i = 0; i < runs.length; i++) {
      const len = runs[i];
      if (len < 0 || idx + len > total) throw new Error("RLE runs exceed the mask size");
      if (i % 2 === 1 && len > 0) fn(idx, len);
      idx += len;
    }
  }

  return { decodeCounts, decode, forEachRun };
})();

if (typeof module !== "undefined") module.exports = EdgeSamRle;
