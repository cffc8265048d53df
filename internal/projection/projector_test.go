package projection

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/notify"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

func TestDecide(t *testing.T) {
	cp := &store.Checkpoint{LastSeq: 5, SummaryHash: "h", ProjectionVersion: "v1"}
	tests := []struct {
		name    string
		cp      *store.Checkpoint
		seq     int64
		version string
		hash    string
		want    Decision
	}{
		{"no checkpoint", nil, 5, "v1", "h", Decision{Action: ActionWrite}},
		{"checkpoint ahead", cp, 4, "v1", "h", Decision{Action: ActionSkip, Reason: ReasonCheckpointAhead, Drift: true}},
		{"idempotent", cp, 5, "v1", "h", Decision{Action: ActionSkip, Reason: ReasonIdempotent}},
		{"hash mismatch", cp, 5, "v1", "other", Decision{Action: ActionWrite, Reason: ReasonSummaryHashMismatch, Drift: true}},
		{"version changed", cp, 5, "v2", "h", Decision{Action: ActionWrite, Reason: ReasonProjectionVersionChanged, Drift: true}},
		{"version and hash changed", cp, 5, "v2", "other", Decision{Action: ActionWrite, Reason: ReasonProjectionVersionChanged, Drift: true}},
		{"behind", cp, 6, "v1", "other", Decision{Action: ActionWrite}},
		{"behind with new version", cp, 9, "v2", "other", Decision{Action: ActionWrite}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Decide(tc.cp, tc.seq, tc.version, tc.hash); got != tc.want {
				t.Fatalf("Decide = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestBuildRunSummary(t *testing.T) {
	created := time.Date(2026, 2, 19, 10, 0, 0, 0, time.UTC)
	term := created.Add(3 * time.Second)
	run := store.Run{RunID: "r1", ThreadID: "t1", OwnerSub: "user:42", Status: store.StatusSucceeded, LatestSeq: 3,
		TerminalReasonClass: "completed", TerminalReason: "answered", TerminalAt: &term, CreatedAt: created}
	evs := []store.Event{
		{RunID: "r1", Seq: 1, EventType: "run.started", CreatedAt: created.Add(time.Second)},
		{RunID: "r1", Seq: 2, EventType: "run.delta", CreatedAt: created.Add(2 * time.Second)},
		{RunID: "r1", Seq: 3, EventType: "run.finished", CreatedAt: term.Add(123456 * time.Nanosecond)},
	}
	s1, gaps := BuildRunSummary(run, evs, "v1", nil, created.Add(time.Hour))
	if len(gaps) != 0 {
		t.Fatalf("gaps = %+v", gaps)
	}
	doc, h1, err := encodeSummary(s1)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"document_id": "runtime/run_summary:r1", "kind": "run_summary", "run_id": "r1", "thread_id": "t1",
		"status": "succeeded", "owner_user_id": "42", "owner_guest_scope": nil, "latest_seq": 3.0,
		"event_count": 3.0, "latest_event_type": "run.finished", "latest_event_at": "2026-02-19T10:00:03.000123Z",
		"terminal_reason_class": "completed", "terminal_reason": "answered", "terminal_at": "2026-02-19T10:00:03.000000Z",
		"updated_at": "2026-02-19T10:00:03.000123Z", "projection_version": "v1", "projected_at": "2026-02-19T11:00:00.000000Z",
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %#v, want %#v", k, m[k], v)
		}
	}
	rs, _ := m["runtime_source"].(map[string]any)
	if rs["entity"] != "run" || rs["run_id"] != "r1" || rs["seq"] != 3.0 {
		t.Errorf("runtime_source = %#v", m["runtime_source"])
	}
	if len(h1) != 64 {
		t.Fatalf("hash %q", h1)
	}
	// projected_at is not part of the hash.
	s2, _ := BuildRunSummary(run, evs, "v1", nil, created.Add(48*time.Hour))
	if _, h2, _ := encodeSummary(s2); h2 != h1 {
		t.Fatalf("hash depends on projected_at: %s vs %s", h1, h2)
	}
	// Anything else is.
	s3, _ := BuildRunSummary(run, evs, "v2", nil, created)
	if _, h3, _ := encodeSummary(s3); h3 == h1 {
		t.Fatal("hash ignores projection_version")
	}

	// A guest owner and a gap in the middle and at the tail.
	guest := run
	guest.OwnerSub, guest.LatestSeq = "guest:abc", 5
	s4, gaps := BuildRunSummary(guest, []store.Event{evs[0], evs[2]}, "v1", nil, created)
	if s4.OwnerGuestScope == nil || *s4.OwnerGuestScope != "abc" || s4.OwnerUserID != nil {
		t.Fatalf("guest owner = %+v", s4)
	}
	if len(gaps) != 2 || gaps[0] != (Gap{ExpectedSeq: 2, LastSeen: 1, IncomingSeq: 3}) || gaps[1] != (Gap{ExpectedSeq: 4, LastSeen: 3}) {
		t.Fatalf("gaps = %+v", gaps)
	}

	// After retention pruned every event, the previous summary keeps the
	// latest event fields, so the hash does not change.
	pruned := run
	pruned.RetentionFloorSeq = 3
	s5, gaps := BuildRunSummary(pruned, nil, "v1", &s1, created)
	if len(gaps) != 0 {
		t.Fatalf("pruned gaps = %+v", gaps)
	}
	if _, h5, _ := encodeSummary(s5); h5 != h1 {
		t.Fatalf("hash changed after pruning: %+v", s5)
	}

	// SummaryHash of a stored document ignores key order and whitespace.
	h6, err := SummaryHash(json.RawMessage(" {\"projected_at\":\"x\"," + strings.TrimPrefix(string(doc), "{")))
	if err != nil || h6 != h1 {
		t.Fatalf("SummaryHash of re-ordered doc = %s, %v; want %s", h6, err, h1)
	}
	if _, err := SummaryHash(json.RawMessage(`[1]`)); err == nil {
		t.Fatal("hash of a non-object accepted")
	}
}

// TestDecisionsAndDrift produces every decision and every projector drift
// reason on purpose, against each driver.
func TestDecisionsAndDrift(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		m, reg := newMetrics(t)
		p := New(st, nil, nil, m, Config{Serving: true})
		mkRun(t, st, "r1", "run.started", "run.delta")

		out, err := p.ProjectRun(ctx, "r1")
		if err != nil || out.Decision != (Decision{Action: ActionWrite}) || out.Result != "ok" || out.LagEvents != 2 || out.Watermark != 1 {
			t.Fatalf("first projection = %+v, %v", out, err)
		}
		cp, ok := checkpoint(t, st, "r1")
		if !ok || cp.LastSeq != 2 || cp.SummaryHash != out.Hash || cp.ProjectionVersion != DefaultVersion {
			t.Fatalf("checkpoint = %+v", cp)
		}
		doc, err := st.GetDocument(ctx, store.TopicRunSummaries, RunDocKey("r1"))
		if err != nil || doc.SourceSeq != 2 || doc.OwnerSub != "user:42" {
			t.Fatalf("document = %+v, %v", doc, err)
		}
		if h, _ := SummaryHash(doc.Payload); h != cp.SummaryHash {
			t.Fatalf("document hash %s != checkpoint hash %s", h, cp.SummaryHash)
		}

		out, err = p.ProjectRun(ctx, "r1")
		if err != nil || out.Decision.Reason != ReasonIdempotent || out.Result != "skipped" {
			t.Fatalf("repeat = %+v, %v", out, err)
		}

		appendEv(t, st, "r1", "run.delta")
		appendEv(t, st, "r1", "run.delta")
		out, err = p.ProjectRun(ctx, "r1")
		if err != nil || out.Decision != (Decision{Action: ActionWrite}) || out.LagEvents != 2 || out.Seq != 4 {
			t.Fatalf("after two appends = %+v, %v", out, err)
		}

		// summary_hash_mismatch: the checkpoint's hash was corrupted.
		exec(t, `UPDATE khala_projection_checkpoints SET summary_hash = '`+strings.Repeat("0", 64)+`' WHERE entity_id = 'r1'`)
		out, err = p.ProjectRun(ctx, "r1")
		if err != nil || out.Decision != (Decision{Action: ActionWrite, Reason: ReasonSummaryHashMismatch, Drift: true}) || out.Result != "ok" {
			t.Fatalf("hash mismatch = %+v, %v", out, err)
		}
		if cp, _ := checkpoint(t, st, "r1"); cp.SummaryHash != out.Hash {
			t.Fatalf("checkpoint not repaired: %+v", cp)
		}

		// projection_version_changed: a new build writes v2.
		p2 := New(st, nil, nil, m, Config{Serving: true, Version: "khala_summary_v2"})
		out, err = p2.ProjectRun(ctx, "r1")
		if err != nil || out.Decision.Reason != ReasonProjectionVersionChanged || out.Result != "ok" {
			t.Fatalf("version change = %+v, %v", out, err)
		}
		if cp, _ := checkpoint(t, st, "r1"); cp.ProjectionVersion != "khala_summary_v2" {
			t.Fatalf("checkpoint version = %+v", cp)
		}

		// checkpoint_ahead: a corrupt checkpoint beyond the log.
		exec(t, `UPDATE khala_projection_checkpoints SET last_seq = 999 WHERE entity_id = 'r1'`)
		for range 3 { // reported once, however often it is seen
			out, err = p2.ProjectRun(ctx, "r1")
			if err != nil || out.Decision != (Decision{Action: ActionSkip, Reason: ReasonCheckpointAhead, Drift: true}) {
				t.Fatalf("checkpoint ahead = %+v, %v", out, err)
			}
		}
		if cp, _ := checkpoint(t, st, "r1"); cp.LastSeq != 999 {
			t.Fatalf("checkpoint_ahead must not write: %+v", cp)
		}

		// sequence_gap: an event vanished from the log above the checkpoint.
		mkRun(t, st, "r2", "run.started", "run.delta", "run.delta", "run.delta")
		exec(t, `DELETE FROM run_events WHERE run_id = 'r2' AND seq = 3`)
		out, err = p.ProjectRun(ctx, "r2")
		if err != nil || out.Result != "ok" || len(out.Gaps) != 1 || out.Gaps[0].ExpectedSeq != 3 || out.Gaps[0].IncomingSeq != 4 {
			t.Fatalf("gap projection = %+v, %v", out, err)
		}
		appendEv(t, st, "r2", "run.delta")
		if out, err = p.ProjectRun(ctx, "r2"); err != nil || len(out.Gaps) != 1 {
			t.Fatalf("after gap = %+v, %v", out, err)
		}

		for reason, want := range map[string]int{
			ReasonSummaryHashMismatch: 1, ReasonProjectionVersionChanged: 1, ReasonCheckpointAhead: 1, ReasonSequenceGap: 1,
		} {
			rows := driftRows(t, st, reason)
			if len(rows) != want {
				t.Errorf("%s drift rows = %d, want %d", reason, len(rows), want)
			}
			for _, r := range rows {
				if !r.Counted || r.Projection != store.ProjectionRun {
					t.Errorf("%s row = %+v", reason, r)
				}
			}
			got := metricValue(t, reg, telemetry.KhalaProjectionDriftIncidents,
				map[string]string{"projection": "run_summary", "reason_class": reason})
			if got != float64(want) {
				t.Errorf("%s drift metric = %v, want %d", reason, got, want)
			}
		}
		// Rows this process counted are not counted again by the exporter.
		p.exportRecorded(ctx)
		if got := metricValue(t, reg, telemetry.KhalaProjectionDriftIncidents, nil); got != 4 {
			t.Errorf("drift metric after export cycle = %v, want 4", got)
		}
		if got := metricValue(t, reg, telemetry.KhalaProjectionWrites, map[string]string{"result": "skipped"}); got < 4 {
			t.Errorf("skipped writes = %v, want >= 4", got)
		}
		if got := metricValue(t, reg, telemetry.KhalaProjectionLag, nil); got < 5 {
			t.Errorf("lag observations = %v, want >= 5", got)
		}
	})
}

// TestBuiltinSinkFailureIsAtomic: a failed write changes nothing, is
// classified, and the next pass after the fault converges.
func TestBuiltinSinkFailureIsAtomic(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		m, reg := newMetrics(t)
		p := New(st, nil, nil, m, Config{Serving: true, BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond})
		mkRun(t, st, "r1", "run.started")
		if _, err := p.ProjectRun(ctx, "r1"); err != nil {
			t.Fatal(err)
		}
		appendEv(t, st, "r1", "run.delta")
		p.SetFault(1)
		if _, err := p.ProjectRun(ctx, "r1"); err == nil || classOf(err) != ClassSinkException {
			t.Fatalf("faulted write err = %v", err)
		}
		if cp, _ := checkpoint(t, st, "r1"); cp.LastSeq != 1 {
			t.Fatalf("checkpoint advanced by a failed write: %+v", cp)
		}
		rows, _ := st.ReadStream(ctx, store.TopicRunSummaries, 0, 100)
		if len(rows) != 1 {
			t.Fatalf("stream rows after failed write = %d, want 1", len(rows))
		}
		if up := metricValue(t, reg, telemetry.KhalaSinkUp, nil); up != 0 {
			t.Fatalf("sink_up = %v while failing", up)
		}
		if f := metricValue(t, reg, telemetry.KhalaProjectionWriteFailures, map[string]string{"reason_class": "sink_exception"}); f != 1 {
			t.Fatalf("write failures = %v", f)
		}
		p.SetFault(0)
		eventually(t, "retry after backoff", func() bool { p.Cycle(ctx); cp, _ := checkpoint(t, st, "r1"); return cp.LastSeq == 2 })
		if up := metricValue(t, reg, telemetry.KhalaSinkUp, nil); up != 1 {
			t.Fatalf("sink_up = %v after success", up)
		}
		rows, _ = st.ReadStream(ctx, store.TopicRunSummaries, 0, 100)
		if len(rows) != 2 || rows[1].Watermark != 2 || rows[1].DocVersion != 2 {
			t.Fatalf("stream after recovery = %+v", rows)
		}
	})
}

// TestPromptProjection: the running projector writes a run's summary soon
// after the event commit (latency logged, not asserted).
func TestPromptProjection(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		hub := notify.NewHub()
		go func() { _ = hub.Run(ctx, st) }()
		m, _ := newMetrics(t)
		p := New(st, nil, hub, m, Config{Serving: true, PollInterval: 5 * time.Second})
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer p.Stop()
		if err := p.Start(ctx); err == nil {
			t.Fatal("second Start accepted")
		}
		if !p.Running() {
			t.Fatal("not running after Start")
		}
		mkRun(t, st, "r1")
		time.Sleep(50 * time.Millisecond) // let the loop pass its first scan
		var worst time.Duration
		for i := range 5 {
			ev := appendEv(t, st, "r1", "run.delta")
			t0 := time.Now()
			eventually(t, "summary written", func() bool { cp, _ := checkpoint(t, st, "r1"); return cp.LastSeq >= ev.Seq })
			d := time.Since(t0)
			worst = max(worst, d)
			t.Logf("event %d (seq %d) projected %v after commit", i, ev.Seq, d)
		}
		t.Logf("worst commit-to-summary latency: %v (poll interval 5s, so wake-ups did the work)", worst)
		p.Stop()
		if p.Running() {
			t.Fatal("running after Stop")
		}
	})
}

// TestExportRowsOfOtherProcesses: rows recorded by an operator command are
// counted by the serving process exactly once.
func TestExportRowsOfOtherProcesses(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		mkRun(t, st, "r1", "run.started")
		mkRun(t, st, "r2", "run.started")
		cli := New(st, nil, nil, nil, Config{}) // not serving: records, does not count
		cli.SetReplayFault(true)
		rep, err := cli.Reproject(ctx, Scope{All: true}, nil)
		if err != nil || rep.Failed != 2 {
			t.Fatalf("faulted reproject = %+v, %v", rep, err)
		}
		cli.SetReplayFault(false)
		if rep, err = cli.Reproject(ctx, Scope{RunID: "r1"}, nil); err != nil || rep.Succeeded != 1 {
			t.Fatalf("reproject = %+v, %v", rep, err)
		}
		exec(t, `DELETE FROM khala_documents`)
		if ar, err := cli.Audit(ctx, 10); err != nil || ar.Missing != 1 {
			t.Fatalf("audit = %+v, %v", ar, err)
		}

		m, reg := newMetrics(t)
		srv := New(st, nil, nil, m, Config{Serving: true})
		srv.Cycle(ctx)
		srv.Cycle(ctx)
		if got := metricValue(t, reg, telemetry.KhalaProjectionReplays, map[string]string{"scope": "run", "result": "error"}); got != 2 {
			t.Fatalf("replay errors exported = %v, want 2", got)
		}
		if got := metricValue(t, reg, telemetry.KhalaProjectionReplays, map[string]string{"scope": "run", "result": "ok"}); got != 1 {
			t.Fatalf("replay ok exported = %v, want 1", got)
		}
		if got := metricValue(t, reg, telemetry.KhalaProjectionDriftIncidents, map[string]string{"reason_class": "khala_missing"}); got != 1 {
			t.Fatalf("khala_missing exported = %v, want 1", got)
		}
		// A second replica finds nothing left to count.
		m2, reg2 := newMetrics(t)
		New(st, nil, nil, m2, Config{Serving: true}).Cycle(ctx)
		if got := metricValue(t, reg2, telemetry.KhalaProjectionReplays, nil); got != 0 {
			t.Fatalf("second replica counted %v replays", got)
		}
	})
}

// countingBatchSink records how the projector calls a batch-capable sink.
type countingBatchSink struct {
	BuiltinSink
	mu      sync.Mutex
	batches []int
	singles int
}

func (c *countingBatchSink) Write(ctx context.Context, in store.ProjectionWriteInput) (int64, error) {
	c.mu.Lock()
	c.singles++
	c.mu.Unlock()
	return c.BuiltinSink.Write(ctx, in)
}

func (c *countingBatchSink) WriteBatch(ctx context.Context, ins []store.ProjectionWriteInput) ([]int64, []error) {
	c.mu.Lock()
	c.batches = append(c.batches, len(ins))
	c.mu.Unlock()
	return c.BuiltinSink.WriteBatch(ctx, ins)
}

// A walk hands a page of run summaries to a batch sink in one call, and
// every run ends exactly as if written one by one: checkpoint at the log's
// head, a document, metrics counted per run. Runs already in sync are
// skipped, not rewritten.
func TestWalkWritesRunSummariesInBatches(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		sink := &countingBatchSink{BuiltinSink: BuiltinSink{Store: st}}
		m, reg := newMetrics(t)
		p := New(st, sink, nil, m, Config{Serving: true, BatchSize: 50})
		const n = 30
		for i := range n {
			mkRun(t, st, fmt.Sprintf("r%02d", i), "run.started", "run.delta")
		}
		p.Cycle(ctx)
		total := 0
		for _, b := range sink.batches {
			total += b
		}
		if sink.singles != 0 || total != n || len(sink.batches) == 0 || sink.batches[0] < 2 {
			t.Fatalf("sink calls: batches %v, single writes %d; want %d summaries in batches", sink.batches, sink.singles, n)
		}
		for i := range n {
			id := fmt.Sprintf("r%02d", i)
			cp, ok := checkpoint(t, st, id)
			if !ok || cp.LastSeq != 2 {
				t.Fatalf("run %s: checkpoint %+v (found %t), want seq 2", id, cp, ok)
			}
			if _, err := st.GetDocument(ctx, store.TopicRunSummaries, RunDocKey(id)); err != nil {
				t.Fatalf("run %s: document: %v", id, err)
			}
		}
		if got := metricValue(t, reg, "openagents_runtime_khala_projection_writes_total", map[string]string{"result": "ok"}); got != n {
			t.Fatalf("writes ok = %v, want %d", got, n)
		}
		// One run moves on; the next walk writes it alone and skips the rest.
		appendEv(t, st, "r07", "run.delta")
		sink.batches = nil
		p.Cycle(ctx)
		if cp, _ := checkpoint(t, st, "r07"); cp.LastSeq != 3 || sink.singles+len(sink.batches) == 0 {
			t.Fatalf("after one more event: checkpoint %+v, batches %v, singles %d", cp, sink.batches, sink.singles)
		}
	})
}
