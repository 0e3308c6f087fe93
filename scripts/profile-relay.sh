#!/usr/bin/env bash
# profile-relay.sh — where the XDP relay spends its time, by source line.
#
#   scripts/profile-relay.sh [SECONDS]      (root; default 25)
#
# Runs the benchmark's cost phase (BPF_PROG_TEST_RUN repeat mode at 1k / 65k / 1M
# sessions) and samples every CPU with `perf record` meanwhile. Prints:
#   1. the split of the samples taken under bpf_test_run between the relay itself and
#      the kernel functions it calls (FIB lookup, hash lookups, ...);
#   2. the relay's own samples by source line (scripts/relay_lines.py).
# Needs perf and bpftool (Debian: linux-perf, bpftool) and a release build
# (`cargo xtask bench --skip throughput,swap,controller,reattach` makes one).
#
# Reading it: samples land on the instruction after a helper call more often than its
# cost alone explains. On CPUs with return-thunk mitigations (SRSO "safe RET",
# retpolines) each return from the kernel costs extra and the stall shows up there,
# so "after call X" lines belong to X.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
secs=${1:-25}
bench=$root/target/release/jvpn-bench

[[ $EUID -eq 0 ]] || { echo "profile-relay.sh: needs root (BPF and perf)" >&2; exit 1; }
[[ $secs =~ ^[1-9][0-9]*$ ]] || { echo "profile-relay.sh: SECONDS must be a positive integer, got '$secs'" >&2; exit 1; }
for tool in perf bpftool python3; do
    command -v "$tool" >/dev/null || { echo "profile-relay.sh: $tool not found (apt-get install linux-perf bpftool python3)" >&2; exit 1; }
done
[[ -x $bench ]] || { echo "profile-relay.sh: $bench missing; build it with: cargo build --release -p jvpn-tests --bin jvpn-bench" >&2; exit 1; }

work=$(mktemp -d)
pid=
cleanup() {
    [[ -n $pid ]] && kill -INT "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

"$bench" --json "$work/cost.json" --skip throughput,swap,controller,reattach >"$work/bench.log" 2>&1 &
pid=$!
id=
for _ in $(seq 50); do
    id=$(bpftool prog show 2>/dev/null | awk -F: '/name jvpn_relay/ {id=$1} END {print id}')
    [[ -n $id ]] && break
    sleep 0.2
done
[[ -n $id ]] || { echo "profile-relay.sh: the relay program did not load; see:" >&2; cat "$work/bench.log" >&2; exit 1; }
bpftool prog dump xlated id "$id" linum >"$work/xlated.txt"
python3 "$here/relay_lines.py" save "$id" "$work/lines.json"
echo "sampling for ${secs}s (relay program id $id) ..."
perf record -q -a -g -F 4999 -o "$work/perf.data" -- sleep "$secs" >/dev/null 2>&1
perf script -i "$work/perf.data" -F ip,sym 2>/dev/null >"$work/stacks.txt"

echo
echo "== time under bpf_test_run, by the relay's direct callee"
python3 - "$work/stacks.txt" <<'PY'
import collections, sys
blocks = open(sys.argv[1]).read().split("\n\n")
split, total = collections.Counter(), 0
for b in blocks:
    syms = [l.split()[-1] for l in b.strip().splitlines() if len(l.split()) > 1]
    if not any("bpf_test_run" in s for s in syms):
        continue
    at = next((i for i, s in enumerate(syms) if s.endswith("_jvpn_relay")), None)
    if at is None:
        continue
    total += 1
    split["(the relay itself)" if at == 0 else syms[at - 1]] += 1
for name, n in split.most_common(12):
    print(f"{100 * n / max(total, 1):5.1f}%  {name}")
PY
# Leaf samples inside the program (call graphs hidden), for the per-line view.
perf script -i "$work/perf.data" -G -F ip,sym 2>/dev/null | awk '$2 ~ /_jvpn_relay$/' >"$work/leaf.txt"
echo
echo "== the relay's own samples, by source line"
python3 "$here/relay_lines.py" map "$work/lines.json" "$work/xlated.txt" "$work/leaf.txt"
