/*
 * Shared harness for ust_bench and floor: argument parsing, one pinned thread
 * per CPU, warm-up, a start barrier, optional pacing, timing with
 * clock_gettime(CLOCK_MONOTONIC) and one JSON line on stdout.
 *
 * Each program defines:
 *   static const char *bench_mode;                      "ust" or "floor"
 *   static int  bench_select(const char *event);        0 if the --event name is known
 *   static void bench_thread_init(struct thread_ctx *);  per-thread set-up (not timed)
 *   static void bench_run(struct thread_ctx *, uint64_t first, uint64_t n);
 *                                                       emit n events, indices first..first+n-1
 *
 * ns_per_event is the MEDIAN over threads of (that thread's busy time / M); with
 * two threads this is their mean. ns_per_event_max and _min are also printed.
 * Busy time = whole timed loop when --rate is 0 (unpaced), otherwise the sum of
 * the time spent inside the paced batches (sleeps excluded), so a paced run still
 * gives the cost of one event. thread_cpu_ns_per_event (median, CLOCK_THREAD_CPUTIME_ID
 * over the whole timed part, paced or not) and involuntary_ctx_switches (sum) show
 * whether a run was disturbed by other load: wall ~ CPU time and few switches = clean.
 */
#ifndef HVBENCH_COMMON_H
#define HVBENCH_COMMON_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct thread_ctx {
	pthread_t tid;
	int idx;
	int cpu;          /* CPU it was pinned to, -1 if pinning failed */
	uint64_t busy_ns; /* time inside bench_run during the timed part */
	uint64_t wall_ns; /* barrier release to end of the timed part */
	uint64_t cpu_ns;  /* CLOCK_THREAD_CPUTIME_ID over the timed part */
	long nivcsw;      /* involuntary context switches during the timed part */
	void *priv;       /* program-specific state */
};

struct bench_args {
	int threads;
	uint64_t events;  /* per thread, timed */
	uint64_t warmup;  /* per thread, before the barrier, not timed */
	double rate;      /* events per second PER THREAD, 0 = as fast as possible */
	const char *event;
};

static struct bench_args g_args = { 1, 1000000, 10000, 0.0, NULL };
static pthread_barrier_t g_barrier;

static const char *bench_mode;
static const char *bench_default_event;
static int bench_select(const char *event);
static void bench_thread_init(struct thread_ctx *t);
static void bench_run(struct thread_ctx *t, uint64_t first, uint64_t n);

static inline uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline long thread_nivcsw(void)
{
	struct rusage ru;
	getrusage(RUSAGE_THREAD, &ru);
	return ru.ru_nivcsw;
}

static void usage(const char *argv0, int code)
{
	fprintf(code ? stderr : stdout,
		"usage: %s --threads N --events M [--event NAME] [--rate EV_PER_S] [--warmup W]\n"
		"  --threads N   worker threads; thread i is pinned to CPU i (mod online CPUs)\n"
		"  --events M    timed events per thread (default 1000000)\n"
		"  --event NAME  %s\n"
		"  --rate R      pace each thread to R events/s (default 0 = unpaced)\n"
		"  --warmup W    untimed events per thread before the start barrier (default 10000)\n"
		"Prints one JSON line; ns_per_event = median over threads of busy time / M.\n",
		argv0,
		strcmp(bench_mode, "ust") == 0 ? "full (hvbench:event, default) | two_ints (hvbench:two_ints)"
					       : "full (24-byte record, default)");
	exit(code);
}

static uint64_t parse_u64(const char *opt, const char *s)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end) {
		fprintf(stderr, "invalid value for %s: '%s'\n", opt, s);
		exit(2);
	}
	return v;
}

static void parse_args(int argc, char **argv)
{
	g_args.event = bench_default_event;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help"))
			usage(argv[0], 0);
		if (i + 1 >= argc) {
			fprintf(stderr, "unknown or incomplete option '%s'\n", a);
			usage(argv[0], 2);
		}
		const char *v = argv[++i];
		if (!strcmp(a, "--threads"))
			g_args.threads = (int)parse_u64(a, v);
		else if (!strcmp(a, "--events"))
			g_args.events = parse_u64(a, v);
		else if (!strcmp(a, "--warmup"))
			g_args.warmup = parse_u64(a, v);
		else if (!strcmp(a, "--event"))
			g_args.event = v;
		else if (!strcmp(a, "--rate")) {
			char *end;
			g_args.rate = strtod(v, &end);
			if (end == v || *end || g_args.rate < 0) {
				fprintf(stderr, "invalid value for --rate: '%s'\n", v);
				exit(2);
			}
		} else {
			fprintf(stderr, "unknown option '%s'\n", a);
			usage(argv[0], 2);
		}
	}
	if (g_args.threads < 1 || g_args.threads > 1024 || g_args.events < 1) {
		fprintf(stderr, "--threads must be 1..1024 and --events >= 1\n");
		exit(2);
	}
	if (bench_select(g_args.event)) {
		fprintf(stderr, "unknown --event '%s'\n", g_args.event);
		usage(argv[0], 2);
	}
}

static void *thread_main(void *arg)
{
	struct thread_ctx *t = arg;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	cpu_set_t set;
	int cpu = (int)(t->idx % (ncpu > 0 ? ncpu : 1));

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	t->cpu = pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0 ? cpu : -1;

	bench_thread_init(t);
	if (g_args.warmup)
		bench_run(t, 0, g_args.warmup);
	pthread_barrier_wait(&g_barrier);

	const uint64_t m = g_args.events;
	long cs0 = thread_nivcsw();
	uint64_t c0 = thread_cpu_ns();
	uint64_t t0 = now_ns();
	if (g_args.rate <= 0) {
		bench_run(t, g_args.warmup, m);
		t->wall_ns = t->busy_ns = now_ns() - t0;
		t->cpu_ns = thread_cpu_ns() - c0;
		t->nivcsw = thread_nivcsw() - cs0;
		return NULL;
	}
	/* Paced: batches of ~1 ms worth of events, each batch released at its
	 * absolute deadline; a thread that falls behind does not sleep (catches up). */
	uint64_t batch = (uint64_t)(g_args.rate / 1000.0);
	if (batch < 1)
		batch = 1;
	const double ns_per_ev = 1e9 / g_args.rate;
	uint64_t done = 0;
	while (done < m) {
		uint64_t deadline = t0 + (uint64_t)(done * ns_per_ev);
		struct timespec ts = { (time_t)(deadline / 1000000000ull), (long)(deadline % 1000000000ull) };
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
			;
		uint64_t n = m - done < batch ? m - done : batch;
		uint64_t b0 = now_ns();
		bench_run(t, g_args.warmup + done, n);
		t->busy_ns += now_ns() - b0;
		done += n;
	}
	t->wall_ns = now_ns() - t0;
	t->cpu_ns = thread_cpu_ns() - c0;
	t->nivcsw = thread_nivcsw() - cs0;
	return NULL;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int bench_main(int argc, char **argv)
{
	parse_args(argc, argv);
	int n = g_args.threads;
	struct thread_ctx *ts = calloc((size_t)n, sizeof(*ts));
	double *per = calloc((size_t)n, sizeof(*per));
	if (!ts || !per) {
		perror("calloc");
		return 1;
	}
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	if (n > ncpu)
		fprintf(stderr, "warning: %d threads > %ld online CPUs; CPUs are shared\n", n, ncpu);
	pthread_barrier_init(&g_barrier, NULL, (unsigned)n);
	for (int i = 0; i < n; i++) {
		ts[i].idx = i;
		int rc = pthread_create(&ts[i].tid, NULL, thread_main, &ts[i]);
		if (rc) {
			fprintf(stderr, "pthread_create: %s\n", strerror(rc));
			return 1;
		}
	}
	uint64_t wall_max = 0;
	int pinned = 1;
	long nivcsw = 0;
	double *cpu = calloc((size_t)n, sizeof(*cpu));
	for (int i = 0; i < n; i++) {
		pthread_join(ts[i].tid, NULL);
		per[i] = (double)ts[i].busy_ns / (double)g_args.events;
		if (ts[i].wall_ns > wall_max)
			wall_max = ts[i].wall_ns;
		if (ts[i].cpu < 0)
			pinned = 0;
		cpu[i] = (double)ts[i].cpu_ns / (double)g_args.events;
		nivcsw += ts[i].nivcsw;
	}
	double *sorted = malloc((size_t)n * sizeof(*sorted));
	memcpy(sorted, per, (size_t)n * sizeof(*sorted));
	qsort(sorted, (size_t)n, sizeof(*sorted), cmp_double);
	double median = n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0;
	qsort(cpu, (size_t)n, sizeof(*cpu), cmp_double);
	double cpu_median = n % 2 ? cpu[n / 2] : (cpu[n / 2 - 1] + cpu[n / 2]) / 2.0;

	printf("{\"threads\":%d,\"events_per_thread\":%llu,\"ns_per_event\":%.2f,"
	       "\"elapsed_s\":%.6f,\"ns_per_event_stat\":\"median\","
	       "\"ns_per_event_min\":%.2f,\"ns_per_event_max\":%.2f,\"per_thread_ns\":[",
	       n, (unsigned long long)g_args.events, median, (double)wall_max / 1e9,
	       sorted[0], sorted[n - 1]);
	for (int i = 0; i < n; i++)
		printf("%s%.2f", i ? "," : "", per[i]);
	printf("],\"mode\":\"%s\",\"event\":\"%s\",\"rate_per_thread\":%.0f,"
	       "\"warmup_events_per_thread\":%llu,\"events_emitted\":%llu,"
	       "\"online_cpus\":%ld,\"pinned\":%s,\"thread_cpu_ns_per_event\":%.2f,"
	       "\"involuntary_ctx_switches\":%ld}\n",
	       bench_mode, g_args.event, g_args.rate, (unsigned long long)g_args.warmup,
	       (unsigned long long)((g_args.events + g_args.warmup) * (uint64_t)n), ncpu,
	       pinned ? "true" : "false", cpu_median, nivcsw);
	fflush(stdout);
	return 0;
}

#endif /* HVBENCH_COMMON_H */
