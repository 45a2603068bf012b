/*
 * LTTng-UST 2.13 tracepoint provider for the hvtrace side-by-side benchmark.
 *
 * Uses the 2.13 spelling (LTTNG_UST_TRACEPOINT_EVENT, lttng_ust_field_*); these
 * are exactly the pre-2.13 TRACEPOINT_EVENT / ctf_integer / ctf_string, which
 * lttng-ust 2.13 still accepts as compatibility aliases.
 *
 *   hvbench:event    (int32 a, uint64 b, string "hello")  - the figure in the brief
 *   hvbench:two_ints (uint32 a, uint64 b)                  - bytes-per-event figure
 */
#undef LTTNG_UST_TRACEPOINT_PROVIDER
#define LTTNG_UST_TRACEPOINT_PROVIDER hvbench

#undef LTTNG_UST_TRACEPOINT_INCLUDE
#define LTTNG_UST_TRACEPOINT_INCLUDE "./hvbench_tp.h"

#if !defined(HVBENCH_TP_H) || defined(LTTNG_UST_TRACEPOINT_HEADER_MULTI_READ)
#define HVBENCH_TP_H

#include <stdint.h>
#include <lttng/tracepoint.h>

LTTNG_UST_TRACEPOINT_EVENT(
	hvbench,
	event,
	LTTNG_UST_TP_ARGS(int32_t, a, uint64_t, b, const char *, s),
	LTTNG_UST_TP_FIELDS(
		lttng_ust_field_integer(int32_t, a, a)
		lttng_ust_field_integer(uint64_t, b, b)
		lttng_ust_field_string(s, s)
	)
)

LTTNG_UST_TRACEPOINT_EVENT(
	hvbench,
	two_ints,
	LTTNG_UST_TP_ARGS(uint32_t, a, uint64_t, b),
	LTTNG_UST_TP_FIELDS(
		lttng_ust_field_integer(uint32_t, a, a)
		lttng_ust_field_integer(uint64_t, b, b)
	)
)

#endif /* HVBENCH_TP_H */

#include <lttng/tracepoint-event.h>
