#!/usr/bin/env bash
# Screenshots of a search's report and of its picked model in the MLflow UI, taken in headless Chromium
# (Debian: apt-get install chromium), for the README (docs/img/):
#   OUTDIR/report.png        the newest report of WORKDIR (outputs/<date>/<time>/report/report.html), whole page
#   OUTDIR/mlflow-model.png  the MLflow UI page of the registered version that alias `deploy` points at: its
#                            description (the model card), the alias and the autoprune.* tags
#   OUTDIR/mlflow-runs.png   the experiment's runs (search, baseline, trials)
#   OUTDIR/mlflow-trial.png  the run of the picked trial
# WORKDIR is where the search ran (mlflow.db, outputs/). The committed images come from, in an empty folder:
#   python -m autoprune                          # the default search
#   python -m autoprune pick search.study_name=... pick.max_latency_ms=...   # the command the report recommends
#   <checkout>/docs/screenshot-mlflow.sh . <checkout>/docs/img
# Usage: docs/screenshot-mlflow.sh [WORKDIR] [OUTDIR] [REGISTERED-MODEL-NAME]
#   PYTHON (default: python3) must have autoprune's dependencies (mlflow); the MLflow server runs on 127.0.0.1.
set -euo pipefail
workdir=$(realpath "${1:-.}")
outdir=$(realpath -m "${2:-.}")
name=${3:-}
python=${PYTHON:-python3}
port=${PORT:-5077}
mkdir -p "$outdir"
cd "$workdir"
[ -f mlflow.db ] || { echo "no mlflow.db in $workdir: run the search there first" >&2; exit 2; }
shoot() {   # shoot OUT.png WIDTHxHEIGHT URL
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$(mktemp -d)" \
    --window-size="$2" --virtual-time-budget=30000 --screenshot="$1" "$3" 2>/dev/null
  [ -s "$1" ] || { echo "no screenshot of $3 (chromium failed or timed out)" >&2; exit 1; }
  echo "screenshot: $1"
}

report=$(ls -t outputs/*/*/report/report.html 2>/dev/null | head -1 || true)
if [ -n "$report" ]; then
  shoot "$outdir/report.png" 1200,2700 "file://$workdir/$report"
else
  echo "no outputs/*/*/report/report.html in $workdir: report.png not taken" >&2
fi

# The registered version behind alias `deploy`, its trial run and the experiment (read from the store).
read -r model version run experiment < <("$python" - "$name" <<'EOF'
import sys
from mlflow import MlflowClient

client = MlflowClient("sqlite:///mlflow.db")
names = [sys.argv[1]] if sys.argv[1] else [m.name for m in client.search_registered_models()]
for name in names:
    if "deploy" in client.get_registered_model(name).aliases:
        v = client.get_model_version_by_alias(name, "deploy")
        print(name, v.version, v.run_id, client.get_run(v.run_id).info.experiment_id)
        break
else:
    sys.exit("no registered model with alias 'deploy': run the pick command first")
EOF
)
[ -n "${run:-}" ] || exit 1

setsid "$python" -m mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port "$port" --workers 1 \
  >"$outdir/.mlflow-ui.log" 2>&1 &
server=$!   # its own process group: the uvicorn it starts goes with it
trap 'kill -- -$server 2>/dev/null; rm -f "$outdir/.mlflow-ui.log"' EXIT
until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
  kill -0 $server 2>/dev/null || { cat "$outdir/.mlflow-ui.log" >&2; exit 1; }
  sleep 1
done
ui="http://127.0.0.1:$port/#"
shoot "$outdir/mlflow-model.png" 1600,2000 "$ui/models/$model/versions/$version"
shoot "$outdir/mlflow-runs.png" 1600,1000 "$ui/experiments/$experiment/runs"
shoot "$outdir/mlflow-trial.png" 1600,1400 "$ui/experiments/$experiment/runs/$run"
