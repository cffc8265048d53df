package projection

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/oaruntime/oaruntime/internal/notify"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// TestProjectionSpanContinuesEventTrace: the projection write span is a
// child of the trace stored with the event.
func TestProjectionSpanContinuesEventTrace(t *testing.T) {
	st, _ := openSQLite(t)
	ctx := context.Background()
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	defer func() { _ = tp.Shutdown(ctx) }()
	mkRun(t, st, "r1")
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	if _, _, err := st.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.started", Payload: json.RawMessage(`{}`),
		Trace: store.TraceContext{TraceParent: "00-" + traceID + "-" + parentID + "-01", RequestID: "req-1"}}); err != nil {
		t.Fatal(err)
	}
	p := New(st, nil, nil, nil, Config{Tracer: tp.Tracer("test")})
	if _, err := p.ProjectRun(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	spans := sr.Ended()
	if len(spans) != 1 || spans[0].Name() != "khala.projection.write" {
		t.Fatalf("spans = %v", spans)
	}
	sc := spans[0].SpanContext()
	if sc.TraceID().String() != traceID || spans[0].Parent().SpanID().String() != parentID {
		t.Fatalf("span trace %s parent %s, want %s/%s", sc.TraceID(), spans[0].Parent().SpanID(), traceID, parentID)
	}
}

// TestReplicasConverge: two serving projectors (replicas) on one store under
// concurrent appends converge without write errors, drift or watermark gaps.
func TestReplicasConverge(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		hub := notify.NewHub()
		go func() { _ = hub.Run(ctx, st) }()
		m1, reg1 := newMetrics(t)
		m2, reg2 := newMetrics(t)
		logger := slog.New(slog.NewTextHandler(tWriter{t}, nil))
		p1 := New(st, nil, hub, m1, Config{Serving: true, PollInterval: 20 * time.Millisecond, Logger: logger})
		p2 := New(st, nil, hub, m2, Config{Serving: true, PollInterval: 20 * time.Millisecond, Logger: logger})
		for _, p := range []*Projector{p1, p2} {
			if err := p.Start(ctx); err != nil {
				t.Fatal(err)
			}
			defer p.Stop()
		}
		const runsN, eventsN = 5, 25
		var wg sync.WaitGroup
		for i := range runsN {
			id := fmt.Sprintf("run-%d", i)
			mkRun(t, st, id)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range eventsN {
					if _, _, err := st.AppendEvent(ctx, store.AppendInput{RunID: id, EventType: "run.delta", Payload: json.RawMessage(`{}`)}); err != nil {
						t.Errorf("append: %v", err)
						return
					}
				}
			}()
		}
		wg.Wait()
		eventually(t, "replicas converge", func() bool {
			for i := range runsN {
				cp, ok := checkpoint(t, st, fmt.Sprintf("run-%d", i))
				if !ok || cp.LastSeq != eventsN {
					return false
				}
			}
			return true
		})
		for _, reg := range []*prometheus.Registry{reg1, reg2} {
			if v := metricValue(t, reg, telemetry.KhalaProjectionWrites, map[string]string{"result": "error"}); v != 0 {
				t.Fatalf("write errors = %v", v)
			}
			if v := metricValue(t, reg, telemetry.KhalaProjectionDriftIncidents, nil); v != 0 {
				for _, d := range driftRows(t, st, "") {
					t.Logf("drift row %+v %s", d, d.Detail)
				}
				t.Fatalf("drift = %v", v)
			}
		}
		rows, err := st.ReadStream(ctx, store.TopicRunSummaries, 0, 100000)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range rows {
			if r.Watermark != int64(i+1) {
				t.Fatalf("watermark gap at %d: %d", i, r.Watermark)
			}
		}
		ok1 := metricValue(t, reg1, telemetry.KhalaProjectionWrites, map[string]string{"result": "ok"})
		ok2 := metricValue(t, reg2, telemetry.KhalaProjectionWrites, map[string]string{"result": "ok"})
		if int(ok1+ok2) != len(rows) {
			t.Fatalf("ok writes %v+%v != stream rows %d", ok1, ok2, len(rows))
		}
		t.Logf("%d stream rows for %d events; replica writes %v / %v", len(rows), runsN*eventsN, ok1, ok2)
		assertConverged(t, st, p1, "run-0", "run-1", "run-2", "run-3", "run-4")
	})
}

// TestBackgroundAuditor: with AuditEvery set, the running service finds a
// tampered document by itself.
func TestBackgroundAuditor(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		m, reg := newMetrics(t)
		p := New(st, nil, nil, m, Config{Serving: true, PollInterval: 20 * time.Millisecond, AuditEvery: 20 * time.Millisecond})
		mkRun(t, st, "r1", "run.started")
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer p.Stop()
		eventually(t, "projected", func() bool { cp, ok := checkpoint(t, st, "r1"); return ok && cp.LastSeq == 1 })
		exec(t, `UPDATE khala_documents SET payload = '{"tampered":true}'`)
		eventually(t, "audit finding", func() bool {
			return metricValue(t, reg, telemetry.KhalaProjectionDriftIncidents, map[string]string{"reason_class": ReasonSummaryHashMismatch}) >= 1
		})
	})
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

// TestReprojectDuringLiveProjection: reprojection racing the running
// projector under appends never moves a document backwards and converges.
func TestReprojectDuringLiveProjection(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		hub := notify.NewHub()
		go func() { _ = hub.Run(ctx, st) }()
		p := New(st, nil, hub, nil, Config{Serving: true, PollInterval: 10 * time.Millisecond})
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer p.Stop()
		ids := []string{"a", "b", "c"}
		for _, id := range ids {
			mkRun(t, st, id)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 20 {
				for _, id := range ids {
					if _, _, err := st.AppendEvent(ctx, store.AppendInput{RunID: id, EventType: "run.delta", Payload: json.RawMessage(`{}`)}); err != nil {
						t.Errorf("append: %v", err)
						return
					}
				}
			}
		}()
		operator := New(st, nil, nil, nil, Config{})
		for range 5 {
			if rep, err := operator.Reproject(ctx, Scope{All: true}, nil); err != nil || rep.Failed != 0 {
				t.Fatalf("reproject = %+v, %v", rep, err)
			}
		}
		<-done
		if rep, err := operator.Reproject(ctx, Scope{All: true}, nil); err != nil || rep.Failed != 0 {
			t.Fatalf("final reproject = %+v, %v", rep, err)
		}
		assertConverged(t, st, p, ids...)
		rows, err := st.ReadStream(ctx, store.TopicRunSummaries, 0, 100000)
		if err != nil {
			t.Fatal(err)
		}
		last := map[string]int64{}
		for _, r := range rows {
			if r.DocVersion < last[r.DocKey] {
				t.Fatalf("%s went back from seq %d to %d at watermark %d", r.DocKey, last[r.DocKey], r.DocVersion, r.Watermark)
			}
			last[r.DocKey] = r.DocVersion
		}
	})
}

// walkCounter counts candidate walks (pages) of run projections.
type walkCounter struct {
	testStore
	pages atomic.Int64
}

func (w *walkCounter) ProjectionCandidates(ctx context.Context, q store.CandidateQuery) ([]store.ProjectionCandidate, error) {
	w.pages.Add(1)
	return w.testStore.ProjectionCandidates(ctx, q)
}

// TestNoticesProjectWithoutWalking: between walks, the runs that notices
// name are projected at once without a candidate walk; a notice that names
// no run (a reconnected listener) asks for a walk.
func TestNoticesProjectWithoutWalking(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		hub := notify.NewHub()
		go func() { _ = hub.Run(ctx, st) }()
		wc := &walkCounter{testStore: st}
		p := New(wc, nil, hub, nil, Config{Serving: true, PollInterval: time.Hour, FullScanEvery: time.Hour})
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer p.Stop()
		eventually(t, "the first walk", func() bool { return wc.pages.Load() > 0 })
		walked := wc.pages.Load()

		for _, id := range []string{"n1", "n2", "n3"} {
			mkRun(t, st, id, "run.started", "run.delta")
		}
		appendEv(t, st, "n2", "run.finished")
		for id, seq := range map[string]int64{"n1": 2, "n2": 3, "n3": 2} {
			eventually(t, id+" projected", func() bool { cp, ok := checkpoint(t, st, id); return ok && cp.LastSeq == seq })
		}
		if got := wc.pages.Load(); got != walked {
			t.Fatalf("candidate pages read = %d, want %d (no walk between polls)", got, walked)
		}

		hub.Publish(store.Notice{Kind: store.NoticeEvent})
		eventually(t, "a walk after a notice naming no run", func() bool { return wc.pages.Load() > walked })
	})
}

// logReads counts run log reads (it hides the store's batch read, so the
// projector reads run by run).
type logReads struct {
	testStore
	n atomic.Int64
}

func (l *logReads) LoadRunLog(ctx context.Context, runID string) (store.Run, []store.Event, error) {
	l.n.Add(1)
	return l.testStore.LoadRunLog(ctx, runID)
}

// oneByOneSink is a sink that does not batch (as the HTTP sink).
type oneByOneSink struct{ s Sink }

func (o oneByOneSink) Name() string { return o.s.Name() }
func (o oneByOneSink) Write(ctx context.Context, in store.ProjectionWriteInput) (int64, error) {
	return o.s.Write(ctx, in)
}

// With a sink that writes one by one, a notice-driven pass projects each
// run from the read that found it behind: one read per run, not two.
func TestNoticedRunsReadOnceWithOneByOneSink(t *testing.T) {
	st, _ := openSQLite(t)
	lr := &logReads{testStore: st}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, id := range []string{"o1", "o2", "o3"} {
		mkRun(t, st, id, "run.started")
	}
	hub := notify.NewHub()
	p := New(lr, oneByOneSink{BuiltinSink{Store: st}}, hub, nil, Config{Serving: true, PollInterval: time.Hour, FullScanEvery: time.Hour})
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	eventually(t, "the first walk", func() bool {
		for _, id := range []string{"o1", "o2", "o3"} {
			if cp, ok := checkpoint(t, st, id); !ok || cp.LastSeq != 1 {
				return false
			}
		}
		return true
	})
	before := lr.n.Load()
	for _, id := range []string{"o1", "o2", "o3"} {
		appendEv(t, st, id, "run.delta")
		hub.Publish(store.Notice{Kind: store.NoticeEvent, RunID: id, Seq: 2})
		eventually(t, id+" projected", func() bool { cp, ok := checkpoint(t, st, id); return ok && cp.LastSeq == 2 })
	}
	if got := lr.n.Load() - before; got != 3 {
		t.Fatalf("%d run reads for 3 noticed runs, want 3", got)
	}
}
