package drills

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/oaruntime/oaruntime/internal/client"
)

// leaseOwner is the lease_owner of a run.executor_lost payload.
func leaseOwner(ev apiEvent) string {
	var p struct {
		LeaseOwner string `json:"lease_owner"`
	}
	_ = json.Unmarshal(ev.Payload, &p)
	return p.LeaseOwner
}

// replicaFailover (PostgreSQL): three `serve` processes on different ports
// share one database and secret. The victim starts first and alone takes a
// first batch of runs (so it certainly holds leases); the two others join
// and the rest of the runs spread over all three. With tools in flight the
// victim is killed with SIGKILL; the survivors' janitors must reclaim its
// leases and their executors finish its runs. Reported: the time from the
// kill to the first event another replica appended for each of the victim's
// runs (run.executor_lost, by a janitor) against lease TTL + janitor
// interval, and to the next event of the resumed run. Passes when every run
// completes with a complete, intact log.
func (d *Driver) replicaFailover(ctx context.Context, kind string) Result {
	r := newRec(ReplicaFailover, kind)
	passed := false
	settings, cleanup, err := d.database(ctx, kind, ReplicaFailover)
	if err != nil {
		r.failf("database: %v", err)
		return r.done()
	}
	defer func() { cleanup(passed) }()
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()

	names := []string{"replica-a", "replica-b", "replica-c"}
	nodes := make([]*Node, len(names))
	for i, name := range names {
		if nodes[i], err = d.newNode(ReplicaFailover+"-"+name, settings); err != nil {
			r.failf("%v", err)
			return r.done()
		}
		defer nodes[i].Stop()
	}
	victim := nodes[0]
	if err := victim.Start(ctx, d.cfg.Bin, names[0]); err != nil {
		r.failf("start %s: %v", names[0], err)
		return r.done()
	}

	total := 36
	if d.cfg.Short {
		total = 12
	}
	first := total / 3
	plans := make([]*plannedRun, total)
	mk := func(i int) *plannedRun {
		tag := fmt.Sprintf("f%02d", i)
		firstMS := 1500 + (i%4)*400
		if i < first {
			firstMS = 10000 // still in its first tool when the victim dies
		}
		return &plannedRun{
			RunID: fmt.Sprintf("run_failover_%s_%s", randHex(4), tag), FrameID: "frame_" + tag,
			Steps: toolScript(tag, 0, firstMS, 600), WantStatus: "succeeded",
		}
	}
	vc := d.client(victim)
	for i := 0; i < first; i++ {
		plans[i] = mk(i)
		if err := createRun(ctx, vc, plans[i]); err != nil {
			r.failf("%v", err)
			return r.done()
		}
	}
	if got := waitInFlight(ctx, vc, plans[:first], first, 10*time.Second); got < first {
		r.failf("only %d of %d first-batch runs reached a tool on %s", got, first, names[0])
	}
	for i := 1; i < len(nodes); i++ {
		if err := nodes[i].Start(ctx, d.cfg.Bin, names[i]); err != nil {
			r.failf("start %s: %v", names[i], err)
			return r.done()
		}
	}
	for i := first; i < total; i++ {
		plans[i] = mk(i)
		if err := createRun(ctx, d.client(nodes[i%len(nodes)]), plans[i]); err != nil {
			r.failf("%v", err)
			return r.done()
		}
	}
	r.count("replicas", int64(len(nodes)))
	r.count("runs", int64(total))
	inflight := waitInFlight(ctx, d.client(nodes[1]), plans, total/2, 5*time.Second)
	r.count("runs_with_tool_in_flight_at_kill", int64(inflight))
	// The victim certainly holds the first-batch runs still in their tool.
	held := inFlightRuns(ctx, d.client(nodes[1]), plans[:first])
	r.count("victim_runs_known_at_kill", int64(len(held)))
	if len(held) == 0 {
		r.failf("no first-batch run of %s was still in a tool at the kill: the drill would prove nothing", names[0])
	}

	killAt := victim.Kill()
	d.progressf("%s/%s: SIGKILL %s with %d runs in a tool call", ReplicaFailover, kind, names[0], inflight)

	survivor := d.client(nodes[1])
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	_, werr := waitTerminal(wctx, func() *client.Client { return survivor }, plans)
	wcancel()
	if werr != nil {
		r.failf("%v", werr)
	}
	r.dur("kill_to_all_terminal", time.Since(killAt))

	checks := checkAll(ctx, r, survivor, plans)
	taken := d.recoveryFigures(r, checks, killAt, names[0], "kill", budgetTTLJanitor, d.recoveryBudget())
	r.count("victim_runs_taken_over", int64(taken))
	if taken == 0 {
		r.failf("no run of the killed replica %s was reclaimed by another replica", names[0])
	}
	for _, rc := range checks {
		if !held[rc.RunID] {
			continue
		}
		reclaimed := false
		for _, ev := range rc.Events {
			if ev.EventType == "run.executor_lost" && leaseOwner(ev) == names[0] && !ev.CreatedAt.Before(killAt) {
				reclaimed = true
			}
		}
		if !reclaimed {
			r.failf("%s: held by %s in a tool at the kill, but no run.executor_lost for its lease", rc.RunID, names[0])
		}
	}
	requireAlive(r, nodes[1:]...)
	res := r.done()
	passed = res.Passed
	return res
}
