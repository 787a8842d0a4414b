#!/usr/bin/env bash
# Create .venv (once) and install draft with its test, tracker and serve extras and the plugins/ distributions;
# re-installs only when a pyproject.toml changes. pip's own output goes to .venv/setup.log and is
# shown only when a step fails. As root on Debian/Ubuntu it also installs Chromium once, for the
# report page's browser tests (DRAFT_NO_BROWSER=1 skips that; without a browser they are skipped).
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
# The reward plugin distributions (plugins/*) are installed editable too, with their dependencies
# and test extras (what a plugin needs beyond the core, e.g. ocr's onnxruntime, and the reference
# packages its tests compare with), so `draft plugins` lists them and their tests run.
want=$(cat pyproject.toml plugins/*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # trackers: about 15 s and 220 MB more; quantize (torchao): the suite's model.quantize=int8 tests;
  # serve: draft reward serve (starlette, uvicorn)
  quietly .venv/bin/python -m pip install -q -e ".[test,trackers,quantize,serve]"
  editables=()
  for plugin in plugins/*/; do editables+=(-e "${plugin%/}[test]"); done
  quietly .venv/bin/python -m pip install -q "${editables[@]}"
  echo "$want" > "$stamp"
fi
# A headless browser for tests/test_report.py: best effort and tried once (.venv/.browser-tried),
# since the suite runs, skipping those tests, without one.
if [ -z "${DRAFT_NO_BROWSER:-}" ] && [ ! -e .venv/.browser-tried ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && ! command -v google-chrome >/dev/null; then
  touch .venv/.browser-tried
  echo "installing chromium with apt-get for the report page's browser tests (once; DRAFT_NO_BROWSER=1 skips)" >&2
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >>"$log" 2>&1; then
    echo "could not install chromium (see $log); the browser tests will be skipped" >&2
  fi
fi
