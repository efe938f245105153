// memwatch (bcc): memory trouble of the cgroups agentcg watches, as it happens.
//
// The daemon keeps `watched` (key: cgroup id of a call's leaf or of a session) up to
// date at call begin and end; everything else is dropped in the kernel before any
// event is built. Events go to user space through the `mem_events` ring buffer, each
// starting with struct agentcg_event_header (bpf/include/agentcg/events.h):
//
//   MEM_RECLAIM  a reclaim pass on a watched cgroup freed (almost) nothing while the
//                cgroup was over memory.high or at memory.max: the charge that caused
//                it will sleep in the memory.high penalty or end in an OOM
//                (vmscan:mm_vmscan_memcg_reclaim_end; its memcg is the cgroup reclaimed,
//                which may differ from the current task's, e.g. in a kworker);
//   MEM_EVENT    a memory.events item was raised on a watched cgroup (high, max, oom,
//                oom_kill), from the kernel's one counting function __memcg_memory_event;
//   MEM_OOM_VICTIM  the OOM killer chose a task in a watched cgroup (oom:mark_victim);
//   MEM_FROZEN   a watched cgroup finished freezing or thawing (cgroup_notify_frozen).
//
// All cgroup ids are kernfs node ids: the inode number of the cgroup's directory.
//
// No kernel headers: the loader (agentcg/bpf/memwatch.py) reads the offsets of the few
// kernel struct members used here, and the memcg event numbers, from the running
// kernel's BTF and passes them as -D macros. Parsing the kernel's memcontrol.h took
// clang minutes under emulation; this compiles in seconds and fails to load, rather
// than misread memory, on a kernel whose structs lack a member.
#include <uapi/linux/ptrace.h>
#include <agentcg/events.h>

#define KREAD(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)(base) + (off))

// A pass that freed fewer pages than this freed "nothing": SWAP_CLUSTER_MAX, the
// smallest batch reclaim ever asks for.
#define FUTILE_PAGES 32
// Noisy reports (reclaim, high, max) of one cgroup are at most this frequent; one is
// enough for the daemon to act, and a charge loop can raise hundreds per second.
#define MIN_GAP_NS 2000000ULL

BPF_HASH(watched, u64, struct agentcg_mem_watch, 16384);
BPF_RINGBUF_OUTPUT(mem_events, 64);  // 64 pages

// The id of a struct cgroup: cgrp->kn->id.
static __always_inline u64 cgroup_id_of(void *cgrp)
{
	void *kn = NULL;
	u64 id = 0;

	if (!cgrp)
		return 0;
	KREAD(kn, cgrp, OFF_CGROUP_KN);
	if (!kn)
		return 0;
	KREAD(id, kn, OFF_KERNFS_NODE_ID);
	return id;
}

// The id of a struct mem_cgroup's cgroup: memcg->css.cgroup->kn->id.
static __always_inline u64 memcg_cgroup_id(void *memcg)
{
	void *cgrp = NULL;

	KREAD(cgrp, memcg, OFF_MEMCG_CGROUP);
	return cgroup_id_of(cgrp);
}

struct counters {
	long usage;  // pages
	unsigned long high, max;
};

// memcg->memory: the page counter behind memory.current, memory.high, memory.max.
static __always_inline void read_counters(void *memcg, struct counters *c)
{
	KREAD(c->usage, memcg, OFF_MEMCG_USAGE);
	KREAD(c->high, memcg, OFF_MEMCG_HIGH);
	KREAD(c->max, memcg, OFF_MEMCG_MAX);
}

// True at most once per MIN_GAP_NS per cgroup and stamp.
static __always_inline bool due(u64 *stamp, u64 now)
{
	if (now - *stamp < MIN_GAP_NS)
		return false;
	*stamp = now;
	return true;
}

static __always_inline void emit(u32 kind, u64 id, u64 now, void *memcg, u32 item, u32 pid,
				 u64 nr_reclaimed)
{
	struct agentcg_mem_event *ev = mem_events.ringbuf_reserve(sizeof(*ev));
	struct counters c = {};

	if (!ev)
		return;  // user space is behind: dropping beats stalling the allocation
	if (memcg)
		read_counters(memcg, &c);
	ev->hdr.kind = kind;
	ev->hdr.pad = 0;
	ev->hdr.cgroup_id = id;
	ev->hdr.ts_ns = now;
	ev->item = item;
	ev->pid = pid;
	ev->nr_reclaimed = nr_reclaimed;
	ev->usage = (u64)c.usage * PAGE_BYTES;
	ev->high = (u64)c.high * PAGE_BYTES;
	ev->max = (u64)c.max * PAGE_BYTES;
	mem_events.ringbuf_submit(ev, 0);
}

RAW_TRACEPOINT_PROBE(mm_vmscan_memcg_reclaim_end)
{
	unsigned long nr_reclaimed = ctx->args[0];
	void *memcg = (void *)ctx->args[1];
	struct agentcg_mem_watch *w;
	struct counters c = {};
	u64 id, now;

	if (nr_reclaimed >= FUTILE_PAGES || !memcg)
		return 0;
	id = memcg_cgroup_id(memcg);
	w = watched.lookup(&id);
	if (!w)
		return 0;
	read_counters(memcg, &c);
	// Reclaim below both limits is someone else's (proactive memory.reclaim, a parent's
	// limit): nothing here is stuck.
	if (c.usage <= (long)c.high && c.usage + FUTILE_PAGES < (long)c.max)
		return 0;
	now = bpf_ktime_get_ns();
	if (due(&w->last_reclaim_ns, now))
		emit(AGENTCG_EVENT_MEM_RECLAIM, id, now, memcg, 0,
		     bpf_get_current_pid_tgid() >> 32, nr_reclaimed);
	return 0;
}

// kprobe on void __memcg_memory_event(struct mem_cgroup *memcg,
//                                     enum memcg_memory_event event, bool allow_spinning)
int on_memcg_event(struct pt_regs *ctx)
{
	void *memcg = (void *)PT_REGS_PARM1(ctx);
	int event = (int)PT_REGS_PARM2(ctx);
	struct agentcg_mem_watch *w;
	u32 item;
	u64 id, now;

	// The kernel's enum memcg_memory_event, mapped to our stable numbering.
	if (event == KERNEL_MEMCG_HIGH)
		item = AGENTCG_MEM_HIGH;
	else if (event == KERNEL_MEMCG_MAX)
		item = AGENTCG_MEM_MAX;
	else if (event == KERNEL_MEMCG_OOM)
		item = AGENTCG_MEM_OOM;
	else if (event == KERNEL_MEMCG_OOM_KILL)
		item = AGENTCG_MEM_OOM_KILL;
	else
		return 0;
	id = memcg_cgroup_id(memcg);
	w = watched.lookup(&id);
	if (!w)
		return 0;
	now = bpf_ktime_get_ns();
	if ((item == AGENTCG_MEM_HIGH || item == AGENTCG_MEM_MAX) && !due(&w->last_event_ns, now))
		return 0;
	emit(AGENTCG_EVENT_MEM_EVENT, id, now, memcg, item, bpf_get_current_pid_tgid() >> 32, 0);
	return 0;
}

RAW_TRACEPOINT_PROBE(mark_victim)
{
	void *task = (void *)ctx->args[0];
	void *cset = NULL, *cgrp = NULL;
	u64 id;
	u32 pid = 0;

	// task->cgroups->dfl_cgrp: the victim's cgroup v2 cgroup.
	KREAD(cset, task, OFF_TASK_CGROUPS);
	if (!cset)
		return 0;
	KREAD(cgrp, cset, OFF_CSS_SET_DFL_CGRP);
	id = cgroup_id_of(cgrp);
	if (!id || !watched.lookup(&id))
		return 0;
	KREAD(pid, task, OFF_TASK_TGID);
	emit(AGENTCG_EVENT_MEM_OOM_VICTIM, id, bpf_ktime_get_ns(), NULL, 0, pid, 0);
	return 0;
}

TRACEPOINT_PROBE(cgroup, cgroup_notify_frozen)
{
	u64 id = args->id;

	if (!watched.lookup(&id))
		return 0;
	emit(AGENTCG_EVENT_MEM_FROZEN, id, bpf_ktime_get_ns(), NULL, args->val, 0, 0);
	return 0;
}
