#!/usr/bin/env bash
# Set up (first time only), then fine-tune the embedded default on CPU: draft train --preset quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1  # the embedded model needs no download
out=${1:-runs/quickstart-$(date +%Y%m%d-%H%M%S)}
exec .venv/bin/draft train --preset quickstart --out "$out"
