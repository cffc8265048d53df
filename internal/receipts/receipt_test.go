package receipts_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/oaruntime/oaruntime/internal/auth"
	"github.com/oaruntime/oaruntime/internal/breaker"
	"github.com/oaruntime/oaruntime/internal/executor"
	"github.com/oaruntime/oaruntime/internal/httpapi"
	"github.com/oaruntime/oaruntime/internal/receipts"
	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/sqlite"
	"github.com/oaruntime/oaruntime/internal/telemetry"
	"github.com/oaruntime/oaruntime/internal/tools"
)

const owner = "user:42"

func testSecret() []byte { return []byte("receipts-test-secret-0123456789abcdef") }

type env struct {
	st       *sqlite.Store
	reg      *prometheus.Registry
	m        *telemetry.Metrics
	breakers *breaker.Registry
	ex       *executor.Executor
}

// pricedTool is a manifest-like tool: priced, behind a breaker provider.
type pricedTool struct {
	name, prov string
	cost       int64
	fail       bool
}

func (p pricedTool) Name() string           { return p.name }
func (p pricedTool) Timeout() time.Duration { return time.Second }
func (p pricedTool) Cost() int64            { return p.cost }
func (p pricedTool) Provider() string       { return p.prov }
func (p pricedTool) Call(_ context.Context, in json.RawMessage) (json.RawMessage, error) {
	if p.fail {
		return nil, &tools.ClassError{Class: "tool_http_5xx", Err: errors.New("503")}
	}
	return in, nil
}

// newEnv builds an executor over a fresh store; loop, when given, replaces
// the default loop detection thresholds.
func newEnv(t *testing.T, loop ...executor.LoopConfig) *env {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "rt.db"), sqlite.WithMigrate())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	e := &env{st: st, reg: prometheus.NewRegistry()}
	e.m = telemetry.NewMetrics(e.reg, telemetry.BuildInfo{Version: "test"})
	e.m.AllowProviders(executor.ScriptedProviderNames()...)
	// Threshold 1 and a long cooldown: one failure opens a breaker for the
	// whole test.
	e.breakers = breaker.NewRegistry(breaker.Config{FailureThreshold: 1, Cooldown: time.Hour}, e.m)
	reg := tools.NewRegistry(tools.Echo{}, tools.Sleep{},
		pricedTool{name: "acme.lookup", prov: "acme", cost: 3},
		pricedTool{name: "down.lookup", prov: "down", cost: 4, fail: true})
	cfg := executor.Config{Owner: "node-r"}
	if len(loop) > 0 {
		cfg.Loop = loop[0]
	}
	e.ex = executor.New(cfg,
		executor.Deps{Store: st, Metrics: e.m, Tools: reg, Breakers: e.breakers})
	return e
}

// trip opens provider's breaker.
func (e *env) trip(t *testing.T, provider string) {
	t.Helper()
	_ = e.breakers.Do(t.Context(), provider, func(context.Context) error { return errors.New("down") })
	if s := e.breakers.State(provider); s != breaker.StateOpen {
		t.Fatalf("breaker of %s is %s", provider, s)
	}
}

type runSpec struct {
	id, provider, tools, auth, schema, meta string
	script                                  []map[string]any
	text                                    string
}

// run creates the run, sends one user_message and executes it to the end.
func (e *env) run(t *testing.T, s runSpec) store.Run {
	t.Helper()
	ctx := t.Context()
	in := store.CreateRunInput{RunID: s.id, ThreadID: "thread_" + s.id, OwnerSub: owner}
	for _, f := range []struct {
		dst *json.RawMessage
		v   string
	}{{&in.Provider, s.provider}, {&in.Tools, s.tools}, {&in.Authorization, s.auth}, {&in.OutputSchema, s.schema}, {&in.Metadata, s.meta}} {
		if f.v != "" {
			*f.dst = json.RawMessage(f.v)
		}
	}
	if _, _, err := e.st.CreateRun(ctx, in); err != nil {
		t.Fatal(err)
	}
	payload := map[string]any{"text": s.text}
	if s.script != nil {
		payload["script"] = s.script
	}
	raw, _ := runs.Canonical(payload)
	if _, _, err := e.st.InsertFrame(ctx, store.InsertFrameInput{RunID: s.id, FrameID: "f1", Type: "user_message", Payload: raw}); err != nil {
		t.Fatal(err)
	}
	g, err := e.st.AcquireLease(ctx, s.id, "node-r", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res := e.ex.RunOnce(ctx, g.Lease); res.Err != nil {
		t.Fatalf("RunOnce: %v", res.Err)
	}
	_ = e.st.ReleaseLease(ctx, g.Lease)
	run, err := e.st.GetRun(ctx, s.id)
	if err != nil {
		t.Fatal(err)
	}
	return run
}

func (e *env) counter(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	sample:
		for _, s := range mf.GetMetric() {
			for _, lp := range s.GetLabel() {
				if v, ok := want[lp.GetName()]; ok && v != lp.GetValue() {
					continue sample
				}
			}
			total += s.GetCounter().GetValue()
		}
	}
	return total
}

func (e *env) build(t *testing.T, run store.Run, opts ...receipts.Option) receipts.Receipt {
	t.Helper()
	rc, err := receipts.NewBuilder(e.st, e.m, opts...).Build(t.Context(), run)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func (e *env) events(t *testing.T, runID string) []store.Event {
	t.Helper()
	evs, err := e.st.ListEvents(t.Context(), runID, 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

const fallbackProvider = `{"name":"scripted-primary","fallback":"scripted-fallback","cost_sats":2}`

// A run with a fallback in play, priced model and tool calls and a denied
// tool: every part of the receipt is read back from the log and the spend
// store.
func TestReceiptOfFullRun(t *testing.T) {
	e := newEnv(t)
	e.trip(t, "scripted-primary")
	run := e.run(t, runSpec{
		id: "run_full", provider: fallbackProvider, tools: `["echo","acme.lookup"]`,
		auth: `{"authorization_id":"auth_full","mode":"delegated_budget","max_total_sats":100}`,
		text: "go",
		script: []map[string]any{
			{"say": "looking"},
			{"tool": "acme.lookup", "input": map[string]any{"q": "x"}},
			{"tool": "sleep", "input": map[string]any{"ms": 1}},
			{"answer": "done"},
		},
	})
	if run.Status != store.StatusSucceeded {
		t.Fatalf("run %s/%s", run.Status, run.TerminalReasonClass)
	}
	rc := e.build(t, run)
	evs := e.events(t, "run_full")

	if rc.ReceiptVersion != receipts.Version || rc.RunID != "run_full" || rc.ThreadID != "thread_run_full" ||
		rc.Status != store.StatusSucceeded || rc.ReasonClass != "completed" || rc.TerminalAt == nil {
		t.Fatalf("header %+v", rc)
	}
	if rc.Provider != (receipts.ProviderInfo{Name: "scripted-primary", Fallback: "scripted-fallback", CostSats: 2}) {
		t.Fatalf("provider %+v", rc.Provider)
	}
	wantFB := receipts.Fallback{From: "scripted-primary", To: "scripted-fallback", Reason: breaker.ReasonCircuitOpen, FrameID: "f1"}
	if len(rc.ModelCalls) != 3 || len(rc.Fallbacks) != 3 {
		t.Fatalf("model calls %+v fallbacks %+v", rc.ModelCalls, rc.Fallbacks)
	}
	for i, mc := range rc.ModelCalls {
		if mc.Call != i+1 || mc.FrameID != "f1" || mc.Provider != "scripted-fallback" || mc.Status != receipts.CallSucceeded || mc.CostSats != 2 {
			t.Fatalf("model call %d: %+v", i+1, mc)
		}
		fb := wantFB
		fb.ModelCall, fb.Seq = i+1, mc.Fallback.Seq
		if mc.Fallback == nil || *mc.Fallback != fb || rc.Fallbacks[i] != fb {
			t.Fatalf("model call %d fallback %+v / %+v, want %+v", i+1, mc.Fallback, rc.Fallbacks[i], fb)
		}
	}
	if m := rc.ModelCalls; m[0].Deltas != 1 || m[0].ToolCalls != 1 || m[1].ToolCalls != 1 || !m[2].Answered || m[0].Answered {
		t.Fatalf("model call shapes %+v", m)
	}
	if len(rc.ToolCalls) != 2 {
		t.Fatalf("tool calls %+v", rc.ToolCalls)
	}
	acme, sleep := rc.ToolCalls[0], rc.ToolCalls[1]
	if acme.ToolName != "acme.lookup" || acme.Status != tools.Succeeded || acme.CostSats != 3 || acme.Provider != "acme" ||
		acme.ModelCall != 1 || acme.ToolCallID == "" || acme.ResultSeq <= acme.CallSeq {
		t.Fatalf("acme call %+v", acme)
	}
	if sleep.ToolName != "sleep" || sleep.Status != tools.Failed || sleep.ErrorClass != "denied_tool_not_allowed" || sleep.CostSats != 0 || sleep.ModelCall != 2 {
		t.Fatalf("denied call %+v", sleep)
	}
	if len(rc.PolicyDecisions) != 1 {
		t.Fatalf("policy decisions %+v", rc.PolicyDecisions)
	}
	if pd := rc.PolicyDecisions[0]; pd.Decision != "denied" || pd.Reason != "denied_tool_not_allowed" || pd.Policy != "tools" ||
		pd.Call != "tool" || pd.ToolName != "sleep" || pd.ToolCallID != sleep.ToolCallID {
		t.Fatalf("policy decision %+v", pd)
	}
	// 3 model calls at 2 sats + one tool call at 3 sats.
	if rc.Budget == nil || rc.Budget.AuthorizationID != "auth_full" || rc.Budget.Before.RemainingSats != 100 ||
		rc.Budget.After.SpentSats != 9 || rc.Budget.After.RemainingSats != 91 || rc.Budget.After.ReservedSats != 0 {
		t.Fatalf("budget %+v", rc.Budget)
	}
	if rc.Spend == nil || *rc.Spend != (receipts.SpendTotals{ChargedSats: 9, ModelSats: 6, ToolSats: 3, Reservations: 4}) {
		t.Fatalf("spend %+v", rc.Spend)
	}
	if rc.LoopDetection.Detected || rc.OutputSchema.Present || rc.ExecutorLost != 0 {
		t.Fatalf("loop %+v output %+v lost %d", rc.LoopDetection, rc.OutputSchema, rc.ExecutorLost)
	}
	last := evs[len(evs)-1]
	if rc.EventCount != len(evs) || rc.LatestSeq != last.Seq || rc.HeadHash != last.EventHash ||
		!rc.Verification.OK || rc.Verification.HeadHash != last.EventHash || rc.Verification.EventCount != len(evs) {
		t.Fatalf("chain: count %d latest %d head %s verification %+v; log has %d events, head %s",
			rc.EventCount, rc.LatestSeq, rc.HeadHash, rc.Verification, len(evs), last.EventHash)
	}
	if h, err := receipts.Hash(rc); err != nil || h != rc.ReceiptHash || len(h) != 64 {
		t.Fatalf("receipt_hash %q, recomputed %q %v", rc.ReceiptHash, h, err)
	}
	if !strings.HasPrefix(rc.ReceiptID, "rcpt_") || len(rc.ReceiptID) != 29 {
		t.Fatalf("receipt_id %q", rc.ReceiptID)
	}
}

// receipt_hash covers everything but generated_at: two builds at different
// times agree, and changing any field changes it.
func TestReceiptHashIgnoresOnlyGeneratedAt(t *testing.T) {
	e := newEnv(t)
	run := e.run(t, runSpec{id: "run_hash", text: "hello"})
	a := e.build(t, run, receipts.WithClock(func() time.Time { return time.Unix(1000, 0) }))
	b := e.build(t, run, receipts.WithClock(func() time.Time { return time.Unix(2000, 0) }))
	if a.GeneratedAt.Equal(b.GeneratedAt) || a.ReceiptHash != b.ReceiptHash {
		t.Fatalf("hashes %s / %s at %s / %s", a.ReceiptHash, b.ReceiptHash, a.GeneratedAt, b.GeneratedAt)
	}
	raw, _ := json.Marshal(a)
	if h, err := receipts.HashJSON(raw); err != nil || h != a.ReceiptHash {
		t.Fatalf("HashJSON %q %v, want %q", h, err, a.ReceiptHash)
	}
	changed := a
	changed.Status = store.StatusFailed
	if h, _ := receipts.Hash(changed); h == a.ReceiptHash {
		t.Fatal("a changed status kept the hash")
	}
	changed = a
	changed.ToolCalls = append(changed.ToolCalls, receipts.ToolCall{ToolName: "x"})
	if h, _ := receipts.Hash(changed); h == a.ReceiptHash {
		t.Fatal("an added tool call kept the hash")
	}
}

// Failed, denied, loop-detected and schema-violating runs: the receipt says
// which step failed and why.
func TestReceiptOfFailedRuns(t *testing.T) {
	tests := []struct {
		name  string
		spec  runSpec
		trip  string
		loop  bool // low loop thresholds
		check func(t *testing.T, rc receipts.Receipt)
	}{
		{
			name: "model call fails on its provider",
			spec: runSpec{provider: `{"name":"scripted","faults":{"error_rate":1}}`, text: "x"},
			check: func(t *testing.T, rc receipts.Receipt) {
				if rc.ReasonClass != "provider_error" || len(rc.ModelCalls) != 1 {
					t.Fatalf("receipt %+v", rc)
				}
				if mc := rc.ModelCalls[0]; mc.Status != receipts.CallFailed || mc.ReasonClass != "provider_error" || mc.Provider != "scripted" || mc.Fallback != nil {
					t.Fatalf("model call %+v", mc)
				}
			},
		},
		{
			name: "fallback fails too",
			spec: runSpec{provider: `{"name":"scripted-primary","fallback":"scripted-fallback"}`, text: "x",
				script: []map[string]any{{"fail": "provider_5xx"}}},
			trip: "scripted-primary",
			check: func(t *testing.T, rc receipts.Receipt) {
				if len(rc.ModelCalls) != 1 || len(rc.Fallbacks) != 1 {
					t.Fatalf("receipt %+v", rc)
				}
				if mc := rc.ModelCalls[0]; mc.Status != receipts.CallFailed || mc.ReasonClass != "provider_5xx" || mc.Provider != "scripted-fallback" || mc.Fallback == nil {
					t.Fatalf("model call %+v", mc)
				}
			},
		},
		{
			name: "model call denied by budget",
			spec: runSpec{provider: `{"name":"scripted","cost_sats":5}`, auth: `{"authorization_id":"a_b","mode":"delegated_budget","max_total_sats":7}`,
				text: "x", script: []map[string]any{{"tool": "echo"}, {"answer": "never"}}},
			check: func(t *testing.T, rc receipts.Receipt) {
				if rc.ReasonClass != "budget_exhausted" || len(rc.ModelCalls) != 2 {
					t.Fatalf("receipt %+v", rc)
				}
				if mc := rc.ModelCalls[1]; mc.Status != receipts.CallDenied || mc.ReasonClass != "budget_exhausted" || mc.CostSats != 0 {
					t.Fatalf("denied call %+v", mc)
				}
				if len(rc.PolicyDecisions) != 1 || rc.PolicyDecisions[0].Call != "model" || !rc.PolicyDecisions[0].BudgetExhausted ||
					rc.PolicyDecisions[0].Policy != "spend" || rc.PolicyDecisions[0].AmountSats != 5 {
					t.Fatalf("decisions %+v", rc.PolicyDecisions)
				}
				if rc.Budget == nil || rc.Budget.After.SpentSats != 5 || rc.Spend.ChargedSats != 5 {
					t.Fatalf("budget %+v spend %+v", rc.Budget, rc.Spend)
				}
			},
		},
		{
			name: "tool provider circuit open",
			spec: runSpec{auth: `{"authorization_id":"a_t","mode":"delegated_budget","max_total_sats":50}`, text: "x",
				script: []map[string]any{{"tool": "down.lookup", "input": map[string]any{"a": 1}}, {"tool": "down.lookup", "input": map[string]any{"a": 2}}, {"answer": "gave up"}}},
			check: func(t *testing.T, rc receipts.Receipt) {
				if rc.Status != store.StatusSucceeded || len(rc.ToolCalls) != 2 {
					t.Fatalf("receipt %+v", rc)
				}
				if a, b := rc.ToolCalls[0], rc.ToolCalls[1]; a.ErrorClass != "tool_http_5xx" || b.ErrorClass != breaker.ReasonCircuitOpen ||
					a.Provider != "down" || b.Provider != "down" || a.CostSats != 0 || b.CostSats != 0 {
					t.Fatalf("tool calls %+v", rc.ToolCalls)
				}
				if rc.Budget.After.SpentSats != 0 || rc.Spend.ChargedSats != 0 || rc.Spend.Reservations != 2 {
					t.Fatalf("failed calls were charged: budget %+v spend %+v", rc.Budget, rc.Spend)
				}
			},
		},
		{
			name: "loop detected",
			loop: true,
			spec: runSpec{text: "x", script: []map[string]any{
				{"tool": "echo", "input": map[string]any{"same": 1}}, {"tool": "echo", "input": map[string]any{"same": 1}},
				{"tool": "echo", "input": map[string]any{"same": 1}}, {"tool": "echo", "input": map[string]any{"same": 1}},
				{"tool": "echo", "input": map[string]any{"same": 1}}, {"answer": "never"}}},
			check: func(t *testing.T, rc receipts.Receipt) {
				if rc.ReasonClass != "loop_detected" || !rc.LoopDetection.Detected || rc.LoopDetection.Detector == "" || rc.LoopDetection.ToolCallID == "" {
					t.Fatalf("receipt %s loop %+v", rc.ReasonClass, rc.LoopDetection)
				}
			},
		},
		{
			name: "output schema violated",
			spec: runSpec{schema: `{"type":"object","required":["n"]}`, text: "x", script: []map[string]any{{"answer": `{"m":1}`}}},
			check: func(t *testing.T, rc receipts.Receipt) {
				if rc.ReasonClass != executor.ReasonOutputSchemaViolation || !rc.OutputSchema.Present || rc.OutputSchema.Valid == nil ||
					*rc.OutputSchema.Valid || len(rc.OutputSchema.Errors) == 0 {
					t.Fatalf("receipt %s output %+v", rc.ReasonClass, rc.OutputSchema)
				}
				if len(rc.ModelCalls) != 1 || !rc.ModelCalls[0].Answered || rc.ModelCalls[0].Status != receipts.CallSucceeded {
					t.Fatalf("model calls %+v", rc.ModelCalls)
				}
			},
		},
		{
			name: "output schema met",
			spec: runSpec{schema: `{"type":"object","required":["n"]}`, text: "x", script: []map[string]any{{"answer": `{"n":1}`}}},
			check: func(t *testing.T, rc receipts.Receipt) {
				if rc.Status != store.StatusSucceeded || rc.OutputSchema.Valid == nil || !*rc.OutputSchema.Valid {
					t.Fatalf("receipt %s output %+v", rc.Status, rc.OutputSchema)
				}
			},
		},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var loop []executor.LoopConfig
			if tc.loop {
				loop = append(loop, executor.LoopConfig{Window: 30, Warning: 2, Critical: 4, Global: 30})
			}
			e := newEnv(t, loop...)
			if tc.trip != "" {
				e.trip(t, tc.trip)
			}
			tc.spec.id = "run_f" + string(rune('a'+i))
			run := e.run(t, tc.spec)
			rc := e.build(t, run)
			if !rc.Verification.OK || rc.Status != run.Status {
				t.Fatalf("verification %+v status %s", rc.Verification, rc.Status)
			}
			tc.check(t, rc)
		})
	}
}

// tamperStore serves one event with a changed payload, as a corrupted or
// hand-edited database would.
type tamperStore struct {
	*sqlite.Store
	seq int64
}

func (s tamperStore) ListEvents(ctx context.Context, runID string, after int64, limit int) ([]store.Event, error) {
	evs, err := s.Store.ListEvents(ctx, runID, after, limit)
	for i := range evs {
		if evs[i].Seq == s.seq {
			evs[i].Payload = json.RawMessage(`{"delta":"forged"}`)
		}
	}
	return evs, err
}

// A log whose chain does not verify still gets a receipt (the evidence is
// what the operator needs), marked as failed and counted as a workflow
// parity failure.
func TestReceiptOfTamperedLog(t *testing.T) {
	e := newEnv(t)
	run := e.run(t, runSpec{id: "run_tamper", text: "hello"})
	parity := func() float64 {
		return e.counter(t, telemetry.ParityFailures, map[string]string{"class": "workflow", "reason_class": "receipt_verification_failed", "component": "receipts"})
	}
	if ok := e.build(t, run); !ok.Verification.OK || parity() != 0 {
		t.Fatalf("untampered: %+v, parity %v", ok.Verification, parity())
	}
	rc, err := receipts.NewBuilder(tamperStore{e.st, 2}, e.m).Build(t.Context(), run)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Verification.OK || rc.Verification.BrokenSeq != 2 || rc.Verification.Reason != runs.BrokenEventHash {
		t.Fatalf("verification %+v", rc.Verification)
	}
	if parity() != 1 {
		t.Fatalf("parity failures %v, want 1", parity())
	}
	// Through the route as well.
	h := newAPI(t, tamperStore{e.st, 2}, e.m)
	w := get(t, h, "/internal/v1/runs/run_tamper/receipt", owner)
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	var served receipts.Receipt
	if err := json.Unmarshal(w.Body.Bytes(), &served); err != nil || served.Verification.OK {
		t.Fatalf("served %+v %v", served.Verification, err)
	}
	if parity() != 2 {
		t.Fatalf("parity failures %v, want 2", parity())
	}
}

// A log with events missing at its tail (the run row counts more) fails
// verification too.
func TestReceiptOfTruncatedLog(t *testing.T) {
	e := newEnv(t)
	run := e.run(t, runSpec{id: "run_trunc", text: "hello"})
	run.LatestSeq += 2
	rc := e.build(t, run)
	if rc.Verification.OK || rc.Verification.BrokenSeq != run.LatestSeq-1 || !strings.HasPrefix(rc.Verification.Reason, runs.BrokenSeqGap) {
		t.Fatalf("verification %+v", rc.Verification)
	}
}

func newAPI(t *testing.T, st store.Store, m *telemetry.Metrics) http.Handler {
	t.Helper()
	v, err := auth.NewVerifier(testSecret())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	return httpapi.New(httpapi.Deps{Store: st, Verifier: v, Logger: log, Metrics: m, Routes: receipts.Routes(st, m, log)})
}

func get(t *testing.T, h http.Handler, path, sub string, mods ...func(*auth.Claims)) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequestWithContext(t.Context(), http.MethodGet, path, nil)
	if sub != "" {
		c := auth.NewClaims(time.Now(), sub, time.Minute)
		for _, m := range mods {
			m(&c)
		}
		r.Header.Set(auth.Header, auth.Sign(testSecret(), c))
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestReceiptRoute(t *testing.T) {
	e := newEnv(t)
	e.run(t, runSpec{id: "run_http", text: "hello"})
	h := newAPI(t, e.st, e.m)
	tests := []struct {
		name   string
		path   string
		sub    string
		mod    func(*auth.Claims)
		status int
		code   string
	}{
		{"owner", "/internal/v1/runs/run_http/receipt", owner, nil, http.StatusOK, ""},
		{"run-bound token", "/internal/v1/runs/run_http/receipt", owner, func(c *auth.Claims) { c.RunID = "run_http" }, http.StatusOK, ""},
		{"unsigned", "/internal/v1/runs/run_http/receipt", "", nil, http.StatusUnauthorized, httpapi.CodeUnauthorized},
		{"other principal", "/internal/v1/runs/run_http/receipt", "user:7", nil, http.StatusForbidden, httpapi.CodeForbidden},
		{"token bound to another run", "/internal/v1/runs/run_http/receipt", owner, func(c *auth.Claims) { c.RunID = "run_other" }, http.StatusForbidden, httpapi.CodeForbidden},
		{"token bound to another thread", "/internal/v1/runs/run_http/receipt", owner, func(c *auth.Claims) { c.ThreadID = "thread_x" }, http.StatusForbidden, httpapi.CodeForbidden},
		{"unknown run", "/internal/v1/runs/run_nope/receipt", owner, nil, http.StatusNotFound, httpapi.CodeNotFound},
		{"bad run id", "/internal/v1/runs/bad%20id/receipt", owner, nil, http.StatusBadRequest, httpapi.CodeInvalidRequest},
		{"wrong method", "/internal/v1/runs/run_http/receipt", owner, nil, http.StatusMethodNotAllowed, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mods []func(*auth.Claims)
			if tc.mod != nil {
				mods = append(mods, tc.mod)
			}
			var w *httptest.ResponseRecorder
			if tc.name == "wrong method" {
				r := httptest.NewRequestWithContext(t.Context(), http.MethodPost, tc.path, nil)
				r.Header.Set(auth.Header, auth.Sign(testSecret(), auth.NewClaims(time.Now(), owner, time.Minute)))
				w = httptest.NewRecorder()
				h.ServeHTTP(w, r)
			} else {
				w = get(t, h, tc.path, tc.sub, mods...)
			}
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.status, w.Body)
			}
			if w.Header().Get("x-request-id") == "" {
				t.Fatal("no x-request-id")
			}
			if tc.code != "" {
				var body struct {
					Error struct{ Code, Message string }
				}
				if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Error.Code != tc.code || body.Error.Message == "" {
					t.Fatalf("error body %s (%v)", w.Body, err)
				}
			}
			if tc.status == http.StatusOK {
				var rc receipts.Receipt
				if err := json.Unmarshal(w.Body.Bytes(), &rc); err != nil || rc.RunID != "run_http" || !rc.Verification.OK {
					t.Fatalf("receipt %s (%v)", w.Body, err)
				}
				// A client recomputes the hash from the body it received.
				if h, err := receipts.HashJSON(bytes.TrimSpace(w.Body.Bytes())); err != nil || h != rc.ReceiptHash {
					t.Fatalf("HashJSON of the body %q %v, want %q", h, err, rc.ReceiptHash)
				}
			}
		})
	}
}

func TestHashJSON(t *testing.T) {
	tests := []struct {
		name, a, b string
		same       bool
		wantErr    bool
	}{
		{name: "key order and spacing do not matter", a: `{"x":1,"y":[1,2]}`, b: "{ \"y\": [1,2], \"x\": 1 }", same: true},
		{name: "generated_at and receipt_hash are left out", a: `{"x":1,"generated_at":"2020-01-01T00:00:00Z","receipt_hash":"aa"}`, b: `{"x":1,"generated_at":"2030-01-01T00:00:00Z"}`, same: true},
		{name: "large integers stay exact", a: `{"n":12345678901234567891}`, b: `{"n":12345678901234567892}`, same: false},
		{name: "values matter", a: `{"x":1}`, b: `{"x":2}`, same: false},
		{name: "null", a: `null`, wantErr: true},
		{name: "array", a: `[1]`, wantErr: true},
		{name: "not JSON", a: `{`, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ha, err := receipts.HashJSON([]byte(tc.a))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("hash %q, want an error", ha)
				}
				return
			}
			hb, err2 := receipts.HashJSON([]byte(tc.b))
			if err != nil || err2 != nil {
				t.Fatal(err, err2)
			}
			if (ha == hb) != tc.same {
				t.Fatalf("hashes %s / %s, same=%v wanted", ha, hb, tc.same)
			}
		})
	}
}
