// Package loadgen drives load and faults against a running oaruntime through
// its public API: the `oaruntime loadgen` command, the benchmarks, the drills
// and the alert tests use it. Every profile is a real client workload (runs,
// frames, SSE streams, token mints); faults that cannot be produced by a
// workload alone go through the operator fault endpoints (--enable-faults).
package loadgen

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oaruntime/oaruntime/internal/client"
	"github.com/oaruntime/oaruntime/internal/stream/sseclient"
)

// Stream modes of a profile.
const (
	StreamNone = ""     // do not stream
	StreamFull = "full" // stream to [DONE]
	StreamDrop = "drop" // disconnect after the first event, before run.finished
)

// Profile is one workload: runs created at Rate per second.
type Profile struct {
	Name     string
	Rate     float64
	Provider map[string]any // run.provider
	Tools    []any          // run.tools: allowed tool names and {"allow","deny"} objects
	Metadata map[string]any // run.metadata
	Frame    map[string]any // user_message payload: {text, script}
	Stream   string
	// Mint, when true, mints a sync token instead of creating a run.
	Mint bool
	// BudgetSats, when > 0, gives each run its own delegated budget
	// authorization of that many sats.
	BudgetSats int64
}

// Profiles are the named workloads of `oaruntime loadgen --profile`.
func Profiles() map[string]Profile {
	say := func(s ...map[string]any) map[string]any { return map[string]any{"text": "load", "script": s} }
	return map[string]Profile{
		"healthy": {Name: "healthy", Rate: 2, Stream: StreamFull,
			Frame: say(map[string]any{"say": "working"}, map[string]any{"tool": "echo", "input": map[string]any{"n": 1}}, map[string]any{"answer": "ok"})},
		"mint": {Name: "mint", Rate: 2, Mint: true},
		// run_once takes ~6 s: executor p95 latency.
		"slow": {Name: "slow", Rate: 2, Frame: say(map[string]any{"sleep_ms": 6000}, map[string]any{"answer": "late"})},
		// every run makes two failing tool calls.
		"tool-fail": {Name: "tool-fail", Rate: 1, Frame: say(
			map[string]any{"tool": "sleep", "input": map[string]any{"ms": 1, "fail": "upstream 502"}},
			map[string]any{"tool": "sleep", "input": map[string]any{"ms": 1, "fail": "upstream 502"}},
			map[string]any{"answer": "gave up"})},
		// the primary provider always fails: its breaker opens.
		"breaker": {Name: "breaker", Rate: 1, Provider: map[string]any{"name": "scripted-primary", "faults": map[string]any{"error_rate": 1.0}},
			Frame: map[string]any{"text": "hi"}},
		// every tool call is denied by the run's tool policy.
		"deny": {Name: "deny", Rate: 2, Tools: []any{"sleep", map[string]any{"deny": []string{"echo"}}},
			Frame: say(map[string]any{"tool": "echo", "input": map[string]any{}}, map[string]any{"answer": "denied"})},
		// streams are dropped before run.finished.
		"drop-stream": {Name: "drop-stream", Rate: 2, Stream: StreamDrop,
			Frame: say(map[string]any{"say": "a"}, map[string]any{"sleep_ms": 500}, map[string]any{"answer": "b"})},
		// each run may spend 5 sats, and makes three 5-sat tool calls: two
		// are denied with budget_exhausted and returned to the model.
		"budget": {Name: "budget", Rate: 2, BudgetSats: 5, Metadata: map[string]any{"tool_costs": map[string]any{"echo": 5}},
			Frame: say(map[string]any{"tool": "echo", "input": map[string]any{"n": 1}}, map[string]any{"tool": "echo", "input": map[string]any{"n": 2}},
				map[string]any{"tool": "echo", "input": map[string]any{"n": 3}}, map[string]any{"answer": "over budget"})},
		// the model repeats one tool call until loop detection stops the run.
		"loop": {Name: "loop", Rate: 1, Frame: say(repeat(map[string]any{"tool": "echo", "input": map[string]any{"same": true}}, 12)...)},
		// runs with many events: projection lag under a slowed projector.
		"chatty": {Name: "chatty", Rate: 2, Frame: say(chatty(60)...)},
	}
}

func repeat(step map[string]any, n int) []map[string]any {
	out := make([]map[string]any, 0, n+1)
	for i := 0; i < n; i++ {
		out = append(out, step)
	}
	return append(out, map[string]any{"answer": "unreachable"})
}

func chatty(n int) []map[string]any {
	out := make([]map[string]any, 0, n+1)
	for i := 0; i < n; i++ {
		out = append(out, map[string]any{"say": fmt.Sprintf("chunk %d", i)})
	}
	return append(out, map[string]any{"answer": "done"})
}

// Stats counts what a generator did.
type Stats struct {
	Started, Created, Failed, Streams, Mints, MintErrors atomic.Int64
	mu                                                   sync.Mutex
	errs                                                 map[string]int
	latencies                                            []time.Duration
}

func (s *Stats) err(e error) {
	s.Failed.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.errs == nil {
		s.errs = map[string]int{}
	}
	msg := e.Error()
	if len(msg) > 120 {
		msg = msg[:120]
	}
	s.errs[msg]++
}

// Errors returns error messages and their counts.
func (s *Stats) Errors() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for k, v := range s.errs {
		out[k] = v
	}
	return out
}

// LatencyQuantile returns the q-quantile of create-to-[DONE] latency of fully
// streamed runs.
func (s *Stats) LatencyQuantile(q float64) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.latencies) == 0 {
		return 0
	}
	l := append([]time.Duration(nil), s.latencies...)
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l[min(len(l)-1, int(q*float64(len(l))))]
}

// Generator runs profiles against one server.
type Generator struct {
	C     *client.Client
	Stats Stats
	wg    sync.WaitGroup
}

// New returns a generator for c.
func New(c *client.Client) *Generator { return &Generator{C: c} }

// Run drives p until ctx ends, then waits for in-flight work (bounded by the
// context given to each run: drain).
func (g *Generator) Run(ctx context.Context, p Profile) {
	if p.Rate <= 0 {
		return
	}
	t := time.NewTicker(time.Duration(float64(time.Second) / p.Rate))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
			defer cancel()
			if err := g.One(octx, p); err != nil {
				g.Stats.err(err)
			}
		}()
	}
}

// Wait waits for the work Run started.
func (g *Generator) Wait() { g.wg.Wait() }

func id(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// One performs one unit of p's work.
func (g *Generator) One(ctx context.Context, p Profile) error {
	g.Stats.Started.Add(1)
	if p.Mint {
		g.Stats.Mints.Add(1)
		_, err := g.C.Do(ctx, http.MethodPost, "/api/khala/token", map[string]any{}, nil)
		if err != nil {
			g.Stats.MintErrors.Add(1)
		}
		return nil // a failing mint is the workload's expected outcome under a fault
	}
	body := map[string]any{"run_id": id("run_"), "thread_id": id("thread_")}
	if p.Provider != nil {
		body["provider"] = p.Provider
	}
	if p.Tools != nil {
		body["tools"] = p.Tools
	}
	if p.Metadata != nil {
		body["metadata"] = p.Metadata
	}
	if p.BudgetSats > 0 {
		body["authorization"] = map[string]any{"authorization_id": id("auth_"), "mode": "delegated_budget", "max_total_sats": p.BudgetSats}
	}
	start := time.Now()
	run, err := g.C.CreateRun(ctx, body)
	if err != nil {
		return fmt.Errorf("create run: %w", err)
	}
	g.Stats.Created.Add(1)
	frame := p.Frame
	if frame == nil {
		frame = map[string]any{"text": "hello"}
	}
	if _, err := g.C.SendFrame(ctx, run.RunID, id("frame_"), "user_message", frame); err != nil {
		return fmt.Errorf("send frame: %w", err)
	}
	switch p.Stream {
	case StreamFull, StreamDrop:
		g.Stats.Streams.Add(1)
		sc := &sseclient.Client{Prepare: func(r *http.Request) error {
			r.Header.Set("X-OA-RUNTIME-SIGNATURE", g.C.Sign())
			return nil
		}, MaxAttempts: 3}
		errDrop := errors.New("drop")
		err := sc.Stream(ctx, g.C.BaseURL+"/internal/v1/runs/"+run.RunID+"/stream", nil, "", func(ev sseclient.Event) error {
			if p.Stream == StreamDrop {
				return errDrop
			}
			return nil
		})
		if err != nil && !errors.Is(err, errDrop) {
			return fmt.Errorf("stream: %w", err)
		}
		if p.Stream == StreamFull {
			g.Stats.mu.Lock()
			g.Stats.latencies = append(g.Stats.latencies, time.Since(start))
			g.Stats.mu.Unlock()
		}
	}
	return nil
}

// SetFault calls an operator fault endpoint: kind is token-mint
// ({"fail":bool}), http or executor ({"rate":0..1}).
func SetFault(ctx context.Context, c *client.Client, kind string, body map[string]any) error {
	_, err := c.Do(ctx, http.MethodPost, "/internal/v1/ops/faults/"+kind, body, nil)
	return err
}
