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

// ProjectionDriver is a driver that implements both contracts.
type ProjectionDriver interface {
	store.Store
	store.ProjectionStore
	// LoadRunLogsAndCheckpoints is the projector's batch read
	// (projection.BatchLogLoader), which both drivers implement.
	LoadRunLogsAndCheckpoints(ctx context.Context, projection string, runIDs []string) ([]store.RunLog, error)
}

// RunProjection runs the projection sub-suite (store.ProjectionStore).
func RunProjection(t *testing.T, newStore func(t *testing.T) ProjectionDriver) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s ProjectionDriver)
	}{
		{"WriteAndRead", pjTestWriteAndRead},
		{"PreconditionIsAtomic", pjTestPreconditionIsAtomic},
		{"InvalidInputWritesNothing", pjTestInvalidInput},
		{"ForceReplacesCheckpoint", pjTestForce},
		{"WatermarksGapFreeConcurrent", pjTestWatermarksConcurrent},
		{"ConcurrentSameEntityOneWins", pjTestSameEntityRace},
		{"LoadRunLog", pjTestLoadRunLog},
		{"BatchLogRead", pjTestBatchLogRead},
		{"Candidates", pjTestCandidates},
		{"ListRunIDs", pjTestListRunIDs},
		{"ListCheckpoints", pjTestListCheckpoints},
		{"Drift", pjTestDrift},
		{"DriftClaimOnce", pjTestDriftClaimOnce},
		{"Replays", pjTestReplays},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

const pjHashA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
const pjHashB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

func pjInput(entity string, seq, expect int64, hash string) store.ProjectionWriteInput {
	return store.ProjectionWriteInput{
		Projection: store.ProjectionRun,
		EntityID:   entity,
		Topic:      store.TopicRunSummaries,
		DocKey:     "runtime/run_summary:" + entity,
		OwnerSub:   "user:1",
		Doc:        json.RawMessage(fmt.Sprintf(`{"run_id":%q,"latest_seq":%d,"b":1,"a":"<x>"}`, entity, seq)),
		Hash:       hash,
		Version:    "khala_summary_v1",
		SourceSeq:  seq,
		ExpectSeq:  expect,
	}
}

func pjWrite(t *testing.T, s ProjectionDriver, in store.ProjectionWriteInput) int64 {
	t.Helper()
	wm, err := s.WriteProjection(context.Background(), in)
	if err != nil {
		t.Fatalf("write projection %s seq %d: %v", in.EntityID, in.SourceSeq, err)
	}
	return wm
}

func pjStream(t *testing.T, s ProjectionDriver, topic string) []store.StreamRow {
	t.Helper()
	rows, err := s.ReadStream(context.Background(), topic, 0, 10000)
	if err != nil {
		t.Fatalf("read stream: %v", err)
	}
	return rows
}

func pjTestWriteAndRead(t *testing.T, s ProjectionDriver) {
	ctx := context.Background()
	if _, err := s.GetCheckpoint(ctx, store.ProjectionRun, "r1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("checkpoint before write: err = %v, want ErrNotFound", err)
	}
	if _, err := s.GetDocument(ctx, store.TopicRunSummaries, "runtime/run_summary:r1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("document before write: err = %v, want ErrNotFound", err)
	}
	if wm := pjWrite(t, s, pjInput("r1", 3, -1, pjHashA)); wm != 1 {
		t.Fatalf("first watermark = %d, want 1", wm)
	}
	if wm := pjWrite(t, s, pjInput("r2", 1, -1, pjHashA)); wm != 2 {
		t.Fatalf("second watermark = %d, want 2", wm)
	}
	if wm := pjWrite(t, s, pjInput("r1", 5, 3, pjHashB)); wm != 3 {
		t.Fatalf("third watermark = %d, want 3", wm)
	}
	// Another topic has its own sequence.
	other := pjInput("w1", 1, -1, pjHashA)
	other.Projection, other.Topic, other.DocKey = store.ProjectionCodexWorker, store.TopicCodexWorkerSummaries, "runtime/codex_worker_summary:w1"
	if wm := pjWrite(t, s, other); wm != 1 {
		t.Fatalf("other topic watermark = %d, want 1", wm)
	}

	cp, err := s.GetCheckpoint(ctx, store.ProjectionRun, "r1")
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	if cp.LastSeq != 5 || cp.SummaryHash != pjHashB || cp.ProjectionVersion != "khala_summary_v1" ||
		cp.DocKey != "runtime/run_summary:r1" || cp.Projection != store.ProjectionRun || cp.EntityID != "r1" {
		t.Fatalf("checkpoint = %+v", cp)
	}
	if time.Since(cp.UpdatedAt) > time.Hour || cp.UpdatedAt.Location() != time.UTC {
		t.Fatalf("checkpoint updated_at = %v", cp.UpdatedAt)
	}
	doc, err := s.GetDocument(ctx, store.TopicRunSummaries, "runtime/run_summary:r1")
	if err != nil {
		t.Fatalf("document: %v", err)
	}
	wantDoc := `{"a":"<x>","b":1,"latest_seq":5,"run_id":"r1"}`
	if doc.SourceSeq != 5 || doc.SummaryHash != pjHashB || string(doc.Payload) != wantDoc || doc.OwnerSub != "user:1" {
		t.Fatalf("document = %+v payload %s, want canonical %s", doc, doc.Payload, wantDoc)
	}

	rows := pjStream(t, s, store.TopicRunSummaries)
	if len(rows) != 3 {
		t.Fatalf("stream rows = %d, want 3", len(rows))
	}
	for i, r := range rows {
		if r.Watermark != int64(i+1) {
			t.Fatalf("row %d watermark = %d", i, r.Watermark)
		}
		if !strings.HasPrefix(r.PayloadHash, "sha256:") || len(r.PayloadHash) != 71 {
			t.Fatalf("row %d payload hash = %q", i, r.PayloadHash)
		}
	}
	if rows[2].DocKey != "runtime/run_summary:r1" || rows[2].DocVersion != 5 || string(rows[2].Payload) != wantDoc {
		t.Fatalf("last row = %+v", rows[2])
	}
	after, err := s.ReadStream(ctx, store.TopicRunSummaries, 1, 1)
	if err != nil || len(after) != 1 || after[0].Watermark != 2 {
		t.Fatalf("read after 1 limit 1 = %+v, %v", after, err)
	}
}

func pjTestPreconditionIsAtomic(t *testing.T, s ProjectionDriver) {
	ctx := context.Background()
	pjWrite(t, s, pjInput("r1", 2, -1, pjHashA))
	for _, in := range []store.ProjectionWriteInput{
		pjInput("r1", 4, -1, pjHashB), // writer thought there was no checkpoint
		pjInput("r1", 4, 1, pjHashB),  // writer decided from a stale checkpoint
		pjInput("r2", 1, 0, pjHashB),  // writer expected a checkpoint that does not exist
	} {
		if _, err := s.WriteProjection(ctx, in); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("write %s expect %d: err = %v, want ErrConflict", in.EntityID, in.ExpectSeq, err)
		}
	}
	cp, err := s.GetCheckpoint(ctx, store.ProjectionRun, "r1")
	if err != nil || cp.LastSeq != 2 || cp.SummaryHash != pjHashA {
		t.Fatalf("checkpoint after rejected writes = %+v, %v", cp, err)
	}
	doc, err := s.GetDocument(ctx, store.TopicRunSummaries, "runtime/run_summary:r1")
	if err != nil || doc.SourceSeq != 2 {
		t.Fatalf("document after rejected writes = %+v, %v", doc, err)
	}
	if _, err := s.GetDocument(ctx, store.TopicRunSummaries, "runtime/run_summary:r2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("r2 document written by a rejected write: %v", err)
	}
	// No watermark was consumed by the rejected writes.
	if wm := pjWrite(t, s, pjInput("r1", 4, 2, pjHashB)); wm != 2 {
		t.Fatalf("watermark after rejected writes = %d, want 2 (gap-free)", wm)
	}
	if n := len(pjStream(t, s, store.TopicRunSummaries)); n != 2 {
		t.Fatalf("stream rows = %d, want 2", n)
	}
}

func pjTestInvalidInput(t *testing.T, s ProjectionDriver) {
	ctx := context.Background()
	mutate := map[string]func(*store.ProjectionWriteInput){
		"projection": func(in *store.ProjectionWriteInput) { in.Projection = "bogus" },
		"entity_id":  func(in *store.ProjectionWriteInput) { in.EntityID = "" },
		"topic":      func(in *store.ProjectionWriteInput) { in.Topic = "" },
		"doc_key":    func(in *store.ProjectionWriteInput) { in.DocKey = "" },
		"version":    func(in *store.ProjectionWriteInput) { in.Version = "" },
		"seq":        func(in *store.ProjectionWriteInput) { in.SourceSeq = -1 },
		"hash":       func(in *store.ProjectionWriteInput) { in.Hash = "short" },
		"doc":        func(in *store.ProjectionWriteInput) { in.Doc = json.RawMessage(`{not json`) },
	}
	for name, m := range mutate {
		in := pjInput("r1", 1, -1, pjHashA)
		m(&in)
		if _, err := s.WriteProjection(ctx, in); err == nil {
			t.Fatalf("%s: invalid write accepted", name)
		}
	}
	if n := len(pjStream(t, s, store.TopicRunSummaries)); n != 0 {
		t.Fatalf("stream rows after invalid writes = %d", n)
	}
	if _, err := s.GetCheckpoint(ctx, store.ProjectionRun, "r1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("checkpoint after invalid writes: %v", err)
	}
}

func pjTestForce(t *testing.T, s ProjectionDriver) {
	ctx := context.Background()
	pjWrite(t, s, pjInput("r1", 999, -1, pjHashA)) // a corrupt checkpoint, ahead of any log
	in := pjInput("r1", 3, 7, pjHashB)             // wrong expectation on purpose
	in.Force = true
	pjWrite(t, s, in)
	cp, err := s.GetCheckpoint(ctx, store.ProjectionRun, "r1")
	if err != nil || cp.LastSeq != 3 || cp.SummaryHash != pjHashB {
		t.Fatalf("checkpoint after forced write = %+v, %v", cp, err)
	}
}

func pjTestWatermarksConcurrent(t *testing.T, s ProjectionDriver) {
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.WriteProjection(context.Background(), pjInput(fmt.Sprintf("r%02d", i), 1, -1, pjHashA))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent write: %v", err)
		}
	}
	rows := pjStream(t, s, store.TopicRunSummaries)
	if len(rows) != n {
		t.Fatalf("stream rows = %d, want %d", len(rows), n)
	}
	for i, r := range rows {
		if r.Watermark != int64(i+1) {
			t.Fatalf("watermark %d at position %d: not gap-free", r.Watermark, i)
		}
	}
}

func pjTestSameEntityRace(t *testing.T, s ProjectionDriver) {
	// Replicas deciding from the same state (no checkpoint): exactly one wins.
	const n = 8
	var wg sync.WaitGroup
	results := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.WriteProjection(context.Background(), pjInput("r1", int64(i+1), -1, pjHashA))
			results <- err
		}()
	}
	wg.Wait()
	close(results)
	ok := 0
	for err := range results {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, store.ErrConflict):
			t.Fatalf("racing write: %v, want nil or ErrConflict", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d racing writes succeeded, want 1", ok)
	}
	if n := len(pjStream(t, s, store.TopicRunSummaries)); n != 1 {
		t.Fatalf("stream rows = %d, want 1", n)
	}
}

func pjRun(t *testing.T, s ProjectionDriver, runID string, events ...string) {
	t.Helper()
	ctx := context.Background()
	if _, _, err := s.CreateRun(ctx, store.CreateRunInput{RunID: runID, ThreadID: "thread-1", OwnerSub: "user:1"}); err != nil {
		t.Fatalf("create run %s: %v", runID, err)
	}
	for _, et := range events {
		payload := json.RawMessage(`{}`)
		if et == "run.finished" {
			payload = json.RawMessage(`{"status":"succeeded","reason_class":"completed","reason":"done"}`)
		}
		if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: runID, EventType: et, Payload: payload}); err != nil {
			t.Fatalf("append %s to %s: %v", et, runID, err)
		}
	}
}

func pjTestLoadRunLog(t *testing.T, s ProjectionDriver) {
	ctx := context.Background()
	if _, _, err := s.LoadRunLog(ctx, "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("load unknown run: %v, want ErrNotFound", err)
	}
	pjRun(t, s, "r1", "run.started", "run.delta", "run.finished")
	run, evs, err := s.LoadRunLog(ctx, "r1")
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if run.LatestSeq != 3 || run.Status != store.StatusSucceeded || len(evs) != 3 {
		t.Fatalf("run %+v with %d events", run, len(evs))
	}
	for i, e := range evs {
		if e.Seq != int64(i+1) {
			t.Fatalf("event %d seq %d", i, e.Seq)
		}
	}
	if evs[2].EventType != "run.finished" {
		t.Fatalf("last event %s", evs[2].EventType)
	}
}

// BatchView is what the projector's batch read gives of a run whose whole
// log LoadRunLog gives, payloads left out (a driver may leave them out of
// the batch read; compare without them): when more than
// store.ElideLogsAbove events lie above the retention floor, all of them
// there and none at or below it, only the last one, the others counted as
// elided.
func BatchView(run store.Run, evs []store.Event) (elided int64, tail []store.Event) {
	out := WithoutPayloads(evs)
	n := run.LatestSeq - run.RetentionFloorSeq
	if n > store.ElideLogsAbove && int64(len(out)) == n && out[0].Seq == run.RetentionFloorSeq+1 {
		return n - 1, out[n-1:]
	}
	return 0, out
}

// WithoutPayloads is a copy of evs with nil payloads.
func WithoutPayloads(evs []store.Event) []store.Event {
	out := make([]store.Event, len(evs))
	copy(out, evs)
	for i := range out {
		out[i].Payload = nil
	}
	return out
}

// pjEvents appends n events of type run.delta to a run made by pjRun.
func pjEvents(t *testing.T, s ProjectionDriver, runID string, n int) {
	t.Helper()
	for range n {
		if _, _, err := s.AppendEvent(context.Background(), store.AppendInput{RunID: runID, EventType: "run.delta", Payload: json.RawMessage(`{"text":"x"}`)}); err != nil {
			t.Fatalf("append to %s: %v", runID, err)
		}
	}
}

// pjTestBatchLogRead: the batch read gives, run by run and in the order
// asked, what GetCheckpoint and LoadRunLog give, as BatchView describes:
// long complete logs (pruned or not) elided to their last event, short
// ones read whole.
func pjTestBatchLogRead(t *testing.T, s ProjectionDriver) {
	ctx := context.Background()
	long := store.ElideLogsAbove + 4
	pjRun(t, s, "none")
	pjRun(t, s, "short", "run.started")
	pjEvents(t, s, "short", store.ElideLogsAbove-1)
	pjRun(t, s, "whole", "run.started")
	pjEvents(t, s, "whole", long-1)
	pjRun(t, s, "pruned", "run.started")
	pjEvents(t, s, "pruned", long+1)
	if err := s.PruneEvents(ctx, "pruned", 2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WriteProjection(ctx, pjInput("whole", int64(long), -1, pjHashA)); err != nil {
		t.Fatal(err)
	}
	ids := []string{"pruned", "missing", "whole", "short", "none"}
	got, err := s.LoadRunLogsAndCheckpoints(ctx, store.ProjectionRun, ids)
	if err != nil || len(got) != len(ids) {
		t.Fatalf("batch read: %d results, %v", len(got), err)
	}
	for i, id := range ids {
		g := got[i]
		run, evs, err := s.LoadRunLog(ctx, id)
		if err != nil {
			if !errors.Is(err, store.ErrNotFound) || !errors.Is(g.Err, store.ErrNotFound) {
				t.Fatalf("%s: batch error %v, single read %v", id, g.Err, err)
			}
			continue
		}
		cp, cerr := s.GetCheckpoint(ctx, store.ProjectionRun, id)
		has := cerr == nil
		elided, tail := BatchView(run, evs)
		if g.Err != nil || has != (g.Checkpoint != nil) || (has && fmt.Sprint(*g.Checkpoint) != fmt.Sprint(cp)) ||
			fmt.Sprint(g.Run) != fmt.Sprint(run) || fmt.Sprint(WithoutPayloads(g.Events)) != fmt.Sprint(tail) || g.Elided != elided {
			t.Fatalf("%s: batch read %v %v %d+%v (%v)\nwant %v(%t) %v %d+%v", id, g.Checkpoint, g.Run, g.Elided, g.Events, g.Err, cp, has, run, elided, tail)
		}
	}
	if got[0].Elided != int64(long-1) || got[2].Elided != int64(long-1) || got[2].Checkpoint == nil ||
		got[3].Elided != 0 || len(got[3].Events) != store.ElideLogsAbove || len(got[4].Events) != 0 {
		t.Fatalf("pruned elided %d, whole elided %d (checkpoint %v), short %d+%d events, none %d events",
			got[0].Elided, got[2].Elided, got[2].Checkpoint, got[3].Elided, len(got[3].Events), len(got[4].Events))
	}
	if _, err := s.LoadRunLogsAndCheckpoints(ctx, store.ProjectionRun, []string{"short", "short"}); err == nil {
		t.Fatal("a run asked twice was not refused")
	}
}

// BatchReadOfDamagedLogs checks that the batch read elides no log with a
// gap or with an event at or below its retention floor: it builds two long
// runs and calls damage, which must delete seq 3 of gapRun and put back seq
// 1 of belowRun (pruned through 2), as no writer would; the driver's test
// gives the SQL.
func BatchReadOfDamagedLogs(t *testing.T, s ProjectionDriver, damage func(gapRun, belowRun string)) {
	ctx := context.Background()
	n := store.ElideLogsAbove + 4
	for _, id := range []string{"gap", "below"} {
		pjRun(t, s, id, "run.started")
		pjEvents(t, s, id, n-1)
	}
	if err := s.PruneEvents(ctx, "below", 2); err != nil {
		t.Fatal(err)
	}
	damage("gap", "below")
	got, err := s.LoadRunLogsAndCheckpoints(ctx, store.ProjectionRun, []string{"gap", "below"})
	if err != nil {
		t.Fatal(err)
	}
	for i, skip := range []int64{3, 2} {
		var want, seqs []int64
		for seq := int64(1); seq <= int64(n); seq++ {
			if seq != skip {
				want = append(want, seq)
			}
		}
		for _, e := range got[i].Events {
			seqs = append(seqs, e.Seq)
		}
		if got[i].Err != nil || got[i].Elided != 0 || fmt.Sprint(seqs) != fmt.Sprint(want) {
			t.Fatalf("run %d: elided %d, seqs %v (%v), want the whole log %v", i, got[i].Elided, seqs, got[i].Err, want)
		}
	}
}

func pjCandidateIDs(t *testing.T, s ProjectionDriver, q store.CandidateQuery) map[string]store.ProjectionCandidate {
	t.Helper()
	cs, err := s.ProjectionCandidates(context.Background(), q)
	if err != nil {
		t.Fatalf("candidates: %v", err)
	}
	out := map[string]store.ProjectionCandidate{}
	for _, c := range cs {
		out[c.EntityID] = c
	}
	return out
}

func pjTestCandidates(t *testing.T, s ProjectionDriver) {
	ctx := context.Background()
	const v1 = "khala_summary_v1"
	pjRun(t, s, "a", "run.started")
	pjRun(t, s, "b", "run.started", "run.delta")
	got := pjCandidateIDs(t, s, store.CandidateQuery{Version: v1})
	if len(got) != 2 || got["a"].HasCheckpoint || got["b"].LatestSeq != 2 {
		t.Fatalf("candidates before any write = %+v", got)
	}
	in := pjInput("a", 1, -1, pjHashA)
	pjWrite(t, s, in)
	in = pjInput("b", 2, -1, pjHashA)
	pjWrite(t, s, in)
	if got := pjCandidateIDs(t, s, store.CandidateQuery{Version: v1}); len(got) != 0 {
		t.Fatalf("candidates after projecting both = %+v", got)
	}
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "a", EventType: "run.delta", Payload: json.RawMessage(`{}`)}); err != nil {
		t.Fatal(err)
	}
	got = pjCandidateIDs(t, s, store.CandidateQuery{Version: v1})
	if c, ok := got["a"]; len(got) != 1 || !ok || !c.HasCheckpoint || c.CheckpointSeq != 1 || c.LatestSeq != 2 {
		t.Fatalf("candidates after an append = %+v", got)
	}
	// A new projection version makes every run a candidate.
	if got := pjCandidateIDs(t, s, store.CandidateQuery{Version: "khala_summary_v2"}); len(got) != 2 {
		t.Fatalf("candidates under a new version = %+v", got)
	}
	// A key in the future selects nothing; in the past, everything.
	if got := pjCandidateIDs(t, s, store.CandidateQuery{Version: v1, AfterUpdatedAt: time.Now().Add(time.Hour)}); len(got) != 0 {
		t.Fatalf("candidates after +1h = %+v", got)
	}
	if got := pjCandidateIDs(t, s, store.CandidateQuery{Version: v1, AfterUpdatedAt: time.Now().Add(-time.Hour)}); len(got) != 1 {
		t.Fatalf("candidates after -1h = %+v", got)
	}
	// Keyset paging visits every candidate once, in (updated_at, run_id) order.
	pjRun(t, s, "c")
	pjRun(t, s, "d")
	var seen []string
	q := store.CandidateQuery{Version: "khala_summary_v2", Limit: 1}
	for range 10 {
		page, err := s.ProjectionCandidates(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if page[0].UpdatedAt.IsZero() {
			t.Fatalf("candidate without updated_at: %+v", page[0])
		}
		seen = append(seen, page[0].EntityID)
		q.AfterUpdatedAt, q.AfterRunID = page[0].UpdatedAt, page[0].EntityID
	}
	sort.Strings(seen)
	if strings.Join(seen, ",") != "a,b,c,d" {
		t.Fatalf("paged candidates = %v", seen)
	}
	if cs, err := s.ProjectionCandidates(ctx, store.CandidateQuery{Version: "khala_summary_v2", Limit: 1}); err != nil || len(cs) != 1 {
		t.Fatalf("limit 1: %d, %v", len(cs), err)
	}
}

func pjTestListRunIDs(t *testing.T, s ProjectionDriver) {
	ctx := context.Background()
	for _, id := range []string{"c", "a", "b", "d"} {
		pjRun(t, s, id)
	}
	var all []string
	after := ""
	for {
		page, err := s.ListRunIDs(ctx, after, 3)
		if err != nil {
			t.Fatalf("list run ids: %v", err)
		}
		if len(page) == 0 {
			break
		}
		all = append(all, page...)
		after = page[len(page)-1]
	}
	if strings.Join(all, ",") != "a,b,c,d" {
		t.Fatalf("run ids = %v", all)
	}
}

func pjTestListCheckpoints(t *testing.T, s ProjectionDriver) {
	ctx := context.Background()
	pjWrite(t, s, pjInput("r1", 1, -1, pjHashA))
	time.Sleep(2 * time.Millisecond)
	pjWrite(t, s, pjInput("r2", 1, -1, pjHashA))
	time.Sleep(2 * time.Millisecond)
	pjWrite(t, s, pjInput("r1", 2, 1, pjHashA))
	cps, err := s.ListCheckpoints(ctx, store.ProjectionRun, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(cps) != 2 || cps[0].EntityID != "r1" || cps[1].EntityID != "r2" {
		t.Fatalf("checkpoints (most recent first) = %+v", cps)
	}
	if cps, _ := s.ListCheckpoints(ctx, store.ProjectionCodexWorker, 10); len(cps) != 0 {
		t.Fatalf("worker checkpoints = %+v", cps)
	}
}

func pjTestDrift(t *testing.T, s ProjectionDriver) {
	ctx := context.Background()
	if _, err := s.RecordDrift(ctx, store.DriftIncident{Projection: "run", EntityID: "r1"}); err == nil {
		t.Fatal("drift without reason_class accepted")
	}
	var ids []int64
	for i, reason := range []string{"summary_hash_mismatch", "checkpoint_ahead", "summary_hash_mismatch"} {
		d, err := s.RecordDrift(ctx, store.DriftIncident{
			Projection: "run", EntityID: fmt.Sprintf("r%d", i), ReasonClass: reason,
			Detail: json.RawMessage(`{"z":1,"a":2}`), Origin: "test", Counted: i == 0,
		})
		if err != nil {
			t.Fatalf("record drift: %v", err)
		}
		if d.ID <= 0 || d.ReasonClass != reason || string(d.Detail) != `{"a":2,"z":1}` || d.Counted != (i == 0) || d.Origin != "test" {
			t.Fatalf("recorded drift = %+v detail %s", d, d.Detail)
		}
		ids = append(ids, d.ID)
	}
	all, err := s.ListDrift(ctx, store.DriftQuery{})
	if err != nil || len(all) != 3 || all[0].ID != ids[2] {
		t.Fatalf("list drift (newest first) = %+v, %v", all, err)
	}
	mism, err := s.ListDrift(ctx, store.DriftQuery{ReasonClass: "summary_hash_mismatch"})
	if err != nil || len(mism) != 2 {
		t.Fatalf("list drift by reason = %+v, %v", mism, err)
	}
	tail, err := s.ListDrift(ctx, store.DriftQuery{AfterID: ids[0]})
	if err != nil || len(tail) != 2 || tail[0].ID != ids[1] || tail[1].ID != ids[2] {
		t.Fatalf("list drift after first (ascending) = %+v, %v", tail, err)
	}
	byEntity, err := s.ListDrift(ctx, store.DriftQuery{EntityID: "r1"})
	if err != nil || len(byEntity) != 1 || byEntity[0].ReasonClass != "checkpoint_ahead" {
		t.Fatalf("list drift by entity = %+v, %v", byEntity, err)
	}
}

func pjTestDriftClaimOnce(t *testing.T, s ProjectionDriver) {
	ctx := context.Background()
	const n = 30
	for i := range n {
		if _, err := s.RecordDrift(ctx, store.DriftIncident{Projection: "run", EntityID: fmt.Sprint(i), ReasonClass: "khala_missing", Counted: i%3 == 0}); err != nil {
			t.Fatal(err)
		}
	}
	var (
		mu      sync.Mutex
		claimed []int64
		wg      sync.WaitGroup
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				got, err := s.ClaimUncountedDrift(ctx, 3)
				if err != nil {
					t.Errorf("claim: %v", err)
					return
				}
				if len(got) == 0 {
					return
				}
				mu.Lock()
				for _, d := range got {
					claimed = append(claimed, d.ID)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Slice(claimed, func(i, j int) bool { return claimed[i] < claimed[j] })
	if len(claimed) != n-n/3 {
		t.Fatalf("claimed %d rows, want %d (uncounted ones, each once): %v", len(claimed), n-n/3, claimed)
	}
	for i := 1; i < len(claimed); i++ {
		if claimed[i] == claimed[i-1] {
			t.Fatalf("row %d claimed twice", claimed[i])
		}
	}
	if again, err := s.ClaimUncountedDrift(ctx, 100); err != nil || len(again) != 0 {
		t.Fatalf("second claim = %+v, %v", again, err)
	}
}

func pjTestReplays(t *testing.T, s ProjectionDriver) {
	ctx := context.Background()
	if _, err := s.RecordReplay(ctx, store.ReplayResult{Scope: "run", EntityID: "r1", Result: "maybe"}); err == nil {
		t.Fatal("replay with result maybe accepted")
	}
	a, err := s.RecordReplay(ctx, store.ReplayResult{Scope: "run", EntityID: "r1", Result: store.ReplayOK, Duration: 1500 * time.Microsecond, Origin: "cli:1"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.RecordReplay(ctx, store.ReplayResult{Scope: "run", EntityID: "r2", Result: store.ReplayError, Error: "boom", Counted: true})
	if err != nil {
		t.Fatal(err)
	}
	if a.Duration != 1500*time.Microsecond || b.Error != "boom" || !b.Counted || a.Counted || b.ID <= a.ID {
		t.Fatalf("recorded replays %+v %+v", a, b)
	}
	latest, err := s.ListReplays(ctx, 0, 0)
	if err != nil || len(latest) != 2 || latest[0].ID != b.ID {
		t.Fatalf("list replays (newest first) = %+v, %v", latest, err)
	}
	tail, err := s.ListReplays(ctx, a.ID, 10)
	if err != nil || len(tail) != 1 || tail[0].ID != b.ID {
		t.Fatalf("list replays after a = %+v, %v", tail, err)
	}
	got, err := s.ClaimUncountedReplays(ctx, 10)
	if err != nil || len(got) != 1 || got[0].ID != a.ID || !got[0].Counted {
		t.Fatalf("claim replays = %+v, %v", got, err)
	}
	if again, err := s.ClaimUncountedReplays(ctx, 10); err != nil || len(again) != 0 {
		t.Fatalf("second claim = %+v, %v", again, err)
	}
}
