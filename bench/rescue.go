package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/oaruntime/oaruntime/bench/benchutil"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
)

type oaRescueTrial struct {
	Trial int `json:"trial"`
	// KillToReadyMS: SIGKILL of the node holding the run until the new
	// process answers /readyz 200 (start-up included in every figure below).
	KillToReadyMS float64 `json:"kill_to_ready_ms"`
	// KillToNextEventMS: until the next event of the run is appended: the
	// janitor's run.executor_lost, after which the run is claimable.
	KillToNextEventMS float64 `json:"kill_to_next_event_ms"`
	// KillToWorkResumedMS: until the new executor started the interrupted
	// tool call again (tool.result created_at minus its duration_ms), the
	// equivalent of River calling Work for the next attempt.
	KillToWorkResumedMS float64 `json:"kill_to_work_resumed_ms"`
	// KillToNewExecutorEventMS: until the first event the new executor
	// appended (the re-run tool's tool.result, so it includes the tool).
	KillToNewExecutorEventMS float64 `json:"kill_to_new_executor_event_ms"`
	KillToSucceededMS        float64 `json:"kill_to_succeeded_ms"`
	// LeaseAgeAtKillMS: how long before the kill the run was claimed (the
	// lease renews every 3 s, so the time left on it varies with this).
	LeaseAgeAtKillMS float64 `json:"tool_call_age_at_kill_ms"`
	FinalStatus      string  `json:"final_status"`
}

type riverRescueTrial struct {
	Trial         int     `json:"trial"`
	KillToReadyMS float64 `json:"kill_to_client_started_ms"`
	// KillToLeaderMS: the new client became leader (river_leader.elected_at);
	// only the leader runs the rescuer.
	KillToLeaderMS float64 `json:"kill_to_leader_ms"`
	// KillToRescuedMS: the rescuer marked the job (its "Stuck job rescued by
	// JobRescuer" error's at).
	KillToRescuedMS float64 `json:"kill_to_rescued_ms"`
	// KillToWorkResumedMS: Work was called for the next attempt.
	KillToWorkResumedMS float64 `json:"kill_to_work_resumed_ms"`
	FinalState          string  `json:"final_state"`
	// SurvivorWasLeader (standby trials): the client that survived already
	// held leadership, so no election delay.
	SurvivorWasLeader bool `json:"survivor_was_leader,omitempty"`
}

type rescueResult struct {
	Config                     map[string]any     `json:"config"`
	Oaruntime                  []oaRescueTrial    `json:"oaruntime_trials"`
	OaruntimeStandby           []oaRescueTrial    `json:"oaruntime_standby_trials,omitempty"`
	OaStandbyNextEventMedianMS float64            `json:"oaruntime_standby_kill_to_next_event_median_ms,omitempty"`
	OaStandbyNextEventMaxMS    float64            `json:"oaruntime_standby_kill_to_next_event_max_ms,omitempty"`
	RiverShort                 []riverRescueTrial `json:"river_short_trials"`
	RiverStandby               []riverRescueTrial `json:"river_short_standby_trials,omitempty"`
	RvStandbyWorkResumedMedMS  float64            `json:"river_short_standby_kill_to_work_resumed_median_ms,omitempty"`
	RvStandbyWorkResumedMaxMS  float64            `json:"river_short_standby_kill_to_work_resumed_max_ms,omitempty"`
	RiverDefaultObserved       map[string]any     `json:"river_default_observation"`
	OaNextEventMedianMS        float64            `json:"oaruntime_kill_to_next_event_median_ms"`
	OaWorkResumedMedianMS      float64            `json:"oaruntime_kill_to_work_resumed_median_ms"`
	RvRescuedMedianMS          float64            `json:"river_short_kill_to_rescued_median_ms"`
	RvWorkResumedMedianMS      float64            `json:"river_short_kill_to_work_resumed_median_ms"`
	// RiverDefaultRescueAfter is read from the library
	// ((&river.Config{}).WithDefaults().RescueStuckJobsAfter).
	RiverDefaultRescueAfterS float64 `json:"river_default_rescue_stuck_jobs_after_s"`
	RiverDefaultJobTimeoutS  float64 `json:"river_default_job_timeout_s"`
	// RiverDefaultEstimateS: the default horizon plus the mechanism overhead
	// measured with the short setting (rescued - short horizon), median.
	RiverDefaultEstimateS float64 `json:"river_default_kill_to_work_resumed_estimate_s"`
}

func rescueCmd(ctx context.Context, args []string) error {
	var c common
	fs := flag.NewFlagSet("rescue", flag.ContinueOnError)
	c.register(fs)
	trials := fs.Int("trials", 5, "oaruntime kills, and River kills with the short setting")
	toolMS := fs.Int("tool-ms", 1500, "duration of the tool call in flight at the kill")
	short := fs.Duration("river-short", 10*time.Second, "River RescueStuckJobsAfter (and JobTimeout) of the short setting, equal to oaruntime's lease TTL")
	killDelay := fs.Duration("kill-delay-max", 0, "wait a random 0..this after tool.call before the kill, so that the lease renewal and janitor phases vary (use --tool-ms above it)")
	standbyTrials := fs.Int("standby-trials", 0, "also kill with a second oaruntime process already serving (its janitor phase independent of the kill)")
	only := fs.String("only", "", "oaruntime or river: measure one side only")
	observe := fs.Duration("river-default-observe", 90*time.Second, "how long a job killed under River's defaults is watched (0 skips)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := c.prepare(); err != nil {
		return err
	}
	defAfter, defTimeout := riverDefaults()
	res := rescueResult{Config: map[string]any{
		"oaruntime":       "one serve process on PostgreSQL with default lease TTL 10s, renew 3s, janitor interval 2s; SIGKILL while a sleep tool call is in flight, then a new serve process is started",
		"tool_ms":         *toolMS,
		"river_short":     fmt.Sprintf("RescueStuckJobsAfter=%s JobTimeout=%s (shortest legal with JobTimeout=%s); other settings default", *short, *short, *short),
		"river_procedure": "child process with a River client works a job that blocks; SIGKILL; a new client process starts; attempt 2 returns at once",
	}, RiverDefaultRescueAfterS: defAfter.Seconds(), RiverDefaultJobTimeoutS: defTimeout.Seconds()}

	res.Config["kill_delay_max"] = killDelay.String()
	if *only != "river" {
		var err error
		if res.Oaruntime, err = oaRescue(ctx, &c, "restart", *trials, *toolMS, *killDelay); err != nil {
			return fmt.Errorf("oaruntime: %w", err)
		}
		if *standbyTrials > 0 {
			if res.OaruntimeStandby, err = oaRescue(ctx, &c, "standby", *standbyTrials, *toolMS, *killDelay); err != nil {
				return fmt.Errorf("oaruntime standby: %w", err)
			}
		}
	}
	if *only != "oaruntime" {
		if err := riverRescue(ctx, &c, *trials, *standbyTrials, *short, *observe, &res); err != nil {
			return fmt.Errorf("river: %w", err)
		}
	}
	var a, b, r1, r2 []float64
	for _, t := range res.Oaruntime {
		a = append(a, t.KillToNextEventMS)
		b = append(b, t.KillToWorkResumedMS)
	}
	for _, t := range res.RiverShort {
		r1 = append(r1, t.KillToRescuedMS)
		r2 = append(r2, t.KillToWorkResumedMS)
	}
	res.OaNextEventMedianMS, res.OaWorkResumedMedianMS = median(a), median(b)
	var sb []float64
	for _, t := range res.OaruntimeStandby {
		sb = append(sb, t.KillToNextEventMS)
		res.OaStandbyNextEventMaxMS = max(res.OaStandbyNextEventMaxMS, t.KillToNextEventMS)
	}
	res.OaStandbyNextEventMedianMS = median(sb)
	var rsb []float64
	for _, t := range res.RiverStandby {
		rsb = append(rsb, t.KillToWorkResumedMS)
		res.RvStandbyWorkResumedMaxMS = max(res.RvStandbyWorkResumedMaxMS, t.KillToWorkResumedMS)
	}
	res.RvStandbyWorkResumedMedMS = median(rsb)
	res.RvRescuedMedianMS, res.RvWorkResumedMedianMS = median(r1), median(r2)
	if len(r2) > 0 {
		res.RiverDefaultEstimateS = defAfter.Seconds() + res.RvWorkResumedMedianMS/1000 - short.Seconds()
	}
	fmt.Printf("rescue: oaruntime kill->next event median %.0f ms (standby replica: median %.0f ms, max %.0f ms), kill->work resumed %.0f ms; River (RescueStuckJobsAfter %s) kill->rescued %.0f ms, kill->work resumed %.0f ms; River default RescueStuckJobsAfter %s => about %.0f s\n",
		res.OaNextEventMedianMS, res.OaStandbyNextEventMedianMS, res.OaStandbyNextEventMaxMS, res.OaWorkResumedMedianMS, *short, res.RvRescuedMedianMS, res.RvWorkResumedMedianMS, defAfter, res.RiverDefaultEstimateS)
	return saveSection(c.out, func(r *results) { r.Rescue = res })
}

// oaRescue kills the node holding a run mid-tool-call. scenario "restart":
// a new process is started after the kill; "standby": a second process was
// already serving when the holder was killed.
func oaRescue(ctx context.Context, c *common, scenario string, trials, toolMS int, killDelay time.Duration) ([]oaRescueTrial, error) {
	standby := scenario == "standby"
	var out []oaRescueTrial
	schema := "oabench_rescue_" + randHex(4)
	defer dropSchema(ctx, c.pg, schema)
	dbURL, err := benchutil.PGURL(c.pg, map[string]string{"schema": schema})
	if err != nil {
		return nil, err
	}
	settings := map[string]string{"OA_RUNTIME_DATABASE_URL": dbURL, "OA_RUNTIME_LOG_LEVEL": "info"}
	node, err := startServer(ctx, c.bin, "rescue-"+scenario+"-node-0", c.work, settings)
	if err != nil {
		return nil, err
	}
	defer func() { node.stop() }()
	script := []map[string]any{{"say": "before"}, {"tool": "sleep", "input": map[string]any{"ms": toolMS}}, {"say": "after"}, {"answer": "done"}}
	for i := 1; i <= trials; i++ {
		a := node.api()
		runID := "run_rescue_" + randHex(6)
		if err := a.createRun(ctx, runID); err != nil {
			return nil, err
		}
		if err := a.Do(ctx, "POST", "/internal/v1/runs/"+runID+"/frames", map[string]any{"frame_id": "frame_" + runID, "type": "user_message",
			"payload": map[string]any{"text": "rescue", "script": script}}, nil); err != nil {
			return nil, err
		}
		// Wait for the tool call to be in flight.
		deadline := time.Now().Add(30 * time.Second)
		for {
			evs, err := a.events(ctx, runID, 0)
			if err != nil {
				return nil, err
			}
			if hasType(evs, "tool.call") {
				if hasType(evs, "tool.result") {
					return nil, fmt.Errorf("trial %d: the tool finished before the kill; raise --tool-ms", i)
				}
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("trial %d: no tool.call within 30 s", i)
			}
			time.Sleep(5 * time.Millisecond)
		}
		var standbyNode *server
		if standby {
			// The replacement is already serving when the holder dies, with
			// its janitor ticking at whatever phase its start gave it.
			if standbyNode, err = startServer(ctx, c.bin, fmt.Sprintf("rescue-%s-node-%d", scenario, i), c.work, settings); err != nil {
				return nil, err
			}
		}
		if killDelay > 0 {
			time.Sleep(time.Duration(rand.Int64N(int64(killDelay))))
			evs, err := a.events(ctx, runID, 0)
			if err != nil {
				return nil, err
			}
			if hasType(evs, "tool.result") {
				return nil, fmt.Errorf("trial %d: the tool finished before the kill; raise --tool-ms above --kill-delay-max", i)
			}
		}
		killAt := node.kill()
		readyAt := killAt
		if standby {
			node = standbyNode
		} else {
			if node, err = startServer(ctx, c.bin, fmt.Sprintf("rescue-%s-node-%d", scenario, i), c.work, settings); err != nil {
				return nil, err
			}
			readyAt = time.Now()
		}
		a = node.api()
		var evs []eventDoc
		run, err := waitRunTerminal(ctx, a, runID, 2*time.Minute)
		if err != nil {
			return nil, fmt.Errorf("trial %d: %w", i, err)
		}
		if evs, err = a.events(ctx, runID, 0); err != nil {
			return nil, err
		}
		t := oaRescueTrial{Trial: i, KillToReadyMS: benchutil.MS(readyAt.Sub(killAt)), FinalStatus: run.Status}
		for _, ev := range evs {
			if ev.EventType == "tool.call" {
				t.LeaseAgeAtKillMS = benchutil.MS(killAt.Sub(ev.CreatedAt))
				break
			}
		}
		lost := false
		for _, ev := range evs {
			if ev.CreatedAt.Before(killAt) {
				continue
			}
			if t.KillToNextEventMS == 0 {
				t.KillToNextEventMS = benchutil.MS(ev.CreatedAt.Sub(killAt))
			}
			switch {
			case ev.EventType == "run.executor_lost":
				lost = true
			case lost && t.KillToNewExecutorEventMS == 0:
				t.KillToNewExecutorEventMS = benchutil.MS(ev.CreatedAt.Sub(killAt))
			}
			if ev.EventType == "tool.result" && t.KillToWorkResumedMS == 0 {
				var p struct {
					DurationMS int64 `json:"duration_ms"`
				}
				_ = json.Unmarshal(ev.Payload, &p)
				t.KillToWorkResumedMS = benchutil.MS(ev.CreatedAt.Add(-time.Duration(p.DurationMS) * time.Millisecond).Sub(killAt))
			}
			if ev.EventType == "run.finished" {
				t.KillToSucceededMS = benchutil.MS(ev.CreatedAt.Sub(killAt))
			}
		}
		if !lost {
			return nil, fmt.Errorf("trial %d: no run.executor_lost after the kill", i)
		}
		logf("oaruntime rescue (%s) trial %d: next event %.0f ms, work resumed %.0f ms, new executor event %.0f ms, %s", scenario, i, t.KillToNextEventMS, t.KillToWorkResumedMS, t.KillToNewExecutorEventMS, run.Status)
		out = append(out, t)
	}
	return out, nil
}

func hasType(evs []eventDoc, typ string) bool {
	for _, e := range evs {
		if e.EventType == typ {
			return true
		}
	}
	return false
}

func waitRunTerminal(ctx context.Context, a *api, runID string, timeout time.Duration) (runDoc, error) {
	deadline := time.Now().Add(timeout)
	for {
		r, err := a.getRun(ctx, runID)
		if err == nil && (r.Status == "succeeded" || r.Status == "failed" || r.Status == "canceled") {
			return r, nil
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("run %s not terminal after %s (status %q, err %v)", runID, timeout, r.Status, err)
		}
		if ctx.Err() != nil {
			return r, ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// --- River ---

// slowArgs is the River job of the rescue measurement: attempt 1 blocks
// (it is killed), later attempts return at once.
type slowArgs struct{}

func (slowArgs) Kind() string { return "bench_slow" }

type slowWorker struct {
	river.WorkerDefaults[slowArgs]
	out *lineWriter
}

func (w slowWorker) Work(ctx context.Context, job *river.Job[slowArgs]) error {
	w.out.printf("working %d %d %d", job.ID, job.Attempt, time.Now().UnixNano())
	if job.Attempt > 1 {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(10 * time.Minute):
		return nil
	}
}

type lineWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineWriter) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, format+"\n", args...)
}

// riverWorkerCmd is the child process: a River client that works slow jobs.
func riverWorkerCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("river-worker", flag.ContinueOnError)
	pg := fs.String("pg", "", "PostgreSQL URL")
	schema := fs.String("schema", "", "River schema")
	rescueAfter := fs.Duration("rescue-after", 0, "RescueStuckJobsAfter (0: library default)")
	jobTimeout := fs.Duration("job-timeout", 0, "JobTimeout (0: library default)")
	insert := fs.Bool("insert", false, "insert one slow job after start")
	if err := fs.Parse(args); err != nil {
		return err
	}
	out := &lineWriter{w: os.Stdout}
	pool, err := riverPool(ctx, *pg, *schema, 8)
	if err != nil {
		return err
	}
	defer pool.Close()
	ws := river.NewWorkers()
	river.AddWorker(ws, slowWorker{out: out})
	rc, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Schema: *schema, Queues: map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 10}}, Workers: ws,
		RescueStuckJobsAfter: *rescueAfter, JobTimeout: *jobTimeout,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		return err
	}
	if err := rc.Start(ctx); err != nil {
		return err
	}
	out.printf("started %s %d", rc.ID(), time.Now().UnixNano())
	if *insert {
		r, err := rc.Insert(ctx, slowArgs{}, &river.InsertOpts{MaxAttempts: 5})
		if err != nil {
			return err
		}
		out.printf("inserted %d", r.Job.ID)
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return rc.Stop(sctx)
}

type riverChild struct {
	cmd    *exec.Cmd
	lines  chan string
	exited chan struct{}
	id     string
}

func startRiverChild(ctx context.Context, c *common, name, schema string, extra ...string) (*riverChild, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{"river-worker", "--pg", c.pg, "--schema", schema}, extra...)...)
	logFile, err := os.Create(filepath.Join(c.work, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := &riverChild{cmd: cmd, lines: make(chan string, 100), exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			ch.lines <- sc.Text()
		}
		_ = cmd.Wait()
		logFile.Close()
		close(ch.exited)
	}()
	line, err := ch.expect(ctx, "started", 60*time.Second)
	if err != nil {
		ch.kill()
		return nil, err
	}
	ch.id = strings.Fields(line)[1]
	return ch, nil
}

// expect returns the next line starting with prefix.
func (r *riverChild) expect(ctx context.Context, prefix string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l := <-r.lines:
			if strings.HasPrefix(l, prefix) {
				return l, nil
			}
		case <-r.exited:
			return "", fmt.Errorf("river worker exited while waiting for %q", prefix)
		case <-t.C:
			return "", fmt.Errorf("no %q from the river worker within %s", prefix, timeout)
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

func (r *riverChild) kill() time.Time {
	at := time.Now()
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.exited
	return at
}

func (r *riverChild) stop() {
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(20 * time.Second):
		r.kill()
	}
}

func riverRescue(ctx context.Context, c *common, trials, standbyTrials int, short, observe time.Duration, res *rescueResult) error {
	schema := "oabench_rrescue_" + randHex(4)
	defer dropSchema(ctx, c.pg, schema)
	pool, err := riverPool(ctx, c.pg, schema, 4)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := riverMigrate(ctx, pool, schema); err != nil {
		return err
	}
	q := func(sql string) string { return strings.ReplaceAll(sql, "$S", pgx.Identifier{schema}.Sanitize()) }
	shortArgs := []string{"--rescue-after", short.String(), "--job-timeout", short.String()}
	for i := 1; i <= trials; i++ {
		w1, err := startRiverChild(ctx, c, fmt.Sprintf("river-rescue-%d-a", i), schema, append(shortArgs, "--insert")...)
		if err != nil {
			return err
		}
		l, err := w1.expect(ctx, "inserted", 30*time.Second)
		if err != nil {
			w1.kill()
			return err
		}
		jobID, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
		if _, err := w1.expect(ctx, fmt.Sprintf("working %d 1 ", jobID), 30*time.Second); err != nil {
			w1.kill()
			return err
		}
		killAt := w1.kill()
		w2, err := startRiverChild(ctx, c, fmt.Sprintf("river-rescue-%d-b", i), schema, shortArgs...)
		if err != nil {
			return err
		}
		t := riverRescueTrial{Trial: i, KillToReadyMS: benchutil.MS(time.Since(killAt))}
		l, err = w2.expect(ctx, fmt.Sprintf("working %d 2 ", jobID), 5*time.Minute)
		if err != nil {
			w2.kill()
			return fmt.Errorf("trial %d: %w", i, err)
		}
		ns, _ := strconv.ParseInt(strings.Fields(l)[3], 10, 64)
		t.KillToWorkResumedMS = benchutil.MS(time.Unix(0, ns).Sub(killAt))
		time.Sleep(500 * time.Millisecond) // let the completion commit
		var errsJSON []byte
		var state string
		if err := pool.QueryRow(ctx, q(`SELECT state, to_json(errors) FROM $S.river_job WHERE id = $1`), jobID).Scan(&state, &errsJSON); err != nil {
			w2.kill()
			return fmt.Errorf("read job: %w", err)
		}
		t.FinalState = state
		var attemptErrs []struct {
			At    time.Time `json:"at"`
			Error string    `json:"error"`
		}
		_ = json.Unmarshal(errsJSON, &attemptErrs)
		for _, e := range attemptErrs {
			if strings.Contains(e.Error, "rescued") {
				t.KillToRescuedMS = benchutil.MS(e.At.Sub(killAt))
			}
		}
		var leader string
		var electedAt time.Time
		if err := pool.QueryRow(ctx, q(`SELECT leader_id, elected_at FROM $S.river_leader`)).Scan(&leader, &electedAt); err == nil && leader == w2.id {
			t.KillToLeaderMS = benchutil.MS(electedAt.Sub(killAt))
		}
		w2.stop()
		logf("river rescue trial %d (RescueStuckJobsAfter %s): leader %.0f ms, rescued %.0f ms, work resumed %.0f ms, state %s", i, short, t.KillToLeaderMS, t.KillToRescuedMS, t.KillToWorkResumedMS, state)
		if t.KillToRescuedMS == 0 {
			return fmt.Errorf("trial %d: the job was not marked rescued (errors %s)", i, errsJSON)
		}
		res.RiverShort = append(res.RiverShort, t)
	}
	for i := 1; i <= standbyTrials; i++ {
		t, err := riverStandbyTrial(ctx, c, schema, shortArgs, i, q)
		if err != nil {
			return fmt.Errorf("standby trial %d: %w", i, err)
		}
		logf("river rescue (standby) trial %d: survivor was leader before the kill: %v, rescued %.0f ms, work resumed %.0f ms, state %s", i, t.SurvivorWasLeader, t.KillToRescuedMS, t.KillToWorkResumedMS, t.FinalState)
		res.RiverStandby = append(res.RiverStandby, t)
	}
	if observe <= 0 {
		return nil
	}
	// The defaults: nothing to configure; the job must stay stuck.
	w1, err := startRiverChild(ctx, c, "river-default-a", schema, "--insert")
	if err != nil {
		return err
	}
	l, err := w1.expect(ctx, "inserted", 30*time.Second)
	if err != nil {
		w1.kill()
		return err
	}
	jobID, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
	if _, err := w1.expect(ctx, fmt.Sprintf("working %d 1 ", jobID), 30*time.Second); err != nil {
		w1.kill()
		return err
	}
	killAt := w1.kill()
	w2, err := startRiverChild(ctx, c, "river-default-b", schema)
	if err != nil {
		return err
	}
	defer w2.stop()
	logf("river defaults: job %d killed; watching %s", jobID, observe)
	var leaderAt time.Time
	var state string
	var attempt int
	deadline := killAt.Add(observe)
	for time.Now().Before(deadline) {
		var leader string
		var electedAt time.Time
		if err := pool.QueryRow(ctx, q(`SELECT leader_id, elected_at FROM $S.river_leader`)).Scan(&leader, &electedAt); err == nil && leader == w2.id && leaderAt.IsZero() {
			leaderAt = electedAt
		}
		if err := pool.QueryRow(ctx, q(`SELECT state, attempt FROM $S.river_job WHERE id = $1`), jobID).Scan(&state, &attempt); err != nil {
			return err
		}
		if state != "running" {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	obs := map[string]any{"observed_s": time.Since(killAt).Seconds(), "job_state_at_end": state, "attempt": attempt,
		"rescued_within_observation": state != "running"}
	if !leaderAt.IsZero() {
		obs["new_client_leader_after_ms"] = benchutil.MS(leaderAt.Sub(killAt))
		obs["leader_time_in_window_s"] = deadline.Sub(leaderAt).Seconds()
	}
	res.RiverDefaultObserved = obs
	logf("river defaults: after %.0f s the job is %s (attempt %d); new client leader after %v ms", time.Since(killAt).Seconds(), state, attempt, obs["new_client_leader_after_ms"])
	if state != "running" {
		return errors.New("river defaults: the job left running within the observation window, which contradicts the default horizon; check the setup")
	}
	return nil
}

// riverStandbyTrial: two River client processes serve the queue; the one
// that picked the job up is killed and the other one rescues it.
func riverStandbyTrial(ctx context.Context, c *common, schema string, shortArgs []string, i int, q func(string) string) (riverRescueTrial, error) {
	t := riverRescueTrial{Trial: i}
	a, err := startRiverChild(ctx, c, fmt.Sprintf("river-standby-%d-a", i), schema, shortArgs...)
	if err != nil {
		return t, err
	}
	defer a.stop()
	b, err := startRiverChild(ctx, c, fmt.Sprintf("river-standby-%d-b", i), schema, append(shortArgs, "--insert")...)
	if err != nil {
		return t, err
	}
	defer b.stop()
	l, err := b.expect(ctx, "inserted", 30*time.Second)
	if err != nil {
		return t, err
	}
	jobID, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
	want := fmt.Sprintf("working %d 1 ", jobID)
	// Whoever works attempt 1 is the victim.
	var victim, survivor *riverChild
	deadline := time.After(60 * time.Second)
	for victim == nil {
		select {
		case l := <-a.lines:
			if strings.HasPrefix(l, want) {
				victim, survivor = a, b
			}
		case l := <-b.lines:
			if strings.HasPrefix(l, want) {
				victim, survivor = b, a
			}
		case <-deadline:
			return t, errors.New("nobody worked the job")
		case <-ctx.Done():
			return t, ctx.Err()
		}
	}
	var leader string
	_ = c2(ctx, c.pg, q(`SELECT leader_id FROM $S.river_leader`), &leader)
	t.SurvivorWasLeader = leader == survivor.id
	killAt := victim.kill()
	l, err = survivor.expect(ctx, fmt.Sprintf("working %d 2 ", jobID), 5*time.Minute)
	if err != nil {
		return t, err
	}
	ns, _ := strconv.ParseInt(strings.Fields(l)[3], 10, 64)
	t.KillToWorkResumedMS = benchutil.MS(time.Unix(0, ns).Sub(killAt))
	time.Sleep(500 * time.Millisecond)
	var errsJSON []byte
	if err := c2(ctx, c.pg, q(`SELECT state, to_json(errors) FROM $S.river_job WHERE id = `+strconv.FormatInt(jobID, 10)), &t.FinalState, &errsJSON); err != nil {
		return t, err
	}
	var attemptErrs []struct {
		At    time.Time `json:"at"`
		Error string    `json:"error"`
	}
	_ = json.Unmarshal(errsJSON, &attemptErrs)
	for _, e := range attemptErrs {
		if strings.Contains(e.Error, "rescued") {
			t.KillToRescuedMS = benchutil.MS(e.At.Sub(killAt))
		}
	}
	var electedAt time.Time
	if c2(ctx, c.pg, q(`SELECT leader_id, elected_at FROM $S.river_leader`), &leader, &electedAt) == nil && leader == survivor.id && electedAt.After(killAt) {
		t.KillToLeaderMS = benchutil.MS(electedAt.Sub(killAt))
	}
	return t, nil
}

// c2 runs one single-row query on a fresh connection.
func c2(ctx context.Context, url, sql string, dest ...any) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, sql).Scan(dest...)
}
