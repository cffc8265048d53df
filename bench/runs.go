package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/oaruntime/oaruntime/bench/benchutil"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
)

type roundResult struct {
	System        string  `json:"system"`
	Mode          string  `json:"mode"`
	Round         int     `json:"round"`
	N             int     `json:"n"`
	Seconds       float64 `json:"seconds"`
	PerSecond     float64 `json:"per_second"`
	SubmitSeconds float64 `json:"submit_seconds,omitempty"`
	Errors        int64   `json:"errors"`
	Concurrency   int     `json:"concurrency,omitempty"`
	// CPU milliseconds per item: of the system's own process (the serve
	// process for oaruntime, this bench process for River, which also
	// submits) and of the whole machine (PostgreSQL, clients, and any other
	// load on the shared machine). For oaruntime the window includes the
	// projection tail, so the projector's catch-up is part of the cost.
	ProcessCPUMSPerItem float64 `json:"process_cpu_ms_per_item"`
	MachineCPUMSPerItem float64 `json:"machine_cpu_ms_per_item"`
	// ProjectionTailSeconds: after the last run succeeded, how long the
	// server's projector kept writing summaries (not part of Seconds; the
	// next round starts after it, so the backlog never slows River's rounds).
	ProjectionTailSeconds float64 `json:"projection_tail_seconds,omitempty"`
}

type runsResult struct {
	Config map[string]any `json:"config"`
	Rounds []roundResult  `json:"rounds"`
	// Medians over the measured rounds, items per second.
	OaruntimeMedian float64 `json:"oaruntime_runs_per_second_median"`
	// The same rounds counted until the projector had also written every
	// run's summary (n / (seconds + projection_tail_seconds)).
	OaruntimeProjectedMedian float64 `json:"oaruntime_runs_per_second_projected_median"`
	RiverMedian              float64 `json:"river_jobs_per_second_median"`
	RiverBurnDownMedian      float64 `json:"river_burn_down_jobs_per_second_median"`
	// Ratio is oaruntime / River, both submitted one by one through their
	// public API and counted when committed as done.
	Ratio         float64 `json:"ratio_oaruntime_over_river"`
	RatioBurnDown float64 `json:"ratio_oaruntime_over_river_burn_down"`
	Verified      string  `json:"verified"`
	// Rows written and index/sequential scans per item in each side's schema
	// (pg_stat_user_tables over a separate round of 1000).
	OaruntimeDBWorkPerRun map[string]float64 `json:"oaruntime_db_work_per_run"`
	RiverDBWorkPerJob     map[string]float64 `json:"river_db_work_per_job"`
}

func runsCmd(ctx context.Context, args []string) error {
	var c common
	fs := flag.NewFlagSet("runs", flag.ContinueOnError)
	c.register(fs)
	rounds := fs.Int("rounds", 5, "measured rounds per system (alternating)")
	n := fs.Int("n", 2000, "items per round")
	poolSize := fs.Int("pool", 16, "PostgreSQL pool size of each side (pool_max_conns / pgxpool MaxConns)")
	submitters := fs.Int("submitters", 32, "concurrent clients submitting items")
	only := fs.String("only", "", "\"oaruntime\": measure oaruntime alone (a profiling aid; no ratio, results not saved)")
	var twoRequests bool
	fs.BoolVar(&twoRequests, "two-requests", false, "submit each oaruntime run as POST /runs then POST /frames (the way before the input field) instead of one POST /runs with input")
	sweepFlag := fs.String("sweep", "64,256,1024", "concurrency settings tried (one round each) before the measured rounds; each side keeps its best")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := c.prepare(); err != nil {
		return err
	}
	tag := randHex(4)
	oaSchema, rvSchema := "oabench_runs_"+tag, "oabench_river_"+tag
	defer dropSchema(ctx, c.pg, oaSchema)
	defer dropSchema(ctx, c.pg, rvSchema)

	// River: in this process, same PostgreSQL, its own schema.
	pool, err := riverPool(ctx, c.pg, rvSchema, *poolSize)
	if err != nil {
		return fmt.Errorf("river pool: %w", err)
	}
	defer pool.Close()
	if err := riverMigrate(ctx, pool, rvSchema); err != nil {
		return err
	}
	dbURL, err := benchutil.PGURL(c.pg, map[string]string{"schema": oaSchema, "pool_max_conns": strconv.Itoa(*poolSize)})
	if err != nil {
		return err
	}
	submit := func(ctx context.Context, a *api, id string) error {
		if twoRequests {
			if err := a.createRun(ctx, id); err != nil {
				return err
			}
			return a.sendFrame(ctx, id, map[string]any{"text": "hi"})
		}
		return a.startRun(ctx, id, map[string]any{"text": "hi"})
	}
	if *only == "oaruntime" {
		return oaruntimeOnly(ctx, &c, dbURL, *sweepFlag, *rounds, *n, *submitters, submit)
	}
	res := runsResult{Config: map[string]any{
		"rounds": *rounds, "n": *n, "pool_max_conns": *poolSize, "submitters": *submitters,
		"oaruntime_item":  oaItem(twoRequests),
		"river_item":      "client.Insert(noop job) one by one; counted at EventKindJobCompleted (completion committed)",
		"river_burn_down": "queue paused, InsertManyFast N, timed from QueueResume until N completed (river bench style)",
		"river_fetch":     "River defaults (FetchCooldown 100ms, FetchPollInterval 1s)",
	}}

	// Sweep: one round per setting, each side keeps its best setting for the
	// measured rounds (a fixed concurrency would favour one design).
	sweep, err := parseInts(*sweepFlag)
	if err != nil {
		return fmt.Errorf("--sweep: %w", err)
	}
	bestOA, bestRV := sweep[0], sweep[0]
	bestOARate, bestRVRate := 0.0, 0.0
	for _, k := range sweep {
		o, err := newOASide(ctx, &c, dbURL, k)
		if err != nil {
			return err
		}
		_, err = oaruntimeRound(ctx, o.api, 0, 200, *submitters, submit)
		var r roundResult
		if err == nil {
			r, err = oaruntimeRound(ctx, o.api, -1, *n, *submitters, submit)
		}
		o.close()
		if err != nil {
			return fmt.Errorf("sweep oaruntime %d: %w", k, err)
		}
		r.Mode, r.Concurrency = "sweep", k
		res.Rounds = append(res.Rounds, r)
		logf("sweep oaruntime concurrency %d: %.1f runs/s", k, r.PerSecond)
		if r.PerSecond > bestOARate {
			bestOA, bestOARate = k, r.PerSecond
		}
		rv, err := newRiverSide(ctx, pool, rvSchema, k, *n)
		if err != nil {
			return err
		}
		_, err = riverRound(ctx, rv, 0, 200, *submitters)
		var r2, r3 roundResult
		if err == nil {
			r2, err = riverRound(ctx, rv, -1, *n, *submitters)
		}
		if err == nil {
			r3, err = riverBurnDown(ctx, rv, -1, *n)
		}
		rv.close(ctx)
		if err != nil {
			return fmt.Errorf("sweep river %d: %w", k, err)
		}
		r2.Mode, r2.Concurrency = "sweep", k
		r3.Mode, r3.Concurrency = "sweep_burn_down", k
		res.Rounds = append(res.Rounds, r2, r3)
		logf("sweep river max_workers %d: %.1f jobs/s (burn-down %.1f)", k, r2.PerSecond, r3.PerSecond)
		if r2.PerSecond > bestRVRate {
			bestRV, bestRVRate = k, r2.PerSecond
		}
	}
	res.Config["executor_concurrency"] = bestOA
	res.Config["river_max_workers"] = bestRV
	res.Config["sweep"] = sweep
	logf("measured rounds: oaruntime --executor-concurrency %d, River MaxWorkers %d", bestOA, bestRV)

	o, err := newOASide(ctx, &c, dbURL, bestOA)
	if err != nil {
		return err
	}
	defer o.close()
	rv, err := newRiverSide(ctx, pool, rvSchema, bestRV, *n)
	if err != nil {
		return err
	}
	defer rv.close(ctx)
	oa := o.api
	oaRound := func(round, n int) (roundResult, error) { return oaruntimeRound(ctx, oa, round, n, *submitters, submit) }
	rvRound := func(round, n int) (roundResult, error) { return riverRound(ctx, rv, round, n, *submitters) }
	rvBurn := func(round, n int) (roundResult, error) { return riverBurnDown(ctx, rv, round, n) }
	// Warm-up (not counted): connections, caches, query plans.
	for _, f := range []func(int, int) (roundResult, error){oaRound, rvRound, rvBurn} {
		if _, err := f(0, 200); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	var oaRates, oaProjected, rvRates, burnRates []float64
	for i := 1; i <= *rounds; i++ {
		for _, f := range []func(int, int) (roundResult, error){oaRound, rvRound, rvBurn} {
			r, err := f(i, *n)
			if err != nil {
				return err
			}
			logf("round %d %s/%s: %d in %.2fs = %.1f/s (errors %d)", i, r.System, r.Mode, r.N, r.Seconds, r.PerSecond, r.Errors)
			res.Rounds = append(res.Rounds, r)
			switch {
			case r.System == "oaruntime":
				oaRates = append(oaRates, r.PerSecond)
				oaProjected = append(oaProjected, float64(r.N)/(r.Seconds+r.ProjectionTailSeconds))
			case r.Mode == "submit_and_complete":
				rvRates = append(rvRates, r.PerSecond)
			default:
				burnRates = append(burnRates, r.PerSecond)
			}
		}
	}
	// Database work per item, outside the timed rounds, from each side's own
	// schema (pg_stat_user_tables), so neither side's background work is
	// counted against the other. Backends flush these counters when idle for
	// 10 s, hence the settles.
	work := func(schema string, f func() error) (map[string]float64, error) {
		time.Sleep(11 * time.Second)
		a := tableStats(ctx, c.pg, schema)
		if err := f(); err != nil {
			return nil, err
		}
		time.Sleep(11 * time.Second)
		b := tableStats(ctx, c.pg, schema)
		out := map[string]float64{}
		for k, v := range b {
			out[k] = float64(v-a[k]) / 1000
		}
		return out, nil
	}
	if res.OaruntimeDBWorkPerRun, err = work(oaSchema, func() error { _, err := oaRound(-2, 1000); return err }); err != nil {
		return err
	}
	if res.RiverDBWorkPerJob, err = work(rvSchema, func() error { _, err := rvRound(-2, 1000); return err }); err != nil {
		return err
	}
	logf("database work per item: oaruntime %v, River %v", res.OaruntimeDBWorkPerRun, res.RiverDBWorkPerJob)
	res.OaruntimeMedian, res.RiverMedian, res.RiverBurnDownMedian = median(oaRates), median(rvRates), median(burnRates)
	res.OaruntimeProjectedMedian = median(oaProjected)
	if res.RiverMedian > 0 {
		res.Ratio = res.OaruntimeMedian / res.RiverMedian
	}
	if res.RiverBurnDownMedian > 0 {
		res.RatioBurnDown = res.OaruntimeMedian / res.RiverBurnDownMedian
	}
	res.Verified, err = verifyRuns(ctx, oa, c.pg, oaSchema)
	if err != nil {
		return err
	}
	fmt.Printf("runs/s: oaruntime median %.1f runs/s, River median %.1f jobs/s (burn-down %.1f): ratio %.3f (burn-down %.3f); %s\n",
		res.OaruntimeMedian, res.RiverMedian, res.RiverBurnDownMedian, res.Ratio, res.RatioBurnDown, res.Verified)
	return saveSection(c.out, func(r *results) { r.Runs = res })
}

// submitFunc starts one one-message run.
type submitFunc func(ctx context.Context, a *api, runID string) error

func oaItem(twoRequests bool) string {
	if twoRequests {
		return "POST /runs + POST /frames user_message {text:hi}; counted at run.finished succeeded (executor_terminal_total)"
	}
	return "POST /runs with input user_message {text:hi} (one request); counted at run.finished succeeded (executor_terminal_total)"
}

// oaruntimeRound submits n one-message runs and waits until the server has
// finished n more runs as succeeded, reading its own terminal counter.
func oaruntimeRound(ctx context.Context, a *api, round, n, submitters int, submit submitFunc) (roundResult, error) {
	const metric = "openagents_runtime_executor_terminal_total"
	base, err := a.metricSum(ctx, metric, `status="succeeded"`)
	if err != nil {
		return roundResult{}, err
	}
	baseFailed, _ := a.metricSum(ctx, metric, `status="failed"`)
	var errs atomic.Int64
	var firstErr atomic.Value
	work := make(chan int, n)
	for i := range n {
		work <- i
	}
	close(work)
	cpu0, busy0 := procCPU(a.pid), machineBusy()
	start := time.Now()
	var wg sync.WaitGroup
	for range submitters {
		wg.Go(func() {
			for i := range work {
				id := fmt.Sprintf("run_b%d_%d_%s", round, i, randHex(4))
				if err := submit(ctx, a, id); err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		})
	}
	wg.Wait()
	submitted := time.Since(start)
	want := base + float64(n) - float64(errs.Load())
	deadline := time.Now().Add(5 * time.Minute)
	for {
		v, err := a.metricSum(ctx, metric, `status="succeeded"`)
		if err == nil && v >= want {
			break
		}
		if time.Now().After(deadline) {
			return roundResult{}, fmt.Errorf("oaruntime round %d: %v of %d runs succeeded after 5 min", round, v-base, n)
		}
		if ctx.Err() != nil {
			return roundResult{}, ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
	d := time.Since(start)
	tail := projectionTail(ctx, a)
	failed, _ := a.metricSum(ctx, metric, `status="failed"`)
	if failed > baseFailed {
		return roundResult{}, fmt.Errorf("oaruntime round %d: %v runs failed", round, failed-baseFailed)
	}
	if e := errs.Load(); e > 0 {
		logf("oaruntime round %d: %d submit errors, first: %v", round, e, firstErr.Load())
	}
	return roundResult{System: "oaruntime", Mode: "submit_and_complete", Round: round, N: n, Seconds: d.Seconds(),
		PerSecond: float64(n-int(errs.Load())) / d.Seconds(), SubmitSeconds: submitted.Seconds(), Errors: errs.Load(),
		ProcessCPUMSPerItem: benchutil.MS(procCPU(a.pid)-cpu0) / float64(n), MachineCPUMSPerItem: benchutil.MS(machineBusy()-busy0) / float64(n),
		ProjectionTailSeconds: tail.Seconds()}, nil
}

func riverRound(ctx context.Context, rv *riverSide, round, n, submitters int) (roundResult, error) {
	time.Sleep(500 * time.Millisecond) // settle after the previous round
	rc, completed := rv.client, &rv.completed
	base := completed.Load()
	var errs atomic.Int64
	work := make(chan int, n)
	for i := range n {
		work <- i
	}
	close(work)
	cpu0, busy0 := procCPU(0), machineBusy()
	start := time.Now()
	var wg sync.WaitGroup
	for range submitters {
		wg.Go(func() {
			for range work {
				if _, err := rc.Insert(ctx, noopArgs{Round: round}, nil); err != nil {
					errs.Add(1)
				}
			}
		})
	}
	wg.Wait()
	submitted := time.Since(start)
	if err := waitCount(ctx, completed, base+int64(n)-errs.Load(), 5*time.Minute); err != nil {
		return roundResult{}, fmt.Errorf("river round %d: %w", round, err)
	}
	d := time.Since(start)
	return roundResult{System: "river", Mode: "submit_and_complete", Round: round, N: n, Seconds: d.Seconds(),
		PerSecond: float64(n-int(errs.Load())) / d.Seconds(), SubmitSeconds: submitted.Seconds(), Errors: errs.Load(),
		ProcessCPUMSPerItem: benchutil.MS(procCPU(0)-cpu0) / float64(n), MachineCPUMSPerItem: benchutil.MS(machineBusy()-busy0) / float64(n)}, nil
}

// riverBurnDown is River's own benchmark shape: the jobs are already in the
// table when the workers are let loose.
func riverBurnDown(ctx context.Context, rv *riverSide, round, n int) (roundResult, error) {
	rc, completed := rv.client, &rv.completed
	if err := rc.QueuePause(ctx, river.QueueDefault, nil); err != nil {
		return roundResult{}, fmt.Errorf("pause: %w", err)
	}
	time.Sleep(300 * time.Millisecond) // let in-flight fetches settle
	base := completed.Load()
	params := make([]river.InsertManyParams, n)
	for i := range params {
		params[i] = river.InsertManyParams{Args: noopArgs{Round: round}}
	}
	if _, err := rc.InsertManyFast(ctx, params); err != nil {
		return roundResult{}, fmt.Errorf("insert many: %w", err)
	}
	cpu0, busy0 := procCPU(0), machineBusy()
	start := time.Now()
	if err := rc.QueueResume(ctx, river.QueueDefault, nil); err != nil {
		return roundResult{}, fmt.Errorf("resume: %w", err)
	}
	if err := waitCount(ctx, completed, base+int64(n), 5*time.Minute); err != nil {
		return roundResult{}, fmt.Errorf("river burn-down %d: %w", round, err)
	}
	d := time.Since(start)
	return roundResult{System: "river", Mode: "burn_down", Round: round, N: n, Seconds: d.Seconds(), PerSecond: float64(n) / d.Seconds(),
		ProcessCPUMSPerItem: benchutil.MS(procCPU(0)-cpu0) / float64(n), MachineCPUMSPerItem: benchutil.MS(machineBusy()-busy0) / float64(n)}, nil
}

func waitCount(ctx context.Context, c *atomic.Int64, want int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for c.Load() < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d done after %s", c.Load(), want, timeout)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// verifyRuns checks, outside the timed rounds, that every run the bench
// created finished succeeded with the three events of a one-message turn.
func verifyRuns(ctx context.Context, a *api, base, schema string) (string, error) {
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var total, ok int
	q := fmt.Sprintf(`SELECT count(*), count(*) FILTER (WHERE status = 'succeeded') FROM %s.runs`, pgx.Identifier{schema}.Sanitize())
	if err := conn.QueryRow(ctx, q).Scan(&total, &ok); err != nil {
		return "", fmt.Errorf("verify: %w", err)
	}
	if total != ok {
		return "", fmt.Errorf("verify: %d of %d runs not succeeded", total-ok, total)
	}
	// Spot-check a few logs through the API.
	var ids []string
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT run_id FROM %s.runs`, pgx.Identifier{schema}.Sanitize()))
	if err != nil {
		return "", err
	}
	for rows.Next() {
		var id string
		_ = rows.Scan(&id)
		ids = append(ids, id)
	}
	rows.Close()
	rand.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	for _, id := range ids[:min(20, len(ids))] {
		evs, err := a.events(ctx, id, 0)
		if err != nil {
			return "", err
		}
		if len(evs) == 0 || evs[len(evs)-1].EventType != "run.finished" {
			return "", errors.New("verify: run " + id + " does not end with run.finished")
		}
	}
	return fmt.Sprintf("all %d runs succeeded (database), 20 logs end with run.finished", total), nil
}

type oaSide struct {
	srv *server
	api *api
}

func newOASide(ctx context.Context, c *common, dbURL string, conc int) (*oaSide, error) {
	srv, err := startServer(ctx, c.bin, fmt.Sprintf("runs-oaruntime-c%d", conc), c.work, map[string]string{"OA_RUNTIME_DATABASE_URL": dbURL},
		"--executor-concurrency", strconv.Itoa(conc))
	if err != nil {
		return nil, err
	}
	a := srv.api()
	a.pid = srv.pid()
	return &oaSide{srv: srv, api: a}, nil
}

func (o *oaSide) close() { o.srv.stop() }

type riverSide struct {
	client    *river.Client[pgx.Tx]
	completed atomic.Int64
	cancelSub func()
}

func newRiverSide(ctx context.Context, pool *pgxpool.Pool, schema string, workers, n int) (*riverSide, error) {
	ws := river.NewWorkers()
	river.AddWorker(ws, noopWorker{})
	rc, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Schema:  schema,
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: workers}},
		Workers: ws,
		Logger:  slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, fmt.Errorf("river client: %w", err)
	}
	rv := &riverSide{client: rc}
	sub, cancel := rc.SubscribeConfig(&river.SubscribeConfig{ChanSize: 4 * n, Kinds: []river.EventKind{river.EventKindJobCompleted}})
	rv.cancelSub = cancel
	go func() {
		for range sub {
			rv.completed.Add(1)
		}
	}()
	if err := rc.Start(ctx); err != nil {
		return nil, fmt.Errorf("river start: %w", err)
	}
	return rv, nil
}

func (rv *riverSide) close(ctx context.Context) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	_ = rv.client.Stop(sctx)
	rv.cancelSub()
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, errors.New("empty")
	}
	return out, nil
}

// tableStats sums the row and scan counters of the tables of schema.
func tableStats(ctx context.Context, url, schema string) map[string]int64 {
	out := map[string]int64{}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return out
	}
	defer conn.Close(ctx)
	var ins, upd, del, scans int64
	_ = conn.QueryRow(ctx, `SELECT coalesce(sum(n_tup_ins),0), coalesce(sum(n_tup_upd),0), coalesce(sum(n_tup_del),0),
		coalesce(sum(seq_scan + coalesce(idx_scan,0)),0) FROM pg_stat_user_tables WHERE schemaname = $1`, schema).Scan(&ins, &upd, &del, &scans)
	out["rows_inserted"], out["rows_updated"], out["rows_deleted"], out["table_scans"] = ins, upd, del, scans
	return out
}

// projectionTail waits until the server's projector has stopped writing
// (its writes counter unchanged for 1 s, at most 2 min) and returns how long
// it kept writing after the call.
func projectionTail(ctx context.Context, a *api) time.Duration {
	const writes = "openagents_runtime_khala_projection_writes_total"
	start := time.Now()
	last, _ := a.metricSum(ctx, writes)
	lastChange := start
	for time.Since(lastChange) < time.Second && time.Since(start) < 2*time.Minute {
		time.Sleep(100 * time.Millisecond)
		v, err := a.metricSum(ctx, writes)
		if err == nil && v != last {
			last, lastChange = v, time.Now()
		}
	}
	return lastChange.Sub(start)
}

// oaruntimeOnly measures oaruntime alone at each concurrency: a quick loop
// for profiling the server (OA_RUNTIME_PPROF_ADDR is passed through).
func oaruntimeOnly(ctx context.Context, c *common, dbURL, sweepFlag string, rounds, n, submitters int, submit submitFunc) error {
	sweep, err := parseInts(sweepFlag)
	if err != nil {
		return fmt.Errorf("--sweep: %w", err)
	}
	for _, k := range sweep {
		o, err := newOASide(ctx, c, dbURL, k)
		if err != nil {
			return err
		}
		if _, err := oaruntimeRound(ctx, o.api, 0, 200, submitters, submit); err != nil {
			o.close()
			return err
		}
		for i := 1; i <= rounds; i++ {
			r, err := oaruntimeRound(ctx, o.api, i, n, submitters, submit)
			if err != nil {
				o.close()
				return err
			}
			logf("oaruntime concurrency %d round %d: %.1f runs/s (submitted in %.2fs of %.2fs), process %.3f ms/run, machine %.3f ms/run, projection tail %.2fs",
				k, i, r.PerSecond, r.SubmitSeconds, r.Seconds, r.ProcessCPUMSPerItem, r.MachineCPUMSPerItem, r.ProjectionTailSeconds)
		}
		o.close()
	}
	return nil
}
