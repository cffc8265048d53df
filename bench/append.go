package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/oaruntime/oaruntime/bench/benchutil"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

type appendRun struct {
	Store      string             `json:"store"`
	TargetRate float64            `json:"target_per_second"`
	Achieved   float64            `json:"achieved_per_second"`
	Seconds    float64            `json:"seconds"`
	Sent       int                `json:"sent"`
	Errors     int64              `json:"errors"`
	FirstError string             `json:"first_error,omitempty"`
	Runs       int                `json:"runs"`
	Latency    benchutil.DurStats `json:"latency_from_schedule"`
	Service    benchutil.DurStats `json:"latency_from_send"`
	// Shares of the two-core machine while appending: the serve process,
	// and everything (PostgreSQL, this client, other load on the machine).
	ServerCPUCores  float64 `json:"server_cpu_cores"`
	MachineCPUCores float64 `json:"machine_cpu_cores"`
}

type appendResult struct {
	Config map[string]any `json:"config"`
	Runs   []appendRun    `json:"results"`
}

func appendCmd(ctx context.Context, args []string) error {
	var c common
	fs := flag.NewFlagSet("append", flag.ContinueOnError)
	c.register(fs)
	rate := fs.Float64("rate", 200, "appends per second (open loop)")
	dur := fs.Duration("duration", 20*time.Second, "how long to append")
	nRuns := fs.Int("runs", 10, "runs the appends are spread over (round robin)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := c.prepare(); err != nil {
		return err
	}
	res := appendResult{Config: map[string]any{
		"request":  `POST /internal/v1/runs/{id}/events {"event_type":"run.delta","payload":{"text":"...","i":N}} signed, keep-alive connections`,
		"schedule": "open loop: request i is sent at start + i/rate whatever the earlier ones are doing; latency_from_schedule counts from that instant (no coordinated omission), latency_from_send from when the request left",
		"rate":     *rate, "duration": dur.String(), "runs": *nRuns,
	}}
	schema := "oabench_append_" + randHex(4)
	defer dropSchema(ctx, c.pg, schema)
	pgu, err := benchutil.PGURL(c.pg, map[string]string{"schema": schema})
	if err != nil {
		return err
	}
	for _, st := range []struct{ name, url string }{
		{"sqlite", "sqlite:" + filepath.Join(c.work, "append-"+randHex(3)+".db")},
		{"postgres", pgu},
	} {
		r, err := appendOne(ctx, &c, st.name, st.url, *rate, *dur, *nRuns)
		if err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
		fmt.Printf("append %s: %.0f/s target, %.1f/s achieved, p50 %.1f ms p99 %.1f ms max %.1f ms (errors %d)\n",
			st.name, r.TargetRate, r.Achieved, r.Latency.P50MS, r.Latency.P99MS, r.Latency.MaxMS, r.Errors)
		res.Runs = append(res.Runs, r)
	}
	return saveSection(c.out, func(r *results) { r.Append = res })
}

func appendOne(ctx context.Context, c *common, name, dbURL string, rate float64, dur time.Duration, nRuns int) (appendRun, error) {
	srv, err := startServer(ctx, c.bin, "append-"+name, c.work, map[string]string{"OA_RUNTIME_DATABASE_URL": dbURL,
		"OA_RUNTIME_DATA_DIR": filepath.Join(c.work, "data-append-"+name)})
	if err != nil {
		return appendRun{}, err
	}
	defer srv.stop()
	a := srv.api()
	ids := make([]string, nRuns)
	for i := range ids {
		ids[i] = fmt.Sprintf("run_append_%d_%s", i, randHex(4))
		if err := a.createRun(ctx, ids[i]); err != nil {
			return appendRun{}, err
		}
	}
	// Warm-up: one append per run, and connections.
	for _, id := range ids {
		if _, err := a.appendEvent(ctx, id, map[string]any{"text": "warm-up"}); err != nil {
			return appendRun{}, err
		}
	}
	total := int(rate * dur.Seconds())
	fromSched := make([]time.Duration, total)
	fromSend := make([]time.Duration, total)
	ok := make([]bool, total)
	var errs atomic.Int64
	var firstErr atomic.Value
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now().Add(50 * time.Millisecond)
	cpu0, busy0 := procCPU(srv.pid()), machineBusy()
	var wg sync.WaitGroup
	for i := range total {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		wg.Go(func() {
			sent := time.Now()
			_, err := a.appendEvent(ctx, ids[i%nRuns], map[string]any{"text": "delta from the append benchmark", "i": i})
			done := time.Now()
			if err != nil {
				errs.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			fromSched[i], fromSend[i], ok[i] = done.Sub(at), done.Sub(sent), true
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	serverCPU, busy := procCPU(srv.pid())-cpu0, machineBusy()-busy0
	var l1, l2 []time.Duration
	for i := range total {
		if ok[i] {
			l1 = append(l1, fromSched[i])
			l2 = append(l2, fromSend[i])
		}
	}
	r := appendRun{Store: name, TargetRate: rate, Seconds: elapsed.Seconds(), Sent: total, Errors: errs.Load(), Runs: nRuns,
		Achieved: float64(len(l1)) / elapsed.Seconds(), Latency: benchutil.Summarize(l1), Service: benchutil.Summarize(l2),
		ServerCPUCores: serverCPU.Seconds() / elapsed.Seconds(), MachineCPUCores: busy.Seconds() / elapsed.Seconds()}
	if v, ok := firstErr.Load().(string); ok {
		r.FirstError = v
	}
	// The log must hold every append, in order, on every run.
	var count int
	for _, id := range ids {
		run, err := a.getRun(ctx, id)
		if err != nil {
			return r, err
		}
		count += int(run.LatestSeq) - 1 // minus the warm-up event
	}
	if count != len(l1) {
		return r, fmt.Errorf("the runs hold %d appended events, %d appends succeeded", count, len(l1))
	}
	return r, nil
}
