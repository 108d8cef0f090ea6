#!/usr/bin/env bash
# Creates (or reuses) .venv in the checkout and installs the pinned environment from
# requirements/pins.txt, then the package itself (editable). Idempotent: a stamp of the
# pins file's hash skips the install when nothing changed.
# Env: PYTHON (default python3.11, else python3), RANKMIXER_DEVICE=cpu|cuda (default: auto).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
venv="$root/.venv"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
device="${RANKMIXER_DEVICE:-}"
if [ -z "$device" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then device=cuda; else device=cpu; fi
fi
stamp="$venv/.rankmixer-installed"
want="$(cat requirements/pins.txt pyproject.toml | sha256sum | cut -d' ' -f1)-$device"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
deps=(); nodeps=()
while IFS= read -r line; do
  spec="$(echo "${line%%#*}" | xargs)"
  [ -n "$spec" ] || continue
  marker=""
  case "$line" in *"#@"*) marker="$(echo "${line##*#@}" | xargs)";; esac
  case "$marker" in
    cpu)  [ "$device" = cpu ] && deps+=("$spec");;
    cuda) [ "$device" = cuda ] && deps+=("$spec");;
    nodeps) nodeps+=("$spec");;
    *) deps+=("$spec");;
  esac
done < requirements/pins.txt
echo "setup: installing for $device into $venv" >&2
"${pip[@]}" "${deps[@]}"
"${pip[@]}" --no-deps "${nodeps[@]}"
"${pip[@]}" --no-deps --no-build-isolation -e "$root"
echo "$want" > "$stamp"
