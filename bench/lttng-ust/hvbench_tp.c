/* The one translation unit that instantiates the probes (LTTng-UST 2.13). */
#define LTTNG_UST_TRACEPOINT_CREATE_PROBES
#include "hvbench_tp.h"
