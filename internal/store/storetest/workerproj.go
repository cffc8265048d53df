package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// WorkerProjectionDriver is a driver with the projection, worker and worker
// projection contracts.
type WorkerProjectionDriver interface {
	store.Store
	store.ProjectionStore
	store.WorkerStore
	store.WorkerProjectionStore
}

// RunWorkerProjection runs the worker projection sub-suite
// (store.WorkerProjectionStore). newStore returns a fresh, migrated, empty
// store per call.
func RunWorkerProjection(t *testing.T, newStore func(t *testing.T) WorkerProjectionDriver) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s WorkerProjectionDriver)
	}{
		{"Candidates", wpTestCandidates},
		{"CandidatesPaging", wpTestCandidatesPaging},
		{"WriteEvents", wpTestWriteEvents},
		{"PreconditionIsAtomic", wpTestPrecondition},
		{"InvalidInputWritesNothing", wpTestInvalid},
		{"ForceReplacesCursor", wpTestForce},
		{"ConcurrentWritersOneWins", wpTestConcurrent},
		{"ConcurrentWorkersGapFree", wpTestConcurrentWorkers},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

const wpVersion = "khala_summary_v1"

func wpHash(seq int64) string { return strings.Repeat(fmt.Sprintf("%x", seq%16), 64) }

func wpDocs(workerID string, from, to int64) []store.WorkerEventDoc {
	var out []store.WorkerEventDoc
	for seq := from; seq <= to; seq++ {
		out = append(out, store.WorkerEventDoc{
			Seq:  seq,
			Doc:  json.RawMessage(fmt.Sprintf(`{"worker_id":%q, "seq":%d}`, workerID, seq)),
			Hash: wpHash(seq),
		})
	}
	return out
}

func wpEvents(workerID string, expect, to int64) store.WorkerEventsWriteInput {
	return store.WorkerEventsWriteInput{
		WorkerID: workerID, OwnerSub: "user:1", Version: wpVersion, ExpectSeq: expect,
		Events: wpDocs(workerID, expect+1, to),
	}
}

func wpWrite(t *testing.T, s WorkerProjectionDriver, in store.WorkerEventsWriteInput) store.WorkerEventsWriteResult {
	t.Helper()
	res, err := s.WriteWorkerEvents(context.Background(), in)
	if err != nil {
		t.Fatalf("write events of %s after %d: %v", in.WorkerID, in.ExpectSeq, err)
	}
	return res
}

func wpCursor(t *testing.T, s WorkerProjectionDriver, workerID string) (store.Checkpoint, bool) {
	t.Helper()
	cp, err := s.GetCheckpoint(context.Background(), store.ProjectionCodexWorker, store.WorkerEventsCursorID(workerID))
	if errors.Is(err, store.ErrNotFound) {
		return cp, false
	}
	if err != nil {
		t.Fatalf("cursor of %s: %v", workerID, err)
	}
	return cp, true
}

// wpStreamSeqs returns the worker's event seqs in watermark order and checks
// the topic's watermarks are 1..n.
func wpStreamSeqs(t *testing.T, s WorkerProjectionDriver, workerID string) []int64 {
	t.Helper()
	rows, err := s.ReadStream(context.Background(), store.TopicCodexWorkerEvents, 0, 100000)
	if err != nil {
		t.Fatalf("read stream: %v", err)
	}
	var seqs []int64
	for i, r := range rows {
		if r.Watermark != int64(i+1) {
			t.Fatalf("stream row %d has watermark %d: gap", i, r.Watermark)
		}
		if strings.HasPrefix(r.DocKey, "runtime/codex_worker_event:"+workerID+":") {
			if r.DocKey != store.WorkerEventDocKey(workerID, r.DocVersion) {
				t.Fatalf("row %+v: doc key does not name its version", r)
			}
			seqs = append(seqs, r.DocVersion)
		}
	}
	return seqs
}

func wpWantSeqs(t *testing.T, what string, got []int64, from, to int64) {
	t.Helper()
	if int64(len(got)) != to-from+1 {
		t.Fatalf("%s: stream seqs %v, want %d..%d once each", what, got, from, to)
	}
	for i, seq := range got {
		if seq != from+int64(i) {
			t.Fatalf("%s: stream seqs %v, want %d..%d in order", what, got, from, to)
		}
	}
}

func wpCandidates(t *testing.T, s WorkerProjectionDriver, q store.CandidateQuery) map[string]store.WorkerProjectionCandidate {
	t.Helper()
	cs, err := s.WorkerProjectionCandidates(context.Background(), q)
	if err != nil {
		t.Fatalf("worker candidates: %v", err)
	}
	out := map[string]store.WorkerProjectionCandidate{}
	for _, c := range cs {
		if _, dup := out[c.EntityID]; dup {
			t.Fatalf("candidate %s listed twice", c.EntityID)
		}
		out[c.EntityID] = c
	}
	return out
}

func wpCreate(t *testing.T, s WorkerProjectionDriver, id string) store.Worker {
	t.Helper()
	w, _, err := s.CreateWorker(context.Background(), store.CreateWorkerInput{WorkerID: id, OwnerSub: "user:1"})
	if err != nil {
		t.Fatalf("create worker %s: %v", id, err)
	}
	return w
}

// wpSummary writes the worker's summary checkpoint at seq.
func wpSummary(t *testing.T, s WorkerProjectionDriver, id string, seq, expect int64, version string) {
	t.Helper()
	if _, err := s.WriteProjection(context.Background(), store.ProjectionWriteInput{
		Projection: store.ProjectionCodexWorker, EntityID: id, Topic: store.TopicCodexWorkerSummaries,
		DocKey: "runtime/codex_worker_summary:" + id, OwnerSub: "user:1", Doc: json.RawMessage(`{}`),
		Hash: wpHash(seq), Version: version, SourceSeq: seq, ExpectSeq: expect,
	}); err != nil {
		t.Fatalf("write summary of %s: %v", id, err)
	}
}

func wpTestCandidates(t *testing.T, s WorkerProjectionDriver) {
	ctx := context.Background()
	q := store.CandidateQuery{Version: wpVersion}
	if got := wpCandidates(t, s, q); len(got) != 0 {
		t.Fatalf("candidates of an empty store = %+v", got)
	}
	wpCreate(t, s, "w1")
	wpCreate(t, s, "w2")
	if _, _, err := s.HeartbeatWorker(ctx, "w2", store.TraceContext{}); err != nil {
		t.Fatal(err)
	}
	got := wpCandidates(t, s, q)
	if len(got) != 2 || got["w1"].HasCheckpoint || got["w1"].LatestSeq != 1 || got["w2"].LatestSeq != 2 || got["w2"].EventsSeq != 0 {
		t.Fatalf("candidates before any write = %+v", got)
	}

	// The summary alone is not enough: the event cursor lags.
	wpSummary(t, s, "w1", 1, -1, wpVersion)
	got = wpCandidates(t, s, q)
	if c, ok := got["w1"]; !ok || !c.HasCheckpoint || c.CheckpointSeq != 1 || c.EventsSeq != 0 {
		t.Fatalf("w1 with summary but no events = %+v", got)
	}
	wpWrite(t, s, wpEvents("w1", 0, 1))
	got = wpCandidates(t, s, q)
	if _, ok := got["w1"]; ok || len(got) != 1 {
		t.Fatalf("w1 projected and its events appended, still a candidate: %+v", got)
	}
	// Events alone are not enough either.
	wpWrite(t, s, wpEvents("w2", 0, 2))
	got = wpCandidates(t, s, q)
	if c, ok := got["w2"]; !ok || c.HasCheckpoint || c.EventsSeq != 2 {
		t.Fatalf("w2 with events but no summary = %+v", got)
	}
	wpSummary(t, s, "w2", 2, -1, wpVersion)
	if got := wpCandidates(t, s, q); len(got) != 0 {
		t.Fatalf("candidates after projecting both = %+v", got)
	}
	// The cursor rows are not workers.
	if got := wpCandidates(t, s, store.CandidateQuery{Version: "khala_summary_v2"}); len(got) != 2 {
		t.Fatalf("candidates under a new version = %+v", got)
	}

	// A new event makes the worker a candidate with both positions.
	if _, _, err := s.AppendWorkerEvent(ctx, store.WorkerEventInput{WorkerID: "w1", EventType: "worker.response", Payload: json.RawMessage(`{}`)}); err != nil {
		t.Fatal(err)
	}
	got = wpCandidates(t, s, q)
	if c, ok := got["w1"]; len(got) != 1 || !ok || c.CheckpointSeq != 1 || c.EventsSeq != 1 || c.LatestSeq != 2 {
		t.Fatalf("candidates after an append = %+v", got)
	}
	// A cursor ahead of the log (corrupt) keeps the worker a candidate.
	wpWrite(t, s, wpEvents("w2", 2, 5))
	if c, ok := wpCandidates(t, s, q)["w2"]; !ok || c.EventsSeq != 5 || c.LatestSeq != 2 {
		t.Fatalf("w2 with its cursor ahead = %+v", c)
	}
	// A key in the future selects nothing; in the past, everything.
	if got := wpCandidates(t, s, store.CandidateQuery{Version: wpVersion, AfterUpdatedAt: time.Now().Add(time.Hour)}); len(got) != 0 {
		t.Fatalf("candidates after +1h = %+v", got)
	}
	if got := wpCandidates(t, s, store.CandidateQuery{Version: wpVersion, AfterUpdatedAt: time.Now().Add(-time.Hour)}); len(got) != 2 {
		t.Fatalf("candidates after -1h = %+v", got)
	}
}

func wpTestCandidatesPaging(t *testing.T, s WorkerProjectionDriver) {
	ctx := context.Background()
	want := []string{"a", "b", "c", "d", "e"}
	for _, id := range want {
		wpCreate(t, s, id)
	}
	var seen []string
	q := store.CandidateQuery{Version: wpVersion, Limit: 2}
	for range 10 {
		page, err := s.WorkerProjectionCandidates(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 2 {
			t.Fatalf("page of %d over limit 2", len(page))
		}
		for _, c := range page {
			if c.UpdatedAt.IsZero() {
				t.Fatalf("candidate without updated_at: %+v", c)
			}
			seen = append(seen, c.EntityID)
		}
		if len(page) < 2 {
			break
		}
		last := page[len(page)-1]
		q.AfterUpdatedAt, q.AfterRunID = last.UpdatedAt, last.EntityID
	}
	sort.Strings(seen)
	if strings.Join(seen, ",") != strings.Join(want, ",") {
		t.Fatalf("paged candidates = %v, want each of %v once", seen, want)
	}
}

func wpTestWriteEvents(t *testing.T, s WorkerProjectionDriver) {
	ctx := context.Background()
	if _, ok := wpCursor(t, s, "w1"); ok {
		t.Fatal("cursor before any write")
	}
	if res := wpWrite(t, s, wpEvents("w1", 0, 3)); res.Appended != 3 || res.LastWatermark != 3 {
		t.Fatalf("first write = %+v, want 3 appended up to watermark 3", res)
	}
	if res := wpWrite(t, s, wpEvents("w2", 0, 1)); res.Appended != 1 || res.LastWatermark != 4 {
		t.Fatalf("other worker = %+v", res)
	}
	if res := wpWrite(t, s, wpEvents("w1", 3, 4)); res.Appended != 1 || res.LastWatermark != 5 {
		t.Fatalf("second write = %+v", res)
	}
	cp, ok := wpCursor(t, s, "w1")
	if !ok || cp.LastSeq != 4 || cp.DocKey != "runtime/codex_worker_event:w1:4" || cp.SummaryHash != wpHash(4) ||
		cp.ProjectionVersion != wpVersion || cp.Projection != store.ProjectionCodexWorker {
		t.Fatalf("cursor = %+v", cp)
	}
	// The worker's summary checkpoint is another row.
	if _, err := s.GetCheckpoint(ctx, store.ProjectionCodexWorker, "w1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("summary checkpoint written by the event lane: %v", err)
	}
	doc, err := s.GetDocument(ctx, store.TopicCodexWorkerEvents, "runtime/codex_worker_event:w1:2")
	if err != nil {
		t.Fatal(err)
	}
	if string(doc.Payload) != `{"seq":2,"worker_id":"w1"}` || doc.SourceSeq != 2 || doc.OwnerSub != "user:1" || doc.SummaryHash != wpHash(2) {
		t.Fatalf("document = %+v %s", doc, doc.Payload)
	}
	wpWantSeqs(t, "w1", wpStreamSeqs(t, s, "w1"), 1, 4)
	rows, _ := s.ReadStream(ctx, store.TopicCodexWorkerEvents, 0, 100)
	if rows[0].OwnerSub != "user:1" || !strings.HasPrefix(rows[0].PayloadHash, "sha256:") || string(rows[0].Payload) != `{"seq":1,"worker_id":"w1"}` {
		t.Fatalf("stream row = %+v", rows[0])
	}
	// Other topics are untouched.
	if rows, _ := s.ReadStream(ctx, store.TopicCodexWorkerSummaries, 0, 10); len(rows) != 0 {
		t.Fatalf("summary topic rows = %d", len(rows))
	}
}

func wpTestPrecondition(t *testing.T, s WorkerProjectionDriver) {
	ctx := context.Background()
	wpWrite(t, s, wpEvents("w1", 0, 2))
	for _, in := range []store.WorkerEventsWriteInput{
		wpEvents("w1", 0, 3), // writer thought there was no cursor
		wpEvents("w1", 1, 3), // writer decided from a stale cursor
		wpEvents("w2", 4, 5), // writer expected a cursor that does not exist
	} {
		if _, err := s.WriteWorkerEvents(ctx, in); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("write %s expect %d: err = %v, want ErrConflict", in.WorkerID, in.ExpectSeq, err)
		}
	}
	if cp, _ := wpCursor(t, s, "w1"); cp.LastSeq != 2 {
		t.Fatalf("cursor after rejected writes = %+v", cp)
	}
	if _, err := s.GetDocument(ctx, store.TopicCodexWorkerEvents, "runtime/codex_worker_event:w1:3"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("document of a rejected write: %v", err)
	}
	if _, err := s.GetDocument(ctx, store.TopicCodexWorkerEvents, "runtime/codex_worker_event:w2:5"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("document of a rejected write: %v", err)
	}
	// No watermark was consumed.
	if res := wpWrite(t, s, wpEvents("w1", 2, 3)); res.LastWatermark != 3 {
		t.Fatalf("watermark after rejected writes = %d, want 3 (gap-free)", res.LastWatermark)
	}
	wpWantSeqs(t, "w1", wpStreamSeqs(t, s, "w1"), 1, 3)
}

func wpTestInvalid(t *testing.T, s WorkerProjectionDriver) {
	ctx := context.Background()
	mutate := map[string]func(*store.WorkerEventsWriteInput){
		"worker_id": func(in *store.WorkerEventsWriteInput) { in.WorkerID = "" },
		"version":   func(in *store.WorkerEventsWriteInput) { in.Version = "" },
		"no events": func(in *store.WorkerEventsWriteInput) { in.Events = nil },
		"first seq": func(in *store.WorkerEventsWriteInput) { in.Events = in.Events[1:] },
		"hole":      func(in *store.WorkerEventsWriteInput) { in.Events = append(in.Events[:1], in.Events[2:]...) },
		"zero seq":  func(in *store.WorkerEventsWriteInput) { in.Force, in.Events[0].Seq = true, 0 },
		"hash":      func(in *store.WorkerEventsWriteInput) { in.Events[1].Hash = "short" },
		"doc":       func(in *store.WorkerEventsWriteInput) { in.Events[2].Doc = json.RawMessage(`{not json`) },
		"empty doc": func(in *store.WorkerEventsWriteInput) { in.Events[2].Doc = nil },
		"expect":    func(in *store.WorkerEventsWriteInput) { in.ExpectSeq = -1 },
		"over the max": func(in *store.WorkerEventsWriteInput) {
			in.Events = wpDocs("w1", 1, store.MaxWorkerEventsPerWrite+1)
		},
	}
	for name, m := range mutate {
		in := wpEvents("w1", 0, 3)
		m(&in)
		if _, err := s.WriteWorkerEvents(ctx, in); err == nil {
			t.Fatalf("%s: invalid write accepted", name)
		}
	}
	if rows, _ := s.ReadStream(ctx, store.TopicCodexWorkerEvents, 0, 10); len(rows) != 0 {
		t.Fatalf("invalid writes left %d stream rows", len(rows))
	}
	if _, ok := wpCursor(t, s, "w1"); ok {
		t.Fatal("invalid writes left a cursor")
	}
}

func wpTestForce(t *testing.T, s WorkerProjectionDriver) {
	ctx := context.Background()
	wpWrite(t, s, wpEvents("w1", 0, 2))
	wpWrite(t, s, wpEvents("w1", 2, 3))
	in := wpEvents("w1", 0, 4)
	in.ExpectSeq = 999 // ignored under Force
	in.Force = true
	res, err := s.WriteWorkerEvents(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if res.Appended != 1 {
		t.Fatalf("forced rewrite of 1..4 over 1..3 = %+v, want only 4 appended", res)
	}
	if cp, _ := wpCursor(t, s, "w1"); cp.LastSeq != 4 {
		t.Fatalf("cursor after force = %+v", cp)
	}
	wpWantSeqs(t, "w1", wpStreamSeqs(t, s, "w1"), 1, 4)
	// Force moves a cursor backwards too (reprojection of one ahead of the log).
	back := wpEvents("w1", 0, 2)
	back.Force = true
	if res := wpWrite(t, s, back); res.Appended != 0 {
		t.Fatalf("forced rewrite backwards appended %+v", res)
	}
	if cp, _ := wpCursor(t, s, "w1"); cp.LastSeq != 2 {
		t.Fatalf("cursor after backwards force = %+v", cp)
	}
	// A cursor that fell behind what was appended (lost, or moved back)
	// never duplicates: the existing documents guard the stream.
	if res := wpWrite(t, s, wpEvents("w1", 2, 5)); res.Appended != 1 || res.LastWatermark != 5 {
		t.Fatalf("rewrite of 3..5 over 1..4 = %+v, want only 5 appended at watermark 5", res)
	}
	wpWantSeqs(t, "w1", wpStreamSeqs(t, s, "w1"), 1, 5)
}

// wpTestConcurrent: writers of one worker deciding from the same (absent or
// present) cursor: exactly one wins, every event reaches the stream once.
func wpTestConcurrent(t *testing.T, s WorkerProjectionDriver) {
	ctx := context.Background()
	for round, expect := range []int64{0, 3} {
		const writers = 6
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			ok, con int
		)
		for range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := s.WriteWorkerEvents(ctx, wpEvents("w1", expect, expect+3))
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					ok++
				case errors.Is(err, store.ErrConflict):
					con++
				default:
					t.Errorf("round %d: %v", round, err)
				}
			}()
		}
		wg.Wait()
		if ok != 1 || con != writers-1 {
			t.Fatalf("round %d: %d won, %d conflicted; want 1 and %d", round, ok, con, writers-1)
		}
		wpWantSeqs(t, fmt.Sprintf("round %d", round), wpStreamSeqs(t, s, "w1"), 1, expect+3)
	}
}

// wpTestConcurrentWorkers: many workers appending at once share one gap-free
// topic sequence and each keeps its own order.
func wpTestConcurrentWorkers(t *testing.T, s WorkerProjectionDriver) {
	ctx := context.Background()
	const workers, batches = 4, 5
	var wg sync.WaitGroup
	for i := range workers {
		id := fmt.Sprintf("w%d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range int64(batches) {
				if _, err := s.WriteWorkerEvents(ctx, wpEvents(id, b*2, b*2+2)); err != nil {
					t.Errorf("%s batch %d: %v", id, b, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for i := range workers {
		id := fmt.Sprintf("w%d", i)
		wpWantSeqs(t, id, wpStreamSeqs(t, s, id), 1, batches*2)
	}
	rows, _ := s.ReadStream(ctx, store.TopicCodexWorkerEvents, 0, 1000)
	if len(rows) != workers*batches*2 {
		t.Fatalf("stream rows = %d, want %d", len(rows), workers*batches*2)
	}
}
