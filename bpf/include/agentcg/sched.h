/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The interface of agentcg's sched_ext scheduler (bpf/scx_agent.bpf.c), shared
 * with its loader (agentcg/bpf/sched.py keeps a ctypes mirror that a host test
 * checks against this file). Fixed-width fields only; change AGENTCG_SCHED_ABI
 * with any layout change so that pinned maps of an older layout are replaced.
 */
#ifndef AGENTCG_SCHED_H
#define AGENTCG_SCHED_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define AGENTCG_SCHED_ABI 1
#define AGENTCG_SCHED_NAME "agentcg"
#define AGENTCG_MAX_CALLS 16384 /* entries in call_settings and call_stats */

/* How a call's tasks compete for CPU, on top of its cgroup's cpu.weight. */
enum agentcg_sched_class {
	AGENTCG_CLASS_NORMAL = 0,  /* weighted fair share; tasks without settings */
	AGENTCG_CLASS_LATENCY = 1, /* short slices, wake-up credit, preempts others */
	AGENTCG_CLASS_BATCH = 2,   /* long slices, no wake-up credit, never preempts */
	AGENTCG_NR_CLASSES = 3,
};

/* call_settings: key __u64 cgroup id of the call's leaf; the daemon writes it at
 * call.begin and deletes it when the call ends. Entries outlive a scheduler restart. */
struct agentcg_sched_settings {
	__u32 klass;    /* enum agentcg_sched_class */
	__u32 pad;
	__u64 slice_ns; /* time slice of the call's tasks; 0: knobs.slice_ns */
};

/* call_stats: key __u64 cgroup id; the daemon creates it zeroed beside the settings
 * and deletes it after reading it into the call's outcome. */
struct agentcg_sched_stats {
	__u64 run_ns;      /* CPU time its tasks ran under this scheduler */
	__u64 wait_ns;     /* time its runnable tasks waited for a CPU */
	__u64 max_wait_ns; /* the longest single wait */
	__u64 dispatches;  /* times one of its tasks was given a CPU */
	__u64 preempts;    /* times one of its waking tasks preempted another call */
};

/* sched_stats: a per-CPU array of counters indexed by this enum. */
enum agentcg_sched_stat {
	AGENTCG_STAT_DIRECT = 0,  /* woken straight onto an idle CPU */
	AGENTCG_STAT_QUEUED = 1,  /* queued on the shared vtime queue */
	AGENTCG_STAT_PREEMPT = 2, /* a latency-class wake-up preempted a running task */
	AGENTCG_STAT_SETTINGS = 3, /* enqueues that found their call's settings */
	AGENTCG_NR_STATS = 4,
};

/* Read-only knobs (section .rodata.knobs): the loader fills them before load. */
struct agentcg_sched_knobs {
	__u64 slice_ns;        /* default slice (NORMAL class, tasks without settings) */
	__u64 wake_credit_ns;  /* how far behind the clock a waking NORMAL task may start */
	__u64 latency_credit_ns; /* the same for the LATENCY class (larger: runs first) */
};

/* exit_info[0]: why the scheduler stopped, written by its exit callback. */
struct agentcg_sched_exit {
	__s64 kind;      /* enum scx_exit_kind; 0 while it runs */
	__s64 exit_code;
	char reason[128];
	char msg[1024];
};

#endif /* AGENTCG_SCHED_H */
