package executor_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/spend"
	"github.com/oaruntime/oaruntime/internal/store"
)

// createPricedRun creates a run with provider, authorization and metadata documents.
func createPricedRun(t *testing.T, st store.Store, id, provider, auth, meta string) {
	t.Helper()
	in := store.CreateRunInput{RunID: id, ThreadID: "thread_" + id, OwnerSub: "user:1"}
	for _, f := range []struct {
		dst *json.RawMessage
		v   string
	}{{&in.Provider, provider}, {&in.Authorization, auth}, {&in.Metadata, meta}} {
		if f.v != "" {
			*f.dst = json.RawMessage(f.v)
		}
	}
	if _, _, err := st.CreateRun(context.Background(), in); err != nil {
		t.Fatal(err)
	}
}

func eventsOf(evs []store.Event, typ string) []map[string]any {
	var out []map[string]any
	for _, ev := range evs {
		if ev.EventType == typ {
			var p map[string]any
			_ = json.Unmarshal(ev.Payload, &p)
			out = append(out, p)
		}
	}
	return out
}

func budgetOf(t *testing.T, st store.Store, runID string) spend.Budget {
	t.Helper()
	b, err := spend.NewGuard(st.(spend.Store), nil).BudgetSnapshot(context.Background(), runID)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A priced tool over budget is denied to the model, which carries on.
func TestSpendDeniedToolCallReturnsErrorToModel(t *testing.T) {
	st := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startNode(ctx, t, st, "node-a", 2*time.Second)
	createPricedRun(t, st, "run_spend_tool", "",
		`{"authorization_id":"auth_tool","mode":"delegated_budget","max_total_sats":12}`, `{"tool_costs":{"echo":5}}`)
	script := []map[string]any{
		{"tool": "echo", "input": map[string]any{"n": 1}},
		{"tool": "echo", "input": map[string]any{"n": 2}},
		{"tool": "echo", "input": map[string]any{"n": 3}},
		{"answer": "done"},
	}
	sendFrame(t, st, "run_spend_tool", "f1", "user_message", map[string]any{"text": "go", "script": script})
	waitStatus(t, st, "run_spend_tool", store.StatusSucceeded, 10*time.Second)
	evs := allEvents(t, st, "run_spend_tool")
	checkLog(t, "run_spend_tool", evs)
	results := eventsOf(evs, "tool.result")
	if len(results) != 3 || results[0]["status"] != "succeeded" || results[1]["status"] != "succeeded" ||
		results[2]["status"] != "failed" || results[2]["error_class"] != "budget_exhausted" {
		t.Fatalf("tool results %v", results)
	}
	decisions := eventsOf(evs, "policy.decision")
	if len(decisions) != 1 || decisions[0]["decision"] != "denied" || decisions[0]["reason"] != "budget_exhausted" ||
		decisions[0]["tool_name"] != "echo" || decisions[0]["authorization_id"] != "auth_tool" {
		t.Fatalf("policy.decision %v", decisions)
	}
	if n := len(eventsOf(evs, "policy.budget_exhausted")); n != 1 {
		t.Fatalf("policy.budget_exhausted events: %d", n)
	}
	if b := budgetOf(t, st, "run_spend_tool"); b.After.SpentSats != 10 || b.After.ReservedSats != 0 || b.Before.RemainingSats != 12 {
		t.Fatalf("budget %+v", b)
	}
}

func TestSpendDeniedModelCallFailsRun(t *testing.T) {
	tests := []struct {
		name, auth, reason string
		wantSpent          int64
	}{
		{"no authorization", "", "denied_authorization_missing", -1},
		{"deny_all", `{"authorization_id":"a_deny","mode":"deny_all"}`, "denied_explicit", 0},
		// 4 sats per model call, 10 sats: calls 1 and 2 run, call 3 is denied.
		{"budget", `{"authorization_id":"a_budget","mode":"delegated_budget","max_total_sats":10}`, "budget_exhausted", 8},
		{"expired", `{"authorization_id":"a_exp","mode":"delegated_budget","max_total_sats":10,"expires_at":"2001-01-01T00:00:00Z"}`, "denied_authorization_expired", 0},
	}
	st := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startNode(ctx, t, st, "node-a", 2*time.Second)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := "run_model_" + tc.reason
			createPricedRun(t, st, id, `{"name":"scripted","cost_sats":4}`, tc.auth, "")
			script := []map[string]any{{"tool": "echo", "input": map[string]any{}}, {"tool": "echo", "input": map[string]any{}}, {"answer": "never"}}
			sendFrame(t, st, id, "f1", "user_message", map[string]any{"text": "go", "script": script})
			r := waitStatus(t, st, id, store.StatusFailed, 10*time.Second)
			if r.TerminalReasonClass != tc.reason {
				t.Fatalf("reason_class %q, want %q", r.TerminalReasonClass, tc.reason)
			}
			evs := allEvents(t, st, id)
			checkLog(t, id, evs)
			decisions := eventsOf(evs, "policy.decision")
			if len(decisions) != 1 || decisions[0]["reason"] != tc.reason || decisions[0]["call"] != "model" {
				t.Fatalf("policy.decision %v", decisions)
			}
			if got, want := len(eventsOf(evs, "policy.budget_exhausted")), map[bool]int{true: 1}[tc.reason == "budget_exhausted"]; got != want {
				t.Fatalf("policy.budget_exhausted events %d, want %d", got, want)
			}
			if tc.wantSpent >= 0 {
				if b := budgetOf(t, st, id); b.After.SpentSats != tc.wantSpent || b.After.ReservedSats != 0 {
					t.Fatalf("budget %+v", b)
				}
			}
		})
	}
}

// A priced tool interrupted by an executor crash is retried by the next
// executor under its first reservation: with a budget of exactly one call,
// a second reservation would be denied.
func TestSpendReservationSurvivesExecutorCrash(t *testing.T) {
	st := openStore(t)
	const ttl = time.Second
	ctxA, killA := context.WithCancel(context.Background())
	defer killA()
	createPricedRun(t, st, "run_spend_crash", "",
		`{"authorization_id":"auth_crash","mode":"delegated_budget","max_total_sats":5}`, `{"tool_costs":{"sleep":5}}`)
	startNode(ctxA, t, st, "node-a", ttl)
	script := []map[string]any{{"tool": "sleep", "input": map[string]any{"ms": 1500}}, {"answer": "finished"}}
	sendFrame(t, st, "run_spend_crash", "f1", "user_message", map[string]any{"text": "work", "script": script})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := spend.NewGuard(st.(spend.Store), nil).BudgetSnapshot(context.Background(), "run_spend_crash"); err == nil && b.After.ReservedSats == 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("executor A never reserved the tool call")
		}
		time.Sleep(10 * time.Millisecond)
	}
	killA()
	ctxB, stopB := context.WithCancel(context.Background())
	defer stopB()
	startNode(ctxB, t, st, "node-b", ttl)
	waitStatus(t, st, "run_spend_crash", store.StatusSucceeded, 20*time.Second)
	evs := allEvents(t, st, "run_spend_crash")
	checkLog(t, "run_spend_crash", evs)
	if d := eventsOf(evs, "policy.decision"); len(d) != 0 {
		t.Fatalf("retry was denied: %v", d)
	}
	results := eventsOf(evs, "tool.result")
	if len(results) != 1 || results[0]["status"] != "succeeded" || results[0]["cost_sats"] != float64(5) {
		t.Fatalf("tool results %v", results)
	}
	if b := budgetOf(t, st, "run_spend_crash"); b.After.SpentSats != 5 || b.After.ReservedSats != 0 {
		t.Fatalf("budget %+v", b)
	}
	rows, err := st.(store.SpendStore).ListReservations(context.Background(), "run_spend_crash")
	if err != nil || len(rows) != 1 {
		t.Fatalf("reservations %+v %v", rows, err)
	}
}
