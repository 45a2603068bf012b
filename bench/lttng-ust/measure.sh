#!/usr/bin/env bash
# Issue 4, LTTng side: run the floor and LTTng-UST (discard, 4 MiB x 8) at 1 and
# 2 threads, REPS times each, interleaved, and print every run's JSON line
# followed by one summary line per configuration (median over repetitions).
#   sudo ./measure.sh [REPS=5] [EVENTS_PER_THREAD=1000000]  > results.jsonl
# Other load on the machine shows as thread_cpu_ns_per_event < ns_per_event and
# as involuntary_ctx_switches; the summary reports the median and the minimum.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPS=${1:-5}
M=${2:-1000000}
command -v jq >/dev/null || { echo "measure.sh: needs jq" >&2; exit 1; }
make -s -C "$HERE" >&2
ALL=$(mktemp)
trap 'rm -f "$ALL"' EXIT

for r in $(seq "$REPS"); do
	for n in 1 2; do
		"$HERE/floor" --threads "$n" --events "$M" | jq -c --arg c "floor_${n}t" --arg l "$(cut -d' ' -f1 /proc/loadavg)" '. + {config:$c, loadavg1:($l|tonumber)}' | tee -a "$ALL"
		"$HERE/run_lttng.sh" --discard --threads "$n" --events "$M" --event full |
			jq -c --arg c "ust_full_${n}t" --arg l "$(cut -d' ' -f1 /proc/loadavg)" '. + {config:$c, loadavg1:($l|tonumber)}' | tee -a "$ALL"
	done
	"$HERE/run_lttng.sh" --discard --threads 1 --events "$M" --event two_ints |
		jq -c --arg l "$(cut -d' ' -f1 /proc/loadavg)" '. + {config:"ust_two_ints_1t", loadavg1:($l|tonumber)}' | tee -a "$ALL"
done

jq -s -c 'def med: sort | if length == 0 then null elif length % 2 == 1 then .[length/2|floor]
		else (.[length/2 - 1] + .[length/2]) / 2 end;
	group_by(.config)[] | {
		summary: .[0].config, reps: length,
		ns_per_event_median: (map(.ns_per_event) | med), ns_per_event_min: (map(.ns_per_event) | min),
		thread_cpu_ns_per_event_median: (map(.thread_cpu_ns_per_event) | med),
		thread_cpu_ns_per_event_min: (map(.thread_cpu_ns_per_event) | min),
		loadavg1_median: (map(.loadavg1) | med),
		bytes_per_event: (map(.bytes_per_event // empty) | med),
		consumerd_ns_per_event_median: (map(.consumerd_ns_per_event // empty) | med),
		consumerd_cpu_s_per_million_events_median: (map(.consumerd_cpu_s_per_million_events // empty) | med),
		all_lossless: (map(.lossless // true) | all) }' "$ALL"
echo "{\"loadavg\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
