#!/usr/bin/env bash
# Runs FTGO distributed: every service in its own process (two Kitchen instances), on
# PostgreSQL (one schema per service) and NATS JetStream (or the SQL queue), plus the HTTP API.
#
#   examples/ftgo/run-distributed.sh start            # build, start everything, wait for the API
#   examples/ftgo/run-distributed.sh stop             # stop everything (SIGTERM, then SIGKILL)
#   examples/ftgo/run-distributed.sh status           # which processes run
#   examples/ftgo/run-distributed.sh start-one NAME   # (re)start one: order, consumer, kitchen-1,
#                                                     # kitchen-2, accounting or api
#
# Settings (environment):
#   DATABASE_URL   postgres://postgres@127.0.0.1:5432/test
#   DATABASE_URL_ORDER, DATABASE_URL_CONSUMER, DATABASE_URL_KITCHEN, DATABASE_URL_ACCOUNTING,
#   DATABASE_URL_API  if set, that process connects with it instead (e.g. its own role; see
#                  docs/security.md); URLs reach the processes in their environment, not
#                  on their command lines, so a password in one is not shown by `ps`
#   API_NO_MIGRATE if set, the API process creates no tables (for a role that may only read
#                  and write rows); start it after the services have migrated their schemas
#   NATS_URL       nats://127.0.0.1:4222
#   SCHEMA_PREFIX  ftgo            schemas <prefix>_order, <prefix>_kitchen, ...
#   NATS_STREAM    FTGO            the JetStream stream
#   TRANSPORT      nats            or `sql`: the SQL-table queue in schema <prefix>_messages
#   QUEUE_ROLE     with TRANSPORT=sql, the role every process SET ROLEs to in the queue
#                  schema (see docs/security.md)
#   CO_LOCATED     with TRANSPORT=sql, if set: every service handles its messages in place
#                  and writes what it sends straight into the queue schema (no outbox,
#                  relay or leases; `ftgo --co-located`)
#   LISTEN         127.0.0.1:8080  the API's address
#   RUN_DIR        ./ftgo-run      pid files and logs (<name>.pid, <name>.log)
#   FTGO_BIN       the ftgo binary (default: built here with cargo build -p ftgo)
#   RUST_LOG       log filter for every process (default: info)
#   HEALTH_BASE_PORT  if set, service process number i (order 0, consumer 1, kitchen-1 2,
#                  kitchen-2 3, accounting 4) serves /health/live, /health/ready and /metrics
#                  on 127.0.0.1:$((HEALTH_BASE_PORT + i)); the API serves them on LISTEN
#   OTEL_EXPORTER_OTLP_ENDPOINT  if set, every process exports its traces there (OTLP/HTTP)
set -euo pipefail

DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
SCHEMA_PREFIX="${SCHEMA_PREFIX:-ftgo}"
NATS_STREAM="${NATS_STREAM:-FTGO}"
TRANSPORT="${TRANSPORT:-nats}"
LISTEN="${LISTEN:-127.0.0.1:8080}"
RUN_DIR="${RUN_DIR:-./ftgo-run}"
export RUST_LOG="${RUST_LOG:-info}"

PROCESSES=(order consumer kitchen-1 kitchen-2 accounting api)

binary() {
  if [[ -n "${FTGO_BIN:-}" ]]; then
    echo "$FTGO_BIN"
  else
    local root
    root="$(cd "$(dirname "$0")/../.." && pwd)"
    (cd "$root" && cargo build -q -p ftgo) >&2
    echo "$root/target/debug/ftgo"
  fi
}

common_args() {
  if [[ "$TRANSPORT" == nats ]]; then
    echo --schema-prefix "$SCHEMA_PREFIX" --transport nats --nats-stream "$NATS_STREAM"
  else
    echo --schema-prefix "$SCHEMA_PREFIX" --transport sql ${CO_LOCATED:+--co-located}
  fi
}

# The database URL for process $1: DATABASE_URL_<SERVICE>, else DATABASE_URL.
database_url() {
  local service="${1%-*}" var
  var="DATABASE_URL_${service^^}"
  echo "${!var:-$DATABASE_URL}"
}

running() {
  local pidfile="$RUN_DIR/$1.pid" state
  [[ -f "$pidfile" ]] || return 1
  # A killed process may linger as a zombie until it is reaped: that is not running.
  state=$(ps -o stat= -p "$(cat "$pidfile")" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z* ]]
}

start_one() {
  local name="$1" bin="$2" args
  args=$(common_args)
  if running "$name"; then
    echo "$name already runs (pid $(cat "$RUN_DIR/$name.pid"))"
    return
  fi
  local health=()
  if [[ -n "${HEALTH_BASE_PORT:-}" ]]; then
    local i
    for i in "${!PROCESSES[@]}"; do
      if [[ "${PROCESSES[$i]}" == "$name" ]]; then
        health=(--listen "127.0.0.1:$((HEALTH_BASE_PORT + i))")
      fi
    done
  fi
  case "$name" in
    order|consumer|accounting) set -- service "$name" "${health[@]}" ;;
    kitchen-*) set -- service kitchen "${health[@]}" ;;
    api) set -- serve --api-only --listen "$LISTEN" ;;
    *) echo "unknown process $name (expected: ${PROCESSES[*]})" >&2; exit 2 ;;
  esac
  # shellcheck disable=SC2086
  local extra_env=()
  if [[ "$name" == api && -n "${API_NO_MIGRATE:-}" ]]; then extra_env=(FTGO_NO_MIGRATE=true); fi
  if [[ -n "${QUEUE_ROLE:-}" ]]; then extra_env+=(FTGO_QUEUE_ROLE="$QUEUE_ROLE"); fi
  env "${extra_env[@]}" FTGO_DATABASE_URL="$(database_url "$name")" NATS_URL="$NATS_URL" \
    "$bin" "$@" $args >>"$RUN_DIR/$name.log" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
  echo "started $name (pid $!)"
}

wait_for_api() {
  local host="${LISTEN%:*}" port="${LISTEN##*:}"
  for _ in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
      echo "API ready on http://$LISTEN"
      return
    fi
    if ! running api; then
      echo "the API process exited; see $RUN_DIR/api.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "the API did not come up on $LISTEN; see $RUN_DIR/api.log" >&2
  exit 1
}

stop_all() {
  for name in "${PROCESSES[@]}"; do
    running "$name" && kill -TERM "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null || true
  done
  for _ in $(seq 1 50); do
    local alive=0
    for name in "${PROCESSES[@]}"; do running "$name" && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.2
  done
  for name in "${PROCESSES[@]}"; do
    if running "$name"; then
      kill -KILL "$(cat "$RUN_DIR/$name.pid")" 2>/dev/null || true
      echo "killed $name"
    fi
    rm -f "$RUN_DIR/$name.pid"
  done
  echo "stopped"
}

mkdir -p "$RUN_DIR"
case "${1:-}" in
  start)
    bin=$(binary)
    # The order service creates the sagas' tables; start it first so the others find NATS
    # streams and schemas ready.
    for name in "${PROCESSES[@]}"; do start_one "$name" "$bin"; done
    wait_for_api
    ;;
  start-one)
    start_one "${2:?name}" "$(binary)"
    ;;
  stop)
    stop_all
    ;;
  status)
    for name in "${PROCESSES[@]}"; do
      if running "$name"; then echo "$name: running (pid $(cat "$RUN_DIR/$name.pid"))"; else echo "$name: stopped"; fi
    done
    ;;
  *)
    sed -n '2,32p' "$0"
    exit 2
    ;;
esac
