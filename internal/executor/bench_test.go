package executor_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oaruntime/oaruntime/internal/executor"
	"github.com/oaruntime/oaruntime/internal/provider"
	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/postgres"
	"github.com/oaruntime/oaruntime/internal/store/sqlite"
)

// Executor overhead per step, model call excluded: each iteration leases a
// fresh run with one user_message and times RunOnce, minus the time spent
// inside the (scripted, instant) model provider. The figures are reported
// as custom metrics (overhead per turn and per model-call step, p50/p99);
// bench/README.md shows how the benchmark report uses them.
//
//	go test -run '^$' -bench BenchmarkExecutorOverhead ./internal/executor
//
// The PostgreSQL variant needs OA_TEST_DATABASE_URL.

// timedProvider measures the time spent inside the model call.
type timedProvider struct {
	p     provider.Provider
	spent *atomic.Int64
	calls *atomic.Int64
}

func (t timedProvider) Name() string { return t.p.Name() }

func (t timedProvider) Complete(ctx context.Context, req provider.Request) (provider.Response, error) {
	start := time.Now()
	resp, err := t.p.Complete(ctx, req)
	t.spent.Add(int64(time.Since(start)))
	t.calls.Add(1)
	return resp, err
}

func benchStores(b *testing.B) map[string]func(b *testing.B) store.Store {
	return map[string]func(b *testing.B) store.Store{
		"sqlite": func(b *testing.B) store.Store {
			st, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "bench.db"), sqlite.WithMigrate())
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { st.Close() })
			return st
		},
		"postgres": func(b *testing.B) store.Store {
			url := os.Getenv("OA_TEST_DATABASE_URL")
			if url == "" {
				if os.Getenv("CI") != "" {
					b.Fatal("OA_TEST_DATABASE_URL is not set (CI): the PostgreSQL executor benchmark cannot run")
				}
				b.Skip("OA_TEST_DATABASE_URL is not set: skipping the PostgreSQL executor benchmark")
			}
			var r [4]byte
			_, _ = rand.Read(r[:])
			schema := "bench_exec_" + hex.EncodeToString(r[:])
			st, err := postgres.Open(context.Background(), url, postgres.WithSchema(schema), postgres.WithMigrate())
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				_, _ = st.Pool().Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
				st.Close()
			})
			return st
		},
	}
}

func BenchmarkExecutorOverhead(b *testing.B) {
	tools := func(n int) map[string]any {
		var steps []map[string]any
		for i := range n {
			steps = append(steps, map[string]any{"tool": "echo", "input": map[string]any{"i": i}})
		}
		return map[string]any{"text": "bench", "script": append(steps, map[string]any{"answer": "done"})}
	}
	workloads := []struct {
		name  string
		frame map[string]any
	}{
		{"turn", map[string]any{"text": "hi"}}, // one model call, answered at once
		{"tools4", tools(4)},                   // five model calls and four echo tool calls
	}
	for _, name := range []string{"sqlite", "postgres"} {
		open := benchStores(b)[name]
		for _, w := range workloads {
			b.Run(name+"/"+w.name, func(b *testing.B) {
				st := open(b)
				benchOverhead(b, st, w.frame)
			})
		}
	}
}

func benchOverhead(b *testing.B, st store.Store, frame map[string]any) {
	ctx := context.Background()
	var spent, calls atomic.Int64
	ex := executor.New(executor.Config{Owner: "bench", LeaseTTL: time.Minute}, executor.Deps{Store: st,
		Providers: func(run store.Run, name string) (provider.Provider, error) {
			p, err := executor.DefaultProviders(run, name)
			if err != nil {
				return nil, err
			}
			return timedProvider{p: p, spent: &spent, calls: &calls}, nil
		}})
	raw, _ := json.Marshal(frame)
	payload, err := runs.CanonicalizeRaw(raw)
	if err != nil {
		b.Fatal(err)
	}
	var perTurn, perStep []time.Duration
	var steps int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		id := fmt.Sprintf("run_bench_%d", i)
		if _, _, err := st.CreateRun(ctx, store.CreateRunInput{RunID: id, ThreadID: "thread_" + id, OwnerSub: "user:bench"}); err != nil {
			b.Fatal(err)
		}
		if _, _, err := st.InsertFrame(ctx, store.InsertFrameInput{RunID: id, FrameID: "frame_" + id, Type: "user_message", Payload: payload}); err != nil {
			b.Fatal(err)
		}
		grants, err := st.ClaimRunnable(ctx, "bench", time.Minute, 1)
		if err != nil || len(grants) != 1 || grants[0].Lease.RunID != id {
			b.Fatalf("claim: %v %+v", err, grants)
		}
		spent.Store(0)
		calls.Store(0)
		b.StartTimer()
		start := time.Now()
		res := ex.RunOnce(ctx, grants[0].Lease)
		total := time.Since(start)
		b.StopTimer()
		if res.Err != nil || res.Status != store.StatusSucceeded {
			b.Fatalf("run %s: %+v", id, res)
		}
		if err := st.ReleaseLease(ctx, grants[0].Lease); err != nil {
			b.Fatal(err)
		}
		over := total - time.Duration(spent.Load())
		perTurn = append(perTurn, over)
		n := calls.Load()
		steps += n
		perStep = append(perStep, over/time.Duration(max(n, 1)))
		b.StartTimer()
	}
	b.StopTimer()
	q := func(ds []time.Duration, p float64) float64 {
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds())
	}
	if len(perTurn) > 0 {
		b.ReportMetric(q(perTurn, 0.50), "turn-p50-µs")
		b.ReportMetric(q(perTurn, 0.99), "turn-p99-µs")
		b.ReportMetric(q(perStep, 0.50), "step-p50-µs")
		b.ReportMetric(q(perStep, 0.99), "step-p99-µs")
		b.ReportMetric(float64(steps)/float64(len(perTurn)), "model-calls/turn")
	}
}
