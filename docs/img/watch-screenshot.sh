#!/usr/bin/env bash
# Regenerate docs/img/watch-terminal.svg (what `fleetloop watch` shows) and docs/img/watch.png (`watch --plot`) from a
# real run: the whole stack up in a throw-away state directory on free ports, a bootstrapped production model, the
# collect stage served, and a fleet in fog sending telemetry, with a latency fault after 30 simulated seconds.
# Also prints Prometheus' answer to the collision rate by model version (the PromQL of docs/observability.md).
#
#   docs/img/watch-screenshot.sh                       # from the repository root, `fleetloop` on PATH
#   FLEETLOOP="python -m fleetloop.cli.main" docs/img/watch-screenshot.sh
#
# Knobs (environment): VEHICLES (50), MINUTES (simulated, 6), SHOT_AFTER_S (wall seconds of the fleet before the
# screenshot, 150). Takes a few minutes; `fleetloop down` and the state directory's removal run on any exit.
set -euo pipefail
FLEETLOOP=${FLEETLOOP:-fleetloop}
PY=${PYTHON:-python3}
OUT=$(cd "$(dirname "$0")" && pwd)
VEHICLES=${VEHICLES:-50}
MINUTES=${MINUTES:-6}
SHOT_AFTER_S=${SHOT_AFTER_S:-150}

FLEETLOOP_STATE_DIR=$(mktemp -d -t fleetloop-watch-XXXXXX)
export FLEETLOOP_STATE_DIR
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for name in KAFKA_PORT KAFKA_CONTROLLER_PORT MLFLOW_PORT OTA_REPO_PORT PROMETHEUS_PORT ALERTMANAGER_PORT; do
  export "FLEETLOOP_$name=$(free_port)"
done
export FLEETLOOP_PROMETHEUS_SCRAPE_INTERVAL_S=2
export MLFLOW_DISABLE_TELEMETRY=true FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 RAY_USAGE_STATS_ENABLED=0

sim_pid=""
cleanup() {
  set +e # take everything down whatever fails on the way
  if [ -n "$sim_pid" ]; then
    kill -INT "$sim_pid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$sim_pid" 2>/dev/null || break; sleep 1; done
    kill -TERM "$sim_pid" 2>/dev/null # still closing after a minute: the state directory goes anyway
    wait "$sim_pid" 2>/dev/null
  fi
  $FLEETLOOP down >/dev/null 2>&1
  rm -rf "$FLEETLOOP_STATE_DIR"
}
trap cleanup EXIT

echo "state directory $FLEETLOOP_STATE_DIR, Prometheus on port $FLEETLOOP_PROMETHEUS_PORT"
$FLEETLOOP up
$FLEETLOOP model bootstrap --ticks 100 --max-train-seconds 20
$FLEETLOOP pipeline serve --stage collect
fault_tick=300 # 30 simulated seconds of a healthy model first
# A background job of a script ignores Ctrl-C (SIGINT), and so does a script itself started in the background: the
# fleet starts with SIGINT restored, so the Ctrl-C that ends it after the pictures reaches it (sim run stops cleanly).
"$PY" -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
  $FLEETLOOP sim run --vehicles "$VEHICLES" --minutes "$MINUTES" --weather fog --seed 7 \
  --inject "latency_spike:p=0.3,ms=300,start=$fault_tick" --json >/dev/null &
sim_pid=$!
sleep "$SHOT_AFTER_S"
kill -0 "$sim_pid" # still running: the screenshot shows it live
$FLEETLOOP watch --svg "$OUT/watch-terminal.svg"
$FLEETLOOP watch --plot "$OUT/watch.png" --minutes "$(((SHOT_AFTER_S + 59) / 60))"
promql=$("$PY" -c 'from fleetloop.platform.metrics.query import COLLISION_RATE_BY_MODEL_VERSION as q; print(q)')
echo "collisions per 1,000 km by model version (Prometheus):"
curl -sfG "http://127.0.0.1:$FLEETLOOP_PROMETHEUS_PORT/api/v1/query" --data-urlencode "query=$promql"
echo
