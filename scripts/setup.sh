#!/usr/bin/env bash
# Create .venv (once) and install draft with its test extras and the plugins/ distributions;
# re-installs only when a pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# torch and torchvision as a matching pair (TORCH_SPEC overrides, e.g. for another CUDA build).
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
fi
stamp=.venv/.draft-installed
# The reward plugin distributions (plugins/*) are installed editable too, without their
# dependencies (the core already brings them), so `draft plugins` lists them.
want=$(cat pyproject.toml plugins/*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
  editables=()
  for plugin in plugins/*/; do editables+=(-e "$plugin"); done
  .venv/bin/python -m pip install -q --no-deps "${editables[@]}"
  echo "$want" > "$stamp"
fi
