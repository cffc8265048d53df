package executor_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/oaruntime/oaruntime/internal/breaker"
	"github.com/oaruntime/oaruntime/internal/executor"
	"github.com/oaruntime/oaruntime/internal/notify"
	"github.com/oaruntime/oaruntime/internal/provider"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
	"github.com/oaruntime/oaruntime/internal/tools"
)

// harness drives RunOnce directly (no claim loop), so a test decides when
// each run executes and reads the metrics it produced.
type harness struct {
	st       store.Store
	reg      *prometheus.Registry
	m        *telemetry.Metrics
	breakers *breaker.Registry
	ex       *executor.Executor
	calls    *providerCalls
}

func newHarness(t *testing.T, bcfg breaker.Config, ts ...tools.Tool) *harness {
	t.Helper()
	h := &harness{st: openStore(t), reg: prometheus.NewRegistry(), calls: &providerCalls{}}
	h.m = telemetry.NewMetrics(h.reg, telemetry.BuildInfo{Version: "test"})
	h.breakers = breaker.NewRegistry(bcfg, h.m)
	reg := tools.NewRegistry(append([]tools.Tool{tools.Echo{}, tools.Sleep{}}, ts...)...)
	h.ex = executor.New(executor.Config{Owner: "node-h"}, executor.Deps{
		Store: h.st, Metrics: h.m, Tools: reg, Breakers: h.breakers, Providers: h.calls.wrap(executor.DefaultProviders),
	})
	return h
}

// runOnce leases runID, runs RunOnce and releases the lease.
func (h *harness) runOnce(t *testing.T, runID string) executor.Result {
	t.Helper()
	ctx := context.Background()
	g, err := h.st.AcquireLease(ctx, runID, "node-h", 10*time.Second)
	if err != nil {
		t.Fatalf("acquire lease of %s: %v", runID, err)
	}
	res := h.ex.RunOnce(ctx, g.Lease)
	if err := h.st.ReleaseLease(ctx, g.Lease); err != nil {
		t.Fatalf("release lease: %v", err)
	}
	if res.Err != nil {
		t.Fatalf("RunOnce %s: %v", runID, res.Err)
	}
	return res
}

// counter sums the samples of a counter (or gauge) whose labels include want.
func (h *harness) counter(t *testing.T, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
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
			if s.GetCounter() != nil {
				total += s.GetCounter().GetValue()
			} else {
				total += s.GetGauge().GetValue()
			}
		}
	}
	return total
}

// newRun creates a run from a CreateRunInput with only the documents set.
func newRun(t *testing.T, st store.Store, in store.CreateRunInput) store.Run {
	t.Helper()
	if in.ThreadID == "" {
		in.ThreadID = "thread_" + in.RunID
	}
	if in.OwnerSub == "" {
		in.OwnerSub = "user:1"
	}
	r, _, err := st.CreateRun(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func finishedPayload(t *testing.T, st store.Store, runID string) map[string]any {
	t.Helper()
	ev, err := st.FindEventByType(context.Background(), runID, "run.finished")
	if err != nil {
		t.Fatalf("run.finished of %s: %v", runID, err)
	}
	var p map[string]any
	if err := json.Unmarshal(ev.Payload, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// providerCalls counts the model calls that really reached a provider, by
// provider name (replayed calls never get here).
type providerCalls struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *providerCalls) wrap(next executor.ProviderFunc) executor.ProviderFunc {
	return func(run store.Run, name string) (provider.Provider, error) {
		p, err := next(run, name)
		if err != nil {
			return nil, err
		}
		return &countingProvider{Provider: p, name: name, c: c}, nil
	}
}

func (c *providerCalls) get(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[name]
}

type countingProvider struct {
	provider.Provider
	name string
	c    *providerCalls
}

func (p *countingProvider) Complete(ctx context.Context, req provider.Request) (provider.Response, error) {
	p.c.mu.Lock()
	if p.c.n == nil {
		p.c.n = map[string]int{}
	}
	p.c.n[p.name]++
	p.c.mu.Unlock()
	return p.Provider.Complete(ctx, req)
}

// providerTool is a priced tool behind a breaker provider, like a manifest
// tool, whose behaviour the test scripts per invocation (1-based).
type providerTool struct {
	name, prov string
	cost       int64
	timeout    time.Duration
	calls      atomic.Int64
	do         func(ctx context.Context, n int64, in json.RawMessage) (json.RawMessage, error)
}

func (p *providerTool) Name() string           { return p.name }
func (p *providerTool) Timeout() time.Duration { return p.timeout }
func (p *providerTool) Cost() int64            { return p.cost }
func (p *providerTool) Provider() string       { return p.prov }
func (p *providerTool) Call(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
	n := p.calls.Add(1)
	if p.do == nil {
		return in, nil
	}
	return p.do(ctx, n, in)
}

// failing5xx answers like a provider that is down.
func failing5xx(context.Context, int64, json.RawMessage) (json.RawMessage, error) {
	return nil, &tools.ClassError{Class: "tool_http_5xx", Err: errors.New("endpoint answered 503")}
}

// startNodeWith starts an executor and janitor with the given deps (Store
// and Hub are filled in); cancel ctx to kill the node like a crash.
func startNodeWith(ctx context.Context, t *testing.T, st store.Store, owner string, ttl time.Duration, d executor.Deps) *executor.Executor {
	t.Helper()
	hub := notify.NewHub()
	go func() { _ = hub.Run(ctx, st) }()
	d.Store, d.Hub = st, hub
	ex := executor.New(executor.Config{Owner: owner, LeaseTTL: ttl, RenewEvery: ttl / 4, PollInterval: 50 * time.Millisecond}, d)
	ex.Start(ctx)
	jan := executor.NewJanitor(executor.JanitorConfig{Interval: 100 * time.Millisecond}, st, d.Metrics, nil, ex.Wake)
	jan.Start(ctx)
	return ex
}
