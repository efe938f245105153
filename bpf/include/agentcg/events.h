/* Events the agentcg BPF programs send to user space.
 *
 * Shared by the bcc probes and the libbpf programs; agentcg/bpf/events.py mirrors every
 * struct and enum here with ctypes, and tests/kernel/test_event_layout.py compares the
 * mirror with what clang builds from this file. Fixed-width fields only, laid out with
 * no implicit padding, so both sides agree byte for byte.
 *
 * Include it after <linux/types.h> (bcc) or vmlinux.h (libbpf); it includes nothing.
 *
 * To add an event: a new enum value (never renumber one), a struct whose first member
 * is `struct agentcg_event_header hdr`, and its mirror in agentcg/bpf/events.py.
 */
#ifndef AGENTCG_EVENTS_H
#define AGENTCG_EVENTS_H

#define AGENTCG_COMM_LEN 16

enum agentcg_event_kind {
	AGENTCG_EVENT_EXEC = 1,
	AGENTCG_EVENT_MEM_RECLAIM = 2,    /* struct agentcg_mem_event (bpf/memwatch.bpf.c) */
	AGENTCG_EVENT_MEM_EVENT = 3,      /* struct agentcg_mem_event */
	AGENTCG_EVENT_MEM_OOM_VICTIM = 4, /* struct agentcg_mem_event */
	AGENTCG_EVENT_MEM_FROZEN = 5,     /* struct agentcg_mem_event */
};

/* The first member of every event; user space reads it to pick the struct. */
struct agentcg_event_header {
	__u32 kind;      /* enum agentcg_event_kind */
	__u32 pad;       /* zero; keeps cgroup_id 8-byte aligned */
	__u64 cgroup_id; /* cgroup v2 id: the inode number of the cgroup's directory */
	__u64 ts_ns;     /* bpf_ktime_get_ns(): CLOCK_MONOTONIC, as time.monotonic_ns() */
};

/* A successful execve; hdr.cgroup_id is the exec'ing task's cgroup. */
struct agentcg_exec_event {
	struct agentcg_event_header hdr;
	__u32 pid;  /* tgid, as user space sees it */
	__u32 ppid;
	char comm[AGENTCG_COMM_LEN]; /* already the new program's name */
};

/* agentcg_mem_event.item of a MEM_EVENT: which memory.events counter the kernel raised
 * (our own numbering; the kernel's enum memcg_memory_event may change). */
enum agentcg_mem_item {
	AGENTCG_MEM_HIGH = 1,     /* over memory.high: reclaim, then the throttle penalty */
	AGENTCG_MEM_MAX = 2,      /* a charge hit memory.max */
	AGENTCG_MEM_OOM = 3,      /* memory.max could not be met: the OOM killer runs here */
	AGENTCG_MEM_OOM_KILL = 4, /* a task of this cgroup was OOM-killed */
};

/* Memory trouble of a cgroup the daemon watches; hdr.cgroup_id is that cgroup (for
 * OOM_VICTIM the victim's), hdr.kind one of the MEM_ kinds above. usage, high and max
 * are the cgroup's memory.current, memory.high, memory.max in bytes when the event
 * happened (0 for OOM_VICTIM and FROZEN). */
struct agentcg_mem_event {
	struct agentcg_event_header hdr;
	__u32 item;         /* MEM_EVENT: enum agentcg_mem_item; MEM_FROZEN: 1 frozen, 0 thawed */
	__u32 pid;          /* OOM_VICTIM: the victim's tgid; else the current task's */
	__u64 nr_reclaimed; /* MEM_RECLAIM: pages the pass freed */
	__u64 usage;
	__u64 high;
	__u64 max;
};

/* Value of memwatch's `watched` map (key: __u64 cgroup id). The daemon inserts it
 * zeroed; the probe keeps the time of the last noisy report there (rate limit). */
struct agentcg_mem_watch {
	__u64 last_reclaim_ns;
	__u64 last_event_ns;
};

#endif /* AGENTCG_EVENTS_H */
