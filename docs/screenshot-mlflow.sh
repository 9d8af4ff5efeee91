#!/usr/bin/env bash
# Screenshot the MLflow UI of a search in headless Chromium (Debian: apt-get install chromium).
# Usage: docs/screenshot-mlflow.sh [WORKDIR] [OUT.png] [URL-FRAGMENT]
#   WORKDIR: where the search ran (holds mlflow.db); default: current directory
#   URL-FRAGMENT: the UI page, e.g. '#/experiments/1/runs' (default), '#/experiments/1/runs/<run id>' or '#/models/<name>'
set -euo pipefail
workdir=${1:-.}
out=$(realpath -m "${2:-mlflow-ui.png}")
fragment=${3:-#/experiments/1/runs}
port=5077
cd "$workdir"
mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $port >/tmp/mlflow-ui.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 60); do curl -sf http://127.0.0.1:$port/health >/dev/null && break; sleep 1; done
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --window-size=1600,1000 \
  --virtual-time-budget=15000 --screenshot="$out" "http://127.0.0.1:$port/$fragment" 2>/dev/null
[ -s "$out" ] || { echo "no screenshot taken (chromium failed or timed out)" >&2; exit 1; }
echo "screenshot: $out"
