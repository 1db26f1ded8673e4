#!/usr/bin/env bash
# Load benchmark for authgate (issue #5), reproducible with one command.
#
#   scripts/bench.sh [ROUNDS]      default: 15 rounds of 5 s per variant (~8 min here)
#   scripts/bench.sh --quick       smoke test: 3 rounds of 2 s, callgrind K = 300/1,300 (~1 min)
#   options: --no-rounds --no-rss --no-callgrind --no-traffic  (skip a part);
#   BENCH_CALLGRIND_VARIANTS="bare authgate" limits the callgrind part;
#   BENCH_COOKIE_HEADER=session sends the session cookie alone instead of a
#   browser's three-cookie header (consent, analytics, session)
#
# Variants (bench/src/bin/bench-server.rs), all serving the same ~2 KB page
# with the signed-in user's name on GET /:
#   bare                  axum, no auth (the limit)
#   bare-private          bare + the two headers SECURITY.md N7 puts on user
#                         pages (callgrind only: what they cost on their own)
#   authgate              AuthLayer wrapping the whole app, warm cache, dev upstream
#   authgate-route-layer  the same attached with Router::layer
#   axum-login            axum-login 0.18 + tower-sessions 0.14 MemoryStore
#
# 1. Rounds: in each round every variant runs once, in a rotating order; the
#    server is pinned to CPU 0 (taskset -c 0), wrk to CPU 1 (-t1 -c32, the
#    cookie rotating over 1,000 signed-in users). Requests/s, p50, p99, the
#    server's RSS after warm-up and after the run, and the CPU time the server
#    got during the run (schedstat) are recorded; ratios vs bare and vs
#    axum-login are computed within each round and pooled.
# 2. RSS with 1,000 and 100,000 sessions for authgate and axum-login.
# 3. Instructions per request under callgrind: two runs per variant with K1
#    and K2 sequential keep-alive requests (bench load-client), so
#    (Ir(K2) - Ir(K1)) / (K2 - K1) cancels start-up, warm-up and shutdown.
# 4. Upstream traffic counts (bench upstream-traffic).
#
# Writes bench/results/latest.md (and prints it); raw data and logs go to
# bench/results/last-run/. Needs root (or sudo) only to apt-get install wrk or
# valgrind when they are missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
RUN="$BENCH/results/last-run"
BIN="$BENCH/target/release"

ROUNDS=15
DURATION=5
WARMUP=1
CONNECTIONS=32
USERS=1000
RSS_USERS=(1000 100000)
K1=2000
K2=12000
QUICK=0
DO_ROUNDS=1 DO_RSS=1 DO_CALLGRIND=1 DO_TRAFFIC=1
ARGS="$*"

for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ROUNDS=3 DURATION=2 WARMUP=0 K1=300 K2=1300 ;;
        --no-rounds) DO_ROUNDS=0 ;;
        --no-rss) DO_RSS=0 ;;
        --no-callgrind) DO_CALLGRIND=0 ;;
        --no-traffic) DO_TRAFFIC=0 ;;
        -h | --help) sed -n '2,30p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *[!0-9]* | '') echo "bench.sh: unknown argument: $arg" >&2; exit 2 ;;
        *) ROUNDS=$arg ;;
    esac
done

VARIANTS=(bare authgate authgate-route-layer axum-login)
COOKIE_HEADER=${BENCH_COOKIE_HEADER:-browser}
# callgrind also measures bare axum + the two N7 headers (bare-private)
CALLGRIND_VARIANTS=(${BENCH_CALLGRIND_VARIANTS:-bare bare-private authgate authgate-route-layer axum-login})
SERVER_PID=""
UPSTREAM_PID=""
UPSTREAM_ARGS=()

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
    local pid
    for pid in "$SERVER_PID" "$UPSTREAM_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- tools -----------------------------------------------------------------

apt_install() {
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    log "installing $* (apt-get)"
    $sudo apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if ! command -v wrk >/dev/null; then apt_install wrk; fi
if [[ $DO_CALLGRIND -eq 1 ]] && ! command -v valgrind >/dev/null; then apt_install valgrind; fi

SERVER_PIN=() CLIENT_PIN=()
SERVER_PIN_DESC="not pinned" CLIENT_PIN_DESC="not pinned"
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
    SERVER_PIN=(taskset -c 0) CLIENT_PIN=(taskset -c 1)
    SERVER_PIN_DESC="pinned to CPU 0" CLIENT_PIN_DESC="pinned to CPU 1"
else
    log "warning: taskset missing or fewer than 2 CPUs: server and load generator are not pinned"
fi

log "building bench (release)"
CARGO_TARGET_DIR="$BENCH/target" cargo build --quiet --release \
    --manifest-path "$BENCH/Cargo.toml" --bins
for b in bench-server dev-upstream load-client upstream-traffic bench-report; do
    [[ -x "$BIN/$b" ]] || die "missing $BIN/$b"
done

rm -rf "$RUN"
mkdir -p "$RUN/logs"
{
    printf 'args\t%s\n' "${ARGS:+ $ARGS}"
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'cpu\t%s\n' "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    printf 'nproc\t%s\n' "$(nproc)"
    printf 'kernel\tLinux %s\n' "$(uname -r)"
    printf 'rounds\t%s\n' "$ROUNDS"
    printf 'duration\t%ss\n' "$DURATION"
    printf 'connections\t%s\n' "$CONNECTIONS"
    printf 'users\t%s\n' "$USERS"
    printf 'server_pin\t%s\n' "$SERVER_PIN_DESC"
    printf 'client_pin\t%s\n' "$CLIENT_PIN_DESC"
    printf 'quick\t%s\n' "$QUICK"
    printf 'cookie_header\t%s\n' "$COOKIE_HEADER"
    printf 'callgrind_mode\t%s\n' "switched on once the server was ready, by \`callgrind_control -i on\`"
} >"$RUN/meta.tsv"

# ---- server control ------------------------------------------------------------

rss_of() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# Time (ns) the process's threads have run on a CPU, and have waited
# runnable for one (other load on the CPU), from the scheduler.
cpu_ns_of() { cat "/proc/$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f", s }'; }
wait_ns_of() { cat "/proc/$1"/task/*/schedstat 2>/dev/null | awk '{ s += $2 } END { printf "%.0f", s }'; }

# wait_ready PID LOG TIMEOUT_S: waits for the `ready` line of a process.
wait_ready() {
    local pid=$1 logfile=$2 timeout=$3 waited=0
    until grep -q '^ready$' "$logfile" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -20 "$logfile" >&2
            die "process exited before ready (log: $logfile)"
        fi
        if ((waited >= timeout * 10)); then
            tail -20 "$logfile" >&2
            die "not ready after ${timeout}s (log: $logfile)"
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

# start_upstream VARIANT LOG: for the authgate variants, a fresh dev upstream
# in its own process next to the load generator (so the server's RSS is the
# app's alone); sets UPSTREAM_ARGS for bench-server.
start_upstream() {
    UPSTREAM_ARGS=()
    [[ $1 == authgate* ]] || return 0
    rm -f "$2"
    "${CLIENT_PIN[@]}" "$BIN/dev-upstream" >"$2" 2>&1 &
    UPSTREAM_PID=$!
    wait_ready "$UPSTREAM_PID" "$2" 30
    local _word url key
    read -r _word url key < <(grep '^upstream ' "$2")
    UPSTREAM_ARGS=(--upstream "$url" --upstream-key "$key")
}

stop_upstream() {
    if [[ -n "$UPSTREAM_PID" ]]; then
        kill -TERM "$UPSTREAM_PID" 2>/dev/null || true
        wait "$UPSTREAM_PID" 2>/dev/null || true
        UPSTREAM_PID=""
    fi
}

# start_server LOG TIMEOUT_S CMD...: starts CMD in the background, waits for
# its `ready` line, sets SERVER_PID and ADDR.
start_server() {
    local logfile=$1 timeout=$2
    shift 2
    rm -f "$logfile"
    "$@" >"$logfile" 2>&1 &
    SERVER_PID=$!
    wait_ready "$SERVER_PID" "$logfile" "$timeout"
    ADDR=$(sed -n 's|^listening on http://||p' "$logfile" | head -1)
    [[ -n "$ADDR" ]] || die "no address in $logfile"
}

# stop_server: SIGTERM, wait (it then prints what it served), and stop the
# upstream.
stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    stop_upstream
}

# The value of KEY in a `key=value key=value` line.
kv() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p" | head -1; }

served_pages() { sed -n 's/^served pages \([0-9]*\).*/\1/p' "$1" | tail -1; }

run_wrk() { # DURATION_S COOKIES -> BENCH line
    "${CLIENT_PIN[@]}" wrk -t1 -c"$CONNECTIONS" -d"$1s" --latency \
        -s "$BENCH/wrk/rotate.lua" "http://$ADDR/" -- "$2" | grep '^BENCH ' || true
}

# ---- 1. interleaved rounds -----------------------------------------------------

if [[ $DO_ROUNDS -eq 1 ]]; then
    printf 'round\tvariant\trps\tp50_us\tp99_us\trequests\tall_requests\terrors\tpages\trss_ready_kib\trss_after_kib\tserver_cpu_ns\tserver_wait_ns\tduration_us\n' >"$RUN/rounds.tsv"
    for ((round = 1; round <= ROUNDS; round++)); do
        order=()
        for ((i = 0; i < ${#VARIANTS[@]}; i++)); do
            order+=("${VARIANTS[$(((i + round - 1) % ${#VARIANTS[@]}))]}")
        done
        for v in "${order[@]}"; do
            cookies="$RUN/cookies.$v.txt"
            server_log="$RUN/logs/round$round.$v.server.log"
            start_upstream "$v" "$RUN/logs/round$round.$v.upstream.log"
            start_server "$server_log" 300 "${SERVER_PIN[@]}" "$BIN/bench-server" \
                --variant "$v" --users "$USERS" --cookies "$cookies" \
                --cookie-header "$COOKIE_HEADER" "${UPSTREAM_ARGS[@]}"
            rss_ready=$(rss_of "$SERVER_PID")
            warm_requests=0
            if ((WARMUP > 0)); then
                line=$(run_wrk "$WARMUP" "$cookies")
                warm_requests=$(kv requests "$line")
            fi
            cpu_before=$(cpu_ns_of "$SERVER_PID") wait_before=$(wait_ns_of "$SERVER_PID")
            line=$(run_wrk "$DURATION" "$cookies")
            cpu_ns=$(($(cpu_ns_of "$SERVER_PID") - cpu_before))
            wait_ns=$(($(wait_ns_of "$SERVER_PID") - wait_before))
            echo "$line" >"$RUN/logs/round$round.$v.wrk.txt"
            [[ -n "$line" ]] || die "wrk printed no result for $v (round $round)"
            rss_after=$(rss_of "$SERVER_PID")
            stop_server
            pages=$(served_pages "$server_log")
            requests=$(kv requests "$line")
            errors=$(($(kv errors "$line") + $(kv non2xx "$line")))
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$v" \
                "$(kv rps "$line")" "$(kv p50_us "$line")" "$(kv p99_us "$line")" \
                "$requests" "$((requests + ${warm_requests:-0}))" "$errors" "${pages:-0}" \
                "$rss_ready" "$rss_after" "$cpu_ns" "$wait_ns" "$(kv duration_us "$line")" >>"$RUN/rounds.tsv"
            log "round $round/$ROUNDS $v: $(kv rps "$line") req/s, p50 $(kv p50_us "$line") µs, p99 $(kv p99_us "$line") µs, server on CPU $((cpu_ns / 1000000)) ms, waiting for it $((wait_ns / 1000000)) ms, RSS ${rss_after} KiB"
        done
    done
fi

# ---- 2. RSS by number of sessions ----------------------------------------------

if [[ $DO_RSS -eq 1 ]]; then
    printf 'variant\tusers\trss_users_kib\trss_server_ready_kib\trss_ready_kib\tprepare_s\n' >"$RUN/rss.tsv"
    for v in authgate axum-login; do
        for n in "${RSS_USERS[@]}"; do
            server_log="$RUN/logs/rss.$v.$n.log"
            start_upstream "$v" "$RUN/logs/rss.$v.$n.upstream.log"
            start_server "$server_log" 900 "${SERVER_PIN[@]}" "$BIN/bench-server" \
                --variant "$v" --users "$n" "${UPSTREAM_ARGS[@]}"
            sleep 0.5
            rss=$(rss_of "$SERVER_PID")
            stop_server
            # "rss_kib users X ready Y (sessions prepared in Z s)"
            line=$(grep '^rss_kib ' "$server_log")
            read -r _ _ users_kib _ ready_kib _ _ _ secs _ <<<"$line"
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$v" "$n" "$users_kib" "$ready_kib" "$rss" "$secs" >>"$RUN/rss.tsv"
            log "RSS $v with $n sessions: $rss KiB (prepared in ${secs}s)"
        done
    done
fi

# ---- 3. callgrind --------------------------------------------------------------

# callgrind_run VARIANT K: one server under callgrind serving K requests;
# appends its instruction total to callgrind.tsv. Instrumentation is turned
# on only once the server is ready (callgrind_control, through vgdb); where
# that is not possible (no ptrace), every run is instrumented from the start
# instead, and the K2 - K1 difference still cancels start-up and warm-up.
CG_TOGGLE=1
callgrind_run() {
    local v=$1 k=$2
    local cookies="$RUN/cookies.cg.$v.txt" out="$RUN/callgrind.$v.$k.out"
    local server_log="$RUN/logs/callgrind.$v.$k.log" control_log="$RUN/logs/callgrind.$v.$k.control.log"
    local instr_at_start=no
    ((CG_TOGGLE)) || instr_at_start=yes
    rm -f "$out"
    start_upstream "$v" "$RUN/logs/callgrind.$v.$k.upstream.log"
    start_server "$server_log" 900 "${SERVER_PIN[@]}" valgrind --tool=callgrind \
        --instr-atstart="$instr_at_start" --callgrind-out-file="$out" \
        "$BIN/bench-server" --variant "$v" --users "$USERS" --cookies "$cookies" \
        --cookie-header "$COOKIE_HEADER" --requests "$k" "${UPSTREAM_ARGS[@]}"
    if ((CG_TOGGLE)) && ! callgrind_control --instr=on "$SERVER_PID" >"$control_log" 2>&1; then
        log "warning: callgrind_control failed ($(tr '\n' ' ' <"$control_log")); instrumenting whole runs instead"
        CG_TOGGLE=0
        printf 'callgrind_mode\t%s\n' "on for the whole run (callgrind_control failed here), so warm-up noise is in the difference" >>"$RUN/meta.tsv"
        stop_server
        callgrind_run "$v" "$k"
        return
    fi
    "${CLIENT_PIN[@]}" "$BIN/load-client" --addr "$ADDR" --requests "$k" --cookies "$cookies" \
        >"$server_log.client" 2>&1 || die "load-client failed: $(cat "$server_log.client")"
    wait "$SERVER_PID" || die "server under callgrind failed: $(tail -5 "$server_log")"
    SERVER_PID=""
    stop_upstream
    local pages ir
    pages=$(served_pages "$server_log")
    [[ "$pages" == "$k" ]] || die "callgrind $v: served $pages pages, expected $k"
    ir=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out" | tail -1)
    [[ -n "$ir" ]] || ir=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$out" | tail -1)
    [[ -n "$ir" ]] || die "no Ir total in $out"
    printf '%s\t%s\t%s\n' "$v" "$k" "$ir" >>"$RUN/callgrind.tsv"
    log "callgrind $v, $k requests: $ir instructions"
}

if [[ $DO_CALLGRIND -eq 1 ]]; then
    printf 'variant\trequests\tir\n' >"$RUN/callgrind.tsv"
    for v in "${CALLGRIND_VARIANTS[@]}"; do
        for k in "$K1" "$K2"; do
            callgrind_run "$v" "$k"
        done
    done
fi

# ---- 4. upstream traffic ---------------------------------------------------------

if [[ $DO_TRAFFIC -eq 1 ]]; then
    log "upstream traffic counts"
    "$BIN/upstream-traffic" >"$RUN/traffic.md" 2>"$RUN/logs/traffic.stderr" ||
        log "warning: upstream-traffic reported a mismatch (see the report)"
fi

"$BIN/bench-report" --dir "$RUN" >"$BENCH/results/latest.md"
cat "$BENCH/results/latest.md"
log "wrote bench/results/latest.md (raw data in bench/results/last-run/)"
