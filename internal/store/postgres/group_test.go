package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

// One call of oa_append_group carries runs whose appends must apply and
// runs whose appends must not (stale head, lost fence, seen key, a second
// entry for a run): the first apply, the others are left exactly as they
// were, and each member learns which it is.
func TestAppendGroupMixedOutcomes(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	p := json.RawMessage(`{}`)
	fences := map[string]*store.Fence{}
	for _, id := range []string{"ok", "stale", "fenced", "key", "finish"} {
		mustCreateRun(t, s, id)
		mustFrame(t, s, id, "f1")
		g, err := s.AcquireLease(ctx, id, "node-a", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		fences[id] = g.Lease.Fence()
		if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: id, EventType: "run.started", Payload: p,
			IdempotencyKey: "start", Fence: fences[id]}); err != nil {
			t.Fatal(err)
		}
	}
	// "stale": another writer moved the head behind the driver's back.
	if _, err := s.pool.Exec(ctx, `UPDATE runs SET head_hash = 'moved' WHERE run_id = 'stale'`); err != nil {
		t.Fatal(err)
	}
	// "fenced": the lease now belongs to someone else.
	if _, err := s.pool.Exec(ctx, `UPDATE run_leases SET owner = 'node-b', generation = generation + 1 WHERE run_id = 'fenced'`); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, s, "stale", "fenced", "key")

	entry := func(id string, in ...store.AppendInput) groupEntry {
		t.Helper()
		calls, ok := s.prepareFastMany(in)
		if !ok {
			t.Fatalf("%s: fast path does not apply", id)
		}
		return groupEntry{runID: id, calls: calls}
	}
	delta := func(id, key string) store.AppendInput {
		return store.AppendInput{RunID: id, EventType: "run.delta", Payload: json.RawMessage(`{"text":"x"}`), IdempotencyKey: key, Fence: fences[id]}
	}
	batch := []groupEntry{
		entry("ok", delta("ok", "d1")),
		entry("stale", delta("stale", "")),
		entry("fenced", delta("fenced", "")),
		entry("key", delta("key", "start")), // "start" is taken by run.started
		entry("finish", delta("finish", "answer"), store.AppendInput{RunID: "finish", EventType: "run.finished",
			Payload: json.RawMessage(`{"status":"succeeded"}`), Fence: fences["finish"]}),
		entry("ok", delta("ok", "d2")), // a second entry for "ok" in the same call
	}
	outcomes := s.applyAppends(ctx, batch)
	want := []bool{true, false, false, false, true, false}
	for i, e := range batch {
		o := outcomes[i]
		if o.err != nil || o.applied != want[i] {
			t.Fatalf("entry %d (%s): applied=%t err=%v, want applied=%t", i, e.runID, o.applied, o.err, want[i])
		}
		if o.applied && (len(o.created) != len(e.calls) || o.created[0].IsZero()) {
			t.Fatalf("entry %d (%s): created %v", i, e.runID, o.created)
		}
	}
	if after := snapshot(t, s, "stale", "fenced", "key"); after != before {
		t.Fatalf("runs that were not applied changed:\n before %s\n after  %s", before, after)
	}
	r, err := s.GetRun(ctx, "finish")
	if err != nil || r.Status != store.StatusSucceeded || r.LatestSeq != 3 || r.TerminalAt == nil {
		t.Fatalf("finish: %+v %v", r, err)
	}
	var state string
	var progress int64
	if err := s.pool.QueryRow(ctx, `SELECT state, last_progress_seq FROM run_leases WHERE run_id = 'finish'`).Scan(&state, &progress); err != nil || state != "released" || progress != 3 {
		t.Fatalf("finish lease: %s progress %d %v, want released at 3", state, progress, err)
	}
	if err := s.pool.QueryRow(ctx, `SELECT state, last_progress_seq FROM run_leases WHERE run_id = 'ok'`).Scan(&state, &progress); err != nil || state != "held" || progress != 2 {
		t.Fatalf("ok lease: %s progress %d %v, want held at 2", state, progress, err)
	}
	for _, id := range []string{"ok", "finish"} {
		checkChain(t, s, id)
	}
}

// snapshot renders the run rows, leases and logs of ids.
func snapshot(t *testing.T, s *Store, ids ...string) string {
	t.Helper()
	var out string
	err := s.pool.QueryRow(context.Background(), `SELECT string_agg(x, ' | ' ORDER BY x) FROM (
		SELECT format('%s %s %s %s %s', r.run_id, r.status, r.latest_seq, r.head_hash, r.updated_at) AS x FROM runs r WHERE r.run_id = ANY($1)
		UNION ALL SELECT format('lease %s %s %s %s %s', l.run_id, l.state, l.owner, l.last_progress_seq, l.heartbeat_at) FROM run_leases l WHERE l.run_id = ANY($1)
		UNION ALL SELECT format('event %s %s', e.run_id, e.seq) FROM run_events e WHERE e.run_id = ANY($1)) q`, ids).Scan(&out)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func checkChain(t *testing.T, s *Store, runID string) {
	t.Helper()
	evs, err := s.ListEvents(context.Background(), runID, 0, 10000)
	if err != nil {
		t.Fatal(err)
	}
	prev := ""
	for i, e := range evs {
		if e.Seq != int64(i+1) || e.PrevHash != prev || e.EventHash != runs.EventHash(e.RunID, e.Seq, e.EventType, e.Payload, prev) {
			t.Fatalf("run %s: event %d (seq %d) breaks the chain", runID, i, e.Seq)
		}
		prev = e.EventHash
	}
	r, err := s.GetRun(context.Background(), runID)
	if err != nil || r.LatestSeq != int64(len(evs)) {
		t.Fatalf("run %s: latest_seq %d with %d events (%v)", runID, r.LatestSeq, len(evs), err)
	}
}

// Many runs appended at once by many goroutines, two nodes, fenced and
// terminal: every log gap-free and chained, every run finished and its
// lease released.
func TestAppendGroupConcurrentRuns(t *testing.T) {
	a := newTestStore(t)
	b := openReplica(t, a)
	ctx := context.Background()
	const n, deltas = 60, 5
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		id := fmt.Sprintf("run-%02d", i)
		mustCreateRun(t, a, id)
		wg.Go(func() {
			s := []*Store{a, b}[i%2]
			g, err := s.AcquireLease(ctx, id, "node", time.Minute)
			if err != nil {
				errs <- err
				return
			}
			f := g.Lease.Fence()
			in := []store.AppendInput{{RunID: id, EventType: "run.started", Payload: json.RawMessage(`{}`), Fence: f}}
			for j := range deltas {
				in = append(in, store.AppendInput{RunID: id, EventType: "run.delta", Payload: json.RawMessage(fmt.Sprintf(`{"j":%d}`, j)), Fence: f})
			}
			for _, x := range in {
				if _, _, err := s.AppendEvent(ctx, x); err != nil {
					errs <- fmt.Errorf("%s %s: %w", id, x.EventType, err)
					return
				}
			}
			if _, err := s.AppendEvents(ctx, []store.AppendInput{
				{RunID: id, EventType: "run.delta", Payload: json.RawMessage(`{"last":true}`), Fence: f},
				{RunID: id, EventType: "run.finished", Payload: json.RawMessage(`{"status":"succeeded"}`), Fence: f},
			}); err != nil {
				errs <- fmt.Errorf("%s finish: %w", id, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range n {
		id := fmt.Sprintf("run-%02d", i)
		checkChain(t, a, id)
		r, err := a.GetRun(ctx, id)
		if err != nil || r.Status != store.StatusSucceeded || r.LatestSeq != deltas+3 {
			t.Fatalf("%s: %+v %v", id, r, err)
		}
	}
	var held int
	if err := a.pool.QueryRow(ctx, `SELECT count(*) FROM run_leases WHERE state = 'held'`).Scan(&held); err != nil || held != 0 {
		t.Fatalf("%d leases still held (%v)", held, err)
	}
}

// New runs and frames of many requests in one call: the new ones insert,
// the rest (a run id or frame id seen before, in the table or earlier in
// the call; a frame of an unknown run) are left for the full path.
func TestCreateAndFrameGroupMixedOutcomes(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	mustCreateRun(t, s, "old")
	mustFrame(t, s, "old", "f0")

	item := func(id string) createItem {
		return createItem{runID: id, threadID: "th-" + id, owner: "user:1", docs: [][]byte{nil, nil, nil, nil, []byte(`{"k":"` + id + `"}`)}}
	}
	creates := []createItem{item("b"), item("a"), item("old"), item("a")}
	got := s.applyCreates(ctx, creates)
	for i, want := range []bool{true, true, false, false} {
		if got[i].err != nil || got[i].inserted != want {
			t.Fatalf("create %d (%s): inserted=%t err=%v, want %t", i, creates[i].runID, got[i].inserted, got[i].err, want)
		}
	}
	if r := got[1].grant.Run; r == nil || r.RunID != "a" || r.ThreadID != "th-a" || string(r.Metadata) != `{"k":"a"}` || r.Status != store.StatusCreated {
		t.Fatalf("created run: %+v", r)
	}
	var leases int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM run_leases WHERE run_id IN ('a', 'b')`).Scan(&leases); err != nil || leases != 2 {
		t.Fatalf("lease rows of new runs: %d %v", leases, err)
	}
	// The full path answers the ones left out: a replay of the same fields.
	if _, created, err := s.CreateRun(ctx, store.CreateRunInput{RunID: "a", ThreadID: "th-a", OwnerSub: "user:1",
		Metadata: json.RawMessage(`{"k":"a"}`)}); err != nil || created {
		t.Fatalf("create a again: created=%t %v", created, err)
	}

	frame := func(run, id string) frameItem {
		p := []byte(`{"text":"` + id + `"}`)
		return frameItem{runID: run, frameID: id, typ: "user_message", payload: p, hash: runs.PayloadHash(p)}
	}
	frames := []frameItem{frame("b", "f1"), frame("a", "f1"), frame("a", "f2"), frame("missing", "f1"),
		frame("old", "f0"), frame("a", "f1"), frame("old", "f1")}
	fs := s.applyFrames(ctx, frames)
	for i, want := range []bool{true, true, true, false, false, false, true} {
		if fs[i].err != nil || fs[i].inserted != want {
			t.Fatalf("frame %d (%s/%s): inserted=%t err=%v, want %t", i, frames[i].runID, frames[i].frameID, fs[i].inserted, fs[i].err, want)
		}
		if want && (fs[i].frame.RunID != frames[i].runID || fs[i].frame.FrameID != frames[i].frameID || string(fs[i].frame.Payload) != string(frames[i].payload)) {
			t.Fatalf("frame %d: stored %+v", i, fs[i].frame)
		}
	}
	if fs[1].frame.ID >= fs[2].frame.ID {
		t.Fatalf("frames of run a out of order: f1 id %d, f2 id %d", fs[1].frame.ID, fs[2].frame.ID)
	}
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM frames`).Scan(&n); err != nil || n != 5 {
		t.Fatalf("%d frames stored (%v), want 5", n, err)
	}
}

// Many requests at once, with repeats: each run and frame is stored once,
// every repeat is answered as a replay, and each run's frames have ids in
// the order their requests were answered.
func TestCreateAndFrameGroupConcurrent(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	const runsN, framesN = 40, 5
	var wg sync.WaitGroup
	errs := make(chan error, runsN*4)
	for i := range runsN {
		id := fmt.Sprintf("run-%02d", i)
		for range 2 { // each run created twice at once
			wg.Go(func() {
				if _, _, err := s.CreateRun(ctx, store.CreateRunInput{RunID: id, ThreadID: "th", OwnerSub: "user:1"}); err != nil {
					errs <- err
					return
				}
				var last int64
				for j := range framesN {
					f, _, err := s.InsertFrame(ctx, store.InsertFrameInput{RunID: id, FrameID: fmt.Sprintf("f%d", j),
						Type: "user_message", Payload: json.RawMessage(`{"text":"hi"}`)})
					if err != nil {
						errs <- err
						return
					}
					if f.ID <= last {
						errs <- fmt.Errorf("%s: frame f%d has id %d after %d", id, j, f.ID, last)
					}
					last = f.ID
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var nRuns, nFrames, nLeases int
	if err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM frames), (SELECT count(*) FROM run_leases)`).
		Scan(&nRuns, &nFrames, &nLeases); err != nil || nRuns != runsN || nFrames != runsN*framesN || nLeases != runsN {
		t.Fatalf("stored %d runs, %d frames, %d leases (%v)", nRuns, nFrames, nLeases, err)
	}
}

// BenchmarkAppendGroup reports the cost of one oa_append_group call that
// finishes n leased runs (run.started, the answer, run.finished: a no-op
// run's appends): 1 is a quiet server's call, 16 a busy one's.
func BenchmarkAppendGroup(b *testing.B) {
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("runs=%d", n), func(b *testing.B) { benchmarkAppendGroup(b, n) })
	}
}

func benchmarkAppendGroup(b *testing.B, runsPerCall int) {
	s := newBenchStore(b)
	ctx := context.Background()
	p := json.RawMessage(`{}`)
	n := 0
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		batch := make([]groupEntry, runsPerCall)
		for i := range batch {
			n++
			id := fmt.Sprintf("run-%08d", n)
			if _, _, err := s.CreateRun(ctx, store.CreateRunInput{RunID: id, ThreadID: "t", OwnerSub: "user:b"}); err != nil {
				b.Fatal(err)
			}
			g, err := s.AcquireLease(ctx, id, "node-a", time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			f := g.Lease.Fence()
			calls, ok := s.prepareFastMany([]store.AppendInput{
				{RunID: id, EventType: "run.started", Payload: p, IdempotencyKey: "run.started", Fence: f},
				{RunID: id, EventType: "run.delta", Payload: json.RawMessage(`{"delta":"hi","final":true}`), IdempotencyKey: "f:1:a", Fence: f},
				{RunID: id, EventType: "run.finished", Payload: json.RawMessage(`{"status":"succeeded"}`), IdempotencyKey: "run.finished", Fence: f},
			})
			if !ok {
				b.Fatal("fast path does not apply")
			}
			batch[i] = groupEntry{runID: id, calls: calls}
		}
		b.StartTimer()
		for i, o := range s.applyAppends(ctx, batch) {
			if o.err != nil || !o.applied {
				b.Fatalf("entry %d: applied=%t err=%v", i, o.applied, o.err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*runsPerCall), "µs/run")
}

// BenchmarkAppendGroupLongRun: keyed appends to a run that already has
// 5,000 keyed events (a long agent run): the seen-key check must look up
// the new keys, not read the run's keys.
func BenchmarkAppendGroupLongRun(b *testing.B) {
	s := newBenchStore(b)
	ctx := context.Background()
	const id = "run-long"
	if _, _, err := s.CreateRun(ctx, store.CreateRunInput{RunID: id, ThreadID: "t", OwnerSub: "user:b"}); err != nil {
		b.Fatal(err)
	}
	g, err := s.AcquireLease(ctx, id, "node-a", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	f := g.Lease.Fence()
	in := make([]store.AppendInput, 0, 100)
	n := 0
	appendKeyed := func(count int) {
		for done := 0; done < count; done += len(in) {
			in = in[:0]
			for range min(100, count-done) {
				n++
				in = append(in, store.AppendInput{RunID: id, EventType: "run.delta", Payload: json.RawMessage(`{"delta":"x"}`),
					IdempotencyKey: fmt.Sprintf("k%d", n), Fence: f})
			}
			if _, err := s.AppendEvents(ctx, in); err != nil {
				b.Fatal(err)
			}
		}
	}
	appendKeyed(5000)
	if _, err := s.pool.Exec(ctx, `ANALYZE run_events`); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		appendKeyed(1)
	}
}
