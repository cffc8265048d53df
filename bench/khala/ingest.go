package main

import (
	"context"
	"fmt"
	"github.com/oaruntime/oaruntime/bench/benchutil"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

const lagMetric = "openagents_runtime_khala_projection_lag_events"

var lagLabel = `projection="run_summary"`

type ingestStep struct {
	TargetRate float64 `json:"target_per_second"`
	// Achieved counts successful appends over the step's wall time; below
	// the target means the server (or the machine) could not take more.
	Achieved   float64            `json:"achieved_per_second"`
	Seconds    float64            `json:"seconds"`
	Appended   int64              `json:"appended"`
	Errors     int64              `json:"errors"`
	FirstError string             `json:"first_error,omitempty"`
	Append     benchutil.DurStats `json:"append_latency_from_send"`
	Sched      benchutil.DurStats `json:"append_latency_from_schedule"`
	// Lag over the step (bucket deltas between the scrapes at the start
	// and end of the step).
	Writes          float64 `json:"projection_writes"`
	LagP50          float64 `json:"lag_p50_events"`
	LagP95          float64 `json:"lag_p95_events"`
	LagP99          float64 `json:"lag_p99_events"`
	ShareAtMost25   float64 `json:"share_lag_at_most_25"`
	P95WithinTarget bool    `json:"p95_at_most_25"`
	// After the appends stop, the projector works off what is left: the
	// same figures including those writes, and how long it took.
	DrainSeconds      float64 `json:"drain_seconds"`
	WritesWithDrain   float64 `json:"projection_writes_with_drain"`
	LagP95WithDrain   float64 `json:"lag_p95_events_with_drain"`
	ShareAtMost25Drn  float64 `json:"share_lag_at_most_25_with_drain"`
	EventsPerRunAtEnd float64 `json:"events_per_run_at_end"`
	ServerCPUCores    float64 `json:"server_cpu_cores"`
	MachineCPUCores   float64 `json:"machine_cpu_cores"`
	Loadavg           string  `json:"loadavg_after"`
}

type ingestStore struct {
	Store       string       `json:"store"`
	Steps       []ingestStep `json:"steps"`
	HighestOK   float64      `json:"highest_target_with_p95_at_most_25"`
	HighestOKAt float64      `json:"achieved_at_that_step"`
	MaxAchieved float64      `json:"max_achieved_per_second"`
	StoppedBy   string       `json:"stopped_by"`
}

type ingestConfig struct {
	bin, work string
	rates     []float64
	step      time.Duration
	runs      int
	workers   int
}

func ingestStoreRun(ctx context.Context, c ingestConfig, name, dbURL string) (ingestStore, error) {
	res := ingestStore{Store: name}
	srv, err := startServer(ctx, c.bin, "khala-ingest-"+name, c.work, map[string]string{
		"OA_RUNTIME_DATABASE_URL": dbURL, "OA_RUNTIME_DATA_DIR": c.work + "/data-ingest-" + name,
		"OA_SYNC_TOKEN_KEY_ID": keyID, "OA_SYNC_TOKEN_SIGNING_KEY": signingKey,
	})
	if err != nil {
		return res, err
	}
	defer srv.stop()
	a := srv.api("user:ingest")
	res.StoppedBy = "rate list exhausted"
	for si, rate := range c.rates {
		st, err := ingestStep1(ctx, c, srv, a, si, rate)
		if err != nil {
			return res, fmt.Errorf("rate %.0f: %w", rate, err)
		}
		res.Steps = append(res.Steps, st)
		logf("ingest %s %.0f/s: achieved %.1f/s, append p50 %.1f ms p99 %.1f ms, lag p50 %.1f p95 %.1f p99 %.1f (<=25: %.3f) writes %.0f, drain %.1fs (p95 with drain %.1f), server %.2f cores, machine %.2f, load %s",
			name, rate, st.Achieved, st.Append.P50MS, st.Append.P99MS, st.LagP50, st.LagP95, st.LagP99, st.ShareAtMost25, st.Writes,
			st.DrainSeconds, st.LagP95WithDrain, st.ServerCPUCores, st.MachineCPUCores, st.Loadavg)
		res.MaxAchieved = math.Max(res.MaxAchieved, st.Achieved)
		if st.P95WithinTarget && st.Achieved >= 0.9*rate {
			res.HighestOK, res.HighestOKAt = rate, st.Achieved
		}
		if st.Achieved < 0.8*rate {
			res.StoppedBy = fmt.Sprintf("ingest saturated at target %.0f/s (achieved %.1f/s)", rate, st.Achieved)
			break
		}
	}
	return res, nil
}

func ingestStep1(ctx context.Context, c ingestConfig, srv *server, a *api, si int, rate float64) (ingestStep, error) {
	st := ingestStep{TargetRate: rate}
	ids := make([]string, c.runs)
	for i := range ids {
		ids[i] = fmt.Sprintf("run_khala_s%d_%d_%s", si, i, randHex(3))
		if err := a.createOpenRun(ctx, ids[i]); err != nil {
			return st, fmt.Errorf("create run: %w", err)
		}
		if _, err := a.appendDelta(ctx, ids[i], -1); err != nil {
			return st, fmt.Errorf("warm-up append: %w", err)
		}
	}
	if _, err := settle(ctx, a, 60*time.Second); err != nil {
		return st, err
	}
	text, err := a.scrape(ctx)
	if err != nil {
		return st, err
	}
	h0 := parseHistogram(text, lagMetric, lagLabel)

	type job struct {
		i  int
		at time.Time
	}
	total := int(rate * c.step.Seconds())
	jobs := make(chan job, 1024)
	fromSend := make([]time.Duration, total)
	fromSched := make([]time.Duration, total)
	ok := make([]bool, total)
	var errs atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range c.workers {
		wg.Go(func() {
			for j := range jobs {
				sent := time.Now()
				_, err := a.appendDelta(ctx, ids[j.i%len(ids)], j.i)
				done := time.Now()
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				fromSend[j.i], fromSched[j.i], ok[j.i] = done.Sub(sent), done.Sub(j.at), true
			}
		})
	}
	cpu0, busy0 := procCPU(srv.pid()), machineBusy()
	start := time.Now()
	interval := time.Duration(float64(time.Second) / rate)
	// Open loop: request i is due at start + i*interval. When every worker
	// is busy and the queue is full, the dispatcher blocks, the schedule
	// slips, and the achieved rate shows it.
	for i := range total {
		at := start.Add(time.Duration(i) * interval)
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		jobs <- job{i, at}
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	serverCPU, busy := procCPU(srv.pid())-cpu0, machineBusy()-busy0
	text, err = a.scrape(ctx)
	if err != nil {
		return st, err
	}
	h1 := parseHistogram(text, lagMetric, lagLabel)
	drainStart := time.Now()
	h2, err := settle(ctx, a, 120*time.Second)
	if err != nil {
		return st, err
	}
	st.DrainSeconds = time.Since(drainStart).Seconds() - 1 // settle waits 1 s of quiet
	var l1, l2 []time.Duration
	for i := range total {
		if ok[i] {
			l1 = append(l1, fromSend[i])
			l2 = append(l2, fromSched[i])
		}
	}
	st.Seconds = elapsed.Seconds()
	st.Appended, st.Errors = int64(len(l1)), errs.Load()
	if v, ok := firstErr.Load().(string); ok {
		st.FirstError = v
	}
	st.Achieved = float64(len(l1)) / elapsed.Seconds()
	st.Append, st.Sched = benchutil.Summarize(l1), benchutil.Summarize(l2)
	d := h1.sub(h0)
	st.Writes = d.total()
	st.LagP50, st.LagP95, st.LagP99 = round1(d.quantile(0.5)), round1(d.quantile(0.95)), round1(d.quantile(0.99))
	st.ShareAtMost25 = round3(d.fractionAtMost(25))
	st.P95WithinTarget = st.ShareAtMost25 >= 0.95
	dd := h2.sub(h0)
	st.WritesWithDrain = dd.total()
	st.LagP95WithDrain = round1(dd.quantile(0.95))
	st.ShareAtMost25Drn = round3(dd.fractionAtMost(25))
	st.EventsPerRunAtEnd = float64(len(l1))/float64(len(ids)) + 1
	st.ServerCPUCores = round3(serverCPU.Seconds() / elapsed.Seconds())
	st.MachineCPUCores = round3(busy.Seconds() / elapsed.Seconds())
	st.Loadavg = loadavg()
	// Every successful append must be in the logs.
	var count int64
	for _, id := range ids {
		n, err := a.latestSeq(ctx, id)
		if err != nil {
			return st, err
		}
		count += n - 1 // the warm-up event
	}
	if count != st.Appended {
		return st, fmt.Errorf("the runs hold %d appended events, %d appends succeeded", count, st.Appended)
	}
	return st, nil
}

// settle waits until the lag histogram's count has not moved for 1 s (the
// projector is idle) and returns the last scrape.
func settle(ctx context.Context, a *api, limit time.Duration) (histogram, error) {
	deadline := time.Now().Add(limit)
	var last histogram
	lastN, quietSince := -1.0, time.Now()
	for {
		text, err := a.scrape(ctx)
		if err != nil {
			return last, err
		}
		last = parseHistogram(text, lagMetric, lagLabel)
		if n := last.total(); n != lastN {
			lastN, quietSince = n, time.Now()
		} else if time.Since(quietSince) >= time.Second {
			return last, nil
		}
		if time.Now().After(deadline) {
			return last, fmt.Errorf("projector still writing after %s", limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// round1 and round3 round for the report; -1 stands for "no observations"
// (JSON has no NaN).
func round1(f float64) float64 {
	if math.IsNaN(f) {
		return -1
	}
	return math.Round(f*10) / 10
}

func round3(f float64) float64 {
	if math.IsNaN(f) {
		return -1
	}
	return math.Round(f*1000) / 1000
}
