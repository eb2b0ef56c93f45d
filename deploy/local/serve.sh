#!/usr/bin/env bash
# Set up and run the service on this machine (CPU), in one command:
#   bash deploy/local/serve.sh
# Creates .venv (pinned CPU torch first: an unpinned torch pulls a multi-GB CUDA build),
# installs the project, fetches the official EdgeSAM checkpoint when the network allows it
# (NTU S-Lab License 1.0, non-commercial use), and otherwise starts with random weights,
# which the service announces in its log, /readyz, every response header and the web page.
# Then serves HTTP on :8000 (web page at /, API docs at /docs) and gRPC on :50051.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.13.0"
fi
.venv/bin/pip install -q -e ./clients/python -e .  # the client: from the checkout, not PyPI

if [ -z "${EDGESAM_CHECKPOINT:-}" ]; then
  if ! .venv/bin/python -m service.weights download "${EDGESAM_MODEL:-edge_sam}" --timeout 30; then
    echo "serve: no checkpoint could be fetched; starting with RANDOM WEIGHTS (masks are meaningless)." >&2
    export EDGESAM_ALLOW_RANDOM_WEIGHTS=1
  fi
fi
exec .venv/bin/python -m service
