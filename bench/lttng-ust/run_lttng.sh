#!/usr/bin/env bash
# Run ust_bench inside a fresh LTTng-UST session and print ONE JSON line: the
# bench's JSON merged with trace size, events recorded/discarded and the CPU
# time used by lttng-consumerd during the run.
#
#   sudo ./run_lttng.sh [--discard|--overwrite] [--subbuf-size 4M] [--num-subbuf 8]
#                       [--keep-trace DIR] [--bt-discarded] [--no-prime] [--] UST_BENCH_ARGS...
#   e.g. sudo ./run_lttng.sh --threads 2 --events 1000000 --event full
#        sudo ./run_lttng.sh --threads 2 --events 2000000 --rate 500000   (paced, per thread)
#
# Starts a root lttng-sessiond (--daemonize --no-kernel) if none is running and
# stops it again at the end; always destroys its session and removes its temp
# dir (unless --keep-trace), also on failure or Ctrl-C.
#
# Priming (default): before the measured run, a 1-event ust_bench run registers
# with the session so that the per-UID ring buffers (NUM_CPUS x num-subbuf x
# subbuf-size of shared memory) are allocated before consumerd CPU time is
# sampled; that set-up costs lttng-consumerd ~85 ms for 2 x 8 x 4 MiB and would
# otherwise swamp the per-event figure. The primer's event is counted in
# events_emitted. --no-prime measures set-up included. --bt-discarded also runs
# the babeltrace2 text sink to sum its "Tracer discarded N events|packets" warnings.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=run_lttng.sh
MODE=discard
SUBBUF=4M
NSUBBUF=8
KEEP=""
BT_DISCARDED=0
PRIME=1
BENCH_ARGS=()

die() { echo "$PROG: error: $*" >&2; exit 1; }
usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
	case "$1" in
	--discard) MODE=discard ;;
	--overwrite) MODE=overwrite ;;
	--mode) [ $# -ge 2 ] || die "--mode needs discard|overwrite"; MODE=$2; shift ;;
	--subbuf-size) [ $# -ge 2 ] || die "--subbuf-size needs a value"; SUBBUF=$2; shift ;;
	--num-subbuf) [ $# -ge 2 ] || die "--num-subbuf needs a value"; NSUBBUF=$2; shift ;;
	--keep-trace) [ $# -ge 2 ] || die "--keep-trace needs a directory"; KEEP=$2; shift ;;
	--bt-discarded) BT_DISCARDED=1 ;;
	--no-prime) PRIME=0 ;;
	-h|--help) usage 0 ;;
	--) shift; BENCH_ARGS+=("$@"); break ;;
	*) BENCH_ARGS+=("$1") ;;
	esac
	shift
done
case "$MODE" in discard|overwrite) ;; *) die "mode must be discard or overwrite, not '$MODE'" ;; esac

# --- prerequisites ---------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (the root session daemon, /var/run/lttng and lttng-consumerd's /proc stats are used)"
for c in lttng lttng-sessiond babeltrace2; do
	command -v "$c" >/dev/null 2>&1 ||
		die "'$c' not found; install with: apt-get update && apt-get install -y lttng-tools liblttng-ust-dev babeltrace2"
done
BENCH="$HERE/ust_bench"
[ -x "$BENCH" ] || die "$BENCH not built; run: make -C $HERE"
[ -d /dev/shm ] && [ -w /dev/shm ] || die "/dev/shm missing or not writable (LTTng-UST ring buffers live in shared memory)"

RUNDIR=/var/run/lttng
PIDFILE=$RUNDIR/lttng-sessiond.pid
SESSION="hvbench_$$_$(date +%s%N)"
CHANNEL=hvbench
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hvbench-lttng.XXXXXX")
OUT="$WORK/trace"
LOG="$WORK/log"
STARTED_SESSIOND_PID=""
BENCH_PID=""
SESSION_CREATED=0

cleanup() {
	local rc=$?
	set +e
	if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
		kill -TERM "$BENCH_PID"; wait "$BENCH_PID" 2>/dev/null
	fi
	if [ "$SESSION_CREATED" = 1 ]; then
		lttng destroy "$SESSION" >/dev/null 2>&1 || echo "$PROG: warning: could not destroy session $SESSION" >&2
	fi
	if [ -n "$STARTED_SESSIOND_PID" ] && kill -0 "$STARTED_SESSIOND_PID" 2>/dev/null; then
		kill -TERM "$STARTED_SESSIOND_PID"
		for _ in $(seq 100); do kill -0 "$STARTED_SESSIOND_PID" 2>/dev/null || break; sleep 0.05; done
		kill -0 "$STARTED_SESSIOND_PID" 2>/dev/null &&
			echo "$PROG: warning: lttng-sessiond $STARTED_SESSIOND_PID still running after 5 s" >&2
	fi
	if [ -n "$KEEP" ] && [ -d "$OUT" ]; then
		mkdir -p "$KEEP" && cp -a "$OUT/." "$KEEP/" && echo "$PROG: trace kept in $KEEP" >&2
	fi
	rm -rf "$WORK"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run CMD...: quiet unless it fails, then show its output and stop.
run() {
	if ! "$@" >"$LOG" 2>&1; then
		echo "$PROG: error: '$*' failed:" >&2
		sed 's/^/    /' "$LOG" >&2
		exit 1
	fi
}

# utime+stime (seconds, clock-tick resolution) of the given pids, whole process.
stat_cpu_ticks() {
	local t=0 p f
	for p in "$@"; do
		f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
		f=${f##*) }                       # drop "pid (comm) "
		set -- $f                         # $1 = state (field 3)
		t=$((t + ${12} + ${13}))          # fields 14, 15
	done
	echo "$t"
}
# sum of on-CPU ns over all live threads (schedstat, ns resolution).
schedstat_ns() {
	local t=0 p s
	for p in "$@"; do
		for s in /proc/"$p"/task/*/schedstat; do
			[ -r "$s" ] || continue
			read -r ns _ <"$s" && t=$((t + ns))
		done
	done
	echo "$t"
}

# --- session daemon ----------------------------------------------------------
SESSIOND_START_S=null
if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
	SESSIOND_PID=$(cat "$PIDFILE")
else
	t0=$(date +%s%N)
	run lttng-sessiond --daemonize --no-kernel
	t1=$(date +%s%N)
	SESSIOND_START_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)/1e9}')
	[ -s "$PIDFILE" ] || die "lttng-sessiond started but wrote no $PIDFILE"
	SESSIOND_PID=$(cat "$PIDFILE")
	STARTED_SESSIOND_PID=$SESSIOND_PID
fi

# --- session ---------------------------------------------------------------
run lttng create "$SESSION" --output="$OUT"
SESSION_CREATED=1
run lttng enable-channel --userspace --session="$SESSION" --subbuf-size="$SUBBUF" \
	--num-subbuf="$NSUBBUF" --"$MODE" "$CHANNEL"
run lttng enable-event --userspace --session="$SESSION" --channel="$CHANNEL" 'hvbench:*'
run lttng start "$SESSION"
PRIMED=0
if [ "$PRIME" = 1 ]; then
	run "$BENCH" --threads 1 --events 1 --warmup 0
	PRIMED=1
fi

# The 64-bit UST consumer daemon is a child of our sessiond.
CONSUMERD_PIDS=()
for p in $(pgrep -x -P "$SESSIOND_PID" lttng-consumerd || true); do
	grep -qa ustconsumerd64 "/proc/$p/cmdline" 2>/dev/null && CONSUMERD_PIDS+=("$p")
done
[ ${#CONSUMERD_PIDS[@]} -gt 0 ] || die "no 64-bit UST lttng-consumerd found under sessiond $SESSIOND_PID"

ticks0=$(stat_cpu_ticks "${CONSUMERD_PIDS[@]}")
sched0=$(schedstat_ns "${CONSUMERD_PIDS[@]}")

# In the background + wait, so that a TERM/INT trap runs (and kills it) at once.
"$BENCH" "${BENCH_ARGS[@]}" >"$WORK/bench.json" 2>"$LOG" &
BENCH_PID=$!
if ! wait "$BENCH_PID"; then
	BENCH_PID=""
	echo "$PROG: error: ust_bench ${BENCH_ARGS[*]} failed:" >&2
	sed 's/^/    /' "$LOG" >&2
	exit 1
fi
BENCH_PID=""
BENCH_JSON=$(cat "$WORK/bench.json")
[ -s "$LOG" ] && sed 's/^/ust_bench: /' "$LOG" >&2
case "$BENCH_JSON" in "{"*"}") ;; *) die "ust_bench printed no JSON line: $BENCH_JSON" ;; esac

run lttng stop "$SESSION" # waits until the consumer has the data
ticks1=$(stat_cpu_ticks "${CONSUMERD_PIDS[@]}")
sched1=$(schedstat_ns "${CONSUMERD_PIDS[@]}")

# Per-channel statistics from the machine interface.
MI=$(lttng --mi xml list "$SESSION" 2>"$LOG") || die "lttng --mi xml list failed: $(cat "$LOG")"
sum_tag() { grep -o "<$1>[0-9]*</$1>" <<<"$MI" | grep -o '[0-9]*' | awk '{s+=$1} END{print s+0}'; }
DISCARDED=$(sum_tag discarded_events)
LOST_PACKETS=$(sum_tag lost_packets)

run lttng destroy "$SESSION" # also waits for the trace files to be complete
SESSION_CREATED=0

# --- trace -----------------------------------------------------------------
STREAM_FILES=$(find "$OUT" -type f ! -name metadata ! -path '*/index/*')
[ -n "$STREAM_FILES" ] || die "no stream files under $OUT"
TRACE_BYTES=$(xargs stat -c %s <<<"$STREAM_FILES" | awk '{s+=$1} END{print s+0}')
METADATA_BYTES=$(find "$OUT" -type f -name metadata -exec stat -c %s {} + | awk '{s+=$1} END{print s+0}')
NSTREAMS=$(wc -l <<<"$STREAM_FILES")

COUNTS=$(babeltrace2 "$OUT" --component=sink.utils.counter --params=step=+0 2>"$LOG") ||
	die "babeltrace2 could not read the trace: $(cat "$LOG")"
RECORDED=$(awk '/ Event messages?$/ {print $1}' <<<"$COUNTS")
BT_DISC_MSGS=$(awk '/ Discarded event messages?$/ {print $1}' <<<"$COUNTS")
BT_DISC_PKT_MSGS=$(awk '/ Discarded packet messages?$/ {print $1}' <<<"$COUNTS")
[ -n "$RECORDED" ] || die "could not parse babeltrace2 counter output: $COUNTS"

# Optional cross-check: the text sink prints one warning per discarded-events
# message: "WARNING: Tracer discarded N events between [...] and [...] in trace ..."
BT_DISCARDED_EVENTS=null
BT_DISCARDED_PACKETS=null
if [ "$BT_DISCARDED" = 1 ]; then
	BT_WARN=$(babeltrace2 "$OUT" 2>&1 >/dev/null | grep 'Tracer discarded' || true)
	BT_DISCARDED_EVENTS=$(sed -n 's/.*Tracer discarded \([0-9]*\) events\{0,1\} .*/\1/p' <<<"$BT_WARN" | awk '{s+=$1} END{print s+0}')
	BT_DISCARDED_PACKETS=$(sed -n 's/.*Tracer discarded \([0-9]*\) packets\{0,1\} .*/\1/p' <<<"$BT_WARN" | awk '{s+=$1} END{print s+0}')
fi

EMITTED=$(( $(grep -o '"events_emitted":[0-9]*' <<<"$BENCH_JSON" | cut -d: -f2) + PRIMED ))
LOSSLESS=false
[ "$DISCARDED" = 0 ] && [ "$LOST_PACKETS" = 0 ] && [ "$RECORDED" = "$EMITTED" ] && LOSSLESS=true

EXTRA=$(awk -v tb="$TRACE_BYTES" -v rec="$RECORDED" -v t0="$ticks0" -v t1="$ticks1" \
	-v s0="$sched0" -v s1="$sched1" -v hz="$(getconf CLK_TCK)" 'BEGIN{
	cpu = (t1 - t0) / hz; pcpu = (s1 - s0) / 1e9;
	printf "\"bytes_per_event\":%.2f,\"consumerd_cpu_s\":%.3f,\"consumerd_cpu_s_schedstat\":%.6f,", \
		(rec ? tb / rec : 0), cpu, pcpu;
	printf "\"consumerd_ns_per_event\":%.2f,\"consumerd_cpu_s_per_million_events\":%.4f", \
		(rec ? pcpu * 1e9 / rec : 0), (rec ? pcpu * 1e6 / rec : 0) }')

printf '%s,"trace_bytes":%s,"metadata_bytes":%s,"streams":%s,"events_recorded":%s,"events_discarded":%s,"lost_packets":%s,"bt_discarded_event_msgs":%s,"bt_discarded_packet_msgs":%s,"bt_discarded_events":%s,"bt_discarded_packets":%s,"events_emitted_total":%s,"primed":%s,"lossless":%s,%s,"lttng_mode":"%s","subbuf_size":"%s","num_subbuf":%s,"consumerd_pids":[%s],"sessiond_started_s":%s}\n' \
	"${BENCH_JSON%\}}" "$TRACE_BYTES" "$METADATA_BYTES" "$NSTREAMS" "$RECORDED" "$DISCARDED" \
	"$LOST_PACKETS" "$BT_DISC_MSGS" "$BT_DISC_PKT_MSGS" "$BT_DISCARDED_EVENTS" "$BT_DISCARDED_PACKETS" \
	"$EMITTED" "$([ "$PRIMED" = 1 ] && echo true || echo false)" "$LOSSLESS" "$EXTRA" \
	"$MODE" "$SUBBUF" "$NSUBBUF" "$(IFS=,; echo "${CONSUMERD_PIDS[*]}")" "$SESSIOND_START_S"
