package stream

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// counter returns the value of the series of name with exactly labels.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue series
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestMetrics: one session per 200 response, labelled with its outcome; one
// emit per event, labelled with the event type; rejected requests are not
// sessions; the run.finished emits over sessions ratio that the
// StreamDoneRatioLow alert watches is exact for streams that finish.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := telemetry.NewMetrics(reg, telemetry.BuildInfo{Version: "test"})
	h := newHarness(t, Config{IdleTimeout: 50 * time.Millisecond}, true, true)
	h.svc.metrics = m

	seedRun(h.st, "done", 2, true)  // 1..4
	seedRun(h.st, "open", 1, false) // 1..2
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if r := get(t, ctx, h.url("done", ""), nil); r.status != 200 || len(r.events) != 5 {
			t.Fatalf("done: %d, %d events", r.status, len(r.events))
		}
		h.session()
	}
	if r := get(t, ctx, h.url("open", ""), nil); r.status != 200 {
		t.Fatalf("open: %d", r.status)
	}
	h.session()
	if r := get(t, ctx, h.url("open", "cursor=x"), nil); r.status != http.StatusBadRequest {
		t.Fatalf("bad cursor: %d", r.status)
	}

	sessions := telemetry.StreamSessions
	emits := telemetry.StreamEmits
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{sessions, map[string]string{"outcome": OutcomeFinished}, 2},
		{sessions, map[string]string{"outcome": OutcomeTailTimeout}, 1},
		{sessions, map[string]string{"outcome": OutcomeClientClosed}, 0},
		{emits, map[string]string{"event_type": "run.finished", "outcome": EmitOK}, 2},
		{emits, map[string]string{"event_type": "run.started", "outcome": EmitOK}, 3},
		{emits, map[string]string{"event_type": "run.delta", "outcome": EmitOK}, 5},
		{telemetry.MetricLabelOverflow, map[string]string{"metric": emits, "label": "event_type"}, 0},
	} {
		if got := counter(t, reg, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// failingWriter accepts the headers and okWrites writes, then fails, like a
// connection the client has closed.
type failingWriter struct {
	header   http.Header
	okWrites int
	writes   int
}

func (w *failingWriter) Header() http.Header { return w.header }
func (w *failingWriter) WriteHeader(int)     {}
func (w *failingWriter) Write(b []byte) (int, error) {
	w.writes++
	if w.writes > w.okWrites {
		return 0, errors.New("broken pipe")
	}
	return len(b), nil
}

// TestWriteFailure: a failed chunk write ends the session as client_closed
// and counts the event as emitted "closed".
func TestWriteFailure(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := telemetry.NewMetrics(reg, telemetry.BuildInfo{Version: "test"})
	st := newMemStore(nil)
	seedRun(st, "r", 3, true) // 1..5
	svc := New(Config{}, st, nil, m, nil)
	var sum sessionSummary
	svc.onSessionEnd = func(s sessionSummary) { sum = s }
	run, _ := st.GetRun(context.Background(), "r")
	w := &failingWriter{header: http.Header{}, okWrites: 2}
	r := httptest.NewRequest(http.MethodGet, "/runs/r/stream", nil)
	svc.Serve(w, r, run)

	if sum.Outcome != OutcomeClientClosed || sum.Cursor != 2 || sum.Events != 2 {
		t.Fatalf("session %+v, want client_closed after 2 events", sum)
	}
	if got := counter(t, reg, telemetry.StreamEmits, map[string]string{"event_type": "run.delta", "outcome": EmitClosed}); got != 1 {
		t.Fatalf("closed emits of run.delta = %v, want 1", got)
	}
	if got := counter(t, reg, telemetry.StreamSessions, map[string]string{"outcome": OutcomeClientClosed}); got != 1 {
		t.Fatalf("client_closed sessions = %v, want 1", got)
	}
}
