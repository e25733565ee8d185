#!/usr/bin/env bash
# Start / stop the local stack: Prefect server, MLflow server, Ray head, and the Prefect deployment runner.
#   infra/stack.sh up | down | status
# Each service runs in its own session (setsid); its pid is recorded in .run/<name>.pid, and `down`
# stops exactly those process groups, nothing else on the machine.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=infra/env.sh
source infra/env.sh
VENV="$ROOT/.venv/bin"
mkdir -p "$RUN_DIR/logs" "$MLFLOW_STORE_DIR/artifacts"

say() { printf '\033[1m[stack]\033[0m %s\n' "$*"; }

running() { [[ -f "$RUN_DIR/$1.pid" ]] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null; }

start() {  # start NAME CMD...: run CMD in a new session, log to .run/logs/NAME.log, record its pid
  local name=$1; shift
  if running "$name"; then say "$name already running (pid $(cat "$RUN_DIR/$name.pid"))"; return; fi
  setsid "$@" >"$RUN_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$RUN_DIR/$name.pid"
  say "$name started (pid $!, log ${RUN_DIR#"$ROOT"/}/logs/$name.log)"
}

wait_http() {  # wait_http NAME URL TIMEOUT: any HTTP answer counts (Ray's dashboard says 401 without a token)
  local name=$1 url=$2 timeout=$3 t=0
  until [[ "$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" != "000" ]]; do
    if ! running "$name"; then say "$name exited; last lines of its log:"; tail -n 30 "$RUN_DIR/logs/$name.log"; exit 1; fi
    sleep 1; t=$((t + 1))
    if (( t >= timeout )); then say "$name not answering at $url after ${timeout}s"; tail -n 30 "$RUN_DIR/logs/$name.log"; exit 1; fi
  done
  say "$name ready at $url (${t}s)"
}

ensure_ray_token() {  # the cluster's auth token, made once per clone (Ray would otherwise look in ~/.ray)
  [[ -s "$RAY_AUTH_TOKEN_PATH" ]] && return
  new_secret "$RAY_AUTH_TOKEN_PATH"
  say "created the Ray auth token in ${RAY_AUTH_TOKEN_PATH#"$ROOT"/}"
}

ensure_prefect_auth() {  # the string Prefect's API and UI ask for, made once per clone
  if [[ ! -s "$PREFECT_AUTH_STRING_PATH" ]]; then
    new_secret "$PREFECT_AUTH_STRING_PATH" modelyard:
    say "created Prefect's API auth string in ${PREFECT_AUTH_STRING_PATH#"$ROOT"/} (the UI's login asks for it)"
  fi
  PREFECT_API_AUTH_STRING="$(cat "$PREFECT_AUTH_STRING_PATH")"
  export PREFECT_API_AUTH_STRING PREFECT_SERVER_API_AUTH_STRING="$PREFECT_API_AUTH_STRING"
}

up() {
  ensure_ray_token
  ensure_prefect_auth
  start prefect "$VENV/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
  start mlflow "$VENV/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$MLFLOW_STORE_DIR/mlflow.db" --default-artifact-root "file://$MLFLOW_STORE_DIR/artifacts"
  # serve.ingress: haproxy is read by Serve's controller, so it is set where the Ray head starts. HAProxy's
  # files go under the run directory (Ray's default is a fixed /tmp path shared by every stack).
  if [[ "$("$VENV/python" -c 'from modelyard.config import load_config; print(load_config("'"$MODELYARD_PARAMS"'").serve.ingress)')" == haproxy ]]; then
    # In a directory of this user's own (mktemp: 0700; HAProxy's admin socket is mode 666), and a short one: Ray
    # adds the node's id (56 characters) and HAProxy refuses socket paths over 97. `down` removes it.
    local haproxy_dir
    haproxy_dir="$(mktemp -d /tmp/my-hap.XXXXXX)"
    echo "$haproxy_dir" >"$RUN_DIR/haproxy.dir"
    export RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_HAPROXY_CONFIG_FILE_LOC="$haproxy_dir/haproxy.cfg" \
           RAY_SERVE_HAPROXY_SOCKET_PATH="$haproxy_dir/admin.sock" RAY_SERVE_HAPROXY_SERVER_STATE_BASE="$haproxy_dir" \
           RAY_SERVE_HAPROXY_SERVER_STATE_FILE="$haproxy_dir/server-state"
    haproxy_on 127.0.0.1
    say "serving ingress: HAProxy (stats :$RAY_SERVE_HAPROXY_STATS_PORT and metrics :$RAY_SERVE_HAPROXY_METRICS_PORT on 127.0.0.1)"
  fi
  # --block keeps `ray start` in the foreground of its own session, so its pid owns the whole Ray head.
  start ray "$VENV/ray" start --head --block --node-ip-address 127.0.0.1 --port "$RAY_PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$RAY_DASHBOARD_PORT" --ray-client-server-port "$RAY_CLIENT_PORT" \
    --dashboard-agent-listen-port "$RAY_DASHBOARD_AGENT_PORT" --num-cpus "$(nproc)" \
    --object-store-memory 1000000000 --disable-usage-stats
  wait_http prefect "http://127.0.0.1:$PREFECT_PORT/api/health" 120
  wait_http mlflow "http://127.0.0.1:$MLFLOW_PORT/health" 120
  wait_http ray "http://127.0.0.1:$RAY_DASHBOARD_PORT/api/version" 120
  start runner "$VENV/python" -m pipelines.serve_deployments "$MODELYARD_PARAMS"
  local t=0
  until "$VENV/prefect" deployment inspect training-pipeline/training-pipeline >/dev/null 2>&1; do
    running runner || { say "deployment runner exited:"; tail -n 30 "$RUN_DIR/logs/runner.log"; exit 1; }
    sleep 2; t=$((t + 2)); (( t < 120 )) || { say "deployment not registered after 120s"; exit 1; }
  done
  say "deployment training-pipeline/training-pipeline registered"
  # After a restart, the champions already in the registry are served again (Serve's state lives in Ray).
  "$VENV/python" -m serving "$MODELYARD_PARAMS" --if-any >"$RUN_DIR/logs/serve.log" 2>&1 \
    || { say "serving the registered champions failed:"; tail -n 30 "$RUN_DIR/logs/serve.log"; exit 1; }
  say "serving $(grep -c '"name"' "$RUN_DIR/logs/serve.log" || true) registered champion(s) (log: ${RUN_DIR#"$ROOT"/}/logs/serve.log)"
}

descendants() {  # every process below PID, whatever its process group
  local child
  for child in $(pgrep -P "$1"); do echo "$child"; descendants "$child"; done
}

stop_groups() {  # GRACE NAME...: TERM their process groups, wait for them together, KILL any left after GRACE s
  local grace=$1 name pid entry left t pids=() below=()
  shift
  for name in "$@"; do
    [[ -f "$RUN_DIR/$name.pid" ]] || continue
    pid=$(cat "$RUN_DIR/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      # Ray's workers and actors (Serve replicas) are the raylet's children in process groups of their own:
      # noted now, so a raylet killed before it stopped them does not leave them behind.
      below+=($(descendants "$pid"))
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      pids+=("$name:$pid")
    fi
    rm -f "$RUN_DIR/$name.pid"
  done
  for ((t = 0; t <= grace; t++)); do
    left=0
    for entry in "${pids[@]}"; do pgrep -g "${entry#*:}" >/dev/null 2>&1 && left=1; done
    (( left )) || break
    (( t < grace )) && sleep 1
  done
  for entry in "${pids[@]}"; do
    name=${entry%%:*} pid=${entry#*:}
    if pgrep -g "$pid" >/dev/null 2>&1; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
    say "$name stopped (process group $pid)"
  done
  for pid in "${below[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}

finished_runs_closing() {  # RUNNER_PID: a flow-run process is still there although Prefect has no run active
  local active
  pgrep -P "$1" -f spawn_main >/dev/null 2>&1 || return 1
  active=$(curl -sf -u "${PREFECT_API_AUTH_STRING:-}" -X POST "$PREFECT_API_URL/flow_runs/count" -H 'Content-Type: application/json' \
    -d '{"flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}}}' 2>/dev/null) || return 1
  [[ "$active" == 0 ]]
}

down() {
  # Prefect's runner, on TERM, forces every run it still has a process for to Cancelled, even one that has
  # reported Completed and whose process is only closing (Ray, MLflow and Prefect letting go): a `down` right
  # after a run ended would rewrite its history. Such processes get up to 30 s to exit first; a run still
  # active is cancelled at once.
  local t
  if running runner; then
    for ((t = 0; t < 30; t++)); do finished_runs_closing "$(cat "$RUN_DIR/runner.pid")" || break; sleep 1; done
  fi
  # The runner first, so a flow run in flight can still report to Prefect; MLflow and Prefect (whose sqlite
  # stores are what a restart keeps) get 30 s to close; the Ray head keeps nothing a restart needs, and its
  # gcs_server and raylet outlive a TERM of their group by 30 s or more, so it gets 5.
  stop_groups 30 runner
  stop_groups 30 mlflow prefect &
  stop_groups 5 ray
  wait
  local haproxy_dir
  haproxy_dir="$(cat "$RUN_DIR/haproxy.dir" 2>/dev/null || true)"
  [[ $haproxy_dir == /tmp/my-hap.* ]] && rm -rf "$haproxy_dir"
  rm -f "$RUN_DIR/haproxy.dir"
  # Killing the head leaves Ray's pointer to it behind; a later bare `ray.init()` would try to join it.
  if [[ "$(cat /tmp/ray/ray_current_cluster 2>/dev/null)" == "127.0.0.1:$RAY_PORT" ]]; then
    rm -f /tmp/ray/ray_current_cluster
  fi
}

status() {
  local name
  for name in prefect mlflow ray runner; do
    if running "$name"; then say "$name: running (pid $(cat "$RUN_DIR/$name.pid"))"; else say "$name: stopped"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
