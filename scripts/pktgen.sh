#!/usr/bin/env bash
# pktgen.sh — drive `jvpn-ctl pktgen`, and the kernel's own pktgen as a raw-UDP
# baseline where the kernel has one.
#
# Three ways to use it (all need root):
#
#   scripts/pktgen.sh [-n NETNS] [-b JVPN_CTL] [-k] -- PKTGEN-ARGS...
#       Runs `jvpn-ctl pktgen PKTGEN-ARGS` (inside network namespace NETNS if given,
#       through nsenter). With -k, then runs the kernel pktgen on the same interface
#       with the same frame size, count or duration, destination and CPUs, for a
#       raw-UDP figure from the same sender.
#
#   scripts/pktgen.sh --lab [-b JVPN_CTL] [-s SECS] [-k]
#       Self-contained measurement: builds two namespaces joined by a veth pair (one
#       receive queue per CPU on each end), attaches `jvpn-ctl sink` to the peer, and
#       sends flat out for SECS seconds (default 3) for IPv4 and IPv6, 64- and
#       1400-byte payloads, from one CPU and from all of them (at most 2). Prints a
#       table of generator and sink figures, then removes everything (also on
#       Ctrl-C or error).
#
#   scripts/pktgen.sh --check-kernel
#       Only says whether the kernel pktgen is available.
#
# Why a kernel pktgen baseline: `jvpn-ctl pktgen` sends through XDP (BPF_PROG_TEST_RUN
# in live-frames mode); the kernel pktgen sends ordinary skbs through the driver's
# xmit path. Side by side they show what the XDP path buys on the same interface.
# Kernels built without CONFIG_NET_PKTGEN (like the one this project is developed
# on) have no /proc/net/pktgen: the script says so and skips the baseline.
#
# See docs/bench.md for how the generator works and what its counters mean.

set -euo pipefail

die() { echo "pktgen.sh: $*" >&2; exit 1; }
note() { echo "pktgen.sh: $*" >&2; }

# ---------------------------------------------------------------------------
# Finding jvpn-ctl: -b, else the workspace's release build, else its debug build,
# else PATH.
# ---------------------------------------------------------------------------
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
find_jvpn_ctl() {
    local c
    for c in "$ROOT/target/release/jvpn-ctl" "$ROOT/target/debug/jvpn-ctl"; do
        [[ -x $c ]] && { echo "$c"; return; }
    done
    command -v jvpn-ctl || die "no jvpn-ctl found: build it (cargo xtask build --release) or pass -b PATH"
}

# ---------------------------------------------------------------------------
# Running a command inside a namespace. nsenter (not `ip netns exec`) so that a
# long-running process keeps the host's /sys mount (see docs/datapath.md).
# ---------------------------------------------------------------------------
in_ns() {
    local ns=$1; shift
    if [[ -n $ns ]]; then
        nsenter --net="/run/netns/$ns" "$@"
    else
        "$@"
    fi
}

# ---------------------------------------------------------------------------
# Kernel pktgen (Documentation/networking/pktgen.rst). /proc/net/pktgen is per
# network namespace, so every access goes through in_ns.
# ---------------------------------------------------------------------------
PG=/proc/net/pktgen

kernel_pktgen_available() {
    local ns=$1
    in_ns "$ns" test -d $PG && return 0
    # Built as a module? Loading it is harmless if it exists.
    if command -v modprobe >/dev/null; then
        modprobe pktgen 2>/dev/null || true
    fi
    in_ns "$ns" test -d $PG
}

# pgset NS FILE COMMAND: writes one command and checks the kernel's verdict, which
# pktgen reports on the file's "Result:" line.
pgset() {
    local ns=$1 file=$2 cmd=$3
    in_ns "$ns" sh -c "echo '$cmd' > '$file'" || die "kernel pktgen refused '$cmd' ($file)"
    if [[ $file != "$PG/pgctrl" ]] && ! in_ns "$ns" grep -q "Result: OK" "$file"; then
        die "kernel pktgen: '$cmd' on $file: $(in_ns "$ns" grep Result: "$file" || true)"
    fi
}

# kernel_pktgen NS IFACE FRAME_BYTES DST DST_MAC DST_PORT COUNT SECS CPUS
# One pktgen thread per CPU (kpktgend_N), each with its own handle on the device
# (IFACE@N). COUNT 0 means "until stopped": the run is then stopped after SECS.
# Prints the summed packets per second.
kernel_pktgen() {
    local ns=$1 ifc=$2 frame=$3 dst=$4 mac=$5 port=$6 count=$7 secs=$8 cpus=$9
    local -a list
    IFS=',' read -r -a list <<<"$cpus"
    local n=${#list[@]} per=0
    (( count > 0 )) && per=$(( (count + n - 1) / n ))
    pgset "$ns" $PG/pgctrl reset
    local cpu dev
    for cpu in "${list[@]}"; do
        in_ns "$ns" test -e "$PG/kpktgend_$cpu" || die "kernel pktgen has no thread for CPU $cpu"
        pgset "$ns" "$PG/kpktgend_$cpu" rem_device_all
        pgset "$ns" "$PG/kpktgend_$cpu" "add_device $ifc@$cpu"
        dev="$PG/$ifc@$cpu"
        pgset "$ns" "$dev" "count $per"
        pgset "$ns" "$dev" "clone_skb 0"         # veth does not share skbs
        pgset "$ns" "$dev" "pkt_size $frame"     # Ethernet frame without FCS
        pgset "$ns" "$dev" "delay 0"
        pgset "$ns" "$dev" "dst_mac $mac"
        pgset "$ns" "$dev" "udp_dst_min $port"
        pgset "$ns" "$dev" "udp_dst_max $port"
        pgset "$ns" "$dev" "udp_src_min 40000"
        pgset "$ns" "$dev" "udp_src_max 40000"
        if [[ $dst == *:* ]]; then
            pgset "$ns" "$dev" "dst6 $dst"
        else
            pgset "$ns" "$dev" "dst $dst"
        fi
    done
    # `start` blocks until every device is done; with no count, stop it after SECS.
    if (( count > 0 )); then
        pgset "$ns" $PG/pgctrl start
    else
        in_ns "$ns" sh -c "echo start > $PG/pgctrl" &
        local starter=$!
        sleep "$secs"
        pgset "$ns" $PG/pgctrl stop
        wait "$starter" || true
    fi
    # Each device file ends with a line like "  1234567pps 789Mb/sec ...".
    local total=0 pps
    for cpu in "${list[@]}"; do
        pps=$(in_ns "$ns" cat "$PG/$ifc@$cpu" | sed -n 's/^ *\([0-9]\+\)pps.*/\1/p' | tail -1)
        total=$(( total + ${pps:-0} ))
    done
    pgset "$ns" $PG/pgctrl reset
    echo "$total"
}

# ---------------------------------------------------------------------------
# Reading `jvpn-ctl ... --json` summaries without jq: one number by key.
# ---------------------------------------------------------------------------
json_num() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" <<<"$1"; }

# Value of a --flag in an argument list (the last one wins, as in clap).
arg_of() {
    local want=$1; shift
    local v="" prev=""
    for a in "$@"; do
        [[ $prev == "$want" ]] && v=$a
        [[ $a == "$want="* ]] && v=${a#*=}
        prev=$a
    done
    echo "$v"
}

# ---------------------------------------------------------------------------
# Mode 1: wrap one `jvpn-ctl pktgen` run (and optionally the kernel baseline).
# ---------------------------------------------------------------------------
run_wrapped() {
    local ns=$1 bin=$2 kernel=$3; shift 3
    (( $# > 0 )) || die "nothing to run: pass pktgen arguments after --"
    in_ns "$ns" "$bin" pktgen "$@"
    (( kernel )) || return 0
    if ! kernel_pktgen_available "$ns"; then
        note "kernel pktgen not available (no $PG: CONFIG_NET_PKTGEN is off or the module is missing); skipping the raw-UDP baseline"
        return 0
    fi
    local ifc dst mac port payload count secs cpus frame
    ifc=$(arg_of --iface "$@"); dst=$(arg_of --dst "$@"); mac=$(arg_of --dst-mac "$@")
    port=$(arg_of --dst-port "$@"); payload=$(arg_of --payload "$@")
    count=$(arg_of --count "$@"); secs=$(arg_of --duration "$@"); cpus=$(arg_of --cpus "$@")
    [[ -n $mac ]] || die "the kernel baseline needs --dst-mac"
    frame=$(( ${payload:-64} + 42 ))                   # Ethernet + IPv4 + UDP
    [[ $dst == *:* ]] && frame=$(( frame + 20 ))       # IPv6 header is 20 bytes longer
    echo "kernel pktgen (raw UDP, same frame size and destination): $(kernel_pktgen "$ns" "$ifc" "$frame" "$dst" "$mac" "${port:-51820}" "${count:-0}" "${secs:-3}" "${cpus:-0}") pps"
}

# ---------------------------------------------------------------------------
# Mode 2: the self-contained lab.
# ---------------------------------------------------------------------------
LAB_GEN="" LAB_PEER="" SINK_PID=""
lab_down() {
    if [[ -n $SINK_PID ]]; then
        kill -INT "$SINK_PID" 2>/dev/null || true
        wait "$SINK_PID" 2>/dev/null || true
    fi
    # Deleting a namespace removes its end of the veth, and so the pair.
    local ns
    for ns in "$LAB_GEN" "$LAB_PEER"; do
        if [[ -n $ns ]]; then ip netns del "$ns" 2>/dev/null || true; fi
    done
}

run_lab() {
    local bin=$1 secs=$2 kernel=$3
    local tag=$$
    LAB_GEN="jpg-gen-$tag" LAB_PEER="jpg-peer-$tag"
    trap lab_down EXIT
    trap 'exit 130' INT TERM

    # CPUs: the first one, and the first two if there are two.
    local -a cpus
    mapfile -t cpus < <(taskset -pc $$ | sed 's/.*: //' | tr ',' '\n' |
        awk -F- '{ if (NF == 2) for (i = $1; i <= $2; i++) print i; else print $1 }' | head -2)
    local q=${#cpus[@]}
    local all
    all=$(IFS=,; echo "${cpus[*]}")

    ip netns add "$LAB_GEN"
    ip netns add "$LAB_PEER"
    # One receive queue per sending CPU: a veth picks the peer's ring by CPU, and two
    # CPUs filling one ring lose frames to it (counted as refused).
    ip link add pg0 netns "$LAB_GEN" numtxqueues "$q" numrxqueues "$q" type veth \
        peer name pk0 netns "$LAB_PEER" numtxqueues "$q" numrxqueues "$q"
    ip -n "$LAB_GEN" link set pg0 up
    ip -n "$LAB_PEER" link set pk0 up
    local mac
    mac=$(ip -n "$LAB_PEER" -o link show pk0 | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')

    # sent/pps: the generator's own count (its program's per-CPU counters); refused:
    # frames the veth could not put in the peer's ring; sink: frames the peer's XDP
    # sink counted (= sent - refused when nothing else is lost).
    printf '%-6s %7s %5s %12s %7s %12s %12s %9s\n' family payload cpus sent seconds pps sink refused
    local -a sets=("${cpus[0]}")
    (( q > 1 )) && sets+=("$all")
    local fam payload c src dst out sink_out
    for fam in v4 v6; do
        if [[ $fam == v4 ]]; then src=10.201.0.1 dst=10.201.0.2; else src=fd00:201::1 dst=fd00:201::2; fi
        for payload in 64 1400; do
            for c in "${sets[@]}"; do
                # A fresh sink per run, so its count is this run's.
                local sink_log
                sink_log=$(mktemp)
                nsenter --net="/run/netns/$LAB_PEER" "$bin" sink --iface pk0 --mode count --json --quiet >"$sink_log" &
                SINK_PID=$!
                for _ in $(seq 100); do
                    ip -n "$LAB_PEER" link show pk0 | grep -q 'prog/xdp' && break
                    sleep 0.05
                done
                out=$(nsenter --net="/run/netns/$LAB_GEN" "$bin" pktgen --iface pg0 --src "$src" --dst "$dst" \
                    --dst-mac "$mac" --sessions 1000 --payload "$payload" --duration "$secs" --cpus "$c" --json --quiet)
                sleep 0.2
                kill -INT "$SINK_PID"; wait "$SINK_PID" || true; SINK_PID=""
                sink_out=$(cat "$sink_log"); rm -f "$sink_log"
                printf '%-6s %7s %5s %12s %7.3f %12.0f %12s %9s\n' "$fam" "$payload" "$c" \
                    "$(json_num "$out" sent)" "$(json_num "$out" seconds)" "$(json_num "$out" pps)" \
                    "$(json_num "$sink_out" frames)" "$(json_num "$out" veth_xmit_errors)"
            done
        done
    done

    if (( kernel )); then
        if kernel_pktgen_available "$LAB_GEN"; then
            nsenter --net="/run/netns/$LAB_PEER" "$bin" sink --iface pk0 --mode count --quiet >/dev/null &
            SINK_PID=$!
            sleep 0.5
            for payload in 64 1400; do
                echo "kernel pktgen v4 payload $payload, CPUs $all: $(kernel_pktgen "$LAB_GEN" pg0 $(( payload + 42 )) 10.201.0.2 "$mac" 51820 0 "$secs" "$all") pps"
            done
        else
            note "kernel pktgen not available (no $PG: CONFIG_NET_PKTGEN is off or the module is missing); skipping the raw-UDP baseline"
        fi
    fi
}

# ---------------------------------------------------------------------------
# Arguments.
# ---------------------------------------------------------------------------
usage() { sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

NS="" BIN="" KERNEL=0 LAB=0 SECS=3 CHECK=0
while (( $# > 0 )); do
    case $1 in
        -n|--netns) NS=${2:?}; shift 2 ;;
        -b|--bin) BIN=${2:?}; shift 2 ;;
        -k|--kernel) KERNEL=1; shift ;;
        -s|--secs) SECS=${2:?}; shift 2 ;;
        --lab) LAB=1; shift ;;
        --check-kernel) CHECK=1; shift ;;
        -h|--help) usage 0 ;;
        --) shift; break ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

(( EUID == 0 )) || die "needs root (XDP, namespaces, /proc/net/pktgen)"
if (( CHECK )); then
    if kernel_pktgen_available "$NS"; then echo "kernel pktgen: available ($PG)"; else
        echo "kernel pktgen: not available (no $PG: CONFIG_NET_PKTGEN is off or the module is missing)"; fi
    exit 0
fi
[[ -n $NS && ! -e /run/netns/$NS ]] && die "no network namespace $NS (/run/netns/$NS)"
BIN=${BIN:-$(find_jvpn_ctl)}
[[ -x $BIN ]] || die "$BIN is not executable"
if (( LAB )); then
    run_lab "$BIN" "$SECS" "$KERNEL"
else
    run_wrapped "$NS" "$BIN" "$KERNEL" "$@"
fi
