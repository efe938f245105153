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

#endif /* AGENTCG_EVENTS_H */
