package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/trace"

	"github.com/oaruntime/oaruntime/internal/auth"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/sqlite"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

var testSecret = []byte("httpapi-test-secret")

const (
	owner = "user:42"
	other = "user:7"
)

// fakeStream records the runs it was asked to stream.
type fakeStream struct {
	mu   sync.Mutex
	runs []string
}

func (f *fakeStream) Serve(w http.ResponseWriter, r *http.Request, run store.Run) {
	f.mu.Lock()
	f.runs = append(f.runs, run.RunID)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, "data: [DONE]\n\n")
}

func (f *fakeStream) served() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.runs...)
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type env struct {
	t       *testing.T
	h       http.Handler
	st      *sqlite.Store
	dbPath  string
	reg     *prometheus.Registry
	stream  *fakeStream
	logs    *syncBuffer
	ready   map[string]error
	readyMu sync.Mutex
}

type envOption func(*Deps)

func withRoutes(rs ...Route) envOption    { return func(d *Deps) { d.Routes = append(d.Routes, rs...) } }
func withTracer(t trace.Tracer) envOption { return func(d *Deps) { d.Tracer = t } }

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	path := filepath.Join(t.TempDir(), "runtime.db")
	st, err := sqlite.Open(t.Context(), path, sqlite.WithMigrate())
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	v, err := auth.NewVerifier(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, st: st, dbPath: path, reg: prometheus.NewRegistry(), stream: &fakeStream{}, logs: &syncBuffer{}, ready: map[string]error{}}
	m := telemetry.NewMetrics(e.reg, telemetry.BuildInfo{Version: "test"})
	check := func(name string) Check {
		return Check{Name: name, Fn: func(context.Context) error {
			e.readyMu.Lock()
			defer e.readyMu.Unlock()
			return e.ready[name]
		}}
	}
	d := Deps{
		Store: st, Metrics: m, Verifier: v, Stream: e.stream,
		Logger:         telemetry.NewLogger(e.logs, slog.LevelDebug),
		Ready:          []Check{{Name: "database", Fn: st.Ping}, check("notification_listener"), check("projector")},
		MetricsHandler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "# metrics\n") }),
		Version:        "test",
		Now:            func() time.Time { return time.Date(2026, 2, 19, 10, 11, 12, 0, time.UTC) },
	}
	for _, o := range opts {
		o(&d)
	}
	e.h = New(d)
	return e
}

func (e *env) setReady(name string, err error) {
	e.readyMu.Lock()
	defer e.readyMu.Unlock()
	e.ready[name] = err
}

// sign returns a fresh signature for sub, optionally changed by mods.
func sign(sub string, mods ...func(*auth.Claims)) string {
	c := auth.NewClaims(time.Now(), sub, time.Minute)
	for _, m := range mods {
		m(&c)
	}
	return auth.Sign(testSecret, c)
}

type reqOpt func(*http.Request)

func header(k, v string) reqOpt { return func(r *http.Request) { r.Header.Set(k, v) } }
func noSig() reqOpt             { return func(r *http.Request) { r.Header.Del(auth.Header) } }

// as signs each request it is applied to afresh (a new nonce every time).
func as(sub string, mods ...func(*auth.Claims)) reqOpt {
	return func(r *http.Request) { r.Header.Set(auth.Header, sign(sub, mods...)) }
}

// do sends a request signed as owner unless opts change it. body may be a
// string (sent raw), []byte, nil or any value (JSON-encoded).
func (e *env) do(method, path string, body any, opts ...reqOpt) *httptest.ResponseRecorder {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	r := httptest.NewRequestWithContext(e.t.Context(), method, path, rd)
	r.Header.Set(auth.Header, sign(owner))
	for _, o := range opts {
		o(r)
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	return w
}

type errEnvelope struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func decodeErr(t *testing.T, w *httptest.ResponseRecorder) errEnvelope {
	t.Helper()
	var e errEnvelope
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error.Code == "" {
		t.Fatalf("status %d: body is not an error envelope: %s", w.Code, w.Body.String())
	}
	return e
}

func decodeJSON[T any](t *testing.T, w *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
		t.Fatalf("status %d: decode %T: %v: %s", w.Code, v, err, w.Body.String())
	}
	return v
}

func wantStatus(t *testing.T, w *httptest.ResponseRecorder, status int) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status = %d, want %d; body %s", w.Code, status, w.Body.String())
	}
}

// createRun creates a run owned by owner and returns its id.
func (e *env) createRun(runID string) store.Run {
	e.t.Helper()
	w := e.do("POST", "/internal/v1/runs", map[string]any{"run_id": runID, "thread_id": "thread-1"})
	if w.Code != http.StatusCreated {
		e.t.Fatalf("create run: %d %s", w.Code, w.Body.String())
	}
	return decodeJSON[runResponse](e.t, w).Run
}

// gather returns the metric families of the env's registry by name.
func (e *env) gather() map[string]*dto.MetricFamily {
	e.t.Helper()
	fams, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	out := make(map[string]*dto.MetricFamily, len(fams))
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// httpCount is the request counter for route, method and status class.
func (e *env) httpCount(route, method, class string) float64 {
	e.t.Helper()
	f := e.gather()[telemetry.HTTPRequests]
	if f == nil {
		return 0
	}
	for _, m := range f.GetMetric() {
		l := labels(m)
		if l["route"] == route && l["method"] == method && l["status_class"] == class {
			return m.GetCounter().GetValue()
		}
	}
	return 0
}
