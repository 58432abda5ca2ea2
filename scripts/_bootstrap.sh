# Sourced by the scripts in this folder: make sure .venv exists and holds the project.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
python="${JIDOKA_PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python="$candidate"; break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "jidoka: needs Python 3.11 or newer (set JIDOKA_PYTHON)" >&2; exit 1
fi
# Progress goes to stderr, one line per step that takes a while: the first run is silent
# for a minute otherwise, and stdout belongs to the command being run.
fresh=""
if [ ! -x "$venv/bin/python" ]; then
  echo "jidoka: creating .venv and installing dependencies (first run, ~1 min)…" >&2
  fresh=1
  "$python" -m venv "$venv"
fi
stamp="$venv/.jidoka-installed"
extras="${JIDOKA_EXTRAS:-dev}"
sum="$(cat pyproject.toml | cksum)"
want="$sum-$extras"
have="$(cat "$stamp" 2>/dev/null || true)"
# The dev extra includes the server and llm extras: a test venv can run the server as it is.
if [ "$have" != "$want" ] && ! { [ "$extras" = "server,llm" ] && [ "$have" = "$sum-dev" ]; }; then
  if [ -z "$fresh" ]; then
    echo "jidoka: installing dependencies into .venv (pyproject.toml or JIDOKA_EXTRAS changed)…" >&2
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[$extras]" 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -c 'import jidoka' || { echo "jidoka: install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
  echo "jidoka: .venv is ready" >&2
fi
export PATH="$venv/bin:$PATH"
