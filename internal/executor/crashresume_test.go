package executor_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/breaker"
	"github.com/oaruntime/oaruntime/internal/executor"
	"github.com/oaruntime/oaruntime/internal/receipts"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/tools"
)

// trippedBreakers is one node's breaker registry with provider already
// open for the rest of the test.
func trippedBreakers(t *testing.T, provider string) *breaker.Registry {
	t.Helper()
	reg := breaker.NewRegistry(breaker.Config{FailureThreshold: 1, Cooldown: time.Hour}, nil)
	_ = reg.Do(t.Context(), provider, func(context.Context) error { return errors.New("down") })
	if s := reg.State(provider); s != breaker.StateOpen {
		t.Fatalf("breaker %s", s)
	}
	return reg
}

// TestCrashBetweenToolCallAndResult is the full agent loop under a crash:
// with the primary model provider's breaker open (every model call falls
// back) and a priced tool behind its own provider, node A is killed while
// the tool runs (tool.call appended, no tool.result). Node B's janitor
// reclaims the run and its executor resumes it. Afterwards:
//   - the log is gap-free and hash-chained, with no step twice (one
//     tool.call, one tool.result, one fallback per model call);
//   - each model call reached a provider once (the one before the crash is
//     replayed from the log, not called again), and the primary never;
//   - the budget holds exactly the three priced calls: it is sized so that
//     a second reservation of any of them would be denied;
//   - the receipt built from the log agrees with all of the above.
func TestCrashBetweenToolCallAndResult(t *testing.T) {
	st := openStore(t)
	const ttl = time.Second
	const (
		modelCost = 2
		toolCost  = 5
		budget    = modelCost + toolCost + modelCost
	)
	started := make(chan struct{})
	interrupted := make(chan struct{})
	tool := &providerTool{name: "acme.book", prov: "acme", cost: toolCost, timeout: time.Minute,
		do: func(ctx context.Context, n int64, in json.RawMessage) (json.RawMessage, error) {
			if n == 1 {
				// Node A's call: it hangs until A dies.
				close(started)
				<-ctx.Done()
				close(interrupted)
				return nil, ctx.Err()
			}
			return json.RawMessage(`{"booked":true}`), nil
		}}
	reg := tools.NewRegistry(tools.Echo{}, tool)
	calls := &providerCalls{}
	deps := func(t *testing.T) executor.Deps {
		return executor.Deps{Tools: reg, Providers: calls.wrap(executor.DefaultProviders), Breakers: trippedBreakers(t, "scripted-primary")}
	}

	newRun(t, st, store.CreateRunInput{
		RunID:         "run_crash_full",
		Provider:      json.RawMessage(`{"name":"scripted-primary","fallback":"scripted-fallback","cost_sats":2}`),
		Authorization: json.RawMessage(`{"authorization_id":"auth_crash_full","mode":"delegated_budget","max_total_sats":9}`),
	})
	ctxA, killA := context.WithCancel(context.Background())
	defer killA()
	startNodeWith(ctxA, t, st, "node-a", ttl, deps(t))
	script := []map[string]any{{"say": "booking"}, {"tool": "acme.book", "input": map[string]any{"seat": 7}}, {"answer": "booked"}}
	sendFrame(t, st, "run_crash_full", "f1", "user_message", map[string]any{"text": "book a seat", "script": script})
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("node A never started the tool")
	}
	// The crash point: the call is in the log, its result is not.
	evs := allEvents(t, st, "run_crash_full")
	if last := evs[len(evs)-1]; last.EventType != "tool.call" {
		t.Fatalf("last event before the kill is %s, want tool.call", last.EventType)
	}
	if b := budgetOf(t, st, "run_crash_full"); b.After.SpentSats != modelCost || b.After.ReservedSats != toolCost {
		t.Fatalf("budget at the crash %+v: want the first model call charged and the tool reserved", b)
	}
	killA()
	select {
	case <-interrupted:
	case <-time.After(10 * time.Second):
		t.Fatal("node A's tool call was not interrupted by the kill")
	}

	ctxB, stopB := context.WithCancel(context.Background())
	defer stopB()
	startNodeWith(ctxB, t, st, "node-b", ttl, deps(t))
	run := waitStatus(t, st, "run_crash_full", store.StatusSucceeded, 20*time.Second)

	evs = allEvents(t, st, "run_crash_full")
	counts := checkLog(t, "run_crash_full", evs)
	want := map[string]int{
		"run.started": 1, "run.delta": 2, "provider.fallback": 2, "tool.call": 1, "tool.result": 1,
		"run.executor_lost": 1, "run.finished": 1, "policy.decision": 0, "policy.budget_exhausted": 0,
	}
	for typ, n := range want {
		if counts[typ] != n {
			t.Fatalf("%s events: %d, want %d (all: %v)", typ, counts[typ], n, counts)
		}
	}
	if res := eventsOf(evs, "tool.result")[0]; res["status"] != tools.Succeeded || res["cost_sats"] != float64(toolCost) || res["provider"] != "acme" {
		t.Fatalf("tool.result %v", res)
	}
	// Model calls: call 1 by A, call 2 by B; call 1 was replayed, not re-sent.
	if p, f := calls.get("scripted-primary"), calls.get("scripted-fallback"); p != 0 || f != 2 {
		t.Fatalf("provider calls: primary %d, fallback %d; want 0 and 2", p, f)
	}
	// The tool ran on A (interrupted, no result) and once more on B.
	if n := tool.calls.Load(); n != 2 {
		t.Fatalf("tool invoked %d times, want 2 (interrupted on A, completed on B)", n)
	}
	b := budgetOf(t, st, "run_crash_full")
	if b.After.SpentSats != budget || b.After.ReservedSats != 0 || b.After.RemainingSats != 0 {
		t.Fatalf("budget %+v, want exactly %d spent", b, budget)
	}
	rows, err := st.(store.SpendStore).ListReservations(t.Context(), "run_crash_full")
	if err != nil || len(rows) != 3 {
		t.Fatalf("reservations %+v %v, want one per priced call", rows, err)
	}
	for _, r := range rows {
		if r.State != store.ReservationCommitted {
			t.Fatalf("reservation %+v not committed", r)
		}
	}

	rc, err := receipts.NewBuilder(st, nil).Build(t.Context(), run)
	if err != nil {
		t.Fatal(err)
	}
	last := evs[len(evs)-1]
	if !rc.Verification.OK || rc.EventCount != len(evs) || rc.HeadHash != last.EventHash || rc.LatestSeq != last.Seq {
		t.Fatalf("receipt chain %+v count %d head %s", rc.Verification, rc.EventCount, rc.HeadHash)
	}
	if rc.Status != store.StatusSucceeded || rc.ExecutorLost != 1 || len(rc.PolicyDecisions) != 0 {
		t.Fatalf("receipt status %s lost %d decisions %v", rc.Status, rc.ExecutorLost, rc.PolicyDecisions)
	}
	if len(rc.ModelCalls) != 2 || len(rc.Fallbacks) != 2 {
		t.Fatalf("receipt model calls %+v fallbacks %+v", rc.ModelCalls, rc.Fallbacks)
	}
	for _, mc := range rc.ModelCalls {
		if mc.Provider != "scripted-fallback" || mc.Status != receipts.CallSucceeded || mc.CostSats != modelCost ||
			mc.Fallback == nil || mc.Fallback.From != "scripted-primary" || mc.Fallback.Reason != breaker.ReasonCircuitOpen {
			t.Fatalf("receipt model call %+v", mc)
		}
	}
	if len(rc.ToolCalls) != 1 {
		t.Fatalf("receipt tool calls %+v", rc.ToolCalls)
	}
	if tc := rc.ToolCalls[0]; tc.ToolName != "acme.book" || tc.Status != tools.Succeeded || tc.CostSats != toolCost || tc.Provider != "acme" || tc.ModelCall != 1 {
		t.Fatalf("receipt tool call %+v", tc)
	}
	if rc.Budget == nil || rc.Budget.Before.RemainingSats != budget || rc.Budget.After.SpentSats != budget {
		t.Fatalf("receipt budget %+v", rc.Budget)
	}
	if rc.Spend == nil || *rc.Spend != (receipts.SpendTotals{ChargedSats: budget, ModelSats: 2 * modelCost, ToolSats: toolCost, Reservations: 3}) {
		t.Fatalf("receipt spend %+v", rc.Spend)
	}
	if h, err := receipts.Hash(rc); err != nil || h != rc.ReceiptHash {
		t.Fatalf("receipt_hash %s, recomputed %s %v", rc.ReceiptHash, h, err)
	}
}
