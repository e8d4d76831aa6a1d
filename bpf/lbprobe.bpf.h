/* Layouts shared by lbprobe.bpf.c and its loader (lbagent/live/probe/bpf.py mirrors them with ctypes:
 * change one, change the other; the loader compares every struct here with its mirror, by the size
 * the object's BTF gives, before loading). */
#ifndef LBPROBE_BPF_H
#define LBPROBE_BPF_H

#define LB_MAX_CPUS 1024
#define LB_COMM_LEN 16

enum lb_event_kind {
	LB_ARRIVAL = 1,
	LB_EXIT = 2,
};

/* One record of the ring buffer: a task of the scope arriving or exiting. */
struct lb_event {
	__u64 ts_ns;      /* CLOCK_MONOTONIC */
	__u64 start_ns;   /* task start, CLOCK_BOOTTIME ns (what /proc/PID/stat field 22 shows in ticks) */
	__u64 runtime_ns; /* CPU time of the whole process, at exit */
	__u64 cgroup;     /* cgroup v2 id (the inode number of its directory) */
	__u32 pid;
	__u32 tgid;
	__u32 uid;
	__u32 cpu;
	__u32 kind;
	__u32 pad;
	char comm[LB_COMM_LEN];
};

/* One record of the task iterator (lb_tasks), written per task that is runnable or belongs to a
 * tracked process. runtime_ns is the thread's own CPU time, plus the time of the group's exited
 * threads on the group leader's record, so the sum over a process's records is its attained CPU. */
#define LB_TASK_RUNNABLE 1 /* queued or running on cpu, not a delayed dequeue */
#define LB_TASK_TRACKED 2  /* its process arrived and has not exited */

struct lb_task {
	__u64 runtime_ns;
	__u32 tgid;
	__u32 cpu;
	__u32 flags; /* LB_TASK_* */
	__u32 pad;
};

/* Per-CPU scheduler state. In exact mode every writer runs under that CPU's run-queue lock (switch,
 * wakeup, wakeup_new, queued migration), so plain stores are race-free; lite mode writes only
 * arrivals, with an atomic add at fork. User space reads it and closes the
 * open intervals at its own "now". Times are the run queue's own clock (rq->clock, sched_clock
 * based, already updated by the scheduler at each of these events): reading it is a load, while
 * bpf_ktime_get_ns() costs more than the rest of a handler on a virtual machine. clock_offset maps
 * it to CLOCK_MONOTONIC for user space, refreshed every LB_CALIBRATE_NS. One cache line per CPU:
 * wakeups write remote CPUs' entries, and sharing a line would bounce it on every switch. */
#define LB_CALIBRATE_NS 10000000ULL

struct lb_cpu {
	__u64 last_ns;      /* rq clock at the last run-queue reading */
	__u64 runq_ns;      /* integral of runnable tasks over time, task*ns, up to last_ns */
	__u64 switch_ns;    /* rq clock at the last context switch */
	__u64 busy_ns;      /* non-idle time up to switch_ns */
	__u64 arrivals;     /* new tasks woken on this CPU (lite: forked on this CPU) */
	__u32 nr;           /* runnable tasks at last_ns */
	__u32 busy;         /* 1 when a non-idle task runs since switch_ns */
	__s64 clock_offset; /* CLOCK_MONOTONIC minus rq clock, ns */
	__u64 calibrated;   /* rq clock when clock_offset was measured */
};

/* Read-only configuration, set by the loader before load. An empty filter means "any". */
struct lb_config {
	__u32 self_tgid;     /* the agent itself is never in scope */
	__u8 filter_cgroup;  /* require the task's cgroup id in scope_cgroups */
	__u8 filter_comm;    /* require the task's comm in scope_comms */
	__u8 filter_uid;     /* require the task's uid in scope_uids */
	__u8 lite;           /* lite mode: exits at sched_process_exit, run queues from the iterator */
};

struct lb_shared {
	__u64 lost; /* events dropped: ring buffer full, or tracking map full at an arrival */
	__u64 pad[7];
	struct lb_cpu cpus[LB_MAX_CPUS];
};

#endif
