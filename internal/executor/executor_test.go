package executor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/executor"
	"github.com/oaruntime/oaruntime/internal/notify"
	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/sqlite"
)

func openStore(t *testing.T) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "rt.db"), sqlite.WithMigrate())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

type node struct {
	ex  *executor.Executor
	jan *executor.Janitor
	hub *notify.Hub
}

// startNode starts an executor (and janitor) on st; cancel ctx to "kill" it.
func startNode(ctx context.Context, t *testing.T, st store.Store, owner string, ttl time.Duration) *node {
	t.Helper()
	hub := notify.NewHub()
	go func() { _ = hub.Run(ctx, st) }()
	ex := executor.New(executor.Config{Owner: owner, LeaseTTL: ttl, RenewEvery: ttl / 4, PollInterval: 50 * time.Millisecond}, executor.Deps{Store: st, Hub: hub})
	ex.Start(ctx)
	jan := executor.NewJanitor(executor.JanitorConfig{Interval: 100 * time.Millisecond}, st, nil, nil, ex.Wake)
	jan.Start(ctx)
	return &node{ex: ex, jan: jan, hub: hub}
}

func createRun(t *testing.T, st store.Store, id string, meta string) {
	t.Helper()
	in := store.CreateRunInput{RunID: id, ThreadID: "thread_" + id, OwnerSub: "user:1"}
	if meta != "" {
		in.Metadata = json.RawMessage(meta)
	}
	if _, _, err := st.CreateRun(context.Background(), in); err != nil {
		t.Fatal(err)
	}
}

func sendFrame(t *testing.T, st store.Store, runID, frameID, typ string, payload any) {
	t.Helper()
	raw, _ := json.Marshal(payload)
	canon, err := runs.CanonicalizeRaw(raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.InsertFrame(context.Background(), store.InsertFrameInput{RunID: runID, FrameID: frameID, Type: typ, Payload: canon}); err != nil {
		t.Fatal(err)
	}
}

func waitStatus(t *testing.T, st store.Store, runID string, want string, within time.Duration) store.Run {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		r, err := st.GetRun(context.Background(), runID)
		if err == nil && r.Status == want {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s: status %q, want %q within %s", runID, r.Status, want, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func allEvents(t *testing.T, st store.Store, runID string) []store.Event {
	t.Helper()
	evs, err := st.ListEvents(context.Background(), runID, 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// checkLog asserts a gap-free, hash-chained log with no duplicated step.
func checkLog(t *testing.T, runID string, evs []store.Event) map[string]int {
	t.Helper()
	counts := map[string]int{}
	keys := map[string]bool{}
	prev := ""
	for i, ev := range evs {
		if ev.Seq != int64(i+1) {
			t.Fatalf("seq gap: event %d has seq %d", i, ev.Seq)
		}
		if ev.PrevHash != prev {
			t.Fatalf("seq %d: prev_hash %q want %q", ev.Seq, ev.PrevHash, prev)
		}
		if h := runs.EventHash(runID, ev.Seq, ev.EventType, ev.Payload, ev.PrevHash); h != ev.EventHash {
			t.Fatalf("seq %d: event_hash mismatch", ev.Seq)
		}
		prev = ev.EventHash
		counts[ev.EventType]++
		if ev.IdempotencyKey != "" {
			if keys[ev.IdempotencyKey] {
				t.Fatalf("duplicate step %q", ev.IdempotencyKey)
			}
			keys[ev.IdempotencyKey] = true
		}
	}
	return counts
}

func TestUserMessageIsAnswered(t *testing.T) {
	st := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := startNode(ctx, t, st, "node-a", 2*time.Second)
	createRun(t, st, "run_hello", "")
	sendFrame(t, st, "run_hello", "f1", "user_message", map[string]any{"text": "hello"})
	r := waitStatus(t, st, "run_hello", store.StatusSucceeded, 10*time.Second)
	if r.TerminalReasonClass != "completed" {
		t.Fatalf("reason class %q", r.TerminalReasonClass)
	}
	evs := allEvents(t, st, "run_hello")
	counts := checkLog(t, "run_hello", evs)
	if counts["run.started"] != 1 || counts["run.finished"] != 1 || counts["run.delta"] != 1 {
		t.Fatalf("events %v", counts)
	}
	var d struct{ Delta string }
	_ = json.Unmarshal(evs[1].Payload, &d)
	if d.Delta != "hello" {
		t.Fatalf("delta %q", d.Delta)
	}
	_ = n.ex.Stop(context.Background())
	// The lease was released on finish: another owner acquires, not steals.
	g, err := st.AcquireLease(context.Background(), "run_hello", "node-b", time.Second)
	if err != nil || g.Result != store.LeaseAcquired {
		t.Fatalf("after finish: %+v %v (lease not released?)", g, err)
	}
}

func TestScriptWithToolsAndKeepOpen(t *testing.T) {
	st := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startNode(ctx, t, st, "node-a", 2*time.Second)
	createRun(t, st, "run_open", `{"keep_open":true}`)
	script := []map[string]any{{"say": "looking"}, {"tool": "echo", "input": map[string]any{"x": 1}}, {"say": "got it"}, {"answer": "done"}}
	sendFrame(t, st, "run_open", "f1", "user_message", map[string]any{"text": "go", "script": script})
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, _ := st.GetRun(context.Background(), "run_open")
		if r.LastProcessedFrameID > 0 {
			if r.Status != store.StatusRunning {
				t.Fatalf("keep_open run is %s", r.Status)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("frame not processed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	counts := checkLog(t, "run_open", allEvents(t, st, "run_open"))
	if counts["tool.call"] != 1 || counts["tool.result"] != 1 || counts["run.delta"] != 3 || counts["run.finished"] != 0 {
		t.Fatalf("events %v", counts)
	}
	sendFrame(t, st, "run_open", "f2", "finish", map[string]any{})
	waitStatus(t, st, "run_open", store.StatusSucceeded, 10*time.Second)
}

// TestKilledExecutorIsResumed kills an executor mid-turn (its context is
// canceled without releasing the lease, as a crash would) and shows another
// node's janitor and executor finish the run without duplicating a step.
func TestKilledExecutorIsResumed(t *testing.T) {
	st := openStore(t)
	const ttl = time.Second
	const janitorEvery = 100 * time.Millisecond
	ctxA, killA := context.WithCancel(context.Background())
	defer killA()
	createRun(t, st, "run_crash", "")
	script := []map[string]any{
		{"say": "step one"},
		{"tool": "echo", "input": map[string]any{"n": 1}},
		{"tool": "sleep", "input": map[string]any{"ms": 1500}},
		{"say": "after sleep"},
		{"answer": "finished"},
	}
	startNode(ctxA, t, st, "node-a", ttl)
	sendFrame(t, st, "run_crash", "f1", "user_message", map[string]any{"text": "work", "script": script})
	// Wait until A is inside the sleep tool.
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs := allEvents(t, st, "run_crash")
		if len(evs) > 0 && evs[len(evs)-1].EventType == "tool.call" && len(evs) >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("executor A never reached the sleep tool: %d events", len(evs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	killA()
	killed := time.Now()
	ctxB, stopB := context.WithCancel(context.Background())
	defer stopB()
	startNode(ctxB, t, st, "node-b", ttl)
	var lostAt time.Time
	for {
		if _, err := st.FindEventByType(context.Background(), "run_crash", "run.executor_lost"); err == nil && lostAt.IsZero() {
			lostAt = time.Now()
		}
		r, _ := st.GetRun(context.Background(), "run_crash")
		if r.Status == store.StatusSucceeded {
			break
		}
		if time.Since(killed) > 20*time.Second {
			t.Fatalf("run not resumed: status %s", r.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if lostAt.IsZero() {
		t.Fatal("no run.executor_lost event")
	}
	t.Logf("reclaimed %s after the kill (ttl %s + janitor %s)", lostAt.Sub(killed), ttl, janitorEvery)
	if lostAt.Sub(killed) > ttl+janitorEvery+5*time.Second {
		t.Fatalf("reclaim took %s, more than ttl+janitor interval (+5s slack for a loaded machine)", lostAt.Sub(killed))
	}
	counts := checkLog(t, "run_crash", allEvents(t, st, "run_crash"))
	if counts["tool.call"] != 2 || counts["run.started"] != 1 || counts["run.finished"] != 1 {
		t.Fatalf("events %v", counts)
	}
	// The interrupted sleep was re-run after the takeover: one result per call.
	if counts["tool.result"] != 2 {
		t.Fatalf("tool.result %d, want exactly one per call", counts["tool.result"])
	}
}

func TestCancelDuringToolFinishesOnce(t *testing.T) {
	st := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	startNode(ctx, t, st, "node-a", 2*time.Second)
	createRun(t, st, "run_cancel", "")
	sendFrame(t, st, "run_cancel", "f1", "user_message", map[string]any{"text": "x", "script": []map[string]any{{"tool": "sleep", "input": map[string]any{"ms": 30000}}, {"answer": "never"}}})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := st.FindEventByType(context.Background(), "run_cancel", "tool.call"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("tool never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var wg sync.WaitGroup
	created := make(chan bool, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, replay, err := st.AppendEvent(context.Background(), store.AppendInput{RunID: "run_cancel", EventType: "run.cancel_requested", Payload: json.RawMessage(`{"reason":"stop"}`), IdempotencyKey: "run.cancel_requested"})
			if err != nil && !errors.Is(err, store.ErrIllegalTransition) {
				t.Error(err)
			}
			created <- err == nil && !replay
		}()
	}
	wg.Wait()
	close(created)
	n := 0
	for c := range created {
		if c {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d cancel requests created, want 1", n)
	}
	start := time.Now()
	r := waitStatus(t, st, "run_cancel", store.StatusCanceled, 10*time.Second)
	if time.Since(start) > 5*time.Second {
		t.Fatalf("cancel took %s: tool not interrupted", time.Since(start))
	}
	if r.TerminalReason != "stop" {
		t.Fatalf("reason %q", r.TerminalReason)
	}
	counts := checkLog(t, "run_cancel", allEvents(t, st, "run_cancel"))
	if counts["run.finished"] != 1 || counts["tool.result"] != 1 {
		t.Fatalf("events %v", counts)
	}
	var res struct{ Status string }
	ev, _ := st.FindEventByType(context.Background(), "run_cancel", "tool.result")
	_ = json.Unmarshal(ev.Payload, &res)
	if res.Status != "canceled" {
		t.Fatalf("tool result %q", res.Status)
	}
}

func TestRecoveryExhausted(t *testing.T) {
	st := openStore(t)
	createRun(t, st, "run_doomed", "")
	sendFrame(t, st, "run_doomed", "f1", "user_message", map[string]any{"text": "x"})
	jan := executor.NewJanitor(executor.JanitorConfig{MaxAttempts: 3}, st, nil, nil, nil)
	var last []store.Reclaim
	for i := 1; i <= 4; i++ {
		// An executor takes the lease and dies without progress.
		if _, err := st.AcquireLease(context.Background(), "run_doomed", fmt.Sprintf("ghost-%d", i), 10*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		last = jan.Cycle(context.Background())
		if len(last) != 1 {
			t.Fatalf("cycle %d: %d reclaims", i, len(last))
		}
	}
	if last[0].Outcome != store.ReclaimExhausted {
		t.Fatalf("4th reclaim outcome %s", last[0].Outcome)
	}
	r := waitStatus(t, st, "run_doomed", store.StatusFailed, time.Second)
	if r.TerminalReasonClass != "executor_recovery_exhausted" {
		t.Fatalf("reason %q", r.TerminalReasonClass)
	}
}

// TestResponseCutShortIsNotAnAnswer: a crash after a model call's text was
// appended but before its tool.call leaves a partial response in the log; the
// resumed executor must call the model again and run the tool, not take the
// text for the final answer (found by the executor_restart_recovery drill).
func TestResponseCutShortIsNotAnAnswer(t *testing.T) {
	st := openStore(t)
	createRun(t, st, "run_cut", "")
	script := []map[string]any{{"say": "checking"}, {"tool": "echo", "input": map[string]any{"n": 1}}, {"answer": "done"}}
	sendFrame(t, st, "run_cut", "f1", "user_message", map[string]any{"text": "go", "script": script})
	// What the crashed executor left behind: run.started and the text of
	// model call 1, whose response also held one tool call.
	ctx := context.Background()
	for _, in := range []store.AppendInput{
		{RunID: "run_cut", EventType: "run.started", Payload: json.RawMessage(`{}`), IdempotencyKey: "run.started"},
		{RunID: "run_cut", EventType: "run.delta", Payload: json.RawMessage(`{"delta":"checking","frame_id":"f1","model_response":{"deltas":1,"tool_calls":1}}`), IdempotencyKey: executor.StepKey("f1", 1, "d0")},
	} {
		if _, _, err := st.AppendEvent(ctx, in); err != nil {
			t.Fatal(err)
		}
	}
	nctx, cancel := context.WithCancel(ctx)
	defer cancel()
	startNode(nctx, t, st, "node-b", 2*time.Second)
	waitStatus(t, st, "run_cut", store.StatusSucceeded, 10*time.Second)
	counts := checkLog(t, "run_cut", allEvents(t, st, "run_cut"))
	if counts["tool.call"] != 1 || counts["tool.result"] != 1 {
		t.Fatalf("the tool of the cut-short response did not run exactly once: %v", counts)
	}
	if counts["run.delta"] != 2 { // "checking" once, then the answer
		t.Fatalf("deltas %v", counts)
	}
}

// claimCounter counts claim queries.
type claimCounter struct {
	store.Store
	mu sync.Mutex
	n  int
}

func (c *claimCounter) ClaimRunnable(ctx context.Context, owner string, ttl time.Duration, limit int) ([]store.LeaseGrant, error) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return c.Store.ClaimRunnable(ctx, owner, ttl, limit)
}

func (c *claimCounter) claims() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// Worker notices (heartbeats) do not wake the claim loop; a frame notice
// does.
func TestWorkerNoticesDoNotClaim(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &claimCounter{Store: openStore(t)}
	hub := notify.NewHub()
	ex := executor.New(executor.Config{Owner: "n1", LeaseTTL: 10 * time.Second, PollInterval: time.Hour}, executor.Deps{Store: st, Hub: hub})
	ex.Start(ctx)
	waitFor(t, "the first claim", func() bool { return st.claims() >= 1 })
	time.Sleep(50 * time.Millisecond) // let the loop settle into waiting
	before := st.claims()
	for i := range 50 {
		hub.Publish(store.Notice{Kind: store.NoticeWorker, RunID: "worker-1", Seq: int64(i + 1)})
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if got := st.claims(); got != before {
		t.Fatalf("%d claim queries after worker notices, want none", got-before)
	}
	hub.Publish(store.Notice{Kind: store.NoticeFrame, RunID: "run-1", Seq: 1})
	waitFor(t, "a claim after a frame notice", func() bool { return st.claims() > before })
}

// waitFor polls cond for up to 10 s (a bound against hangs, not a timing
// assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// A run created leased to this executor (the API's path for a run created
// with input) starts from its grant: no claim query, its input notice does
// not wake the claim loop, and it finishes like a claimed run. Slots count
// against the concurrency; a slot given back is free again.
func TestCreatedLeasedRunsStartWithoutClaim(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &claimCounter{Store: openStore(t)}
	hub := notify.NewHub()
	go func() { _ = hub.Run(ctx, st) }()
	ex := executor.New(executor.Config{Owner: "n1", LeaseTTL: 10 * time.Second, PollInterval: time.Hour, Concurrency: 2},
		executor.Deps{Store: st, Hub: hub})
	if _, ok := ex.Reserve("run-early"); ok {
		t.Fatal("Reserve before Start gave a slot")
	}
	ex.Start(ctx)
	waitFor(t, "the first claim", func() bool { return st.claims() >= 1 })
	time.Sleep(50 * time.Millisecond) // let the loop settle into waiting
	before := st.claims()

	slots := map[string]*executor.Slot{}
	for _, id := range []string{"run-a", "run-b"} {
		s, ok := ex.Reserve(id)
		if !ok {
			t.Fatalf("Reserve(%s): no slot", id)
		}
		slots[id] = s
	}
	if _, ok := ex.Reserve("run-c"); ok {
		t.Fatal("Reserve beyond the concurrency gave a slot")
	}
	for id, s := range slots {
		g, created, err := st.CreateLeasedRun(ctx, store.CreateRunInput{RunID: id, ThreadID: "thread_" + id, OwnerSub: "user:1",
			Input: &store.InsertFrameInput{FrameID: "f1", Type: "user_message", Payload: json.RawMessage(`{"text":"hi"}`)}},
			s.Owner(), s.TTL())
		if err != nil || !created || g.Lease.Owner != "n1" {
			t.Fatalf("CreateLeasedRun(%s) = %+v, %v, %v", id, g, created, err)
		}
		s.Start(g)
	}
	for id := range slots {
		waitStatus(t, st, id, store.StatusSucceeded, 10*time.Second)
		checkLog(t, id, allEvents(t, st, id))
	}
	time.Sleep(50 * time.Millisecond) // a claim woken by the input notices would have run by now
	if got := st.claims(); got != before {
		t.Fatalf("%d claim queries for runs created leased, want none", got-before)
	}
	waitFor(t, "the slots to free", func() bool { return ex.Running() == 0 })

	// A slot given back unused frees its place; a grant without a lease
	// (not created leased) gives the slot back and the run is claimed.
	s, ok := ex.Reserve("run-c")
	if !ok {
		t.Fatal("Reserve after the runs finished: no slot")
	}
	s.Cancel()
	if n := ex.Running(); n != 0 {
		t.Fatalf("Running() = %d after Cancel, want 0", n)
	}
	s, ok = ex.Reserve("run-d")
	if !ok {
		t.Fatal("Reserve(run-d): no slot")
	}
	createRun(t, st, "run-d", "")
	sendFrame(t, st, "run-d", "f1", "user_message", map[string]any{"text": "hi"})
	r, _ := st.GetRun(ctx, "run-d")
	s.Start(store.LeaseGrant{Run: &r})
	waitStatus(t, st, "run-d", store.StatusSucceeded, 10*time.Second)
	if st.claims() == before {
		t.Fatal("a run created without its lease was not claimed")
	}
}

// A claim turned away because every slot was taken is made again as soon
// as a run ends, not at the next poll: with one slot and no polling, runs
// queued behind a busy slot all finish.
func TestFullExecutorClaimsWhenASlotFrees(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := openStore(t)
	hub := notify.NewHub()
	go func() { _ = hub.Run(ctx, st) }()
	ex := executor.New(executor.Config{Owner: "n1", LeaseTTL: 10 * time.Second, PollInterval: time.Hour, Concurrency: 1},
		executor.Deps{Store: st, Hub: hub})
	ex.Start(ctx)
	ids := []string{"run-q1", "run-q2", "run-q3"}
	for _, id := range ids {
		createRun(t, st, id, "")
		sendFrame(t, st, id, "f1", "user_message", map[string]any{"text": "hi"})
	}
	for _, id := range ids {
		waitStatus(t, st, id, store.StatusSucceeded, 10*time.Second)
	}
	// A slot reserved and given back also looks again for what it kept out.
	s, ok := ex.Reserve("run-q4")
	if !ok {
		t.Fatal("Reserve: no slot")
	}
	createRun(t, st, "run-q5", "")
	sendFrame(t, st, "run-q5", "f1", "user_message", map[string]any{"text": "hi"})
	time.Sleep(50 * time.Millisecond) // its notice finds the only slot reserved
	s.Cancel()
	waitStatus(t, st, "run-q5", store.StatusSucceeded, 10*time.Second)
}
