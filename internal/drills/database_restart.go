package drills

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/oaruntime/oaruntime/internal/client"
)

// readySample is one /readyz observation.
type readySample struct {
	At     time.Time
	Code   int // 0: no answer
	Failed string
}

// pollReady samples /readyz every interval until ctx ends.
func pollReady(ctx context.Context, addr string, every time.Duration) func() []readySample {
	var mu sync.Mutex
	var samples []readySample
	done := make(chan struct{})
	go func() {
		defer close(done)
		hc := &http.Client{Timeout: 3 * time.Second}
		for ctx.Err() == nil {
			code, body, _ := readyz(ctx, hc, addr)
			mu.Lock()
			samples = append(samples, readySample{At: time.Now(), Code: code, Failed: body.Failed})
			mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(every):
			}
		}
	}()
	return func() []readySample {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return samples
	}
}

// readinessFigures reads the samples of an outage [stopAt, startAt]: the
// first 503 after the stop, whether a 503 named the failing check, and the
// first 200 after the start.
type readinessFigures struct {
	First503       time.Duration // from stopAt; -1 when never seen
	NamedFailed    string        // the check a 503 named during the outage
	Saw503         int
	First200After  time.Duration // from startAt; -1 when never seen
	Not200AfterRec int           // non-200 answers after the first 200 following the start
}

func readiness(samples []readySample, stopAt, startAt time.Time) readinessFigures {
	f := readinessFigures{First503: -1, First200After: -1}
	for _, s := range samples {
		switch {
		case s.At.Before(stopAt):
		case s.At.Before(startAt) || f.First200After < 0:
			if s.Code == http.StatusServiceUnavailable {
				f.Saw503++
				if f.First503 < 0 {
					f.First503 = s.At.Sub(stopAt)
				}
				if f.NamedFailed == "" {
					f.NamedFailed = s.Failed
				}
			}
			if !s.At.Before(startAt) && s.Code == http.StatusOK {
				f.First200After = s.At.Sub(startAt)
			}
		default:
			if s.Code != http.StatusOK {
				f.Not200AfterRec++
			}
		}
	}
	return f
}

// databaseRestart (PostgreSQL): with runs in flight and SSE clients
// reading, the PostgreSQL server is stopped (immediate mode) for longer
// than the lease TTL and started again with its own options. /readyz must
// answer 503 naming the failing check ("database") during the outage and 200
// after it; the node must survive; every run completes with a complete,
// intact log and every stream delivers each event once.
func (d *Driver) databaseRestart(ctx context.Context, kind string) Result {
	r := newRec(DatabaseRestart, kind)
	passed := false
	pg := PGControl{Bin: d.cfg.PGBin, Data: d.cfg.PGData}
	opts, err := pg.Options()
	if err != nil {
		r.failf("%v", err)
		return r.done()
	}
	ctx, node, finish, ok := d.singleNode(ctx, r, DatabaseRestart, kind, 4*time.Minute, nil)
	if !ok {
		return r.done()
	}
	defer func() { finish(passed) }()
	c := d.client(node)

	n := 30
	if d.cfg.Short {
		n = 10
	}
	plans := make([]*plannedRun, n)
	for i := range plans {
		tag := fmt.Sprintf("d%02d", i)
		plans[i] = &plannedRun{
			RunID: fmt.Sprintf("run_dbrestart_%s_%s", randHex(4), tag), FrameID: "frame_" + tag,
			Steps: toolScript(tag, 0, 1500+(i%4)*500, 1000), WantStatus: "succeeded",
		}
		if err := createRun(ctx, c, plans[i]); err != nil {
			r.failf("%v", err)
			return r.done()
		}
	}
	r.count("runs", int64(n))
	sctx, scancel := context.WithTimeout(ctx, 3*time.Minute)
	defer scancel()
	var readers []*sseReader
	for i, p := range plans {
		if i%3 == 0 {
			s := newSSEReader(p.RunID, 0)
			readers = append(readers, s)
			go s.run(sctx, c)
		}
	}
	pctx, pcancel := context.WithCancel(ctx)
	samples := pollReady(pctx, node.Addr, 200*time.Millisecond)
	inflight := waitInFlight(ctx, c, plans, n/2, 10*time.Second)
	r.count("runs_with_tool_in_flight_at_stop", int64(inflight))

	// Longer than the lease TTL, so leases expire while the database is
	// gone and the janitor has to reclaim them once it is back.
	outage := d.cfg.LeaseTTL + 2*time.Second
	mode, why, err := stopMode(ctx, d.cfg.PGURL, d.cfg.PGStopMode)
	if err != nil {
		pcancel()
		samples()
		r.failf("%v", err)
		return r.done()
	}
	r.notef("pg_ctl stop -m %s: %s", mode, why)
	stopAt := time.Now()
	if err := pg.Stop(ctx, mode); err != nil {
		pcancel()
		samples()
		r.failf("stop PostgreSQL: %v", err)
		return r.done()
	}
	d.progressf("%s/%s: PostgreSQL stopped (%s) for %s with %d runs in a tool call", DatabaseRestart, kind, mode, outage, inflight)
	restarted := false
	defer func() {
		if !restarted && !pg.Running(context.WithoutCancel(ctx)) {
			_ = pg.Start(context.WithoutCancel(ctx), opts) // never leave the shared server down
		}
	}()
	select {
	case <-ctx.Done():
	case <-time.After(time.Until(stopAt.Add(outage))):
	}
	startAt := time.Now()
	if err := pg.Start(ctx, opts); err != nil {
		pcancel()
		samples()
		r.failf("start PostgreSQL: %v", err)
		return r.done()
	}
	restarted = true
	r.dur("database_outage", time.Since(stopAt))
	r.dur("pg_ctl_start", time.Since(startAt))

	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	_, werr := waitTerminal(wctx, func() *client.Client { return c }, plans)
	wcancel()
	if werr != nil {
		r.failf("%v", werr)
	}
	r.dur("stop_to_all_terminal", time.Since(stopAt))
	for _, s := range readers {
		select {
		case <-s.finished:
		case <-sctx.Done():
		}
	}
	time.Sleep(time.Second) // a few more /readyz samples after recovery
	pcancel()
	f := readiness(samples(), stopAt, startAt)
	r.count("readyz_503_during_outage", int64(f.Saw503))
	r.count("readyz_not_200_after_recovery", int64(f.Not200AfterRec))
	if f.First503 >= 0 {
		r.dur("stop_to_readyz_503", f.First503)
	}
	if f.First200After >= 0 {
		r.dur("start_to_readyz_200", f.First200After)
	}
	switch {
	case f.Saw503 == 0:
		r.failf("/readyz never answered 503 while PostgreSQL was down")
	case f.NamedFailed != "database":
		r.failf("/readyz 503 named %q as the failing check, want \"database\"", f.NamedFailed)
	}
	if f.First200After < 0 {
		r.failf("/readyz did not answer 200 after PostgreSQL came back")
	}
	requireAlive(r, node)

	checks := checkAll(ctx, r, c, plans)
	logs := map[string][]apiEvent{}
	for _, rc := range checks {
		logs[rc.RunID] = rc.Events
	}
	var problems []string
	for _, s := range readers {
		sc := checkSSE(s, logs[s.RunID])
		r.add("stream_clients", 1)
		r.add("stream_events_received", int64(sc.Received))
		r.add("stream_events_missed", int64(sc.Missed))
		r.add("stream_events_duplicated", int64(sc.Duplicated))
		s.mu.Lock()
		r.add("stream_reconnects", int64(s.reconnects))
		s.mu.Unlock()
		problems = append(problems, sc.Problems...)
	}
	for _, pr := range limitList(problems, 10) {
		r.failf("%s", pr)
	}
	// Leases expired during the outage; once the database is back the
	// janitor's next cycle must reclaim them.
	d.recoveryFigures(r, checks, startAt, "", "db_start", "janitor_interval_plus_readyz", d.cfg.JanitorInterval+f.First200After)
	res := r.done()
	passed = res.Passed
	return res
}
