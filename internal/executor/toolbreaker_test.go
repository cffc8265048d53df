package executor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/breaker"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
	"github.com/oaruntime/oaruntime/internal/tools"
)

// toolScript asks for tool once per input, then answers.
func toolScript(tool string, n int) []map[string]any {
	var s []map[string]any
	for i := range n {
		s = append(s, map[string]any{"tool": tool, "input": map[string]any{"i": i}})
	}
	return append(s, map[string]any{"answer": "done"})
}

func toolResults(t *testing.T, st store.Store, runID string) []map[string]any {
	t.Helper()
	evs := allEvents(t, st, runID)
	checkLog(t, runID, evs)
	return eventsOf(evs, "tool.result")
}

// Three provider failures open the tool provider's breaker; later calls
// fail fast with provider_circuit_open without reaching the tool, their
// reservations are released, and a tool of another provider is unaffected.
func TestToolProviderBreakerOpensAndFailsFast(t *testing.T) {
	down := &providerTool{name: "acme.search", prov: "acme", cost: 2, do: failing5xx}
	up := &providerTool{name: "other.echo", prov: "other", cost: 1}
	h := newHarness(t, breaker.Config{Cooldown: time.Hour}, down, up)
	h.m.AllowProviders("acme", "other")
	h.m.AllowTools("acme.search", "other.echo")
	newRun(t, h.st, store.CreateRunInput{RunID: "run_tb", Authorization: json.RawMessage(`{"authorization_id":"auth_tb","mode":"delegated_budget","max_total_sats":100}`)})
	script := append(toolScript("acme.search", 5)[:5], map[string]any{"tool": "other.echo", "input": map[string]any{"x": 1}}, map[string]any{"answer": "done"})
	sendFrame(t, h.st, "run_tb", "f1", "user_message", map[string]any{"text": "go", "script": script})
	if res := h.runOnce(t, "run_tb"); res.Status != store.StatusSucceeded {
		t.Fatalf("result %+v (a failed tool is returned to the model, the run goes on)", res)
	}
	if n := down.calls.Load(); n != 3 {
		t.Fatalf("acme tool invoked %d times, want 3 (then the breaker is open)", n)
	}
	results := toolResults(t, h.st, "run_tb")
	if len(results) != 6 {
		t.Fatalf("%d tool results, want 6", len(results))
	}
	for i, r := range results[:5] {
		want := "tool_http_5xx"
		if i >= 3 {
			want = breaker.ReasonCircuitOpen
		}
		if r["status"] != tools.Failed || r["error_class"] != want || r["provider"] != "acme" {
			t.Fatalf("result %d: %v, want failed %s from provider acme", i, r, want)
		}
	}
	if r := results[5]; r["status"] != tools.Succeeded || r["provider"] != "other" || r["cost_sats"] != float64(1) {
		t.Fatalf("other provider's tool: %v", r)
	}
	if s := h.breakers.State("acme"); s != breaker.StateOpen {
		t.Fatalf("acme breaker %s", s)
	}
	if s := h.breakers.State("other"); s != breaker.StateClosed {
		t.Fatalf("other breaker %s", s)
	}
	// Only the succeeded call is charged; every failed one was released.
	if b := budgetOf(t, h.st, "run_tb"); b.After.SpentSats != 1 || b.After.ReservedSats != 0 {
		t.Fatalf("budget %+v", b)
	}
	checks := []struct {
		name   string
		metric string
		labels map[string]string
		want   float64
	}{
		{"breaker gauge", telemetry.ProviderBreakerState, map[string]string{"provider": "acme", "state": "open"}, 1},
		{"rejected calls", telemetry.ToolLifecycle, map[string]string{"tool": "acme.search", "phase": "run", "result": "rejected"}, 2},
		{"started calls", telemetry.ToolLifecycle, map[string]string{"tool": "acme.search", "phase": "start"}, 3},
		{"terminal failures", telemetry.ToolLifecycle, map[string]string{"tool": "acme.search", "phase": "terminal", "result": "failed"}, 3},
	}
	for _, c := range checks {
		if got := h.counter(t, c.metric, c.labels); got != c.want {
			t.Errorf("%s: %s%v = %v, want %v", c.name, c.metric, c.labels, got, c.want)
		}
	}
}

// Failures that say nothing about the provider's health (bad input from
// the model, a 4xx) never open its breaker; built-in tools have none.
func TestToolBreakerCountsOnlyProviderFailures(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		wantState string
	}{
		{"4xx", &tools.ClassError{Class: "tool_http_4xx", Err: errors.New("400")}, breaker.StateClosed},
		{"invalid input", &tools.ClassError{Class: "invalid_input", Err: errors.New("bad")}, breaker.StateClosed},
		{"egress block", &tools.ClassError{Class: "ssrf_block.private", Err: errors.New("blocked")}, breaker.StateClosed},
		{"connection error", &tools.ClassError{Class: "tool_http_error", Err: errors.New("refused")}, breaker.StateOpen},
		{"invalid output", &tools.ClassError{Class: "tool_invalid_output", Err: errors.New("html")}, breaker.StateOpen},
		{"timeout", context.DeadlineExceeded, breaker.StateOpen},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prov := fmt.Sprintf("prov%d", i)
			tool := &providerTool{name: "t." + prov, prov: prov, timeout: time.Second, do: func(context.Context, int64, json.RawMessage) (json.RawMessage, error) {
				return nil, tc.err
			}}
			h := newHarness(t, breaker.Config{Cooldown: time.Hour}, tool)
			id := "run_" + prov
			newRun(t, h.st, store.CreateRunInput{RunID: id})
			sendFrame(t, h.st, id, "f1", "user_message", map[string]any{"text": "go", "script": toolScript(tool.name, 4)})
			h.runOnce(t, id)
			if s := h.breakers.State(prov); s != tc.wantState {
				t.Fatalf("breaker %s, want %s", s, tc.wantState)
			}
			wantCalls := int64(4)
			if tc.wantState == breaker.StateOpen {
				wantCalls = 3
			}
			if n := tool.calls.Load(); n != wantCalls {
				t.Fatalf("tool invoked %d times, want %d", n, wantCalls)
			}
		})
	}
}

// After the cooldown one probe goes through; its success closes the
// breaker and the tool is usable again.
func TestToolBreakerRecoversAfterCooldown(t *testing.T) {
	tool := &providerTool{name: "flaky.get", prov: "flaky", do: func(ctx context.Context, n int64, in json.RawMessage) (json.RawMessage, error) {
		if n <= 3 {
			return failing5xx(ctx, n, in)
		}
		return in, nil
	}}
	const cooldown = 50 * time.Millisecond
	h := newHarness(t, breaker.Config{Cooldown: cooldown}, tool)
	newRun(t, h.st, store.CreateRunInput{RunID: "run_flaky", Metadata: json.RawMessage(`{"keep_open":true}`)})
	sendFrame(t, h.st, "run_flaky", "f1", "user_message", map[string]any{"text": "go", "script": toolScript("flaky.get", 4)})
	h.runOnce(t, "run_flaky")
	if s := h.breakers.State("flaky"); s != breaker.StateOpen {
		t.Fatalf("breaker %s after 3 failures", s)
	}
	time.Sleep(2 * cooldown)
	sendFrame(t, h.st, "run_flaky", "f2", "user_message", map[string]any{"text": "again", "script": toolScript("flaky.get", 1)})
	h.runOnce(t, "run_flaky")
	results := toolResults(t, h.st, "run_flaky")
	if len(results) != 5 || results[3]["error_class"] != breaker.ReasonCircuitOpen || results[4]["status"] != tools.Succeeded {
		t.Fatalf("results %v", results)
	}
	if s := h.breakers.State("flaky"); s != breaker.StateClosed {
		t.Fatalf("breaker %s after a successful probe", s)
	}
}

// A tool without a provider (built-ins) runs without a breaker and its
// tool.result carries no provider field.
func TestBuiltinToolHasNoBreaker(t *testing.T) {
	h := newHarness(t, breaker.Config{})
	newRun(t, h.st, store.CreateRunInput{RunID: "run_builtin"})
	sendFrame(t, h.st, "run_builtin", "f1", "user_message", map[string]any{"text": "go", "script": toolScript("echo", 1)})
	h.runOnce(t, "run_builtin")
	results := toolResults(t, h.st, "run_builtin")
	if len(results) != 1 || results[0]["status"] != tools.Succeeded {
		t.Fatalf("results %v", results)
	}
	if _, has := results[0]["provider"]; has {
		t.Fatalf("built-in tool result names a provider: %v", results[0])
	}
	if states := h.breakers.States(); len(states) != 1 {
		t.Fatalf("breakers %v, want only the model provider's", states)
	}
}
