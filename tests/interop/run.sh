#!/usr/bin/env bash
# Interop tests: Tern against clients no one here wrote (Python `websockets`
# from PyPI, Node `ws` from npm). Builds nothing: uses the release binary at
# $CARGO_TARGET_DIR/release/tern (or $TERN_BIN), installs each client's
# dependencies when missing (a venv under python/.venv, node/node_modules from
# the committed package-lock.json), then runs both suites, each against its
# own `tern serve` on free loopback ports with a temp data dir.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${CARGO_TARGET_DIR:=$HOME/.cache/tern-target}"
export TERN_BIN="${TERN_BIN:-$CARGO_TARGET_DIR/release/tern}"
if [ ! -x "$TERN_BIN" ]; then
  echo "interop: no tern binary at $TERN_BIN (build it first: cargo build --release)" >&2
  exit 2
fi

# Python: a venv local to the test dir, so the system site is untouched.
py="$here/python"
venv="$py/.venv"
if ! "$venv/bin/python" -c 'import websockets' >/dev/null 2>&1; then
  echo "interop: installing Python websockets into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$py/requirements.txt"
fi

# Node: exactly the locked versions.
node_dir="$here/node"
if [ ! -f "$node_dir/node_modules/ws/package.json" ]; then
  echo "interop: installing Node ws (npm ci)"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi

status=0
echo "== interop: Python websockets =="
"$venv/bin/python" "$py/interop_test.py" || status=1
echo "== interop: Node ws =="
(cd "$node_dir" && node --test interop.test.mjs) || status=1
exit $status
