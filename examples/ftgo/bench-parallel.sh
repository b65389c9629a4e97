#!/usr/bin/env bash
# CreateOrderSaga with its parallel group against the book's sequential one (`--sequential`):
# one release build, the two alternating, RUNS times per configuration, medians printed (all
# JSON lines kept in $OUT). SERVICE_TIME_MS=20 gives each participant 20 ms of work per
# forward command. Needs PostgreSQL and NATS for their rows, as in BENCHMARKS.md.
#
#   examples/ftgo/bench-parallel.sh                         # as FTGO's participants are
#   SERVICE_TIME_MS=20 SAGAS=100 examples/ftgo/bench-parallel.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
SAGAS=${SAGAS:-200}
SERVICE_TIME_MS=${SERVICE_TIME_MS:-0}
OUT=${OUT:-target/bench-parallel.jsonl}
ONLY=${ONLY:-}
cargo build -q --release -p ftgo
BIN=target/release/ftgo
: > "$OUT"
configs=(
  "sqlite-per-service-1|--sagas $SAGAS --concurrency 1"
  "sqlite-in-place-1|--in-place --sagas $SAGAS --concurrency 1"
  "postgres-per-service-1|--store postgres --sagas $SAGAS --concurrency 1"
  "postgres-co-located-1|--store postgres --co-located --sagas $SAGAS --concurrency 1"
  "postgres-in-place-1|--store postgres --in-place --sagas $SAGAS --concurrency 1"
  "postgres-nats-1|--store postgres --transport nats --sagas $SAGAS --concurrency 1"
  "sqlite-per-service-8|--sagas $((SAGAS * 5)) --concurrency 8"
  "postgres-per-service-8|--store postgres --sagas $((SAGAS * 5)) --concurrency 8"
)
for entry in "${configs[@]}"; do
  name=${entry%%|*}
  args=${entry#*|}
  [[ -n "$ONLY" && ! "$name" =~ $ONLY ]] && continue
  for run in $(seq "$RUNS"); do
    for flavor in parallel sequential; do
      extra=""
      [[ $flavor == sequential ]] && extra="--sequential"
      # shellcheck disable=SC2086
      line=$("$BIN" bench $args $extra --service-time-ms "$SERVICE_TIME_MS" --raw-seconds 0.3 \
        2>/dev/null | tail -n 1)
      echo "{\"config\":\"$name\",\"flavor\":\"$flavor\",\"run\":$run,\"report\":$line}" >> "$OUT"
      echo "$name $flavor run $run: $(echo "$line" | cut -c1-120)…" >&2
    done
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys

runs = {}
for line in open(sys.argv[1]):
    record = json.loads(line)
    runs.setdefault(record["config"], {}).setdefault(record["flavor"], []).append(record["report"])

def median(reports, field):
    return statistics.median(field(r) for r in reports)

print("| config | parallel p50 ms (runs) | sequential p50 ms (runs) | sagas/s par / seq "
      "| raw commits/s, 1 client |")
print("|---|---|---|---|---|")
for name, by_flavor in runs.items():
    cells = [name]
    for flavor in ("parallel", "sequential"):
        reports = by_flavor.get(flavor, [])
        each = ", ".join(f"{r['latency_ms']['p50']:.1f}" for r in reports)
        cells.append(f"{median(reports, lambda r: r['latency_ms']['p50']):.1f} ({each})")
    rate = lambda flavor: median(by_flavor[flavor], lambda r: r["sagas_per_s"])
    cells.append(f"{rate('parallel'):.0f} / {rate('sequential'):.0f}")
    raw = [r["raw_commits_per_s"]["clients_1"] for f in by_flavor.values() for r in f]
    cells.append(f"{min(raw):.0f}–{max(raw):.0f}")
    print("| " + " | ".join(cells) + " |")
PY
