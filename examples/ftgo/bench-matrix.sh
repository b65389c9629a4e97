#!/usr/bin/env bash
# Runs `ftgo bench` on every configuration BENCHMARKS.md reports, RUNS times each, and prints
# one line per configuration with the median of each figure (all JSON lines are kept in
# $OUT). Needs PostgreSQL (and NATS for the NATS rows) as in BENCHMARKS.md.
#
#   examples/ftgo/bench-matrix.sh            # all rows, 3 runs each
#   RUNS=1 ONLY=sqlite examples/ftgo/bench-matrix.sh   # ONLY: a regular expression over the names
#   BASELINE=/path/to/old/ftgo examples/ftgo/bench-matrix.sh
#                                            # before/after in one sitting: each run of each row
#                                            # runs the baseline binary, then this one
#   BASELINE_IN_PLACE=--single-database      # the baseline's name for --in-place, if older
#   BASELINE_CO_LOCATED=                     # what the baseline runs for --co-located rows, if
#                                            # it has no such layout (empty: per service)
#   BASELINE=target/release/ftgo AFTER_ARGS=--observe examples/ftgo/bench-matrix.sh
#                                            # one binary, tracing + metrics off (before) and
#                                            # on (after), alternating
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
OUT=${OUT:-target/bench-matrix.jsonl}
ONLY=${ONLY:-}
cargo build -q --release -p ftgo
BIN=target/release/ftgo
: > "$OUT"

# Every layout at 1, 8, 32 and 256 sagas in flight.
layouts=(
  "sqlite-in-place|--in-place"
  "sqlite-per-service|"
  "postgres-in-place|--store postgres --in-place"
  "postgres-per-service|--store postgres"
  "postgres-co-located|--store postgres --co-located"
  "postgres-nats|--store postgres --transport nats"
)
declare -A sagas_at=([1]=200 [8]=1000 [32]=2000 [256]=4000)
configs=()
for layout in "${layouts[@]}"; do
  for c in 1 8 32 256; do
    configs+=("${layout%%|*}-$c|${layout#*|} --sagas ${sagas_at[$c]} --concurrency $c")
  done
done
configs+=("sqlite-in-place-normal-256|--in-place --sqlite-sync normal --sagas 4000 --concurrency 256")

BASELINE=${BASELINE:-}
binaries=("after|$BIN")
[[ -n "$BASELINE" ]] && binaries=("before|$BASELINE" "after|$BIN")

for entry in "${configs[@]}"; do
  name=${entry%%|*}
  args=${entry#*|}
  [[ -n "$ONLY" && ! "$name" =~ $ONLY ]] && continue
  for run in $(seq "$RUNS"); do
    for binary in "${binaries[@]}"; do
      which=${binary%%|*}
      run_args=$args
      if [[ "$which" == before ]]; then
        run_args=${args//--in-place/${BASELINE_IN_PLACE:---in-place}}
        run_args=${run_args//--co-located/${BASELINE_CO_LOCATED---co-located}}
      fi
      [[ "$which" == after ]] && run_args="$run_args ${AFTER_ARGS:-}"
      # shellcheck disable=SC2086
      line=$("${binary#*|}" bench $run_args --raw-seconds 1 2>/dev/null | tail -n 1)
      echo "{\"config\":\"$name\",\"which\":\"$which\",\"run\":$run,\"report\":$line}" >> "$OUT"
      echo "$name $which run $run: $(echo "$line" | cut -c1-160)…" >&2
    done
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys

rows = {}
pairs = {}
for line in open(sys.argv[1]):
    record = json.loads(line)
    pairs.setdefault(record["config"], {}).setdefault(record["which"], []).append(record["report"])
    if record["which"] == "after":
        rows.setdefault(record["config"], []).append(record["report"])

def median(reports, field):
    return statistics.median(field(r) for r in reports)

if any("before" in by_binary for by_binary in pairs.values()):
    print("| config | before sagas/s (runs) | after sagas/s (runs) | p50 ms | p99 ms | max ms "
          "| durable commits/saga | bookkeeping commits/saga (after) | raw commits/s, 1 client (before / after) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, by_binary in pairs.items():
        before, after = by_binary.get("before", []), by_binary.get("after", [])
        if not before or not after:
            continue
        def both(field, digits):
            return f"{median(before, field):.{digits}f} → {median(after, field):.{digits}f}"
        def rates(reports):
            runs = ", ".join(f"{r['sagas_per_s']:.0f}" for r in reports)
            return f"{median(reports, lambda r: r['sagas_per_s']):.0f} ({runs})"
        print(f"| {name} | {rates(before)} | {rates(after)} "
              f"| {both(lambda r: r['latency_ms']['p50'], 1)} "
              f"| {both(lambda r: r['latency_ms']['p99'], 0)} "
              f"| {both(lambda r: r['latency_ms']['max'], 0)} "
              f"| {both(lambda r: r['commits_per_saga'], 2)} "
              f"| {median(after, lambda r: r.get('relaxed_commits_per_saga', 0)):.2f} "
              f"| {median(before, lambda r: r['raw_commits_per_s']['clients_1']):.0f} / "
              f"{median(after, lambda r: r['raw_commits_per_s']['clients_1']):.0f} |")
    print()

print("| config | sagas/s (runs) | p50 ms | p95 ms | p99 ms | max ms | msgs/s | commits/saga "
      "| pg xacts/saga | raw commits/s 1 / 4 | sagas/s ÷ raw(1) | RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for name, reports in rows.items():
    runs = ", ".join(f"{r['sagas_per_s']:.0f}" for r in reports)
    pg = [r["pg_xact_commits_per_saga"] for r in reports if r["pg_xact_commits_per_saga"] is not None]
    pg_text = f"{statistics.median(pg):.2f}" if pg else "–"
    cells = [
        name,
        f"**{median(reports, lambda r: r['sagas_per_s']):.0f}** ({runs})",
        f"{median(reports, lambda r: r['latency_ms']['p50']):.1f}",
        f"{median(reports, lambda r: r['latency_ms']['p95']):.1f}",
        f"{median(reports, lambda r: r['latency_ms']['p99']):.1f}",
        f"{median(reports, lambda r: r['latency_ms']['max']):.1f}",
        f"{median(reports, lambda r: r['messages_per_s']):.0f}",
        f"{median(reports, lambda r: r['commits_per_saga']):.2f}",
        pg_text,
        f"{median(reports, lambda r: r['raw_commits_per_s']['clients_1']):.0f} / "
        f"{median(reports, lambda r: r['raw_commits_per_s']['clients_4']):.0f}",
        f"{median(reports, lambda r: r['ratio_to_raw_1']):.3f}",
        f"{median(reports, lambda r: r['peak_rss_mib']):.0f}",
    ]
    print("| " + " | ".join(cells) + " |")

# Where a saga's time went (the "after" runs; `ftgo bench` measures it unless --observe metrics).
print()
print("| config | group commits/saga | in transactions ms | committing ms | relay publish ms "
      "| wait per message ms | between ms (C=1) |")
print("|---|---|---|---|---|---|---|")
for name, reports in rows.items():
    parts = [r["breakdown"] for r in reports if r.get("breakdown")]
    if not parts:
        continue
    def m(field, digits=2):
        values = [p[field] for p in parts if p.get(field) is not None]
        return f"{statistics.median(values):.{digits}f}" if values else "–"
    print(f"| {name} | {m('group_commits', 1)} | {m('in_transactions_ms')} | {m('commit_ms')} "
          f"| {m('relay_publish_ms')} | {m('wait_per_message_ms')} | {m('between_ms')} |")
PY
