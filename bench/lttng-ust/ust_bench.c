/*
 * ust_bench: cost of an LTTng-UST 2.13 tracepoint, one pinned thread per CPU.
 * Run it under run_lttng.sh (session active) for the enabled cost; without a
 * session it measures a disabled tracepoint.
 */
#define LTTNG_UST_TRACEPOINT_DEFINE
#include "hvbench_tp.h"
#include "bench_common.h"

static const char *bench_mode = "ust";
static const char *bench_default_event = "full";
static int g_two_ints;

static int bench_select(const char *event)
{
	if (!strcmp(event, "full"))
		g_two_ints = 0;
	else if (!strcmp(event, "two_ints"))
		g_two_ints = 1;
	else
		return -1;
	return 0;
}

static void bench_thread_init(struct thread_ctx *t)
{
	(void)t;
}

static void bench_run(struct thread_ctx *t, uint64_t first, uint64_t n)
{
	(void)t;
	const uint64_t end = first + n;
	if (g_two_ints) {
		for (uint64_t i = first; i < end; i++)
			lttng_ust_tracepoint(hvbench, two_ints, (uint32_t)i, i);
	} else {
		for (uint64_t i = first; i < end; i++)
			lttng_ust_tracepoint(hvbench, event, (int32_t)i, i, "hello");
	}
}

int main(int argc, char **argv)
{
	return bench_main(argc, argv);
}
