#!/usr/bin/env bash
# Instructions per dm message on the server's shard and storage-writer
# threads, counted by callgrind: a figure the VM's noise cannot blur (it
# exposes no PMU, and its wall-clock speed drifts by tens of percent), so a
# change to the message path can be compared before/after to within ~2%.
# docs/BENCHMARKS.md "Instructions per message" explains the method and keeps
# the figures.
#
# The server runs under valgrind on monoio's epoll driver (under valgrind
# 3.19 its io_uring path stops serving), `--shards 1` on core 0; loadgen
# (not under valgrind) runs 100 dm pairs, one send in flight each, on core 1:
# a 5 s warm-up, counters zeroed, then $DUR measured. Every recv carries about
# one frame, as under paced load. Only user-space instructions are counted:
# the kernel's share (loopback TCP, fdatasync) is not in these figures.
#
# usage: scripts/callgrind.sh [tern binary]   env: DUR (default 10s), OUT
set -euo pipefail
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tern-target}"
T="${1:-$CARGO_TARGET_DIR/release/tern}"
L="$CARGO_TARGET_DIR/release/tern-loadgen"
DUR="${DUR:-10s}"
OUT="${OUT:-bench-out/callgrind}"
export TERN_API_KEY="${TERN_API_KEY:-callgrind-$(date +%s)}"
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 1; }
[ -x "$T" ] && [ -x "$L" ] || { echo "build first: cargo build --release -p tern -p tern-loadgen"; exit 1; }
ulimit -n 20000
mkdir -p "$OUT"
rm -f "$OUT"/callgrind.out.*
DATA="$(mktemp -d /tmp/tern-callgrind.XXXXXX)"
SERVER_PID=""
trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$DATA"' EXIT

TERN_IO_DRIVER=epoll taskset -c 0 valgrind --tool=callgrind --separate-threads=yes \
  --callgrind-out-file="$OUT/callgrind.out.%p" "$T" serve --data-dir "$DATA" \
  --ws-addr 127.0.0.1:7700 --http-addr 127.0.0.1:7701 --shards 1 --durability fsync \
  --send-rate-per-s 100000000 --send-burst 100000000 --log warn >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 300); do curl -sf http://127.0.0.1:7701/healthz >/dev/null && break; sleep 0.2; done
curl -sf http://127.0.0.1:7701/healthz >/dev/null || { echo "server did not start"; cat "$OUT/server.log"; exit 1; }
lg() { taskset -c 1 "$L" --cores 1 --no-pin --quiet dm --pairs 100 --rate 0 --window 1 --connect-timeout 20s "$@" >/dev/null; }
lg --duration 5s
callgrind_control -z "$SERVER_PID" >/dev/null 2>&1
lg --duration "$DUR" --json "$OUT/dm.json"
callgrind_control -d "$SERVER_PID" >/dev/null 2>&1
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""

python3 - "$OUT" <<'PY'
import glob, json, re, sys
out = sys.argv[1]
d = json.load(open(f"{out}/dm.json"))
acked, lost = d["messages"]["acked"], d["messages"]["lost"]
# The dump taken after the measured run: one file per thread, "<pid>.1-<tid>".
threads = {}
for f in glob.glob(f"{out}/callgrind.out.*.1-*"):
    text = open(f, errors="replace").read()
    total = re.search(r"^summary: (\d+)", text, re.M)
    if not total or int(total.group(1)) == 0:
        continue
    # Name a thread by its entry function: the shard's loop or the writer's.
    name = "shard" if "tern_engine::shard::run" in text else (
        "writer" if "tern_storage::writer::Writer::run" in text else "other")
    threads[name] = threads.get(name, 0) + int(total.group(1))
if acked == 0 or lost != 0:
    sys.exit(f"bad run: acked {acked}, lost {lost}")
if "shard" not in threads or "writer" not in threads:
    sys.exit(f"no shard or writer thread among the dumps ({sorted(threads)}): renamed entry functions?")
print(f"dm, 100 pairs, 1 in flight, under callgrind: {acked} messages acked, 0 lost")
for name in ("shard", "writer", "other"):
    if name in threads:
        print(f"  {name:7s} {threads[name] / acked:9.0f} instructions per message")
print(f"  total   {sum(threads.values()) / acked:9.0f}")
PY
