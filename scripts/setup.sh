#!/usr/bin/env bash
# Create .venv (once) and install draft with its test and tracker extras and the plugins/ distributions;
# re-installs only when a pyproject.toml changes. pip's own output goes to .venv/setup.log and is
# shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
log=.venv/setup.log
quietly() {  # run a step, keeping its output in the log; on failure show the log's end and stop
  if ! "$@" >>"$log" 2>&1; then
    echo "setup failed: $*" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}
if [ ! -x .venv/bin/python ]; then
  echo "setting up .venv (first time only, about two minutes)" >&2
  "$PY" -m venv .venv
  quietly .venv/bin/python -m pip install -q --upgrade pip
fi
# torch and torchvision as a matching pair (TORCH_SPEC overrides, e.g. for another CUDA build).
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  # shellcheck disable=SC2086
  quietly .venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
fi
stamp=.venv/.draft-installed
# The reward plugin distributions (plugins/*) are installed editable too, without their
# dependencies (the core already brings them), so `draft plugins` lists them.
want=$(cat pyproject.toml plugins/*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  quietly .venv/bin/python -m pip install -q -e ".[test,trackers]"  # trackers: about 15 s and 220 MB more
  editables=()
  for plugin in plugins/*/; do editables+=(-e "$plugin"); done
  quietly .venv/bin/python -m pip install -q --no-deps "${editables[@]}"
  echo "$want" > "$stamp"
fi
