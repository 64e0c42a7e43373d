#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment.
#   scripts/setup_env.sh [VENV_DIR]      default: .venv
# The environment is reused while constraints.txt and pyproject.toml are unchanged (a hash stamp inside the
# venv records what it was built from); otherwise it is rebuilt from scratch so no stale pins survive.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python="${PYTHON:-python3}"
want=$("$python" scripts/env_key.py)
stamp="$venv/.lit_explain-env"

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  # Same pins: only make sure this checkout is the one installed (cheap when it already is).
  # -I: isolated mode, so the check sees what the venv installs, not ./lit_explain in the current folder
  # (which would always pass and leave a venv pointing at a deleted clone, e.g. a cached CI venv).
  if ! "$venv/bin/python" -I -c 'import lit_explain, pathlib, sys; sys.exit(pathlib.Path(lit_explain.__file__).resolve().parents[1] != pathlib.Path(sys.argv[1]).resolve())' "$PWD" 2>/dev/null; then
    "$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
  fi
  exit 0
fi

echo "Setting up $venv (torch + torchvision + lightning; about 2 minutes the first time)..." >&2
rm -rf "$venv"
"$python" -m venv "$venv"
# The local mirror prints one warning per missing index folder; they are noise, not errors.
"$venv/bin/pip" install --quiet --upgrade pip setuptools wheel 2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/pip" install --quiet -c constraints.txt -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/python" -c "import torch, torchvision, lightning, lit_explain" \
  || { echo "error: the environment in $venv does not import torch/torchvision/lightning" >&2; exit 1; }
echo "$want" > "$stamp"
