/*
 * floor: the lower bound for any tracer record path on this machine - read the
 * TSC (__rdtsc) and store a 24-byte record (tsc, id, int32 a, uint64 b) into a
 * per-thread 4 MiB buffer (pre-faulted, wrapping). No atomics, no CPU lookup.
 */
#include <x86intrin.h>
#include "bench_common.h"

#define FLOOR_BUF_BYTES (4u << 20)

struct rec {
	uint64_t tsc;
	uint32_t id;
	int32_t a;
	uint64_t b;
};
_Static_assert(sizeof(struct rec) == 24, "24-byte record");

struct floor_state {
	unsigned char *buf;
	size_t off;
};

/* Keeps the buffers reachable from a global so the stores cannot be elided. */
unsigned char *volatile g_floor_bufs[1024];

static const char *bench_mode = "floor";
static const char *bench_default_event = "full";

static int bench_select(const char *event)
{
	return strcmp(event, "full") ? -1 : 0;
}

static void bench_thread_init(struct thread_ctx *t)
{
	struct floor_state *s = aligned_alloc(64, sizeof(*s));
	s->buf = aligned_alloc(4096, FLOOR_BUF_BYTES);
	if (!s->buf) {
		perror("aligned_alloc");
		exit(1);
	}
	memset(s->buf, 0, FLOOR_BUF_BYTES); /* fault the pages in before timing */
	s->off = 0;
	g_floor_bufs[t->idx] = s->buf;
	t->priv = s;
}

static void bench_run(struct thread_ctx *t, uint64_t first, uint64_t n)
{
	struct floor_state *s = t->priv;
	unsigned char *buf = s->buf;
	size_t off = s->off;
	const uint64_t end = first + n;
	for (uint64_t i = first; i < end; i++) {
		struct rec r = { __rdtsc(), 1, (int32_t)i, i };
		memcpy(buf + off, &r, sizeof(r));
		off += sizeof(r);
		if (off > FLOOR_BUF_BYTES - sizeof(r))
			off = 0;
	}
	s->off = off;
	__asm__ volatile("" ::: "memory");
}

int main(int argc, char **argv)
{
	return bench_main(argc, argv);
}
