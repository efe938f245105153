/* SPDX-License-Identifier: GPL-2.0 */
/*
 * agentcg's sched_ext scheduler: tool calls compete for CPU by their cgroup's
 * cpu.weight, and what the agent declared picks how each call waits.
 *
 * - Weighted virtual time. Every task carries a vtime that grows by the CPU time
 *   it used, scaled by 100 / (cpu.weight of its cgroup / runnable tasks in that
 *   cgroup). One shared queue runs the smallest vtime first, so runnable cgroups
 *   get CPU in proportion to cpu.weight however many tasks each one has. The
 *   weight reaches us through cgroup_init / cgroup_set_weight: writing cpu.weight
 *   on a call's leaf is all it takes.
 * - Classes from the call's settings (call_settings map, keyed by cgroup id, set
 *   by the daemon at call.begin): LATENCY tasks get a short slice, may start
 *   up to four slices behind the least advanced running task when they wake (so
 *   they are first in the queue), and on wake-up preempt a CPU that runs a
 *   non-LATENCY task further ahead (by its vtime so far), their own CPU first.
 *   BATCH tasks get no wake-up credit and never preempt. Both stay bounded by
 *   vtime: a LATENCY call that burns CPU falls behind like any other, so it cannot
 *   starve batch work, and batch hogs cannot delay it beyond one preemption.
 * - Per-call statistics (call_stats, same key) and per-CPU counters (sched_stats)
 *   for the daemon; exit_info says why the scheduler stopped.
 * - Not here: cpu.max. The kernel leaves bandwidth control to a BPF scheduler, and
 *   this one has none, so the daemon keeps calls with a CPU cap on the fair class.
 *
 * Two struct_ops maps share the callbacks: agentcg_ops runs only SCHED_EXT tasks
 * (SCX_OPS_SWITCH_PARTIAL; the daemon puts tool calls there), agentcg_all takes
 * every task on the host. The loader creates one of them.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "agentcg/sched.h"

char _license[] SEC("license") = "GPL";

#define OPS(name, args...) SEC("struct_ops/" #name) BPF_PROG(name, ##args)
#define OPS_SLEEPABLE(name, args...) SEC("struct_ops.s/" #name) BPF_PROG(name, ##args)

#define SHARED_DSQ 0
#define DEFAULT_WEIGHT 100
#define ENOMEM 12

/* In a section of its own, which the loader fills (libbpf names the map after it). */
const volatile struct agentcg_sched_knobs knobs SEC(".rodata.knobs") = {
	.slice_ns = 10 * 1000 * 1000,
	.wake_credit_ns = 10 * 1000 * 1000,
	.latency_credit_ns = 40 * 1000 * 1000,
};

u64 vtime_now; /* the largest vtime a task started running with */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AGENTCG_MAX_CALLS);
	__type(key, u64);
	__type(value, struct agentcg_sched_settings);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} call_settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AGENTCG_MAX_CALLS);
	__type(key, u64);
	__type(value, struct agentcg_sched_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} call_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AGENTCG_NR_STATS);
	__type(key, u32);
	__type(value, u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sched_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct agentcg_sched_exit);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} exit_info SEC(".maps");

struct task_ctx {
	u64 cgid;       /* its cgroup's id, kept by init_task and cgroup_move */
	u64 queued_at;  /* when it last started waiting for a CPU; 0: not waiting */
	u64 running_at; /* when it last got a CPU */
	u64 slice;      /* its call's slice, as of its last wake-up or enqueue */
	u32 klass;      /* its call's class, likewise */
	u32 weight;     /* its cgroup's cpu.weight when it last got a CPU */
	u32 share;      /* the runnable tasks in that cgroup then (at least 1) */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} task_ctx SEC(".maps");

struct cg_ctx {
	u32 weight;      /* cpu.weight */
	s32 nr_runnable; /* its runnable tasks under this scheduler */
};

struct {
	__uint(type, BPF_MAP_TYPE_CGRP_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct cg_ctx);
} cg_ctx SEC(".maps");

struct cpu_ctx {
	u64 vtime;      /* vtime of the task it runs, when that task got the CPU */
	u64 running_at; /* when that was */
	u32 klass;      /* class of the task it runs */
	u32 busy;       /* 1 while one of our tasks runs here */
	u32 weight;     /* that task's charge, as in struct task_ctx */
	u32 share;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct cpu_ctx);
} cpu_ctx SEC(".maps");

static bool vtime_before(u64 a, u64 b)
{
	return (s64)(a - b) < 0;
}

static void stat_inc(u32 idx)
{
	u64 *cnt = bpf_map_lookup_elem(&sched_stats, &idx);

	if (cnt)
		(*cnt)++;
}

static struct cpu_ctx *this_cpu_ctx(void)
{
	u32 zero = 0;

	return bpf_map_lookup_elem(&cpu_ctx, &zero);
}

/* Our context for the task's cgroup (NULL if none yet). Where only the cgroup's id
 * is needed, task_ctx has it: this costs a kfunc call and a reference. */
static struct cg_ctx *task_cgroup(struct task_struct *p)
{
	struct cgroup *cgrp = scx_bpf_task_cgroup(p);
	struct cg_ctx *cgc = bpf_cgrp_storage_get(&cg_ctx, cgrp, 0, 0);

	bpf_cgroup_release(cgrp);
	return cgc;
}

static void bad_settings(u64 cgid, u32 klass)
{
	static char fmt[] = "call_settings of cgroup %llu: class %u is not 0, 1 or 2";
	unsigned long long data[2] = { cgid, klass };

	scx_bpf_error_bstr(fmt, data, sizeof(data));
}

/* The class and slice the task's call asked for; NORMAL and the default slice
 * for tasks whose cgroup has no settings (or no task_ctx). Also remembers them. */
static u64 task_settings(struct task_ctx *tc, u32 *klass)
{
	struct agentcg_sched_settings *s;
	u64 slice = knobs.slice_ns;

	*klass = AGENTCG_CLASS_NORMAL;
	if (!tc)
		return slice;
	s = bpf_map_lookup_elem(&call_settings, &tc->cgid);
	if (s) {
		if (s->klass >= AGENTCG_NR_CLASSES) {
			bad_settings(tc->cgid, s->klass);
		} else {
			*klass = s->klass;
			if (s->slice_ns)
				slice = s->slice_ns;
		}
		stat_inc(AGENTCG_STAT_SETTINGS);
	}
	tc->klass = *klass;
	tc->slice = slice;
	return slice;
}

/* The task's vtime, raised to `floor` if it is further behind. */
static u64 floor_vtime(struct task_struct *p, u64 floor)
{
	if (vtime_before(p->scx.dsq_vtime, floor))
		p->scx.dsq_vtime = floor;
	return p->scx.dsq_vtime;
}

/* The vtime the task may start from: its own, but no further behind the clock
 * than its class's wake-up credit, so sleeping banks only a bounded advantage. */
static u64 start_vtime(struct task_struct *p, u32 klass)
{
	u64 credit = klass == AGENTCG_CLASS_LATENCY ? knobs.latency_credit_ns :
		     klass == AGENTCG_CLASS_BATCH   ? 0 :
						      knobs.wake_credit_ns;

	return floor_vtime(p, vtime_now - credit);
}

/* The vtime a task owes for running `used` ns: scaled by 100 / (its cgroup's
 * cpu.weight / the cgroup's runnable tasks), as they were when it got the CPU, so
 * that cgroups, not tasks, share by weight. */
static u64 charge_at(u32 weight, u32 share, u64 used)
{
	return used * DEFAULT_WEIGHT * share / (weight ? weight : DEFAULT_WEIGHT);
}

static u64 charge(struct task_ctx *tc, u64 used)
{
	return charge_at(tc->weight, tc->share, used);
}

/* A waking LATENCY task: the vtime it starts from, and the CPU it should take.
 *
 * The vtime is its own, but no further behind than the latency credit from the
 * least advanced task running now (or from vtime_now, if that is smaller). Not from
 * vtime_now, the largest start, as start_vtime does: low-weight hogs' vtimes spread
 * by far more than the credit (a 20 ms slice at cpu.weight 25 is 80 ms of vtime per
 * runnable task in the cgroup), and a waker floored there came after hogs that had
 * run less than their share, so it could not preempt them and queued for up to a
 * slice. It stays bounded: it cannot bank more than the credit, and one that burns
 * CPU is behind by its own vtime.
 *
 * The CPU: among those it may use that run one of our non-LATENCY tasks whose vtime,
 * charged for the time it has run so far, is ahead of the waker's, the one it woke
 * on (no IPI needed), else the one whose task is furthest ahead; -1 if there is
 * none. Comparing with the vtime the running task started with would let a hog that
 * just got the CPU with an old vtime keep it for a whole slice. */
static s32 latency_wakeup(struct task_struct *p, u64 *vtime)
{
	s32 here = scx_bpf_task_cpu(p), target = -1;
	struct bpf_iter_num it;
	u64 now = scx_bpf_now(), base = vtime_now, here_cur = 0, worst = 0, cur;
	bool at_here = false;
	u32 zero = 0;
	int *cpu;

	bpf_iter_num_new(&it, 0, scx_bpf_nr_cpu_ids());
	while ((cpu = bpf_iter_num_next(&it))) {
		struct cpu_ctx *c = bpf_map_lookup_percpu_elem(&cpu_ctx, &zero, *cpu);

		if (!c || !c->busy)
			continue;
		cur = c->vtime;
		if (vtime_before(c->running_at, now))
			cur += charge_at(c->weight, c->share, now - c->running_at);
		if (vtime_before(cur, base))
			base = cur;
		if (c->klass == AGENTCG_CLASS_LATENCY || !bpf_cpumask_test_cpu(*cpu, p->cpus_ptr))
			continue;
		if (*cpu == here) {
			at_here = true;
			here_cur = cur;
		} else if (target < 0 || vtime_before(worst, cur)) {
			worst = cur;
			target = *cpu;
		}
	}
	bpf_iter_num_destroy(&it);
	*vtime = floor_vtime(p, base - knobs.latency_credit_ns);
	if (at_here && vtime_before(*vtime, here_cur))
		return here;
	if (target >= 0 && vtime_before(*vtime, worst))
		return target;
	return -1;
}

static struct agentcg_sched_stats *call_stats_of(u64 cgid)
{
	return bpf_map_lookup_elem(&call_stats, &cgid);
}

s32 OPS(agentcg_select_cpu, struct task_struct *p, s32 prev_cpu, u64 wake_flags)
{
	bool idle = false;
	u32 klass;
	u64 slice;
	s32 cpu;

	cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &idle);
	if (idle) {
		slice = task_settings(bpf_task_storage_get(&task_ctx, p, 0, 0), &klass);
		start_vtime(p, klass);
		scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL, slice, 0);
		stat_inc(AGENTCG_STAT_DIRECT);
	}
	return cpu;
}

void OPS(agentcg_enqueue, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tc = bpf_task_storage_get(&task_ctx, p, 0, 0);
	struct agentcg_sched_stats *st;
	u64 slice, vtime;
	u32 klass;
	s32 cpu;

	slice = task_settings(tc, &klass);
	if (klass == AGENTCG_CLASS_LATENCY && (enq_flags & SCX_ENQ_WAKEUP)) {
		cpu = latency_wakeup(p, &vtime);
		if (cpu >= 0) {
			scx_bpf_dsq_insert(p, SCX_DSQ_LOCAL_ON | cpu, slice,
					   enq_flags | SCX_ENQ_PREEMPT);
			stat_inc(AGENTCG_STAT_PREEMPT);
			st = tc ? call_stats_of(tc->cgid) : NULL;
			if (st)
				__sync_fetch_and_add(&st->preempts, 1);
			return;
		}
	} else {
		vtime = start_vtime(p, klass);
	}
	scx_bpf_dsq_insert_vtime(p, SHARED_DSQ, slice, vtime, enq_flags);
	stat_inc(AGENTCG_STAT_QUEUED);
}

/* The kernel asks for the next task before it puts the one whose slice ran out
 * back in the queue, so that one would always lose to the queue's head: keep it
 * running while its vtime, charged for this slice, is still the smallest. */
void OPS(agentcg_dispatch, s32 cpu, struct task_struct *prev)
{
	struct task_struct *head;
	struct task_ctx *tc;

	if (prev && (prev->scx.flags & SCX_TASK_QUEUED)) {
		tc = bpf_task_storage_get(&task_ctx, prev, 0, 0);
		head = scx_bpf_dsq_peek(SHARED_DSQ);
		if (tc && tc->running_at &&
		    (!head || !vtime_before(head->scx.dsq_vtime,
					    prev->scx.dsq_vtime +
						    charge(tc, scx_bpf_now() - tc->running_at)))) {
			prev->scx.slice = tc->slice;
			return;
		}
	}
	scx_bpf_dsq_move_to_local(SHARED_DSQ);
}

void OPS(agentcg_runnable, struct task_struct *p, u64 enq_flags)
{
	struct task_ctx *tc = bpf_task_storage_get(&task_ctx, p, 0, 0);
	struct cg_ctx *cgc = task_cgroup(p);

	if (cgc)
		__sync_fetch_and_add(&cgc->nr_runnable, 1);
	if (tc)
		tc->queued_at = scx_bpf_now();
}

void OPS(agentcg_running, struct task_struct *p)
{
	struct task_ctx *tc = bpf_task_storage_get(&task_ctx, p, 0, 0);
	struct cpu_ctx *c = this_cpu_ctx();
	struct agentcg_sched_stats *st;
	u64 now = scx_bpf_now(), wait;
	struct cg_ctx *cgc;

	if (vtime_before(vtime_now, p->scx.dsq_vtime))
		vtime_now = p->scx.dsq_vtime;
	if (!tc)
		return;
	cgc = task_cgroup(p);
	tc->weight = cgc && cgc->weight ? cgc->weight : DEFAULT_WEIGHT;
	tc->share = cgc && cgc->nr_runnable > 1 ? cgc->nr_runnable : 1;
	if (c) {
		c->vtime = p->scx.dsq_vtime;
		c->running_at = now;
		c->klass = tc->klass;
		c->weight = tc->weight;
		c->share = tc->share;
		c->busy = 1;
	}
	st = call_stats_of(tc->cgid);
	if (st) {
		__sync_fetch_and_add(&st->dispatches, 1);
		if (tc->queued_at && vtime_before(tc->queued_at, now)) {
			wait = now - tc->queued_at;
			__sync_fetch_and_add(&st->wait_ns, wait);
			if (wait > st->max_wait_ns)
				st->max_wait_ns = wait;
		}
	}
	tc->running_at = now;
	tc->queued_at = 0;
}

void OPS(agentcg_stopping, struct task_struct *p, bool runnable)
{
	struct task_ctx *tc = bpf_task_storage_get(&task_ctx, p, 0, 0);
	struct cpu_ctx *c = this_cpu_ctx();
	struct agentcg_sched_stats *st;
	u64 now = scx_bpf_now(), used;

	if (c)
		c->busy = 0;
	if (!tc || !tc->running_at)
		return;
	used = now - tc->running_at;
	p->scx.dsq_vtime += charge(tc, used);
	st = call_stats_of(tc->cgid);
	if (st)
		__sync_fetch_and_add(&st->run_ns, used);
	tc->running_at = 0;
	if (runnable)
		tc->queued_at = now;
}

void OPS(agentcg_quiescent, struct task_struct *p, u64 deq_flags)
{
	struct cg_ctx *cgc = task_cgroup(p);

	if (cgc && cgc->nr_runnable > 0)
		__sync_fetch_and_sub(&cgc->nr_runnable, 1);
}

void OPS(agentcg_enable, struct task_struct *p)
{
	p->scx.dsq_vtime = vtime_now;
}

s32 OPS_SLEEPABLE(agentcg_init_task, struct task_struct *p, struct scx_init_task_args *args)
{
	struct task_ctx *tc;

	tc = bpf_task_storage_get(&task_ctx, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!tc)
		return -ENOMEM;
	tc->cgid = args->cgroup->kn->id;
	return 0;
}

/* The kernel calls this whenever the task's cgroup (the one scx_bpf_task_cgroup
 * returns) changes, and init_task gives the first one, so task_ctx's id stays right. */
void OPS(agentcg_cgroup_move, struct task_struct *p, struct cgroup *from, struct cgroup *to)
{
	struct task_ctx *tc = bpf_task_storage_get(&task_ctx, p, 0, 0);

	if (tc)
		tc->cgid = to->kn->id;
}

s32 OPS_SLEEPABLE(agentcg_cgroup_init, struct cgroup *cgrp, struct scx_cgroup_init_args *args)
{
	struct cg_ctx *cgc;

	cgc = bpf_cgrp_storage_get(&cg_ctx, cgrp, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!cgc)
		return -ENOMEM;
	cgc->weight = args->weight;
	return 0;
}

void OPS(agentcg_cgroup_set_weight, struct cgroup *cgrp, u32 weight)
{
	struct cg_ctx *cgc = bpf_cgrp_storage_get(&cg_ctx, cgrp, 0, 0);

	if (cgc)
		cgc->weight = weight;
}

s32 OPS_SLEEPABLE(agentcg_init)
{
	struct agentcg_sched_exit *e;
	u32 zero = 0;

	e = bpf_map_lookup_elem(&exit_info, &zero);
	if (e)
		e->kind = 0;
	return scx_bpf_create_dsq(SHARED_DSQ, -1);
}

void OPS(agentcg_exit, struct scx_exit_info *ei)
{
	struct agentcg_sched_exit *e;
	u32 zero = 0;

	e = bpf_map_lookup_elem(&exit_info, &zero);
	if (!e)
		return;
	e->exit_code = ei->exit_code;
	bpf_probe_read_kernel_str(e->reason, sizeof(e->reason), ei->reason);
	bpf_probe_read_kernel_str(e->msg, sizeof(e->msg), ei->msg);
	e->kind = ei->kind;
}

#define AGENTCG_OPS(switch_flags)                                   \
	.select_cpu = (void *)agentcg_select_cpu,                   \
	.enqueue = (void *)agentcg_enqueue,                         \
	.dispatch = (void *)agentcg_dispatch,                       \
	.runnable = (void *)agentcg_runnable,                       \
	.running = (void *)agentcg_running,                         \
	.stopping = (void *)agentcg_stopping,                       \
	.quiescent = (void *)agentcg_quiescent,                     \
	.enable = (void *)agentcg_enable,                           \
	.init_task = (void *)agentcg_init_task,                     \
	.cgroup_init = (void *)agentcg_cgroup_init,                 \
	.cgroup_move = (void *)agentcg_cgroup_move,                 \
	.cgroup_set_weight = (void *)agentcg_cgroup_set_weight,     \
	.init = (void *)agentcg_init,                               \
	.exit = (void *)agentcg_exit,                               \
	.flags = (switch_flags),                                    \
	.name = AGENTCG_SCHED_NAME

SEC(".struct_ops.link")
struct sched_ext_ops agentcg_ops = { AGENTCG_OPS(SCX_OPS_SWITCH_PARTIAL) };

SEC(".struct_ops.link")
struct sched_ext_ops agentcg_all = { AGENTCG_OPS(0) };
