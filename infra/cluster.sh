#!/usr/bin/env bash
# A Ray cluster on one machine, for trying the cluster path without Kubernetes and for the tests that prove it:
# a head and NODES-1 worker nodes, each a Linux network namespace with its own address on a bridge of its own
# and its own /tmp (a mount namespace), joined with the stack's Ray token. Root (or CAP_NET_ADMIN +
# CAP_SYS_ADMIN) is needed for namespaces.
#   infra/cluster.sh up [NODES]         start NODES nodes (default 3); node 0 is the head
#   infra/cluster.sh down               remove every namespace, link and process `up` made
#   infra/cluster.sh status             the nodes and what Ray sees
#   infra/cluster.sh exec NODE CMD...   run CMD on node NODE (its network, its /tmp, the cluster's Ray address)
#   infra/cluster.sh kill NODE          SIGKILL every process of node NODE: a machine lost
#   infra/cluster.sh start NODE         start node NODE's Ray again (a lost machine back)
# With CLUSTER_CONTROL_PLANE=1 (make cluster-up's default) `up` also starts the stack's production stores on
# the head, bound to its address and each asking for credentials: PostgreSQL (Debian's, as user postgres,
# data under the cluster's folder), MLflow on it behind its basic-auth app with the artifact proxy, Prefect's
# server on it behind its auth string, the `modelyard` process work pool with the training deployment, and a
# Prefect worker on node 1 (flow runs execute there, not in a runner beside the server). The credentials are
# made once per cluster in $DIR/secrets (0700) and given to every node, as a real cluster's secret store would.
# On real machines the same happens with `ray start --head` on one and `ray start --address HEAD:6379` on the
# others (README, "Cluster"); nothing else of the stack changes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=infra/env.sh
source infra/env.sh
VENV="$ROOT/.venv/bin"

NAME="${CLUSTER_NAME:-myc}"              # prefix of every namespace and link (short: link names stop at 15)
NET="${CLUSTER_NET:-10.87.0}"            # the bridge's /24; the host is .1, node i is .(10+i)
HEAD_CPUS="${CLUSTER_HEAD_CPUS:-0}"      # the head runs the control plane (GCS, Serve's controller), no work
WORKER_CPUS="${CLUSTER_WORKER_CPUS:-1}"
OBJECT_STORE_BYTES="${CLUSTER_OBJECT_STORE_BYTES:-300000000}"
INGRESS="${CLUSTER_INGRESS:-haproxy}"    # Serve's ingress on every node: haproxy or proxy
DIR="$RUN_DIR/cluster/$NAME"
BRIDGE="$NAME-br"
HEAD_IP="$NET.10"
export RAY_ADDRESS="$HEAD_IP:$RAY_PORT"
unset RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER  # the nodes' addresses are not loopback: Ray must use them as given

CONTROL_PLANE="${CLUSTER_CONTROL_PLANE:-0}"
PG_PORT="${CLUSTER_PG_PORT:-5432}"

say() { printf '\033[1m[cluster]\033[0m %s\n' "$*"; }
ns() { echo "$NAME-n$1"; }
ip_of() { echo "$NET.$((10 + $1))"; }
nodes() { cat "$DIR/nodes" 2>/dev/null || echo 0; }

boot_node() {  # boot_node I CMD...: CMD as the first process of node I: in its network namespace, with a mount
  # namespace that binds the node's folder over /tmp and a PID namespace of its own. Ray's drivers find "their"
  # raylet by listing the processes they can see: on a shared PID namespace a driver on a worker node would
  # pick the head's. A checkout that lives under /tmp (a CI's clone) is bound back at its own path.
  local i=$1; shift
  mkdir -p "$DIR/n$i/tmp"
  ip netns exec "$(ns "$i")" unshare --mount --propagation private --pid --fork --mount-proc -- bash -c '
    tmp=$0 root=$1; shift
    if [[ $root == /tmp/* ]]; then mkdir -p "$tmp/${root#/tmp/}" && mount --bind "$root" "$tmp/${root#/tmp/}"; fi
    mount --rbind "$tmp" /tmp && exec "$@"' "$DIR/n$i/tmp" "$ROOT" "$@"
}

node_init() {  # the host pid of node I's first process (its PID namespace's init), once it runs
  local t p ours queue ns
  ours=$(readlink /proc/self/ns/pid)
  for ((t = 0; t < 100; t++)); do
    queue=("$(cat "$DIR/n$1/boot.pid")")
    while (( ${#queue[@]} )); do  # breadth-first below the background job: the first process in another PID ns
      p=${queue[0]}; queue=("${queue[@]:1}")
      ns=$(readlink "/proc/$p/ns/pid" 2>/dev/null || true)
      if [[ -n "$ns" && "$ns" != "$ours" ]]; then echo "$p"; return 0; fi
      mapfile -t -O "${#queue[@]}" queue < <(pgrep -P "$p")
    done
    sleep 0.1
  done
  return 1
}

on_node() {  # on_node I CMD...: CMD inside node I (its network, mount and PID namespaces), as a machine's shell
  local i=$1; shift
  nsenter --target "$(cat "$DIR/n$i/init.pid")" --net --mount --pid --wd="$PWD" -- "$@"
}

make_node() {  # a namespace with a veth on the bridge, its address, loopback up
  local i=$1 n host
  n=$(ns "$i") host="$NAME-v$i"
  ip netns add "$n"
  ip link add "$host" type veth peer name eth0 netns "$n"
  ip link set "$host" master "$BRIDGE" up
  ip -n "$n" addr add "$(ip_of "$i")/24" dev eth0
  ip -n "$n" link set eth0 up
  ip -n "$n" link set lo up
}

start_ray() {  # start_ray I: node I's Ray in the foreground of its own session, logged, pid recorded
  local i=$1 args
  mkdir -p "$DIR/n$i/tmp"
  if [[ $i == 0 ]]; then
    args=(--head --port "$RAY_PORT" --dashboard-host "$HEAD_IP" --dashboard-port "$RAY_DASHBOARD_PORT"
          --num-cpus "$HEAD_CPUS")
  else
    args=(--address "$RAY_ADDRESS" --num-cpus "$WORKER_CPUS")
  fi
  # Gloo (torch.distributed on CPUs) finds its own address from the hostname, which every namespace shares
  # (and which resolves to loopback here): name the interface, as a real cluster's nodes often must too.
  # Serve's ingress on every node is HAProxy (CLUSTER_INGRESS=proxy: Ray's proxy actor); its files stay in
  # the node's own /tmp, its stats and metrics ports on the node's address only (infra/haproxy-bound).
  [[ $INGRESS == haproxy ]] && haproxy_on "$(ip_of "$i")"
  GLOO_SOCKET_IFNAME=eth0 RAY_SERVE_ENABLE_HA_PROXY="$([[ $INGRESS == haproxy ]] && echo 1 || echo 0)" \
    boot_node "$i" "$VENV/ray" start --block --node-ip-address "$(ip_of "$i")" "${args[@]}" \
    --object-store-memory "$OBJECT_STORE_BYTES" --disable-usage-stats >"$DIR/n$i/ray.log" 2>&1 </dev/null &
  echo $! >"$DIR/n$i/boot.pid"
  node_init "$i" >"$DIR/n$i/init.pid" || { say "node $i did not start:"; tail -n 20 "$DIR/n$i/ray.log"; exit 1; }
}

alive_nodes() {  # how many nodes Ray's GCS counts alive, asked from the head
  on_node 0 "$VENV/python" -c 'import ray; ray.init(logging_level="ERROR"); print(sum(n["Alive"] for n in ray.nodes()))' \
    2>/dev/null | tail -n 1
}

wait_alive() {  # wait_alive N TIMEOUT
  local want=$1 timeout=$2 t=0 got
  until [[ "$(alive_nodes || true)" == "$want" ]]; do
    sleep 2; t=$((t + 2))
    if (( t >= timeout )); then
      got=$(alive_nodes || true)
      say "$want nodes not alive after ${timeout}s (${got:-none}); last lines of the logs:"
      tail -n 15 "$DIR"/n*/ray.log; exit 1
    fi
  done
  say "$want node(s) alive (${t}s)"
}

up() {
  local count=${1:-3} i
  (( count >= 1 )) || { say "NODES must be at least 1"; exit 2; }
  [[ $(id -u) == 0 ]] || { say "making network namespaces needs root (run with sudo, or as root)"; exit 1; }
  [[ -e "$DIR/nodes" ]] && { say "cluster $NAME is up already ($(nodes) nodes); run down first"; exit 1; }
  [[ -s "$RAY_AUTH_TOKEN_PATH" ]] || new_secret "$RAY_AUTH_TOKEN_PATH"  # the stack's, or a new one
  mkdir -p "$DIR"
  echo "$count" >"$DIR/nodes"
  ip link add "$BRIDGE" type bridge
  ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for ((i = 0; i < count; i++)); do make_node "$i"; done
  (( CONTROL_PLANE )) && make_secrets
  load_secrets
  start_ray 0
  wait_alive 1 120
  for ((i = 1; i < count; i++)); do start_ray "$i"; done
  wait_alive "$count" 180
  (( CONTROL_PLANE )) && control_plane_up
  say "head $RAY_ADDRESS (dashboard http://$HEAD_IP:$RAY_DASHBOARD_PORT), workers $(
    for ((i = 1; i < count; i++)); do printf '%s ' "$(ip_of "$i")"; done)on bridge $BRIDGE"
}

make_secrets() {
  local name
  mkdir -p -m 700 "$DIR/secrets"
  for name in pg_password mlflow_password mlflow_flask_key prefect_password; do new_secret "$DIR/secrets/$name"; done
}

load_secrets() {  # the control plane's addresses and credentials, for the nodes and `exec`
  [[ -d "$DIR/secrets" ]] || return 0
  local pg mlflow_pw
  pg=$(cat "$DIR/secrets/pg_password") mlflow_pw=$(cat "$DIR/secrets/mlflow_password")
  export PG_URL_BASE="modelyard:$pg@$HEAD_IP:$PG_PORT"
  export MLFLOW_TRACKING_URI="http://$HEAD_IP:$MLFLOW_PORT" MLFLOW_TRACKING_USERNAME=admin
  export MLFLOW_TRACKING_PASSWORD="$mlflow_pw"
  export PREFECT_API_URL="http://$HEAD_IP:$PREFECT_PORT/api"
  PREFECT_API_AUTH_STRING="modelyard:$(cat "$DIR/secrets/prefect_password")"
  export PREFECT_API_AUTH_STRING PREFECT_SERVER_API_AUTH_STRING="$PREFECT_API_AUTH_STRING"
}

start_service() {  # start_service NAME NODE CMD...: in NODE's namespaces and a session of its own, logged
  local name=$1 node=$2; shift 2
  mkdir -p "$DIR/logs"
  on_node "$node" setsid "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$name.pid"
}

wait_for() {  # wait_for NAME TIMEOUT CMD...: until CMD succeeds
  local name=$1 timeout=$2 t=0; shift 2
  until "$@" >/dev/null 2>&1; do
    sleep 1; t=$((t + 1))
    (( t < timeout )) || { say "$name not ready after ${timeout}s:"; tail -n 30 "$DIR/logs/$name.log"; exit 1; }
  done
  say "$name ready (${t}s)"
}

running_curl() {  # running_curl NAME URL: NAME's process is alive and URL answers (a dead one ends the wait)
  kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null || { say "$1 exited:"; tail -n 30 "$DIR/logs/$1.log"; exit 1; }
  curl -sf "$2"
}

control_plane_up() {
  local pg_bin pgdata
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -x "$pg_bin/postgres" ]] || { say "PostgreSQL is not installed (make cluster-up installs Debian's postgresql)"; exit 1; }
  pgdata="$DIR/postgres/data"
  install -d -o postgres -g postgres -m 700 "$DIR/postgres"
  install -o postgres -m 600 "$DIR/secrets/pg_password" "$DIR/postgres/pw"
  runuser -u postgres -- "$pg_bin/initdb" -D "$pgdata" -U postgres --pwfile="$DIR/postgres/pw" \
    --auth-local=peer --auth-host=scram-sha-256 >"$DIR/postgres/initdb.log" 2>&1
  rm -f "$DIR/postgres/pw"
  echo "host all modelyard $NET.0/24 scram-sha-256" >>"$pgdata/pg_hba.conf"
  # PostgreSQL refuses to run as root: Debian's user `postgres` runs it, inside the head's namespaces.
  start_service postgres 0 runuser -u postgres -- "$pg_bin/postgres" -D "$pgdata" -c "listen_addresses=$HEAD_IP" \
    -c "port=$PG_PORT" -c "unix_socket_directories=$DIR/postgres"
  wait_for postgres 60 on_node 0 runuser -u postgres -- psql -h "$DIR/postgres" -p "$PG_PORT" -c "select 1"
  on_node 0 runuser -u postgres -- psql -q -h "$DIR/postgres" -p "$PG_PORT" \
    -c "CREATE ROLE modelyard LOGIN PASSWORD '$(cat "$DIR/secrets/pg_password")'" \
    -c "CREATE DATABASE mlflow OWNER modelyard" -c "CREATE DATABASE mlflow_auth OWNER modelyard" \
    -c "CREATE DATABASE prefect OWNER modelyard"

  (umask 077 && cat >"$DIR/secrets/mlflow_auth.ini") <<INI
[mlflow]
default_permission = READ
database_uri = postgresql+psycopg://$PG_URL_BASE/mlflow_auth
admin_username = admin
admin_password = $MLFLOW_TRACKING_PASSWORD
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
  MLFLOW_AUTH_CONFIG_PATH="$DIR/secrets/mlflow_auth.ini" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
  MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$DIR/secrets/mlflow_flask_key")" \
  MLFLOW_BACKEND_STORE_URI="postgresql+psycopg://$PG_URL_BASE/mlflow" \
    start_service mlflow 0 "$VENV/mlflow" server --app-name basic-auth --host "$HEAD_IP" --port "$MLFLOW_PORT" \
      --workers 1 --serve-artifacts --artifacts-destination "$DIR/mlflow-artifacts" --allowed-hosts "$HEAD_IP:$MLFLOW_PORT"
  PREFECT_HOME="$DIR/prefect" PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://$PG_URL_BASE/prefect" \
  PREFECT_SERVER_API_HOST="$HEAD_IP" PREFECT_UI_API_URL="$PREFECT_API_URL" \
    start_service prefect 0 "$VENV/prefect" server start --host "$HEAD_IP" --port "$PREFECT_PORT"
  wait_for mlflow 120 running_curl mlflow "http://$HEAD_IP:$MLFLOW_PORT/health"
  wait_for prefect 120 running_curl prefect "$PREFECT_API_URL/health"
  export PREFECT_HOME="$DIR/prefect"
  on_node 0 "$VENV/prefect" work-pool create modelyard --type process --overwrite >"$DIR/logs/pool.log" 2>&1
  on_node 0 "$VENV/python" -m pipelines.serve_deployments --pool modelyard "$MODELYARD_PARAMS" \
    >>"$DIR/logs/pool.log" 2>&1 || { say "registering the deployment failed:"; tail -n 30 "$DIR/logs/pool.log"; exit 1; }
  local worker_node=$(( $(nodes) > 1 ? 1 : 0 ))
  start_service worker "$worker_node" "$VENV/prefect" worker start --pool modelyard --type process \
    --name "node-$worker_node"
  say "control plane on $HEAD_IP: PostgreSQL :$PG_PORT, MLflow :$MLFLOW_PORT (basic auth), Prefect :$PREFECT_PORT" \
      "(auth string), work pool modelyard with a worker on node $worker_node; credentials in ${DIR#"$ROOT"/}/secrets"
}

kill_node() {  # every process in the node's network namespace, SIGKILL, until none is left
  local n t
  n=$(ns "$1")
  for ((t = 0; t < 50; t++)); do
    local pids
    pids=$(ip netns pids "$n" 2>/dev/null || true)
    [[ -z "$pids" ]] && return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2
  done
  say "processes of $n still there after SIGKILL: $(ip netns pids "$n" | tr '\n' ' ')"; return 1
}

down() {
  local count i
  count=$(nodes)
  for ((i = count - 1; i >= 0; i--)); do
    ip netns list | grep -qw "$(ns "$i")" || continue
    kill_node "$i"
    ip netns del "$(ns "$i")"
    ip link del "$NAME-v$i" 2>/dev/null || true  # the kernel drops the pair itself, but later than this returns
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  rm -rf --one-file-system "$DIR"  # the nodes' mounts lived in their own mount namespaces, gone with them
  say "cluster $NAME removed"
}

status() {
  local count i
  count=$(nodes)
  (( count )) || { say "cluster $NAME: not up"; return; }
  for ((i = 0; i < count; i++)); do
    say "node $i $(ip_of "$i") ($(ns "$i")): $(ip netns pids "$(ns "$i")" 2>/dev/null | wc -l) processes"
  done
  say "alive in Ray: $(alive_nodes || echo '?') of $count"
}

case "${1:-}" in
  up) up "${2:-${NODES:-3}}" ;;
  down) down ;;
  status) status ;;
  exec) shift; i=$1; shift; load_secrets; [[ -d "$DIR/secrets" ]] && export PREFECT_HOME="$DIR/prefect"; on_node "$i" "$@" ;;
  kill) kill_node "$2"; say "node $2 killed" ;;
  start) load_secrets; start_ray "$2"; wait_alive "$(nodes)" 180 ;;
  *) echo "usage: $0 up [NODES] | down | status | exec NODE CMD... | kill NODE | start NODE" >&2; exit 2 ;;
esac
