package drills

import (
	"context"
	"fmt"
	"time"

	"github.com/oaruntime/oaruntime/internal/client"
)

// executorRestartRecovery: many runs with tools (and some model calls) in
// flight; the only node is killed with SIGKILL and started again on the
// same database under a new lease owner. Every run must finish succeeded,
// its log complete (nothing lost, nothing repeated: one tool.result per
// tool_call_id) and its chain intact; the runs whose lease was held by the
// dead process are reclaimed by the janitor (run.executor_lost) and resumed.
func (d *Driver) executorRestartRecovery(ctx context.Context, kind string) Result {
	r := newRec(ExecutorRestartRecovery, kind)
	passed := false
	ctx, node, finish, ok := d.singleNode(ctx, r, ExecutorRestartRecovery, kind, 4*time.Minute, nil)
	if !ok {
		return r.done()
	}
	defer func() { finish(passed) }()
	c := d.client(node)

	n := 40
	if d.cfg.Short {
		n = 12
	}
	plans := make([]*plannedRun, n)
	for i := range plans {
		tag := fmt.Sprintf("r%02d", i)
		model := 0
		if i%4 == 3 {
			model = 400 // a quarter of the runs are inside a model call at the kill
		}
		plans[i] = &plannedRun{
			RunID: fmt.Sprintf("run_exec_%s_%s_%s", kind, randHex(4), tag), FrameID: "frame_" + tag,
			Steps:      toolScript(tag, model, 1500+(i%5)*300, 800+(i%3)*400),
			WantStatus: "succeeded",
		}
		if err := createRun(ctx, c, plans[i]); err != nil {
			r.failf("%v", err)
			return r.done()
		}
	}
	r.count("runs", int64(n))
	inflight := waitInFlight(ctx, c, plans, n/2, 10*time.Second)
	r.count("runs_with_tool_in_flight_at_kill", int64(inflight))
	if inflight == 0 {
		r.failf("no run had a tool in flight when the node was to be killed: the drill would prove nothing")
	}

	killAt := node.Kill()
	d.progressf("%s/%s: SIGKILL with %d runs in a tool call", ExecutorRestartRecovery, kind, inflight)
	if err := node.Start(ctx, d.cfg.Bin, kind+"-node-2"); err != nil {
		r.failf("restart: %v", err)
		return r.done()
	}
	r.dur("kill_to_ready", time.Since(killAt))

	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	_, werr := waitTerminal(wctx, func() *client.Client { return c }, plans)
	wcancel()
	if werr != nil {
		r.failf("%v", werr)
	}
	r.dur("kill_to_all_terminal", time.Since(killAt))

	requireAlive(r, node)
	checks := checkAll(ctx, r, c, plans)
	d.recoveryFigures(r, checks, killAt, "", "kill", budgetTTLJanitor, d.recoveryBudget())
	if r.r.Counts["runs_recovered"] == 0 {
		r.failf("no run was reclaimed (run.executor_lost) after the kill")
	}
	res := r.done()
	passed = res.Passed
	return res
}

// recoveryFigures reports, for the runs reclaimed after from (optionally
// only those whose lost lease belonged to owner), the time from `from` to
// the janitor's run.executor_lost and to the next event the resumed
// executor appended, named <prefix>_to_reclaim_* and <prefix>_to_resumed_event_*,
// and compares the slowest reclaim with budget.
func (d *Driver) recoveryFigures(r *rec, checks []runCheck, from time.Time, owner, prefix, budgetName string, budget time.Duration) (reclaimed int) {
	var toLost, toProgress []time.Duration
	for _, rc := range checks {
		lostAt := time.Time{}
		for _, ev := range rc.Events {
			if lostAt.IsZero() {
				if ev.EventType != "run.executor_lost" || ev.CreatedAt.Before(from) {
					continue
				}
				if owner != "" && leaseOwner(ev) != owner {
					continue
				}
				lostAt = ev.CreatedAt
				toLost = append(toLost, lostAt.Sub(from))
				continue
			}
			if ev.EventType != "run.executor_lost" {
				toProgress = append(toProgress, ev.CreatedAt.Sub(from))
				break
			}
		}
	}
	r.budget(budgetName, budget)
	r.count("runs_reclaimed", int64(len(toLost)))
	if len(toLost) > 0 {
		lo, p50, _, hi := percentiles(toLost)
		r.dur(prefix+"_to_reclaim_min", lo)
		r.dur(prefix+"_to_reclaim_p50", p50)
		r.dur(prefix+"_to_reclaim_max", hi)
		if hi > budget {
			r.notef("slowest reclaim %s after %s exceeds %s (%s)", hi.Round(time.Millisecond), prefix, budgetName, budget)
		}
	}
	if len(toProgress) > 0 {
		_, p50, _, hi := percentiles(toProgress)
		r.dur(prefix+"_to_resumed_event_p50", p50)
		r.dur(prefix+"_to_resumed_event_max", hi)
	}
	return len(toLost)
}
