package projection

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/notify"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

const workerOwner = "user:7"

func mkWorker(t *testing.T, st testStore, id string) store.Worker {
	t.Helper()
	w, _, err := st.CreateWorker(context.Background(), store.CreateWorkerInput{
		WorkerID: id, OwnerSub: workerOwner, WorkspaceRef: "ws://" + id, Adapter: "in_memory",
		Metadata: json.RawMessage(`{"team":"core"}`),
	})
	if err != nil {
		t.Fatalf("create worker %s: %v", id, err)
	}
	return w
}

func workerEv(t *testing.T, st testStore, id, eventType string) store.WorkerEvent {
	t.Helper()
	ev, _, err := st.AppendWorkerEvent(context.Background(), store.WorkerEventInput{
		WorkerID: id, EventType: eventType, Payload: json.RawMessage(`{"n":1}`),
	})
	if err != nil {
		t.Fatalf("append %s to worker %s: %v", eventType, id, err)
	}
	return ev
}

func workerCheckpoint(t *testing.T, st testStore, id string) (store.Checkpoint, bool) {
	t.Helper()
	cp, err := st.GetCheckpoint(context.Background(), store.ProjectionCodexWorker, id)
	if errors.Is(err, store.ErrNotFound) {
		return cp, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return cp, true
}

func eventCursor(t *testing.T, st testStore, id string) int64 {
	t.Helper()
	cp, err := st.GetCheckpoint(context.Background(), store.ProjectionCodexWorker, store.WorkerEventsCursorID(id))
	if errors.Is(err, store.ErrNotFound) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return cp.LastSeq
}

func workerDoc(t *testing.T, st testStore, id string) (store.ProjectionDocument, map[string]any) {
	t.Helper()
	doc, err := st.GetDocument(context.Background(), store.TopicCodexWorkerSummaries, WorkerDocKey(id))
	if err != nil {
		t.Fatalf("summary document of %s: %v", id, err)
	}
	var m map[string]any
	if err := json.Unmarshal(doc.Payload, &m); err != nil {
		t.Fatal(err)
	}
	return doc, m
}

// eventLane checks topic runtime.codex_worker_events: watermarks 1..n
// without a gap, and returns per worker the event seqs in watermark order,
// each row checked against the worker's log.
func eventLane(t *testing.T, st testStore) map[string][]int64 {
	t.Helper()
	ctx := context.Background()
	rows, err := st.ReadStream(ctx, store.TopicCodexWorkerEvents, 0, 1000000)
	if err != nil {
		t.Fatal(err)
	}
	logs := map[string][]store.WorkerEvent{}
	out := map[string][]int64{}
	for i, r := range rows {
		if r.Watermark != int64(i+1) {
			t.Fatalf("event lane watermark gap at row %d: %d", i, r.Watermark)
		}
		var d WorkerEventDocument
		if err := json.Unmarshal(r.Payload, &d); err != nil {
			t.Fatal(err)
		}
		if r.DocKey != store.WorkerEventDocKey(d.WorkerID, d.Seq) || r.DocVersion != d.Seq || d.WorkerIDCamel != d.WorkerID {
			t.Fatalf("event row %+v does not match its payload %s", r, r.Payload)
		}
		if _, ok := logs[d.WorkerID]; !ok {
			_, evs, err := st.LoadWorkerLog(ctx, d.WorkerID)
			if err != nil {
				t.Fatal(err)
			}
			logs[d.WorkerID] = evs
		}
		evs := logs[d.WorkerID]
		if d.Seq < 1 || d.Seq > int64(len(evs)) || evs[d.Seq-1].EventType != d.EventType || d.EventTypeCamel != d.EventType ||
			!bytes.Equal(evs[d.Seq-1].Payload, d.Payload) || r.OwnerSub != workerOwner {
			t.Fatalf("event row %s does not match the log", r.Payload)
		}
		out[d.WorkerID] = append(out[d.WorkerID], d.Seq)
	}
	return out
}

// assertWorkersConverged: summary checkpoint, document and rebuild agree at
// the worker's latest seq, and the event lane holds every event exactly
// once in order with the cursor at the end.
func assertWorkersConverged(t *testing.T, st testStore, p *Projector, ids ...string) {
	t.Helper()
	ctx := context.Background()
	lane := eventLane(t, st)
	for _, id := range ids {
		w, evs, err := st.LoadWorkerLog(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		cp, ok := workerCheckpoint(t, st, id)
		if !ok || cp.LastSeq != w.LatestSeq || cp.DocKey != WorkerDocKey(id) {
			t.Fatalf("%s: checkpoint %+v, latest seq %d", id, cp, w.LatestSeq)
		}
		doc, _ := workerDoc(t, st, id)
		dh, _ := SummaryHash(doc.Payload)
		sum, _ := BuildWorkerSummary(w, evs, p.Version(), p.cfg.Now())
		_, rh, _ := encodeWorkerSummary(sum)
		if cp.SummaryHash != dh || dh != rh || doc.SummaryHash != rh || doc.SourceSeq != cp.LastSeq || doc.OwnerSub != w.OwnerSub {
			t.Fatalf("%s: hashes cp %s doc %s (stored %s) rebuilt %s", id, cp.SummaryHash, dh, doc.SummaryHash, rh)
		}
		if c := eventCursor(t, st, id); c != w.LatestSeq {
			t.Fatalf("%s: event cursor %d, latest seq %d", id, c, w.LatestSeq)
		}
		seqs := lane[id]
		if int64(len(seqs)) != w.LatestSeq {
			t.Fatalf("%s: event lane %v, want 1..%d once each", id, seqs, w.LatestSeq)
		}
		for i, s := range seqs {
			if s != int64(i+1) {
				t.Fatalf("%s: event lane %v, want 1..%d in order", id, seqs, w.LatestSeq)
			}
		}
	}
}

func TestBuildWorkerSummary(t *testing.T) {
	started := time.Date(2026, 2, 19, 10, 0, 0, 0, time.UTC)
	hb := started.Add(2 * time.Second)
	stopped := started.Add(5 * time.Second)
	w := store.Worker{WorkerID: "w1", OwnerSub: "guest:team-a", Status: store.WorkerStopped, LatestSeq: 3,
		WorkspaceRef: "ws://a", Adapter: "in_memory", Metadata: json.RawMessage(`{"b":1,"a":[1]}`),
		LastHeartbeatAt: &hb, StartedAt: started, StoppedAt: &stopped, CreatedAt: started, UpdatedAt: stopped}
	evs := []store.WorkerEvent{
		{WorkerID: "w1", Seq: 1, EventType: "worker.started", CreatedAt: started},
		{WorkerID: "w1", Seq: 2, EventType: "worker.heartbeat", CreatedAt: hb},
		{WorkerID: "w1", Seq: 3, EventType: "worker.stopped", CreatedAt: stopped.Add(42 * time.Microsecond)},
	}
	s1, gaps := BuildWorkerSummary(w, evs, "v1", started.Add(time.Hour))
	if len(gaps) != 0 {
		t.Fatalf("gaps = %+v", gaps)
	}
	doc, h1, err := encodeWorkerSummary(s1)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"document_id": "runtime/codex_worker_summary:w1", "kind": "codex_worker_summary", "worker_id": "w1",
		"status": "stopped", "owner_user_id": nil, "owner_guest_scope": "team-a", "workspace_ref": "ws://a",
		"codex_home_ref": nil, "adapter": "in_memory", "latest_seq": 3.0, "event_count": 3.0,
		"latest_event_type": "worker.stopped", "latest_event_at": "2026-02-19T10:00:05.000042Z",
		"started_at": "2026-02-19T10:00:00.000000Z", "stopped_at": "2026-02-19T10:00:05.000000Z",
		"last_heartbeat_at": "2026-02-19T10:00:02.000000Z", "updated_at": "2026-02-19T10:00:05.000042Z",
		"projection_version": "v1", "projected_at": "2026-02-19T11:00:00.000000Z",
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %#v, want %#v", k, m[k], v)
		}
	}
	if len(m) != len(want)+2 { // + metadata, runtime_source
		t.Errorf("document has %d fields: %s", len(m), doc)
	}
	if md, _ := json.Marshal(m["metadata"]); string(md) != `{"a":[1],"b":1}` {
		t.Errorf("metadata = %s", md)
	}
	rs, _ := m["runtime_source"].(map[string]any)
	if len(rs) != 3 || rs["entity"] != "codex_worker" || rs["worker_id"] != "w1" || rs["seq"] != 3.0 {
		t.Errorf("runtime_source = %#v", m["runtime_source"])
	}
	// projected_at is not part of the hash; everything else is.
	s2, _ := BuildWorkerSummary(w, evs, "v1", started.Add(48*time.Hour))
	if _, h2, _ := encodeWorkerSummary(s2); h2 != h1 || len(h1) != 64 {
		t.Fatalf("hash depends on projected_at: %s vs %s", h1, h2)
	}
	for name, mut := range map[string]func(*store.Worker){
		"status":    func(w *store.Worker) { w.Status = store.WorkerFailed },
		"heartbeat": func(w *store.Worker) { w.LastHeartbeatAt = nil },
		"metadata":  func(w *store.Worker) { w.Metadata = json.RawMessage(`{}`) },
		"owner":     func(w *store.Worker) { w.OwnerSub = "user:team-a" },
	} {
		w2 := w
		mut(&w2)
		s3, _ := BuildWorkerSummary(w2, evs, "v1", started)
		if _, h3, _ := encodeWorkerSummary(s3); h3 == h1 {
			t.Errorf("hash ignores %s", name)
		}
	}

	// A user owner, absent metadata, a gap in the middle and at the tail.
	w.OwnerSub, w.Metadata, w.LatestSeq = "user:9", nil, 5
	s4, gaps := BuildWorkerSummary(w, []store.WorkerEvent{evs[0], evs[2]}, "v1", started)
	if s4.OwnerUserID == nil || *s4.OwnerUserID != "9" || s4.OwnerGuestScope != nil || string(s4.Metadata) != `{}` {
		t.Fatalf("summary = %+v", s4)
	}
	if len(gaps) != 2 || gaps[0] != (Gap{ExpectedSeq: 2, LastSeen: 1, IncomingSeq: 3}) || gaps[1] != (Gap{ExpectedSeq: 4, LastSeen: 3}) {
		t.Fatalf("gaps = %+v", gaps)
	}
	if s4.LatestEventType != nil || s4.EventCount != 2 {
		t.Fatalf("tail missing: %+v", s4)
	}

	// An event document carries both key styles and no projected_at.
	ed, _, err := encodeDoc(BuildWorkerEventDocument(evs[2], "v1"), "x")
	if err != nil {
		t.Fatal(err)
	}
	want2 := `{"document_id":"runtime/codex_worker_event:w1:3","eventType":"worker.stopped","event_type":"worker.stopped",` +
		`"kind":"codex_worker_event","occurredAt":"2026-02-19T10:00:05.000042Z","occurred_at":"2026-02-19T10:00:05.000042Z",` +
		`"payload":{},"projection_version":"v1","runtime_source":{"entity":"codex_worker","seq":3,"worker_id":"w1"},` +
		`"seq":3,"workerId":"w1","worker_id":"w1"}`
	if string(ed) != want2 {
		t.Fatalf("event document\n got %s\nwant %s", ed, want2)
	}
}

// TestWorkerLifecycleProjected: the worker summary follows create,
// heartbeat, events and stop with the run decision table; the event lane
// gets every event once.
func TestWorkerLifecycleProjected(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		m, reg := newMetrics(t)
		p := New(st, nil, nil, m, Config{Serving: true})
		if !p.ProjectsWorkers() {
			t.Fatal("the test store has a worker side")
		}
		mkWorker(t, st, "w1")
		out, err := p.ProjectWorker(ctx, "w1")
		if err != nil || out.Decision != (Decision{Action: ActionWrite}) || out.Result != "ok" || out.LagEvents != 1 ||
			out.EventsAppended != 1 || out.EventsCursor != 1 || out.EventsWatermark != 1 || out.Watermark != 1 {
			t.Fatalf("after create = %+v, %v", out, err)
		}
		doc, sum := workerDoc(t, st, "w1")
		if sum["status"] != "starting" || sum["latest_seq"] != 1.0 || sum["owner_user_id"] != "7" || sum["last_heartbeat_at"] != nil ||
			doc.OwnerSub != workerOwner || doc.SourceSeq != 1 || doc.Topic != store.TopicCodexWorkerSummaries {
			t.Fatalf("summary after create = %+v %v", doc, sum)
		}

		out, err = p.ProjectWorker(ctx, "w1")
		if err != nil || out.Decision.Reason != ReasonIdempotent || out.Result != "skipped" || out.EventsAppended != 0 {
			t.Fatalf("repeat = %+v, %v", out, err)
		}

		if _, _, err := st.HeartbeatWorker(ctx, "w1", store.TraceContext{}); err != nil {
			t.Fatal(err)
		}
		if out, err = p.ProjectWorker(ctx, "w1"); err != nil || out.Result != "ok" || out.LagEvents != 1 || out.EventsAppended != 1 {
			t.Fatalf("after heartbeat = %+v, %v", out, err)
		}
		if _, sum = workerDoc(t, st, "w1"); sum["status"] != "running" || sum["last_heartbeat_at"] == nil || sum["latest_event_type"] != "worker.heartbeat" {
			t.Fatalf("summary after heartbeat = %v", sum)
		}

		workerEv(t, st, "w1", "worker.request.received")
		workerEv(t, st, "w1", "worker.response")
		if out, err = p.ProjectWorker(ctx, "w1"); err != nil || out.LagEvents != 2 || out.EventsAppended != 2 || out.Seq != 4 {
			t.Fatalf("after two events = %+v, %v", out, err)
		}
		if _, sum = workerDoc(t, st, "w1"); sum["event_count"] != 4.0 || sum["latest_event_type"] != "worker.response" {
			t.Fatalf("summary after events = %v", sum)
		}

		if _, stopped, err := st.StopWorker(ctx, "w1", "done", store.TraceContext{}); err != nil || !stopped {
			t.Fatal(err)
		}
		if out, err = p.ProjectWorker(ctx, "w1"); err != nil || out.LagEvents != 2 || out.EventsAppended != 2 || out.Seq != 6 {
			t.Fatalf("after stop = %+v, %v", out, err)
		}
		if _, sum = workerDoc(t, st, "w1"); sum["status"] != "stopped" || sum["stopped_at"] == nil || sum["latest_event_type"] != "worker.stopped" {
			t.Fatalf("summary after stop = %v", sum)
		}
		// Reattach continues the same log.
		if _, outcome, err := st.CreateWorker(ctx, store.CreateWorkerInput{WorkerID: "w1", OwnerSub: workerOwner,
			WorkspaceRef: "ws://w1", Adapter: "in_memory", Metadata: json.RawMessage(`{"team":"core"}`)}); err != nil || outcome != store.WorkerReattached {
			t.Fatalf("reattach: %q %v", outcome, err)
		}
		if out, err = p.ProjectWorker(ctx, "w1"); err != nil || out.Seq != 7 || out.EventsAppended != 1 {
			t.Fatalf("after reattach = %+v, %v", out, err)
		}
		assertWorkersConverged(t, st, p, "w1")
		if rows, _ := st.ReadStream(ctx, store.TopicCodexWorkerSummaries, 0, 100); len(rows) != 5 {
			t.Fatalf("summary stream rows = %d, want one per write (5)", len(rows))
		}

		lbl := map[string]string{"projection": telemetry.ProjectionCodexWorkerSummary}
		if got := metricValue(t, reg, telemetry.KhalaProjectionLag, lbl); got != 5 {
			t.Errorf("worker lag observations = %v, want 5 (one per summary write)", got)
		}
		if got := histogramSum(t, reg, telemetry.KhalaProjectionLag); got != 7 {
			t.Errorf("lag sum = %v, want 7 (1+1+2+2+1)", got)
		}
		ok := metricValue(t, reg, telemetry.KhalaProjectionWrites, map[string]string{"projection": telemetry.ProjectionCodexWorkerSummary, "result": "ok"})
		if ok != 10 { // 5 summary writes + 5 event-lane batches
			t.Errorf("worker ok writes = %v, want 10", ok)
		}
		if got := metricValue(t, reg, telemetry.KhalaProjectionWrites, map[string]string{"projection": telemetry.ProjectionRunSummary}); got != 0 {
			t.Errorf("run writes = %v for a worker", got)
		}
	})
}

// TestWorkerDecisionsAndDrift: the worker summary goes through the same
// decision table as runs, drift rows carry projection codex_worker and the
// metric codex_worker_summary; an event cursor ahead of the log is
// checkpoint_ahead drift, parked, and never moved by the projector.
func TestWorkerDecisionsAndDrift(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		m, reg := newMetrics(t)
		p := New(st, nil, nil, m, Config{Serving: true})
		mkWorker(t, st, "w1")
		workerEv(t, st, "w1", "worker.response")
		if _, err := p.ProjectWorker(ctx, "w1"); err != nil {
			t.Fatal(err)
		}
		exec(t, `UPDATE khala_projection_checkpoints SET summary_hash = '`+strings.Repeat("0", 64)+`' WHERE entity_id = 'w1'`)
		out, err := p.ProjectWorker(ctx, "w1")
		if err != nil || out.Decision != (Decision{Action: ActionWrite, Reason: ReasonSummaryHashMismatch, Drift: true}) || out.Result != "ok" {
			t.Fatalf("hash mismatch = %+v, %v", out, err)
		}
		p2 := New(st, nil, nil, m, Config{Serving: true, Version: "khala_summary_v2"})
		if out, err = p2.ProjectWorker(ctx, "w1"); err != nil || out.Decision.Reason != ReasonProjectionVersionChanged {
			t.Fatalf("version change = %+v, %v", out, err)
		}
		exec(t, `UPDATE khala_projection_checkpoints SET last_seq = 999 WHERE entity_id = 'w1'`)
		for range 3 {
			if out, err = p2.ProjectWorker(ctx, "w1"); err != nil || out.Decision != (Decision{Action: ActionSkip, Reason: ReasonCheckpointAhead, Drift: true}) {
				t.Fatalf("checkpoint ahead = %+v, %v", out, err)
			}
		}
		if cp, _ := workerCheckpoint(t, st, "w1"); cp.LastSeq != 999 {
			t.Fatalf("checkpoint_ahead wrote: %+v", cp)
		}
		// The worker stays a candidate but the loop parks it: no rebuild.
		skipped := metricValue(t, reg, telemetry.KhalaProjectionWrites, map[string]string{"result": "skipped"})
		p2.Cycle(ctx)
		if _, parked := p2.parked[entityKey{store.ProjectionCodexWorker, "w1"}]; !parked {
			t.Fatal("worker with its checkpoint ahead not parked")
		}
		if got := metricValue(t, reg, telemetry.KhalaProjectionWrites, map[string]string{"result": "skipped"}); got != skipped {
			t.Fatalf("a parked worker was projected again: skipped %v -> %v", skipped, got)
		}

		// An event cursor ahead of the log.
		mkWorker(t, st, "w2")
		if _, err := p.ProjectWorker(ctx, "w2"); err != nil {
			t.Fatal(err)
		}
		exec(t, `UPDATE khala_projection_checkpoints SET last_seq = 50 WHERE entity_id = '`+store.WorkerEventsCursorID("w2")+`'`)
		workerEv(t, st, "w2", "worker.response")
		for range 2 {
			out, err = p.ProjectWorker(ctx, "w2")
			if err != nil || out.EventsAppended != 0 || out.EventsCursor != 50 || out.Result != "ok" && out.Result != "skipped" {
				t.Fatalf("cursor ahead = %+v, %v", out, err)
			}
		}
		if c := eventCursor(t, st, "w2"); c != 50 {
			t.Fatalf("cursor moved by the projector: %d", c)
		}
		if lane := eventLane(t, st); len(lane["w2"]) != 1 {
			t.Fatalf("event lane of w2 = %v", lane["w2"])
		}

		for reason, want := range map[string]int{
			ReasonSummaryHashMismatch: 1, ReasonProjectionVersionChanged: 1, ReasonCheckpointAhead: 2,
		} {
			rows := driftRows(t, st, reason)
			if len(rows) != want {
				t.Errorf("%s drift rows = %d, want %d", reason, len(rows), want)
			}
			for _, r := range rows {
				if r.Projection != store.ProjectionCodexWorker || !r.Counted {
					t.Errorf("%s row = %+v", reason, r)
				}
			}
			if got := metricValue(t, reg, telemetry.KhalaProjectionDriftIncidents,
				map[string]string{"projection": telemetry.ProjectionCodexWorkerSummary, "reason_class": reason}); got != float64(want) {
				t.Errorf("%s drift metric = %v, want %d", reason, got, want)
			}
		}
		rows := driftRows(t, st, ReasonCheckpointAhead)
		var lanes int
		for _, r := range rows {
			if r.EntityID == "w2" && strings.Contains(string(r.Detail), store.TopicCodexWorkerEvents) {
				lanes++
			}
		}
		if lanes != 1 {
			t.Fatalf("event cursor drift rows = %d: %+v", lanes, rows)
		}

		// Reprojection repairs both; a dry run already counts the cursor.
		if rep, err := p.Reproject(ctx, Scope{WorkerID: "w2", DryRun: true}, nil); err != nil || rep.Changed != 1 {
			t.Fatalf("dry run of a worker whose only fault is its cursor = %+v, %v", rep, err)
		}
		for _, id := range []string{"w1", "w2"} {
			if rep, err := p.Reproject(ctx, Scope{WorkerID: id}, nil); err != nil || rep.Failed != 0 || rep.Total != 1 {
				t.Fatalf("reproject %s = %+v, %v", id, rep, err)
			}
		}
		assertWorkersConverged(t, st, p, "w1", "w2")
	})
}

// TestWorkerReprojectConverges: corrupt worker checkpoints, documents and
// event cursors; reproject --worker-id and --all repair them with replay
// rows of scope codex_worker, and the event lane stays exactly once.
func TestWorkerReprojectConverges(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		m, reg := newMetrics(t)
		p := New(st, nil, nil, m, Config{Serving: true})
		ids := []string{"w1", "w2", "w3", "w4"}
		for _, id := range ids {
			mkWorker(t, st, id)
			workerEv(t, st, id, "worker.response")
			if _, err := p.ProjectWorker(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		mkRun(t, st, "r1", "run.started")
		workerEv(t, st, "w4", "worker.response") // w4 lags behind its log
		zero := strings.Repeat("0", 64)
		exec(t, `UPDATE khala_projection_checkpoints SET last_seq = 999, summary_hash = '`+zero+`' WHERE entity_id = 'w1'`)
		exec(t, `UPDATE khala_projection_checkpoints SET last_seq = 999 WHERE entity_id = '`+store.WorkerEventsCursorID("w1")+`'`)
		exec(t, `UPDATE khala_documents SET payload = '{"bogus":true}' WHERE doc_key = 'runtime/codex_worker_summary:w2'`)
		exec(t, `DELETE FROM khala_projection_checkpoints WHERE entity_id = 'w3'`)
		exec(t, `DELETE FROM khala_documents WHERE doc_key = 'runtime/codex_worker_summary:w3'`)

		dry, err := p.Reproject(ctx, Scope{All: true, DryRun: true}, nil)
		if err != nil || dry.Total != 5 || dry.Changed != 4 || dry.Failed != 0 { // r1 has no checkpoint yet
			t.Fatalf("dry run = %+v, %v", dry, err)
		}
		if cp, _ := workerCheckpoint(t, st, "w1"); cp.LastSeq != 999 {
			t.Fatal("dry run wrote a checkpoint")
		}

		rep, err := p.Reproject(ctx, Scope{WorkerID: "w1"}, nil)
		if err != nil || rep.Total != 1 || rep.Succeeded != 1 || !rep.Entities[0].Changed || rep.Entities[0].Scope != store.ProjectionCodexWorker {
			t.Fatalf("reproject w1 = %+v, %v", rep, err)
		}
		assertWorkersConverged(t, st, p, "w1")

		var scopes []string
		rep, err = p.Reproject(ctx, Scope{All: true}, nil)
		if err != nil || rep.Total != 5 || rep.Succeeded != 5 || rep.Failed != 0 {
			t.Fatalf("reproject all = %+v, %v", rep, err)
		}
		for _, e := range rep.Entities {
			scopes = append(scopes, e.Scope+":"+e.EntityID)
		}
		if got := strings.Join(scopes, ","); got != "run:r1,codex_worker:w1,codex_worker:w2,codex_worker:w3,codex_worker:w4" {
			t.Fatalf("reprojected %s (runs first, then workers)", got)
		}
		assertWorkersConverged(t, st, p, ids...)
		assertConverged(t, st, p, "r1")
		if ar, err := p.Audit(ctx, 100); err != nil || ar.Status != "ok" || ar.Sampled != 5 {
			t.Fatalf("audit after reproject = %+v, %v", ar, err)
		}
		rs, _ := st.ListReplays(ctx, 0, 100)
		workerRows := 0
		for _, r := range rs {
			if r.Result != store.ReplayOK || !r.Counted {
				t.Fatalf("replay row %+v", r)
			}
			if r.Scope == store.ProjectionCodexWorker {
				workerRows++
			}
		}
		if workerRows != 5 {
			t.Fatalf("worker replay rows = %d, want 5", workerRows)
		}
		if got := metricValue(t, reg, telemetry.KhalaProjectionReplays, map[string]string{"scope": "codex_worker", "result": "ok"}); got != 5 {
			t.Fatalf("worker replay metric = %v", got)
		}
		// Again: nothing changes, nothing is appended twice.
		if rep, err := p.Reproject(ctx, Scope{WorkerID: "w2"}, nil); err != nil || rep.Changed != 0 {
			t.Fatalf("second reproject = %+v, %v", rep, err)
		}
		assertWorkersConverged(t, st, p, ids...)

		if _, err := p.Reproject(ctx, Scope{WorkerID: "nope"}, nil); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown worker: %v", err)
		}
		if _, err := p.Reproject(ctx, Scope{RunID: "r1", WorkerID: "w1"}, nil); !errors.Is(err, ErrEmptyScope) {
			t.Fatalf("two scopes: %v", err)
		}
		// A replay failure of a worker is recorded with its scope.
		p.SetReplayFault(true)
		if rep, _ := p.Reproject(ctx, Scope{WorkerID: "w1"}, nil); rep.Failed != 1 {
			t.Fatalf("faulted reproject = %+v", rep)
		}
		if got := metricValue(t, reg, telemetry.KhalaProjectionReplays, map[string]string{"scope": "codex_worker", "result": "error"}); got != 1 {
			t.Fatalf("worker replay error metric = %v", got)
		}
	})
}

// lossyStore loses the answer of every third event-lane write after it
// committed (the crash window between commit and the projector noting it),
// and fails every fifth outright before writing.
type lossyStore struct {
	testStore
	calls atomic.Int64
}

func (l *lossyStore) WriteWorkerEvents(ctx context.Context, in store.WorkerEventsWriteInput) (store.WorkerEventsWriteResult, error) {
	n := l.calls.Add(1)
	if n%5 == 0 {
		return store.WorkerEventsWriteResult{}, errors.New("injected: connection lost before commit")
	}
	res, err := l.testStore.WriteWorkerEvents(ctx, in)
	if err == nil && n%3 == 0 {
		return store.WorkerEventsWriteResult{}, errors.New("injected: connection lost after commit")
	}
	return res, err
}

// TestWorkerEventsExactlyOnceAcrossRestart: a serving projector woken by
// worker notices is stopped in the middle of a stream of worker writes and
// a new one (no memory of the first) takes over, while writes fail before
// and after commit; then two replicas race. The event lane ends gap-free
// with every event exactly once, in order, and the summaries converge.
func TestWorkerEventsExactlyOnceAcrossRestart(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		hub := notify.NewHub()
		go func() { _ = hub.Run(ctx, st) }()
		lossy := &lossyStore{testStore: st}
		// An hour between polls: only worker notices wake the loop.
		cfg := Config{Serving: true, PollInterval: time.Hour, BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond}
		start := func() *Projector {
			p := New(lossy, nil, hub, nil, cfg)
			if err := p.Start(ctx); err != nil {
				t.Fatal(err)
			}
			return p
		}
		ids := []string{"w1", "w2", "w3"}
		for _, id := range ids {
			mkWorker(t, st, id)
		}
		write := func(rounds int) {
			var wg sync.WaitGroup
			for _, id := range ids {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range rounds {
						var err error
						if i%4 == 0 {
							_, _, err = st.HeartbeatWorker(ctx, id, store.TraceContext{})
						} else {
							_, _, err = st.AppendWorkerEvent(ctx, store.WorkerEventInput{WorkerID: id, EventType: "worker.response",
								Payload: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))})
						}
						if err != nil {
							t.Errorf("%s: %v", id, err)
							return
						}
					}
				}()
			}
			wg.Wait()
		}
		caughtUp := func(ps ...*Projector) func() bool {
			return func() bool {
				for _, id := range ids {
					w, err := st.GetWorker(ctx, id)
					if err != nil {
						return false
					}
					cp, ok := workerCheckpoint(t, st, id)
					if eventCursor(t, st, id) != w.LatestSeq || !ok || cp.LastSeq != w.LatestSeq {
						return false
					}
				}
				return true
			}
		}

		p1 := start()
		write(15)
		p1.Stop() // restart: whatever p1 had in flight is gone
		p2 := start()
		write(15)
		eventually(t, "the restarted projector catches up", caughtUp(p2))
		// Replicas racing on the same workers.
		p3 := start()
		write(20)
		for _, id := range ids {
			if _, stopped, err := st.StopWorker(ctx, id, "", store.TraceContext{}); err != nil || !stopped {
				t.Fatalf("stop %s: %v", id, err)
			}
		}
		eventually(t, "replicas catch up", caughtUp(p2, p3))
		p2.Stop()
		p3.Stop()
		if lossy.calls.Load() < 10 {
			t.Fatalf("only %d event-lane writes: the loss injection was not exercised", lossy.calls.Load())
		}
		assertWorkersConverged(t, st, p2, ids...)
		lane := eventLane(t, st)
		total := 0
		for _, id := range ids {
			total += len(lane[id])
		}
		if total != 3*(1+15+15+20+2) {
			t.Fatalf("event lane holds %d events, want %d", total, 3*(1+15+15+20+2))
		}
		if ds := driftRows(t, st, ""); len(ds) != 0 {
			t.Fatalf("drift during restart and replicas: %+v", ds)
		}
	})
}

// TestWorkerAuditFindings: verify finds summary_hash_mismatch,
// hash_and_lag_drift and khala_missing on worker summaries, with projection
// codex_worker, and the command prints them.
func TestWorkerAuditFindings(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		m, reg := newMetrics(t)
		p := New(st, nil, nil, m, Config{Serving: true})
		for _, id := range []string{"ok1", "mism", "gone", "both"} {
			mkWorker(t, st, id)
			if _, err := p.ProjectWorker(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		mkRun(t, st, "r1", "run.started")
		if _, err := p.ProjectRun(ctx, "r1"); err != nil {
			t.Fatal(err)
		}
		if rep, err := p.Audit(ctx, 0); err != nil || rep.Status != "ok" || rep.Sampled != 5 {
			t.Fatalf("clean audit = %+v, %v", rep, err)
		}
		exec(t, `UPDATE khala_documents SET payload = '{"worker_id":"mism","status":"tampered"}' WHERE doc_key = 'runtime/codex_worker_summary:mism'`)
		exec(t, `DELETE FROM khala_documents WHERE doc_key = 'runtime/codex_worker_summary:gone'`)
		exec(t, `UPDATE khala_documents SET payload = '{"worker_id":"both"}' WHERE doc_key = 'runtime/codex_worker_summary:both'`)
		workerEv(t, st, "both", "worker.response") // and the checkpoint lags the log
		workerEv(t, st, "ok1", "worker.response")  // plain projector lag is not drift

		rep, err := p.Audit(ctx, 100)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, f := range rep.Findings {
			if f.Projection != store.ProjectionCodexWorker {
				t.Errorf("finding %+v", f)
			}
			got[f.EntityID] = f.ReasonClass
		}
		want := map[string]string{"mism": ReasonSummaryHashMismatch, "gone": ReasonKhalaMissing, "both": ReasonHashAndLagDrift}
		if len(got) != len(want) {
			t.Fatalf("findings = %+v", rep.Findings)
		}
		for id, r := range want {
			if got[id] != r {
				t.Errorf("%s: finding %q, want %q", id, got[id], r)
			}
		}
		if rep.Sampled != 5 || rep.Mismatches != 3 || rep.Missing != 1 || rep.HashMismatches != 2 {
			t.Fatalf("report = %+v", rep)
		}
		for r := range want {
			rows := driftRows(t, st, want[r])
			if len(rows) != 1 || rows[0].Projection != store.ProjectionCodexWorker || rows[0].EntityID != r {
				t.Errorf("%s drift rows = %+v", want[r], rows)
			}
			if v := metricValue(t, reg, telemetry.KhalaProjectionDriftIncidents,
				map[string]string{"projection": telemetry.ProjectionCodexWorkerSummary, "reason_class": want[r]}); v != 1 {
				t.Errorf("%s drift metric = %v", want[r], v)
			}
		}

		var out, errb bytes.Buffer
		code := Command(ctx, st, nil, []string{"verify"}, &out, &errb, false)
		if code != 1 || !strings.Contains(out.String(), "verify projection=codex_worker entity=gone reason_class=khala_missing") ||
			!strings.Contains(out.String(), "entity=both reason_class=hash_and_lag_drift") {
			t.Fatalf("verify command: %d %q %q", code, out.String(), errb.String())
		}
		out.Reset()
		code = Command(ctx, st, nil, []string{"reproject", "--worker-id", "both"}, &out, &errb, false)
		if code != 0 || !strings.Contains(out.String(), "reproject scope=codex_worker entity=both result=ok changed=true seq=2") {
			t.Fatalf("reproject --worker-id: %d %q %q", code, out.String(), errb.String())
		}
		out.Reset()
		if code := Command(ctx, st, nil, []string{"reproject", "--all"}, &out, &errb, false); code != 0 ||
			!strings.Contains(out.String(), "total=5 succeeded=5 failed=0") {
			t.Fatalf("reproject --all: %d %q", code, out.String())
		}
		if rep, err := p.Audit(ctx, 100); err != nil || rep.Status != "ok" {
			t.Fatalf("audit after repair = %+v, %v", rep, err)
		}
	})
}

// TestWorkerEventLaneSurvivesSinkOutage: with the external Khala down the
// worker summaries wait (checkpoints hold), but the event lane, written
// locally, keeps up for every worker in the pass; after recovery the
// summaries converge with Khala's hashes.
func TestWorkerEventLaneSurvivesSinkOutage(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		fk := newFakeKhala()
		srv := httptest.NewServer(fk)
		defer srv.Close()
		m, reg := newMetrics(t)
		p := New(st, &HTTPSink{BaseURL: srv.URL, AdminKey: "admin-secret", Store: st}, nil, m, Config{Serving: true})
		var ids []string
		for i := range 6 {
			id := fmt.Sprintf("w%d", i)
			ids = append(ids, id)
			mkWorker(t, st, id)
			workerEv(t, st, id, "worker.response")
		}
		fk.mode.Store("http_5xx")
		p.Cycle(ctx)
		fk.mu.Lock()
		posts := fk.seen["POST "+MutationPath]
		fk.mu.Unlock()
		if posts != maxSinkFailuresPerPass {
			t.Fatalf("%d posts against a down sink in one pass, want %d", posts, maxSinkFailuresPerPass)
		}
		lane := eventLane(t, st)
		for _, id := range ids {
			if len(lane[id]) != 2 || eventCursor(t, st, id) != 2 {
				t.Fatalf("%s: event lane %v while the sink is down", id, lane[id])
			}
			if _, ok := workerCheckpoint(t, st, id); ok {
				t.Fatalf("%s: summary checkpoint advanced without a successful write", id)
			}
		}
		if got := metricValue(t, reg, telemetry.KhalaProjectionWriteFailures,
			map[string]string{"projection": telemetry.ProjectionCodexWorkerSummary, "reason_class": ClassHTTP5xx}); got != maxSinkFailuresPerPass {
			t.Fatalf("worker write failures = %v", got)
		}
		// New events keep flowing into the lane during the outage, even for
		// workers whose summary is backing off.
		for _, id := range ids {
			workerEv(t, st, id, "worker.response")
		}
		p.Cycle(ctx)
		lane = eventLane(t, st)
		for _, id := range ids {
			if len(lane[id]) != 3 {
				t.Fatalf("%s: event lane %v during the outage", id, lane[id])
			}
		}

		fk.mode.Store("up")
		p2 := New(st, &HTTPSink{BaseURL: srv.URL, AdminKey: "admin-secret", Store: st}, nil, nil, Config{Serving: true})
		p2.Cycle(ctx)
		assertWorkersConverged(t, st, p2, ids...)
		for _, id := range ids {
			cp, _ := workerCheckpoint(t, st, id)
			if fk.hash(WorkerDocKey(id)) != cp.SummaryHash {
				t.Fatalf("%s: khala has %q, checkpoint %q", id, fk.hash(WorkerDocKey(id)), cp.SummaryHash)
			}
		}
	})
}

// runOnlyStore hides the worker side of a store.
type runOnlyStore struct{ store.ProjectionStore }

func TestStoreWithoutWorkers(t *testing.T) {
	st, _ := openSQLite(t)
	ctx := context.Background()
	p := New(runOnlyStore{st}, nil, nil, nil, Config{})
	if p.ProjectsWorkers() {
		t.Fatal("a store without a worker side projects workers")
	}
	mkRun(t, st, "r1", "run.started")
	mkWorker(t, st, "w1")
	p.Cycle(ctx)
	if _, ok := checkpoint(t, st, "r1"); !ok {
		t.Fatal("run not projected")
	}
	if _, err := p.ProjectWorker(ctx, "w1"); !errors.Is(err, ErrNoWorkers) {
		t.Fatalf("ProjectWorker = %v", err)
	}
	if _, err := p.Reproject(ctx, Scope{WorkerID: "w1"}, nil); !errors.Is(err, ErrNoWorkers) {
		t.Fatalf("Reproject worker = %v", err)
	}
	var out, errb bytes.Buffer
	if code := Command(ctx, runOnlyStore{st}, nil, []string{"reproject", "--worker-id", "w1"}, &out, &errb, false); code != 2 {
		t.Fatalf("command exit %d: %q", code, errb.String())
	}
	if rep, err := p.Reproject(ctx, Scope{All: true}, nil); err != nil || rep.Total != 1 {
		t.Fatalf("reproject all without workers = %+v, %v", rep, err)
	}
}

// TestWorkerHandlers: the operator endpoints take worker ids.
func TestWorkerHandlers(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		p := New(st, nil, nil, nil, Config{Serving: true})
		mkWorker(t, st, "w1")
		if _, err := p.ProjectWorker(ctx, "w1"); err != nil {
			t.Fatal(err)
		}
		workerEv(t, st, "w1", "worker.response")
		h := serve(t, p, false)

		code, out := do(t, h, "GET", "/internal/v1/projectors/checkpoints/w1?projection=codex_worker", "")
		if code != 200 || out["projection"] != "codex_worker" || out["lag_events"] != 1.0 || out["runtime_latest_seq"] != 2.0 {
			t.Fatalf("worker checkpoint view = %d %v", code, out)
		}
		if doc, _ := out["document"].(map[string]any); doc["document_id"] != WorkerDocKey("w1") || doc["topic"] != store.TopicCodexWorkerSummaries {
			t.Fatalf("document = %v", out["document"])
		}
		if ec, _ := out["events_cursor"].(map[string]any); ec["last_seq"] != 1.0 || ec["document_id"] != "runtime/codex_worker_event:w1:1" {
			t.Fatalf("events cursor = %v", out["events_cursor"])
		}
		if code, _ := do(t, h, "GET", "/internal/v1/projectors/checkpoints/w1", ""); code != 404 {
			t.Fatalf("a worker id as a run = %d", code)
		}
		if code, out := do(t, h, "GET", "/internal/v1/projectors/checkpoints/w1?projection=bogus", ""); code != 400 || !strings.HasPrefix(errMessage(out), "projection") {
			t.Fatalf("bad projection = %d %v", code, out)
		}

		code, out = do(t, h, "POST", "/internal/v1/projectors/reproject", `{"worker_id":"w1"}`)
		rep, _ := out["report"].(map[string]any)
		if code != 200 || out["ok"] != true || rep["total"] != 1.0 {
			t.Fatalf("reproject worker = %d %v", code, out)
		}
		assertWorkersConverged(t, st, p, "w1")
		if code, out := do(t, h, "POST", "/internal/v1/projectors/reproject", `{"worker_id":"nope"}`); code != 404 || !strings.HasPrefix(errMessage(out), "worker_id") {
			t.Fatalf("reproject unknown worker = %d %v", code, out)
		}
		for body, field := range map[string]string{
			`{"worker_id":"w1","run_id":"r1"}`:                 "all",
			`{"worker_id":"w1","all":true}`:                    "all",
			`{"worker_id":7}`:                                  "worker_id",
			`{"worker_id":"` + strings.Repeat("w", 201) + `"}`: "worker_id",
		} {
			if code, out := do(t, h, "POST", "/internal/v1/projectors/reproject", body); code != 400 || !strings.HasPrefix(errMessage(out), field) {
				t.Fatalf("reproject %s = %d %v, want 400 naming %s", body, code, out, field)
			}
		}
		code, out = do(t, h, "POST", "/internal/v1/projectors/reproject", `{"all":true}`)
		if rep, _ := out["report"].(map[string]any); code != 200 || rep["total"] != 1.0 {
			t.Fatalf("reproject all = %d %v", code, out)
		}
	})
}
