#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment.
#   scripts/setup_env.sh [VENV_DIR] [runtime|dev]      defaults: .venv, dev
# runtime: what `make demo` needs (torch, torchvision, Lightning, timm, ..., the fast-png and fast-tensorboard
# extras); dev adds the test tools, the optional W&B / MLflow loggers and the peers the tests compare against. A runtime venv is topped up to dev
# in place when `make test` asks for it.
# The environment is reused while constraints.txt and pyproject.toml are unchanged (a stamp inside the venv
# records the hash it was built from and its level); otherwise it is rebuilt from scratch so no stale pins
# survive.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
level="${2:-dev}"
case "$level" in runtime | dev) ;; *) echo "error: level must be runtime or dev, not '$level'" >&2; exit 2 ;; esac
python="${PYTHON:-python3}"
want=$("$python" scripts/env_key.py)
stamp="$venv/.lit_explain-env"

quiet_pip() {
  # The local mirror prints one warning per missing index folder; they are noise, not errors.
  "$venv/bin/pip" "$@" 2>&1 | grep -v "^WARNING: Location" || true
}
# uv installs the same pins faster than pip (measured here: 53 s against 136 s for the runtime set-up from an
# empty cache), which is most of what a first `make demo` waits for. It gets pip's index settings (uv does not read
# pip.conf) and pip's pick-the-best-version-from-any-index rule; if uv cannot be had or fails, pip does it.
uv_install() {
  [ "${LIT_EXPLAIN_NO_UV:-}" = 1 ] && return 1
  local uv="$venv/bin/uv"
  [ -x "$uv" ] || uv=$(command -v uv || true)
  if [ -z "$uv" ]; then
    quiet_pip install --quiet -c constraints.txt uv
    uv="$venv/bin/uv"
  fi
  [ -x "$uv" ] || return 1
  local index_args=()
  mapfile -t index_args < <("$venv/bin/pip" config list 2>/dev/null | "$venv/bin/python" scripts/pip_index_args.py)
  # dev: --compile-bytecode, as pip does. Without .pyc files every process recompiles what it imports where
  # byte-code writing is off (PYTHONDONTWRITEBYTECODE, as in CI): measured +2 to +5 min on the test suite. The
  # runtime set-up skips it (+33 s on a first `make demo`; the fit writes the .pyc files it needs itself).
  local compile=()
  [ "$2" = dev ] && compile=(--compile-bytecode)
  "$uv" pip install --quiet "${compile[@]}" --python "$venv/bin/python" --index-strategy unsafe-best-match \
    "${index_args[@]}" -c constraints.txt -e "$1"
}
install() {
  # The runtime takes the two small C speed-ups for the pictures (ISA-L deflate, C CRC for TensorBoard's
  # records): without them the demo's callbacks took 9.6-10.3% of training instead of about 5%.
  local spec=".[fast-png,fast-tensorboard]"
  [ "$1" = dev ] && spec=".[dev]"
  if ! uv_install "$spec" "$1"; then
    echo "Installing with pip (uv was not available or failed; this takes a few minutes longer)..." >&2
    quiet_pip install --quiet -c constraints.txt -e "$spec"
  fi
  "$venv/bin/python" -c "import torch, torchvision, lightning, lit_explain" \
    || { echo "error: the environment in $venv does not import torch/torchvision/lightning" >&2; exit 1; }
  printf '%s\n%s\n' "$want" "$1" > "$stamp"
}

have_key=$(sed -n 1p "$stamp" 2>/dev/null || true)
# Stamps written before levels existed hold the key only: those venvs were built with dev.
have_level=$(sed -n 2p "$stamp" 2>/dev/null || true)
have_level="${have_level:-dev}"
if [ -x "$venv/bin/python" ] && [ "$have_key" = "$want" ]; then
  if [ "$level" = dev ] && [ "$have_level" = runtime ]; then
    echo "Adding the test and logger dependencies to $venv (about 1-2 minutes)..." >&2
    install dev
  fi
  # Same pins: only make sure this checkout is the one installed (cheap when it already is).
  # -I: isolated mode, so the check sees what the venv installs, not ./lit_explain in the current folder
  # (which would always pass and leave a venv pointing at a deleted clone, e.g. a cached CI venv).
  if ! "$venv/bin/python" -I -c 'import lit_explain, pathlib, sys; sys.exit(pathlib.Path(lit_explain.__file__).resolve().parents[1] != pathlib.Path(sys.argv[1]).resolve())' "$PWD" 2>/dev/null; then
    quiet_pip install --quiet --no-deps --no-build-isolation -e .
  fi
  exit 0
fi

echo "Setting up $venv ($level: torch + torchvision + lightning; about 1 minute the first time, more with the dev tools)..." >&2
# Only a virtual environment is replaced: VENV pointing at any other folder (`make demo VENV=.`) is refused,
# so nothing the set-up did not make is deleted.
if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
  echo "error: $venv exists and is not a virtual environment; refusing to replace it (choose another VENV)" >&2
  exit 1
fi
rm -rf "$venv"
"$python" -m venv "$venv"
quiet_pip install --quiet --upgrade pip setuptools wheel
install "$level"
