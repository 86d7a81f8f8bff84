#!/usr/bin/env bash
# The performance targets of docs/BENCHMARKS.md, measured the documented way:
# server `--shards 1` pinned to core 0 (`taskset -c 0`), loadgen on core 1,
# 100-byte bodies, durability=fsync, loopback only. Prints each figure next
# to its target and writes the JSON reports to $OUT (default bench-out/).
# Every run is bounded by --duration/--drain; the whole script by ~5 minutes.
set -euo pipefail
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}"
T="$CARGO_TARGET_DIR/release/tern"
L="$CARGO_TARGET_DIR/release/tern-loadgen"
OUT="${OUT:-bench-out}"
export TERN_API_KEY="${TERN_API_KEY:-bench-$(date +%s)}"
DUR="${DUR:-10s}"
mkdir -p "$OUT"
ulimit -n 20000
DATA="$(mktemp -d /tmp/tern-bench.XXXXXX)"
SERVER_PID=""
stop() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null; SERVER_PID=""; }
trap 'stop; rm -rf "$DATA"' EXIT

start() { # fresh server per scenario, so one run's state never skews the next
  stop; rm -rf "${DATA:?}"/*
  taskset -c 0 "$T" serve --data-dir "$DATA" --ws-addr 127.0.0.1:7700 --http-addr 127.0.0.1:7701 \
    --shards 1 --durability fsync --send-rate-per-s 100000000 --send-burst 100000000 --log warn \
    >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:7701/healthz >/dev/null && return; sleep 0.1; done
  echo "server did not start"; cat "$OUT/server.log"; exit 1
}
lg() { taskset -c 1 "$L" --cores 1 --no-pin --spin-us 20000 --quiet "$@" >/dev/null; }
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
row() { printf '%-44s %14s   target %s\n' "$1" "$2" "$3"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"

start
lg idle --conns 19000 --connect-rate 5000/s --duration 5s --server-pid "$SERVER_PID" --json "$OUT/idle.json" || true
row "idle: 19,000 conns, server RSS per conn" "$(field "$OUT/idle.json" "d['memory']['server_bytes_per_conn']") B" "<= 1024 B (aim 512)"
row "idle: authenticated" "$(field "$OUT/idle.json" "d['connections']['authenticated']")" "19000"

for M in 1000 10000; do
  start
  S=10
  lg group --members $M --senders $S --rate 0 --window 16 --duration "$DUR" --json "$OUT/group-$M.json" || true
  row "group M=$M closed loop: deliveries/s" "$(field "$OUT/group-$M.json" "round(d['throughput']['delivered_per_s'])")" ">= 1,000,000 (aim 2,500,000)"
  row "group M=$M: lost / dups / out-of-order" "$(field "$OUT/group-$M.json" "'%d/%d/%d' % (d['messages']['lost'], d['messages']['dups'], d['messages']['order_violations'])")" "0/0/0"
done

start
lg group --members 1000 --senders 1 --rate 40/s --duration "$DUR" --json "$OUT/group-40k.json" || true
row "group M=1000 at 40k deliveries/s: p99" "$(field "$OUT/group-40k.json" "d['latency_us']['deliver']['p99']") us" "<= 10,000 us (aim 5,000)"

start
lg dm --pairs 100 --rate 0 --window 16 --duration "$DUR" --json "$OUT/dm-max.json" || true
MAX=$(field "$OUT/dm-max.json" "round(d['throughput']['acked_per_s'])")
row "dm closed loop: acked/s" "$MAX" ">= 100,000 (aim 200,000)"
row "dm closed loop: lost" "$(field "$OUT/dm-max.json" "d['messages']['lost']")" "0"
start
lg dm --pairs 1000 --rate 0 --window 1 --duration "$DUR" --json "$OUT/dm-w1.json" || true
row "dm, 1000 pairs, one send in flight each: acked/s" "$(field "$OUT/dm-w1.json" "round(d['throughput']['acked_per_s'])")" "(recorded: stop-and-wait clients, no batching)"
start
HALF=$(( MAX / 2 ))
lg dm --pairs 100 --rate "${HALF}/s" --duration "$DUR" --json "$OUT/dm-half.json" || true
row "dm at ${HALF}/s (half of max): ack p99" "$(field "$OUT/dm-half.json" "d['latency_us']['ack']['p99']") us" "<= 10,000 us"
row "dm at ${HALF}/s: deliver p99" "$(field "$OUT/dm-half.json" "d['latency_us']['deliver']['p99']") us" ""
row "dm at ${HALF}/s: acks over 10 ms" "$(field "$OUT/dm-half.json" "'%.2f%% in %d of %d slots' % (100.0 * sum(s['slow'] for s in d['timeline']['ack']) / max(1, sum(s['count'] for s in d['timeline']['ack'])), sum(1 for s in d['timeline']['ack'] if s['slow']), len(d['timeline']['ack']))")" "(250 ms slots: spread or episodes)"
start
lg dm --pairs 100 --rate 50000/s --duration "$DUR" --json "$OUT/dm-50k.json" || true
row "dm at 50000/s (half the 100 k target): ack p99" "$(field "$OUT/dm-50k.json" "d['latency_us']['ack']['p99']") us" "(the other reading of the target)"
start
lg dm --pairs 100 --rate 20000/s --duration "$DUR" --json "$OUT/dm-20k.json" || true
row "dm at 20000/s: ack p99 (the knee)" "$(field "$OUT/dm-20k.json" "d['latency_us']['ack']['p99']") us" "(recorded, no target)"
