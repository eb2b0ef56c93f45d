#!/usr/bin/env bash
# Build EdgeSAM's TensorRT encoder engine on this device and print its measured latency.
#
# On the Jetson, from the repository root (runs itself inside the compose service, so the
# engine lands in the same engine-cache volume the service uses):
#     ./deploy/jetson/build-engine.sh
# Inside the container, or on a machine with the package installed natively:
#     build-engine.sh --here
#
# Environment (defaults match the image): EDGESAM_CHECKPOINT, EDGESAM_ENGINE_CACHE_DIR,
# EDGESAM_PRECISION (fp16), EDGESAM_BENCH_ARGS (extra arguments for bench/encoder.py).
set -euo pipefail

here=0
case "${1:-}" in
  --here) here=1 ;;
  -h | --help)
    sed -n '2,13p' "$0"
    exit 0
    ;;
  "") ;;
  *)
    echo "unknown argument: $1 (try --help)" >&2
    exit 2
    ;;
esac

if [[ "$here" -eq 0 ]]; then
  script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  compose_file="${script_dir}/../../docker-compose.yml"
  if ! command -v docker >/dev/null 2>&1 || [[ ! -f "$compose_file" ]]; then
    echo "no docker or no docker-compose.yml next to this script; run with --here instead" >&2
    exit 2
  fi
  if command -v nvpmodel >/dev/null 2>&1; then
    echo "== power mode (host): $(nvpmodel -q 2>/dev/null | head -n 1 || echo unknown)"
  fi
  exec docker compose -f "$compose_file" --profile jetson run --rm --no-deps \
    --entrypoint /opt/edgesam/bin/build-engine.sh edgesam --here
fi

checkpoint="${EDGESAM_CHECKPOINT:-/models/edge_sam_3x.pth}"
cache_dir="${EDGESAM_ENGINE_CACHE_DIR:-/var/cache/edgesam/engines}"
export EDGESAM_CHECKPOINT="$checkpoint" EDGESAM_ENGINE_CACHE_DIR="$cache_dir"
precision="${EDGESAM_PRECISION:-fp16}"
export EDGESAM_BACKEND=tensorrt EDGESAM_DEVICE=cuda EDGESAM_PRECISION="$precision"

bench=""
for candidate in /opt/edgesam/bench/encoder.py "$(pwd)/bench/encoder.py"; do
  if [[ -f "$candidate" ]]; then
    bench="$candidate"
    break
  fi
done

if [[ ! -r "$checkpoint" ]]; then
  echo "checkpoint not found: $checkpoint (mount the weights folder at /models)" >&2
  exit 1
fi
mkdir -p "$cache_dir"
if [[ ! -w "$cache_dir" ]]; then
  echo "engine cache folder is not writable: $cache_dir" >&2
  exit 1
fi

echo "== device"
if [[ -r /etc/nv_tegra_release ]]; then
  head -n 1 /etc/nv_tegra_release
fi
python -c 'import tensorrt as trt; print("TensorRT", trt.__version__)'
python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'

name="$(basename "${checkpoint%.*}")"
onnx_dir="${cache_dir}/onnx"
start=$(date +%s)
echo "== exporting $checkpoint to ONNX in $onnx_dir"
# --for-tensorrt: the opset this TensorRT's ONNX parser reads (16 on JetPack 5's TensorRT 8.5).
python -m engine.export onnx --checkpoint "$checkpoint" --out-dir "$onnx_dir" --name "$name" \
  --for-tensorrt
if [[ ! -f "${onnx_dir}/${name}_encoder.onnx" ]]; then
  echo "export wrote no ${onnx_dir}/${name}_encoder.onnx" >&2
  exit 1
fi
echo "== building the TensorRT engine ($precision) into $cache_dir (first build takes minutes)"
python -m engine.export tensorrt --onnx "${onnx_dir}/${name}_encoder.onnx" \
  --precision "$precision" --cache-dir "$cache_dir"
echo "== engine ready after $(($(date +%s) - start)) s:"
ls -l "$cache_dir"

if [[ -z "$bench" ]]; then
  echo "bench/encoder.py not found: engine built, latency not measured" >&2
  exit 1
fi
echo "== encoder latency (TensorRT)"
# shellcheck disable=SC2086  # EDGESAM_BENCH_ARGS is a list of words on purpose
python "$bench" --backend tensorrt ${EDGESAM_BENCH_ARGS:-}
