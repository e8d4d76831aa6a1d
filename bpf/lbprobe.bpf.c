// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* lbprobe: the scheduler as lbagent sees it. Two modes, chosen by the loader before load.
 *
 * lite (the default): nothing on the context-switch or wakeup path. Arrivals and exits of the
 * agent's scope (cgroup ids, command names, uids: maps filled by the loader) come from the fork,
 * exec and exit tracepoints, rare events, through a ring buffer; an exit is reported at
 * sched_process_exit of the group's last thread with runtime = that thread's sum_exec_runtime plus
 * signal->sum_sched_runtime (the exited threads). That is a little short of the final figure: the
 * exiting thread's time since its last accounting update (at most a tick) and its exit path are
 * not counted yet, nor a sibling still finishing its own exit. New tasks per CPU are counted at
 * fork. Run queues and attained CPU come from a task iterator (lb_tasks) that user space runs at
 * each snapshot: an instant reading, not an integral.
 *
 * exact: also tp_btf on sched_switch, wakeup, wakeup_new and migrate. Per CPU, exact at every change
 * we can see: the number of runnable tasks, integrated over time so user space gets a true mean
 * over any window (an idle CPU gets no samples on a tickless kernel, so sampling would lie); busy
 * time; new tasks. An exit carries the process's final CPU time, read at its last context switch,
 * when the scheduler has accounted every nanosecond. The price is the tracepoint dispatch on every
 * switch (about 5 % on a context-switch-heavy load).
 *
 * CO-RE only: struct differences between kernels are resolved by field-existence checks, never by
 * version numbers. tp_btf everywhere: fentry and kprobes are refused on locked-down kernels. The
 * hot paths (switch, wakeup) dereference BTF pointers directly, which the verifier turns into plain
 * guarded loads, instead of BPF_CORE_READ's helper call per field: that is most of the probe's cost
 * on a context-switch-heavy workload. BPF_CORE_READ remains for the older-kernel flavours. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "lbprobe.bpf.h"

#define TASK_DEAD 0x80
#define TASK_ON_RQ_QUEUED 1
#define TASK_ON_RQ_MIGRATING 2
#define PF_KTHREAD 0x00200000
#define LB_CGROUP_DEPTH 8 /* ancestors checked for a scope match: deeper nesting is not seen */

const volatile struct lb_config cfg = {};

struct lb_shared shared __attribute__((aligned(64))) = {};

/* BTF describes only the types that some global uses, and these two are only ever built on the
 * stack or in the ring: zero-length anchors (no bytes in .bss) put them in the object's BTF for
 * the loader's layout check. */
struct lb_event lb_event_layout[0];
struct lb_task lb_task_layout[0];

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* Processes we reported arriving, so that exactly those get an exit. Value: the pid of the thread
 * that ended the group (0 while alive; exact mode only). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} tracked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} scope_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, char[LB_COMM_LEN]);
	__type(value, __u8);
} scope_comms SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} scope_uids SEC(".maps");

/* Older layouts, matched by CO-RE flavour names (the ___suffix is ignored when relocating). */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

struct task_struct___pre55 {
	u64 real_start_time;
} __attribute__((preserve_access_index));

struct cgroup___pre60 {
	int level;
	u64 ancestor_ids[];
} __attribute__((preserve_access_index));

struct task_struct___pre516 {
	unsigned int cpu;
} __attribute__((preserve_access_index));

struct sched_entity___v612 {
	unsigned char sched_delayed;
} __attribute__((preserve_access_index));

struct cfs_rq___v613 {
	unsigned int h_nr_delayed;
} __attribute__((preserve_access_index));

static __always_inline struct lb_cpu *cpu_slot(u32 cpu)
{
	if (cpu >= LB_MAX_CPUS)
		return NULL;
	return &shared.cpus[cpu];
}

static __always_inline struct rq *task_rq(struct task_struct *t)
{
	return t->se.cfs_rq->rq;
}

/* Tasks the scheduler still holds only to burn off negative lag (EEVDF delayed dequeue) are
 * asleep, yet counted in rq->nr_running: subtract them. 6.14 renamed nr_running to nr_queued in
 * struct cfs_rq and added h_nr_runnable; 6.13 counted them in h_nr_delayed; 6.12 kept them without
 * a counter (its readings include them); before 6.12 there were none. */
static __always_inline u32 delayed_dequeues(struct rq *rq)
{
	struct cfs_rq *cfs = &rq->cfs;

	if (bpf_core_field_exists(cfs->h_nr_runnable) && bpf_core_field_exists(cfs->h_nr_queued))
		return cfs->h_nr_queued - cfs->h_nr_runnable;
	if (bpf_core_field_exists(struct cfs_rq___v613, h_nr_delayed))
		return BPF_CORE_READ((struct cfs_rq___v613 *)cfs, h_nr_delayed);
	return 0;
}

static __always_inline u32 runnable(struct rq *rq)
{
	u32 nr = rq->nr_running;
	u32 delayed = delayed_dequeues(rq);

	return nr > delayed ? nr - delayed : 0;
}

static __always_inline long task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return t->__state;
	return BPF_CORE_READ((struct task_struct___pre514 *)t, state);
}

static __always_inline u64 task_start_boottime(struct task_struct *t)
{
	if (bpf_core_field_exists(t->start_boottime))
		return BPF_CORE_READ(t, start_boottime);
	return BPF_CORE_READ((struct task_struct___pre55 *)t, real_start_time);
}

/* Close the integral up to the rq clock's now, then hold the new reading. Caller holds the CPU's
 * rq lock, and the scheduler has just updated rq->clock. */
static __always_inline void sample_runq(struct lb_cpu *c, struct rq *rq)
{
	u64 now = rq->clock;

	if (c->last_ns && now > c->last_ns)
		c->runq_ns += (u64)c->nr * (now - c->last_ns);
	c->last_ns = now;
	c->nr = runnable(rq);
	if (now - c->calibrated > LB_CALIBRATE_NS) {
		c->clock_offset = (s64)(bpf_ktime_get_ns() - now);
		c->calibrated = now;
	}
}

/* A scope cgroup covers its whole subtree: test the task's cgroup and each ancestor, root first.
 * 6.0 replaced cgroup->ancestor_ids[] (ids) with ->ancestors[] (pointers). */
static __always_inline bool cgroup_in_scope(struct task_struct *t)
{
	struct cgroup *cgrp = t->cgroups->dfl_cgrp;
	int level = cgrp->level;
	u64 id;

	for (int i = 0; i < LB_CGROUP_DEPTH; i++) {
		if (i > level)
			return false;
		if (bpf_core_field_exists(cgrp->ancestors))
			id = BPF_CORE_READ(cgrp, ancestors[i], kn, id);
		else
			id = BPF_CORE_READ((struct cgroup___pre60 *)cgrp, ancestor_ids[i]);
		if (bpf_map_lookup_elem(&scope_cgroups, &id))
			return true;
	}
	return false;
}

static __always_inline bool in_scope(struct task_struct *t)
{
	if (t->flags & PF_KTHREAD)
		return false;
	if (t->tgid == cfg.self_tgid)
		return false;
	if (cfg.filter_cgroup && !cgroup_in_scope(t))
		return false;
	if (cfg.filter_uid) {
		u32 uid = t->real_cred->uid.val;

		if (!bpf_map_lookup_elem(&scope_uids, &uid))
			return false;
	}
	if (cfg.filter_comm) {
		char comm[LB_COMM_LEN] = {};

		BPF_CORE_READ_STR_INTO(&comm, t, comm);
		if (!bpf_map_lookup_elem(&scope_comms, comm))
			return false;
	}
	return true;
}

static __always_inline void emit(struct task_struct *t, u32 kind, u32 cpu, u64 now, u64 runtime)
{
	struct lb_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		__sync_fetch_and_add(&shared.lost, 1);
		return;
	}
	e->ts_ns = now;
	e->start_ns = task_start_boottime(t);
	e->runtime_ns = runtime;
	e->cgroup = t->cgroups->dfl_cgrp->kn->id;
	e->pid = t->pid;
	e->tgid = t->tgid;
	e->uid = t->real_cred->uid.val;
	e->cpu = cpu;
	e->kind = kind;
	e->pad = 0;
	BPF_CORE_READ_STR_INTO(&e->comm, t, comm);
	bpf_ringbuf_submit(e, 0);
}

/* A process enters the scope once: at its fork when it already matches, else at the first exec
 * that makes it match (a shell forks "bash" that becomes "make"). */
static __always_inline void maybe_arrive(struct task_struct *p, u32 cpu, u64 now)
{
	u32 tgid = p->tgid;
	u32 alive = 0;

	if (p->pid != tgid || bpf_map_lookup_elem(&tracked, &tgid) || !in_scope(p))
		return;
	if (bpf_map_update_elem(&tracked, &tgid, &alive, BPF_NOEXIST)) {
		__sync_fetch_and_add(&shared.lost, 1);
		return;
	}
	emit(p, LB_ARRIVAL, cpu, now, 0);
}

static __always_inline void on_wakeup(struct task_struct *p, bool is_new)
{
	struct rq *rq = task_rq(p);
	u32 cpu = rq->cpu;
	struct lb_cpu *c = cpu_slot(cpu);

	if (!c)
		return;
	sample_runq(c, rq);
	if (is_new) {
		c->arrivals++;
		maybe_arrive(p, cpu, bpf_ktime_get_ns());
	}
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(lb_wakeup, struct task_struct *p)
{
	on_wakeup(p, false);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(lb_wakeup_new, struct task_struct *p)
{
	on_wakeup(p, true);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(lb_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	u32 cpu = bpf_get_smp_processor_id();
	struct lb_cpu *c = cpu_slot(cpu);
	struct rq *rq = task_rq(next);
	u64 now = rq->clock;
	u32 tgid, *exit_pid;

	if (!c)
		return 0;
	if (c->busy && now > c->switch_ns)
		c->busy_ns += now - c->switch_ns;
	c->switch_ns = now;
	c->busy = next->pid != 0;
	sample_runq(c, rq);

	if (!(task_state(prev) & TASK_DEAD))
		return 0;
	/* prev's last switch: its runtime is final. Report the group once, from its last thread. */
	tgid = prev->tgid;
	exit_pid = bpf_map_lookup_elem(&tracked, &tgid);
	if (!exit_pid || *exit_pid != prev->pid)
		return 0;
	emit(prev, LB_EXIT, cpu, bpf_ktime_get_ns(), prev->se.sum_exec_runtime + prev->signal->sum_sched_runtime);
	bpf_map_delete_elem(&tracked, &tgid);
	return 0;
}

/* A queued task leaving its CPU (load balancing, affinity change): the source run queue has
 * already lost it and no switch may follow there for a long time, so read it now. The
 * destination catches up at its next switch or wakeup (we do not hold its lock here). */
SEC("tp_btf/sched_migrate_task")
int BPF_PROG(lb_migrate, struct task_struct *p, int dest_cpu)
{
	struct rq *rq;
	struct lb_cpu *c;

	if (p->on_rq != TASK_ON_RQ_MIGRATING)
		return 0;
	rq = task_rq(p);
	c = cpu_slot(rq->cpu);
	if (c)
		sample_runq(c, rq);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(lb_exec, struct task_struct *p)
{
	maybe_arrive(p, bpf_get_smp_processor_id(), bpf_ktime_get_ns());
	return 0;
}

/* lite mode's arrivals: a new task counted on the CPU that forked it (its own CPU is chosen just
 * after this tracepoint, at wake_up_new_task), atomically since no run-queue lock is held. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(lb_fork, struct task_struct *parent, struct task_struct *child)
{
	u32 cpu = bpf_get_smp_processor_id();
	struct lb_cpu *c = cpu_slot(cpu);

	if (c)
		__sync_fetch_and_add(&c->arrivals, 1);
	maybe_arrive(child, cpu, bpf_ktime_get_ns());
	return 0;
}

/* The group's last thread (the one that brought signal->live to zero) is exiting. lite: report the
 * exit now with the CPU time accounted so far (see the top of the file). exact: remember that
 * thread; its last context switch reports the exit with the final CPU time. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(lb_exit, struct task_struct *p)
{
	u32 tgid = p->tgid;
	u32 *exit_pid = bpf_map_lookup_elem(&tracked, &tgid);

	if (!exit_pid || p->signal->live.counter != 0)
		return 0;
	if (!cfg.lite) {
		*exit_pid = p->pid;
		return 0;
	}
	emit(p, LB_EXIT, bpf_get_smp_processor_id(), bpf_ktime_get_ns(),
	     p->se.sum_exec_runtime + p->signal->sum_sched_runtime);
	bpf_map_delete_elem(&tracked, &tgid);
	return 0;
}

static __always_inline u32 task_cpu(struct task_struct *t)
{
	if (bpf_core_field_exists(t->thread_info.cpu))
		return BPF_CORE_READ(t, thread_info.cpu);
	return BPF_CORE_READ((struct task_struct___pre516 *)t, cpu);
}

/* On a run queue for real: queued or running, and not an EEVDF delayed dequeue (asleep, kept only
 * to burn off negative lag; 6.12 and later). */
static __always_inline bool task_runnable(struct task_struct *t)
{
	if (BPF_CORE_READ(t, on_rq) != TASK_ON_RQ_QUEUED)
		return false;
	if (bpf_core_field_exists(struct sched_entity___v612, sched_delayed))
		return !BPF_CORE_READ((struct sched_entity___v612 *)&t->se, sched_delayed);
	return true;
}

/* Run by user space at each snapshot (bpf_iter_create, read to EOF): one lb_task per thread that
 * is runnable (lite mode: the run queues at this instant) or whose process is tracked (both modes:
 * attained CPU per managed process). Everything else is skipped, so the output stays small. The
 * agent itself is left out of the run queues: it is always running when it looks. */
SEC("iter/task")
int lb_tasks(struct bpf_iter__task *ctx)
{
	struct task_struct *t = ctx->task;
	struct lb_task rec = {};
	u32 tgid;

	if (!t)
		return 0;
	tgid = BPF_CORE_READ(t, tgid);
	if (cfg.lite && tgid != cfg.self_tgid && task_runnable(t))
		rec.flags |= LB_TASK_RUNNABLE;
	if (bpf_map_lookup_elem(&tracked, &tgid))
		rec.flags |= LB_TASK_TRACKED;
	if (!rec.flags)
		return 0;
	rec.tgid = tgid;
	rec.cpu = task_cpu(t);
	rec.runtime_ns = BPF_CORE_READ(t, se.sum_exec_runtime);
	if (BPF_CORE_READ(t, pid) == tgid)
		rec.runtime_ns += BPF_CORE_READ(t, signal, sum_sched_runtime);
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
