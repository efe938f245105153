// Exec tracing for agentcg (bcc): one event per successful execve, tagged with the
// cgroup v2 id of the task, so the daemon can tell which tool call ran which binary.
#include <linux/sched.h>
#include <agentcg/events.h>

BPF_RINGBUF_OUTPUT(exec_events, 64);  // 64 pages

TRACEPOINT_PROBE(sched, sched_process_exec) {
    struct agentcg_exec_event *ev = exec_events.ringbuf_reserve(sizeof(*ev));
    if (!ev)
        return 0;  // buffer full: user space is behind; dropping beats blocking exec
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    ev->hdr.kind = AGENTCG_EVENT_EXEC;
    ev->hdr.pad = 0;
    ev->hdr.cgroup_id = bpf_get_current_cgroup_id();
    ev->hdr.ts_ns = bpf_ktime_get_ns();
    ev->pid = bpf_get_current_pid_tgid() >> 32;
    ev->ppid = task->real_parent->tgid;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    exec_events.ringbuf_submit(ev, 0);
    return 0;
}
