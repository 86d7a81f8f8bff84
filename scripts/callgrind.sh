#!/usr/bin/env bash
# Instructions per message on the server's shard and storage-writer threads,
# counted by callgrind: figures the VM's noise cannot blur (it exposes no
# PMU, and its wall-clock speed drifts by tens of percent), so a change to
# the message path can be compared before/after to within ~1%.
# docs/BENCHMARKS.md "Instructions per message" explains the method and keeps
# the figures.
#
# The server runs under valgrind on monoio's epoll driver (under valgrind
# 3.19 its io_uring path stops serving), `--shards 1` on core 0; loadgen (not
# under valgrind) runs on core 1. Two scenarios, each on a fresh server:
#   dm     100 pairs, one send in flight each: every recv carries about one
#          frame, as under paced load, while the slowed server batches
#          commits as under high load;
#   group  1,000 members online, one sender at 5 messages/s: the fan-out.
# Counters are zeroed once traffic flows (connects and auth are not
# counted), and the messages stored and entries delivered in the counted
# window come from the server's own /admin/stats. Only user-space
# instructions are counted: the kernel's share (loopback TCP, fdatasync) is
# not in these figures.
#
# usage: scripts/callgrind.sh [tern binary]   env: SECS (counted, default 8), OUT
set -euo pipefail
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}"
T="${1:-$CARGO_TARGET_DIR/release/tern}"
L="$CARGO_TARGET_DIR/release/tern-loadgen"
SECS="${SECS:-8}"
OUT="${OUT:-bench-out/callgrind}"
export TERN_API_KEY="${TERN_API_KEY:-callgrind-$(date +%s)}"
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 1; }
[ -x "$T" ] && [ -x "$L" ] || { echo "build first: cargo build --release -p tern -p tern-loadgen"; exit 1; }
ulimit -n 20000
mkdir -p "$OUT"
DATA="$(mktemp -d /tmp/tern-callgrind.XXXXXX)"
SERVER_PID=""
LG_PID=""
cleanup() {
  [ -n "$LG_PID" ] && kill "$LG_PID" 2>/dev/null
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
  rm -rf "$DATA"
}
trap cleanup EXIT
stats() { curl -sf -H "Authorization: Bearer $TERN_API_KEY" http://127.0.0.1:7701/admin/stats; }
stored() { stats 2>/dev/null | python3 -c "import json,sys; print(json.load(sys.stdin)['messages_stored'])" 2>/dev/null || echo 0; }

# measure NAME LOADGEN-ARGS...: one scenario on a fresh server under callgrind.
measure() {
  local name=$1; shift
  rm -rf "${DATA:?}"/* "$OUT/$name".*
  TERN_IO_DRIVER=epoll taskset -c 0 valgrind --tool=callgrind --separate-threads=yes \
    --callgrind-out-file="$OUT/$name.out.%p" "$T" serve --data-dir "$DATA" \
    --ws-addr 127.0.0.1:7700 --http-addr 127.0.0.1:7701 --shards 1 --durability fsync \
    --send-rate-per-s 100000000 --send-burst 100000000 --log warn >"$OUT/$name.server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 300); do curl -sf http://127.0.0.1:7701/healthz >/dev/null && break; sleep 0.2; done
  curl -sf http://127.0.0.1:7701/healthz >/dev/null || { echo "server did not start"; cat "$OUT/$name.server.log"; exit 1; }
  # Sending lasts the warm-up, the counted window and a margin; then loadgen
  # drains, checks every delivery and writes its report.
  taskset -c 1 "$L" --cores 1 --no-pin --quiet "$@" --connect-timeout 30s --duration $((SECS + 6))s \
    --json "$OUT/$name.json" >/dev/null &
  LG_PID=$!
  # Wait for traffic, then a little more so caches and tables are warm.
  for _ in $(seq 300); do [ "$(stored)" -gt 0 ] && break; sleep 0.2; done
  [ "$(stored)" -gt 0 ] || { echo "$name: no message stored within 60 s"; exit 1; }
  sleep 3
  callgrind_control -z "$SERVER_PID" >/dev/null 2>&1
  stats >"$OUT/$name.stats0.json"
  sleep "$SECS"
  callgrind_control -d "$SERVER_PID" >/dev/null 2>&1
  stats >"$OUT/$name.stats1.json"
  wait "$LG_PID" || { echo "$name: loadgen failed"; exit 1; }; LG_PID=""
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
}

measure dm dm --pairs 100 --rate 0 --window 1
measure group group --members 1000 --senders 1 --rate 5/s

python3 - "$OUT" <<'PY'
import glob, json, re, sys
out = sys.argv[1]

def per_thread(name):
    # The dump after the counted window: one file per thread, "<pid>.1-<tid>";
    # a thread is named by its entry function (the shard's loop, the writer's).
    threads = {}
    for f in glob.glob(f"{out}/{name}.out.*.1-*"):
        text = open(f, errors="replace").read()
        total = re.search(r"^summary: (\d+)", text, re.M)
        if not total or int(total.group(1)) == 0:
            continue
        kind = "shard" if "tern_engine::shard::run" in text else (
            "writer" if "tern_storage::writer::Writer::run" in text else "other")
        threads[kind] = threads.get(kind, 0) + int(total.group(1))
    if "shard" not in threads or "writer" not in threads:
        sys.exit(f"{name}: no shard or writer thread among the dumps ({sorted(threads)})")
    return threads

def delta(name, key):
    a = json.load(open(f"{out}/{name}.stats0.json"))[key]
    b = json.load(open(f"{out}/{name}.stats1.json"))[key]
    return b - a

for name in ("dm", "group"):
    t = per_thread(name)
    stored, delivered = delta(name, "messages_stored"), delta(name, "deliveries")
    report = json.load(open(f"{out}/{name}.json"))["messages"]
    if stored <= 0 or report["lost"] != 0:
        sys.exit(f"{name}: bad run: {stored} stored in the window, {report['lost']} lost")
    if name == "dm":
        print(f"dm, 100 pairs, 1 in flight: {stored} messages stored in the counted window, 0 lost")
        print(f"  shard   {t['shard'] / stored:9.0f} instructions per message")
        print(f"  writer  {t['writer'] / stored:9.0f} instructions per message")
        print(f"  total   {sum(t.values()) / stored:9.0f} instructions per message (all threads)")
    else:
        print(f"group, 1,000 members, 1 sender: {stored} messages, {delivered} deliveries in the counted window, 0 lost")
        print(f"  shard   {t['shard'] / delivered:9.0f} instructions per delivery")
        print(f"  writer  {t['writer'] / stored:9.0f} instructions per message (one per commit at this rate)")
PY
