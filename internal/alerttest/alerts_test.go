package alerttest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/loadgen"
	"github.com/oaruntime/oaruntime/internal/ops"
	"github.com/oaruntime/oaruntime/internal/projection"
	"github.com/oaruntime/oaruntime/internal/store"
)

// phase injects one fault through the real runtime and names the alerts it
// must fire; Also lists alerts that the same fault fires by design.
type phase struct {
	Alert string
	Also  []string
	// Start begins the fault; it returns a stop function.
	Start func(ctx context.Context, t *testing.T, e *env) (stop func())
}

type env struct {
	rt   *Runtime
	prom *Prometheus
	gen  *loadgen.Generator
}

// drive runs a load profile until the returned stop is called.
func (e *env) drive(ctx context.Context, p loadgen.Profile) func() {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); e.gen.Run(ctx, p) }()
	return func() { cancel(); wg.Wait() }
}

func profile(name string) loadgen.Profile { return loadgen.Profiles()[name] }

func setFault(t *testing.T, e *env, kind string, body map[string]any) {
	t.Helper()
	if err := loadgen.SetFault(context.Background(), e.rt.Client, kind, body); err != nil {
		t.Fatalf("set fault %s: %v", kind, err)
	}
}

func phases() []phase {
	return []phase{
		{Alert: "OpenAgentsRuntimeExecutorLatencyP95High", Start: func(ctx context.Context, t *testing.T, e *env) func() {
			return e.drive(ctx, profile("slow"))
		}},
		{Alert: "OpenAgentsRuntimeHttp5xxRateHigh", Start: func(ctx context.Context, t *testing.T, e *env) func() {
			setFault(t, e, "http", map[string]any{"rate": 0.2})
			return func() { setFault(t, e, "http", map[string]any{"rate": 0.0}) }
		}},
		{Alert: "OpenAgentsRuntimeStreamDoneRatioLow", Start: func(ctx context.Context, t *testing.T, e *env) func() {
			p := profile("drop-stream")
			p.Rate = 4
			return e.drive(ctx, p)
		}},
		{Alert: "OpenAgentsRuntimeLeaseStealRateHigh", Start: func(ctx context.Context, t *testing.T, e *env) func() {
			setFault(t, e, "executor", map[string]any{"rate": 1.0})
			return func() { setFault(t, e, "executor", map[string]any{"rate": 0.0}) }
		}},
		{Alert: "OpenAgentsRuntimeToolFailureSpike", Start: func(ctx context.Context, t *testing.T, e *env) func() {
			return e.drive(ctx, profile("tool-fail"))
		}},
		{Alert: "OpenAgentsRuntimeCircuitBreakerOpen", Start: func(ctx context.Context, t *testing.T, e *env) func() {
			stop := e.drive(ctx, profile("breaker"))
			return func() {
				stop()
				// Close the breaker again: after its cooldown one healthy
				// probe through the same provider succeeds.
				healthy := loadgen.Profile{Name: "probe", Provider: map[string]any{"name": "scripted-primary"}, Frame: map[string]any{"text": "probe"}}
				deadline := time.Now().Add(30 * time.Second)
				for time.Now().Before(deadline) {
					_ = e.gen.One(ctx, healthy)
					if strings.Contains(e.prom.Query(ctx, `openagents_runtime_provider_breaker_state{provider="scripted-primary",state="closed"}`), "=1") {
						return
					}
					time.Sleep(time.Second)
				}
				t.Errorf("breaker of scripted-primary did not close after the fault")
			}
		}},
		{Alert: "OpenAgentsRuntimePolicyDenialAnomaly", Also: []string{"OpenAgentsRuntimeParityFailureSpike"}, Start: func(ctx context.Context, t *testing.T, e *env) func() {
			// Budget denials; a policy denial is also a parity failure of
			// class policy.
			return e.drive(ctx, profile("budget"))
		}},
		{Alert: "OpenAgentsRuntimeParityFailureSpike", Start: func(ctx context.Context, t *testing.T, e *env) func() {
			// Loop detection: every run repeats one tool call until it is
			// stopped, a parity failure of class loop.
			return e.drive(ctx, profile("loop"))
		}},
		{Alert: "OpenAgentsRuntimeKhalaProjectionLagP95High", Start: func(ctx context.Context, t *testing.T, e *env) func() {
			// A slow projector under runs with many events falls behind.
			khalaFault(t, e, map[string]any{"delay_ms": 150})
			stop := e.drive(ctx, profile("chatty"))
			return func() { stop(); khalaFault(t, e, map[string]any{"delay_ms": 0}) }
		}},
		{Alert: "OpenAgentsRuntimeKhalaProjectionWriteFailureRatioHigh", Start: func(ctx context.Context, t *testing.T, e *env) func() {
			khalaFault(t, e, map[string]any{"fail_rate": 0.5})
			return func() { khalaFault(t, e, map[string]any{"fail_rate": 0.0}) }
		}},
		{Alert: "OpenAgentsRuntimeKhalaProjectionDriftIncidentsHigh", Start: func(ctx context.Context, t *testing.T, e *env) func() {
			// Five checkpoints restored "from the future" (ahead of the log),
			// then new events: five checkpoint_ahead incidents.
			ids := openRuns(ctx, t, e, 5)
			for _, id := range ids {
				corruptCheckpoint(ctx, t, e, id)
			}
			for _, id := range ids {
				if _, err := e.rt.Client.Do(ctx, http.MethodPost, "/internal/v1/runs/"+id+"/events",
					map[string]any{"event_type": "run.delta", "payload": map[string]any{"delta": "after restore"}}, nil); err != nil {
					t.Fatal(err)
				}
			}
			// The runbook's action: targeted reproject, then convergence.
			return func() { reprojectAndConverge(ctx, t, e, ids) }
		}},
		{Alert: "OpenAgentsRuntimeKhalaProjectionHashMismatchDetected", Start: func(ctx context.Context, t *testing.T, e *env) func() {
			// A tampered document, found by `oaruntime khala verify` running
			// as a separate command against the same database: its finding
			// must reach the serving process's metrics.
			ids := openRuns(ctx, t, e, 1)
			tamperDocument(ctx, t, e, ids[0])
			var out, errOut strings.Builder
			code := projection.CommandWith(ctx, e.rt.Srv.Store, nil, projection.CommandConfig{}, []string{"verify"}, &out, &errOut, false)
			if code == 0 {
				t.Fatalf("khala verify exit 0 on a tampered document: %s %s", out.String(), errOut.String())
			}
			return func() { reprojectAndConverge(ctx, t, e, ids) }
		}},
		{Alert: "OpenAgentsRuntimeKhalaProjectionReplayFailures", Start: func(ctx context.Context, t *testing.T, e *env) func() {
			khalaFault(t, e, map[string]any{"replay_fail": true})
			ids := openRuns(ctx, t, e, 1)
			_, err := e.rt.Client.Do(ctx, http.MethodPost, "/internal/v1/projectors/reproject", map[string]any{"run_id": ids[0]}, nil)
			t.Logf("reproject under replay fault: %v", err)
			return func() {
				khalaFault(t, e, map[string]any{"replay_fail": false})
				reprojectAndConverge(ctx, t, e, ids)
			}
		}},
		// A failing mint answers 503, so the 5xx ratio alert fires with it.
		{Alert: "OpenAgentsKhalaTokenMintFailureRatioHigh", Also: []string{"OpenAgentsRuntimeHttp5xxRateHigh"}, Start: func(ctx context.Context, t *testing.T, e *env) func() {
			setFault(t, e, "token-mint", map[string]any{"fail": true})
			return func() { setFault(t, e, "token-mint", map[string]any{"fail": false}) }
		}},
	}
}

// TestAlertsFireThroughRealRuntime: healthy load fires nothing; then each
// fault, injected through the runtime, fires exactly its alert in a real
// Prometheus evaluating the generated rules.
func TestAlertsFireThroughRealRuntime(t *testing.T) {
	bin := PrometheusBinary(t)
	if testing.Short() {
		t.Skip("SKIPPING in -short mode: the alert proof takes minutes")
	}
	rt := StartRuntime(t)
	prom := StartPrometheus(t, bin, rt.Addr, ScaledRules(t))
	e := &env{rt: rt, prom: prom, gen: loadgen.New(rt.Client)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Healthy background load for the whole test: runs streamed to the end,
	// allowed tool calls, token mints. It keeps every ratio's denominator up.
	stopHealthy := e.drive(ctx, profile("healthy"))
	defer stopHealthy()
	stopMint := e.drive(ctx, profile("mint"))
	defer stopMint()

	longest := 15 * time.Minute / TimeDivisor * 3
	t.Logf("healthy load for %s", longest)
	quietFor(ctx, t, prom, longest, nil)

	covered := map[string]bool{}
	for _, ph := range phases() {
		if !t.Run(ph.Alert, func(t *testing.T) {
			stop := ph.Start(ctx, t, e)
			want := append([]string{ph.Alert}, ph.Also...)
			waitFiring(ctx, t, prom, ph.Alert, want, 60*time.Second)
			stop()
			waitQuiet(ctx, t, prom, 90*time.Second)
		}) {
			t.Logf("metrics hint: %s", prom.Query(ctx, "ALERTS"))
		}
		covered[ph.Alert] = true
	}
	for _, a := range ops.Alerts(ops.Options{}) {
		if !covered[a.Name] {
			t.Logf("NOT YET PROVEN end to end: %s (no fault phase)", a.Name)
		}
	}
	if e.gen.Stats.Created.Load() == 0 {
		t.Fatal("load generator created no runs")
	}
}

// quietFor asserts no alert is pending or firing during d.
func quietFor(ctx context.Context, t *testing.T, prom *Prometheus, d time.Duration, allowed []string) {
	t.Helper()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		as, err := prom.Alerts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			if !slices.Contains(allowed, a.Name) {
				t.Fatalf("alert active under healthy load: %s", a)
			}
		}
		time.Sleep(time.Second)
	}
}

// waitFiring waits until alert is firing, failing on any active alert
// outside want.
func waitFiring(ctx context.Context, t *testing.T, prom *Prometheus, alert string, want []string, within time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		as, err := prom.Alerts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		firing := false
		for _, a := range as {
			if !slices.Contains(want, a.Name) {
				t.Fatalf("unexpected alert while injecting the fault for %s: %s (all: %v)", alert, a, as)
			}
			if a.Name == alert && a.State == "firing" {
				firing = true
			}
		}
		if firing {
			t.Logf("%s firing after %s (active: %v)", alert, time.Since(start).Round(time.Second), as)
			return
		}
		if time.Since(start) > within {
			t.Fatalf("%s not firing after %s (active: %v)", alert, within, as)
		}
		time.Sleep(time.Second)
	}
}

// waitQuiet waits until no alert is active.
func waitQuiet(ctx context.Context, t *testing.T, prom *Prometheus, within time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		as, err := prom.Alerts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(as) == 0 {
			return
		}
		if time.Since(start) > within {
			t.Fatalf("alerts still active %s after the fault stopped: %v", within, as)
		}
		time.Sleep(time.Second)
	}
}

func khalaFault(t *testing.T, e *env, body map[string]any) {
	t.Helper()
	setFault(t, e, "projection", body)
}

// openRuns creates n keep_open runs, each answered once and projected.
func openRuns(ctx context.Context, t *testing.T, e *env, n int) []string {
	t.Helper()
	var ids []string
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("run_open_%d_%d", time.Now().UnixNano(), i)
		if _, err := e.rt.Client.CreateRun(ctx, map[string]any{"run_id": id, "thread_id": "t_" + id, "metadata": map[string]any{"keep_open": true}}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.rt.Client.SendFrame(ctx, id, "f1", "user_message", map[string]any{"text": "hi"}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, id := range ids {
		deadline := time.Now().Add(20 * time.Second)
		for {
			r, err := e.rt.Client.GetRun(ctx, id)
			cp, cerr := e.rt.Srv.Store.GetCheckpoint(ctx, store.ProjectionRun, id)
			if err == nil && cerr == nil && r.LatestSeq >= 2 && cp.LastSeq == r.LatestSeq {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("run %s not answered and projected (run %+v err %v; checkpoint %+v err %v)", id, r, err, cp, cerr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return ids
}

// corruptCheckpoint moves a run's checkpoint ahead of its log, as a
// database restored from a newer backup would.
func corruptCheckpoint(ctx context.Context, t *testing.T, e *env, runID string) {
	t.Helper()
	doc, err := e.rt.Srv.Store.GetDocument(ctx, store.TopicRunSummaries, projection.RunDocKey(runID))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.rt.Srv.Store.WriteProjection(ctx, store.ProjectionWriteInput{
		Projection: store.ProjectionRun, EntityID: runID, Topic: store.TopicRunSummaries, DocKey: doc.DocKey, OwnerSub: doc.OwnerSub,
		Doc: doc.Payload, Hash: doc.SummaryHash, Version: doc.ProjectionVersion, SourceSeq: 999, Force: true,
	}); err != nil {
		t.Fatal(err)
	}
}

// tamperDocument rewrites a run's summary document with other content.
func tamperDocument(ctx context.Context, t *testing.T, e *env, runID string) {
	t.Helper()
	doc, err := e.rt.Srv.Store.GetDocument(ctx, store.TopicRunSummaries, projection.RunDocKey(runID))
	if err != nil {
		t.Fatal(err)
	}
	var payload map[string]any
	if err := json.Unmarshal(doc.Payload, &payload); err != nil {
		t.Fatal(err)
	}
	payload["status"] = "tampered"
	raw, _ := json.Marshal(payload)
	if _, err := e.rt.Srv.Store.WriteProjection(ctx, store.ProjectionWriteInput{
		Projection: store.ProjectionRun, EntityID: runID, Topic: store.TopicRunSummaries, DocKey: doc.DocKey, OwnerSub: doc.OwnerSub,
		Doc: raw, Hash: strings.Repeat("0", 64), Version: doc.ProjectionVersion, SourceSeq: doc.SourceSeq, Force: true,
	}); err != nil {
		t.Fatal(err)
	}
}

// reprojectAndConverge runs the runbook's repair (targeted reproject through
// the operator endpoint) and checks the audit finds nothing afterwards.
func reprojectAndConverge(ctx context.Context, t *testing.T, e *env, ids []string) {
	t.Helper()
	for _, id := range ids {
		if _, err := e.rt.Client.Do(ctx, http.MethodPost, "/internal/v1/projectors/reproject", map[string]any{"run_id": id}, nil); err != nil {
			t.Fatalf("reproject %s: %v", id, err)
		}
	}
	var out, errOut strings.Builder
	if code := projection.CommandWith(ctx, e.rt.Srv.Store, nil, projection.CommandConfig{}, []string{"verify"}, &out, &errOut, false); code != 0 {
		t.Fatalf("khala verify after reproject: exit %d: %s %s", code, out.String(), errOut.String())
	}
}
