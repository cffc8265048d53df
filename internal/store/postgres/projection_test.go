package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

// TestProjectionConformance runs the projection sub-suite, each subtest in
// its own fresh schema.
func TestProjectionConformance(t *testing.T) {
	testURL(t)
	storetest.RunProjection(t, func(t *testing.T) storetest.ProjectionDriver { return newTestStore(t) })
}

// WriteProjections: a batch is one transaction; when one write fails its
// precondition, the others are still written one by one and only that one
// reports the conflict.
func TestWriteProjectionsBatchAndFallback(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	in := func(id string, seq, expect int64) store.ProjectionWriteInput {
		return store.ProjectionWriteInput{Projection: store.ProjectionRun, EntityID: id, Topic: store.TopicRunSummaries,
			DocKey: "run:" + id, OwnerSub: "user:1", Doc: json.RawMessage(fmt.Sprintf(`{"seq":%d}`, seq)),
			Hash: strings.Repeat("a", 64), Version: "v1", SourceSeq: seq, ExpectSeq: expect}
	}
	// Given out of order, across two topics: each topic's watermarks go to
	// its writes in entity order.
	other := in("z", 1, -1)
	other.Topic = store.TopicCodexWorkerSummaries
	wms, errs := s.WriteProjections(ctx, []store.ProjectionWriteInput{in("c", 1, -1), other, in("a", 1, -1), in("b", 1, -1)})
	for i, want := range []int64{3, 1, 1, 2} {
		if errs[i] != nil || wms[i] != want {
			t.Fatalf("batch write %d: watermark %d, %v; want %d", i, wms[i], errs[i], want)
		}
	}
	if n := s.projectionFallbacks.Load(); n != 0 {
		t.Fatalf("a valid batch was written one by one (%d fallbacks)", n)
	}
	for _, id := range []string{"a", "b", "c"} {
		doc, err := s.GetDocument(ctx, store.TopicRunSummaries, "run:"+id)
		if err != nil || doc.SourceSeq != 1 || string(doc.Payload) != `{"seq":1}` {
			t.Fatalf("document of %s: %+v, %v", id, doc, err)
		}
	}
	rows, err := s.ReadStream(ctx, store.TopicRunSummaries, 0, 10)
	if err != nil || len(rows) != 3 || rows[0].DocKey != "run:a" || rows[2].DocKey != "run:c" || rows[2].Watermark != 3 {
		t.Fatalf("stream rows %+v, %v", rows, err)
	}
	// b's writer decided from a stale checkpoint (none): a conflict, while
	// a and c advance.
	wms, errs = s.WriteProjections(ctx, []store.ProjectionWriteInput{in("a", 2, 1), in("b", 2, -1), in("c", 2, 1)})
	if errs[0] != nil || errs[2] != nil || !errors.Is(errs[1], store.ErrConflict) {
		t.Fatalf("errors %v, want only the second to conflict", errs)
	}
	if wms[0] == 0 || wms[2] == 0 || wms[1] != 0 {
		t.Fatalf("watermarks %v", wms)
	}
	if n := s.projectionFallbacks.Load(); n != 1 {
		t.Fatalf("fallbacks = %d, want 1 (the batch with the stale writer)", n)
	}
	for id, want := range map[string]int64{"a": 2, "b": 1, "c": 2} {
		cp, err := s.GetCheckpoint(ctx, store.ProjectionRun, id)
		if err != nil || cp.LastSeq != want {
			t.Fatalf("checkpoint of %s: %+v %v, want seq %d", id, cp, err, want)
		}
	}
	// Two writes of one document in a batch cannot be one statement's:
	// written one by one, the second one's precondition fails.
	wms, errs = s.WriteProjections(ctx, []store.ProjectionWriteInput{in("a", 3, 2), in("a", 4, 2)})
	if errs[0] != nil || !errors.Is(errs[1], store.ErrConflict) || wms[0] == 0 {
		t.Fatalf("duplicate in batch: %v %v", wms, errs)
	}
}

// A run's checkpoint and log read together give what GetCheckpoint and
// LoadRunLog give (as storetest.BatchView describes), without payloads.
func TestLoadRunLogAndCheckpoint(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	one := func(id string) store.RunLog {
		t.Helper()
		logs, err := s.LoadRunLogsAndCheckpoints(ctx, store.ProjectionRun, []string{id})
		if err != nil || len(logs) != 1 {
			t.Fatalf("read %s: %d results, %v", id, len(logs), err)
		}
		return logs[0]
	}
	mustCreateRun(t, s, "r1")
	for i := range 3 {
		if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta", Payload: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}); err != nil {
			t.Fatal(err)
		}
	}
	if lr := one("r1"); lr.Err != nil || lr.Checkpoint != nil {
		t.Fatalf("before any projection: checkpoint %v, %v", lr.Checkpoint, lr.Err)
	}
	if _, err := s.WriteProjection(ctx, store.ProjectionWriteInput{Projection: store.ProjectionRun, EntityID: "r1",
		Topic: store.TopicRunSummaries, DocKey: "run:r1", OwnerSub: "user:1", Doc: json.RawMessage(`{}`),
		Hash: strings.Repeat("b", 64), Version: "v1", SourceSeq: 3, ExpectSeq: -1}); err != nil {
		t.Fatal(err)
	}
	lr := one("r1")
	if lr.Err != nil || lr.Checkpoint == nil {
		t.Fatalf("checkpoint %v, %v", lr.Checkpoint, lr.Err)
	}
	wantCP, _ := s.GetCheckpoint(ctx, store.ProjectionRun, "r1")
	wantRun, wantEvs, _ := s.LoadRunLog(ctx, "r1")
	elided, wantEvs := storetest.BatchView(wantRun, wantEvs)
	for _, e := range lr.Events {
		if e.Payload != nil {
			t.Fatalf("event %d read with its payload %s", e.Seq, e.Payload)
		}
	}
	if fmt.Sprint(*lr.Checkpoint) != fmt.Sprint(wantCP) || fmt.Sprint(lr.Run) != fmt.Sprint(wantRun) || fmt.Sprint(lr.Events) != fmt.Sprint(wantEvs) ||
		lr.Elided != elided || elided != 0 || len(lr.Events) != 3 {
		t.Fatalf("combined read differs:\n%v %v %v\nwant %v %v %v", *lr.Checkpoint, lr.Run, lr.Events, wantCP, wantRun, wantEvs)
	}
	if lr := one("missing"); !errors.Is(lr.Err, store.ErrNotFound) {
		t.Fatalf("unknown run: %v, want ErrNotFound", lr.Err)
	}
	if _, _, err := s.LoadRunLog(ctx, "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("LoadRunLog of an unknown run: %v, want ErrNotFound", err)
	}
}

// The batch read elides no damaged log (see storetest.BatchReadOfDamagedLogs).
func TestBatchReadOfDamagedLogs(t *testing.T) {
	s := newTestStore(t)
	storetest.BatchReadOfDamagedLogs(t, s, func(gapRun, belowRun string) {
		ctx := context.Background()
		if _, err := s.pool.Exec(ctx, `DELETE FROM run_events WHERE run_id = $1 AND seq = 3`, gapRun); err != nil {
			t.Fatal(err)
		}
		if _, err := s.pool.Exec(ctx, `INSERT INTO run_events (run_id, seq, event_type, payload, event_hash)
			VALUES ($1, 1, 'run.delta', '{}', 'x')`, belowRun); err != nil {
			t.Fatal(err)
		}
	})
}
