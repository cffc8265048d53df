package workers

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/auth"
	"github.com/oaruntime/oaruntime/internal/httpapi"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/sqlite"
)

const (
	owner = "user:42"
	other = "user:7"
)

// testSecret signs every request of these tests.
func testSecret() []byte { return []byte("workers-test-secret") }

type env struct {
	t      *testing.T
	h      http.Handler
	st     *sqlite.Store
	offset atomic.Int64 // added to time.Now by the handlers' clock
	logs   *bytes.Buffer
	logMu  sync.Mutex
}

func (e *env) Write(p []byte) (int, error) {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.logs.Write(p)
}

func (e *env) logText() string {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.logs.String()
}

func newEnv(t *testing.T) *env {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "runtime.db"), sqlite.WithMigrate(), sqlite.WithSynchronous("NORMAL"))
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	v, err := auth.NewVerifier(testSecret())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, st: st, logs: &bytes.Buffer{}}
	log := slog.New(slog.NewTextHandler(e, nil))
	clock := func() time.Time { return time.Now().Add(time.Duration(e.offset.Load())) }
	e.h = httpapi.New(httpapi.Deps{
		Store: st, Verifier: v, Logger: log,
		Routes: Routes(st, log, WithClock(clock)),
	})
	return e
}

type reqOpt func(*http.Request)

// as signs the request for sub with a fresh nonce, changed by mods.
func as(sub string, mods ...func(*auth.Claims)) reqOpt {
	return func(r *http.Request) {
		c := auth.NewClaims(time.Now(), sub, time.Minute)
		for _, m := range mods {
			m(&c)
		}
		r.Header.Set(auth.Header, auth.Sign(testSecret(), c))
	}
}

func noSig() reqOpt { return func(r *http.Request) { r.Header.Del(auth.Header) } }

// do sends a request signed as owner unless opts change it. body may be a
// string (sent raw), nil or any value (JSON-encoded).
func (e *env) do(method, path string, body any, opts ...reqOpt) *httptest.ResponseRecorder {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	r := httptest.NewRequestWithContext(e.t.Context(), method, path, rd)
	as(owner)(r)
	for _, o := range opts {
		o(r)
	}
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	return w
}

func wantStatus(t *testing.T, w *httptest.ResponseRecorder, status int) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status = %d, want %d; body %s", w.Code, status, w.Body.String())
	}
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

func decode[T any](t *testing.T, w *httptest.ResponseRecorder) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
		t.Fatalf("status %d: decode %T: %v: %s", w.Code, v, err, w.Body.String())
	}
	return v
}

// workerBody mirrors the JSON of a worker view.
type workerBody struct {
	Worker struct {
		WorkerID        string          `json:"worker_id"`
		Owner           string          `json:"owner"`
		Status          string          `json:"status"`
		LatestSeq       int64           `json:"latest_seq"`
		WorkspaceRef    string          `json:"workspace_ref"`
		Adapter         string          `json:"adapter"`
		Metadata        json.RawMessage `json:"metadata"`
		LastHeartbeatAt *time.Time      `json:"last_heartbeat_at"`
		StoppedAt       *time.Time      `json:"stopped_at"`
		StoppedReason   string          `json:"stopped_reason"`
		HeartbeatState  string          `json:"heartbeat_state"`
		HeartbeatAgeMS  *int64          `json:"heartbeat_age_ms"`
	} `json:"worker"`
	IdempotentReplay bool `json:"idempotent_replay"`
	Reattached       bool `json:"reattached"`
}

type eventBody struct {
	Event            store.WorkerEvent `json:"event"`
	IdempotentReplay bool              `json:"idempotent_replay"`
}

type eventsBody struct {
	Events     []store.WorkerEvent `json:"events"`
	NextCursor *int64              `json:"next_cursor"`
}

func (e *env) create(id string) workerBody {
	e.t.Helper()
	w := e.do("POST", "/internal/v1/workers", map[string]any{"worker_id": id})
	wantStatus(e.t, w, http.StatusCreated)
	return decode[workerBody](e.t, w)
}

func TestLifecycle(t *testing.T) {
	e := newEnv(t)
	w := e.do("POST", "/internal/v1/workers", map[string]any{
		"worker_id": "w1", "workspace_ref": "git@example:repo", "adapter": "in_memory", "metadata": map[string]any{"b": 1, "a": "x"},
	})
	wantStatus(t, w, http.StatusCreated)
	if w.Header().Get("X-Request-Id") == "" {
		t.Fatal("no x-request-id")
	}
	c := decode[workerBody](t, w)
	if c.Worker.WorkerID != "w1" || c.Worker.Owner != owner || c.Worker.Status != store.WorkerStarting || c.Worker.LatestSeq != 1 ||
		c.Worker.HeartbeatState != HeartbeatMissing || c.Worker.HeartbeatAgeMS != nil || string(c.Worker.Metadata) != `{"a":"x","b":1}` ||
		c.Worker.WorkspaceRef != "git@example:repo" || c.Worker.Adapter != "in_memory" || c.IdempotentReplay {
		t.Fatalf("created: %s", w.Body.String())
	}

	w = e.do("POST", "/internal/v1/workers/w1/heartbeat", nil)
	wantStatus(t, w, http.StatusOK)
	hb := decode[struct {
		Event store.WorkerEvent `json:"event"`
	}](t, w)
	if hb.Event.Seq != 2 || hb.Event.EventType != store.WorkerEventHeartbeat {
		t.Fatalf("heartbeat event: %s", w.Body.String())
	}
	g := decode[workerBody](t, e.do("GET", "/internal/v1/workers/w1", nil))
	if g.Worker.Status != store.WorkerRunning || g.Worker.HeartbeatState != HeartbeatFresh || g.Worker.HeartbeatAgeMS == nil || g.Worker.LastHeartbeatAt == nil {
		t.Fatalf("after heartbeat: %+v", g.Worker)
	}
	e.offset.Store(int64(DefaultStaleAfter + time.Second))
	g = decode[workerBody](t, e.do("GET", "/internal/v1/workers/w1", nil))
	if g.Worker.HeartbeatState != HeartbeatStale || *g.Worker.HeartbeatAgeMS < DefaultStaleAfter.Milliseconds() {
		t.Fatalf("121 s later: state %s age %v", g.Worker.HeartbeatState, *g.Worker.HeartbeatAgeMS)
	}
	e.offset.Store(0)

	ev := map[string]any{"event_type": "worker.request.received", "payload": map[string]any{"method": "thread/start", "api_key": "sk-secret"}, "idempotency_key": "req-1"}
	w = e.do("POST", "/internal/v1/workers/w1/events", ev)
	wantStatus(t, w, http.StatusCreated)
	first := decode[eventBody](t, w)
	if first.Event.Seq != 3 || first.IdempotentReplay || strings.Contains(string(first.Event.Payload), "sk-secret") {
		t.Fatalf("event: %s", w.Body.String())
	}
	w = e.do("POST", "/internal/v1/workers/w1/events", ev)
	wantStatus(t, w, http.StatusOK)
	if r := decode[eventBody](t, w); !r.IdempotentReplay || r.Event.Seq != 3 {
		t.Fatalf("replay: %s", w.Body.String())
	}
	ev["payload"] = map[string]any{"method": "other"}
	w = e.do("POST", "/internal/v1/workers/w1/events", ev)
	wantStatus(t, w, http.StatusConflict)
	if m := decodeErr(t, w).Error.Message; !strings.Contains(m, "idempotency_key") {
		t.Fatalf("key conflict message %q", m)
	}
	wantStatus(t, e.do("POST", "/internal/v1/workers/w1/events", map[string]any{"event_type": "worker.response"}), http.StatusCreated)

	w = e.do("GET", "/internal/v1/workers/w1/events?after_seq=1&limit=2", nil)
	wantStatus(t, w, http.StatusOK)
	page := decode[eventsBody](t, w)
	if len(page.Events) != 2 || page.Events[0].Seq != 2 || page.NextCursor == nil || *page.NextCursor != 3 {
		t.Fatalf("page: %s", w.Body.String())
	}
	page = decode[eventsBody](t, e.do("GET", "/internal/v1/workers/w1/events?after_seq=3", nil))
	if len(page.Events) != 1 || page.Events[0].EventType != "worker.response" || page.NextCursor != nil {
		t.Fatalf("tail page: %+v", page)
	}

	w = e.do("POST", "/internal/v1/workers/w1/stop", map[string]any{"reason": "user closed the tab"})
	wantStatus(t, w, http.StatusAccepted)
	s := decode[workerBody](t, w)
	if s.Worker.Status != store.WorkerStopped || s.Worker.StoppedReason != "user closed the tab" || s.Worker.StoppedAt == nil ||
		s.Worker.LatestSeq != 6 || s.Worker.HeartbeatState != store.WorkerStopped || s.IdempotentReplay {
		t.Fatalf("stopped: %s", w.Body.String())
	}
	w = e.do("POST", "/internal/v1/workers/w1/stop", nil)
	wantStatus(t, w, http.StatusOK)
	if s := decode[workerBody](t, w); !s.IdempotentReplay || s.Worker.LatestSeq != 6 || s.Worker.StoppedReason != "user closed the tab" {
		t.Fatalf("second stop: %s", w.Body.String())
	}

	for path, body := range map[string]any{
		"/internal/v1/workers/w1/heartbeat": nil,
		"/internal/v1/workers/w1/events":    map[string]any{"event_type": "worker.response"},
	} {
		w = e.do("POST", path, body)
		wantStatus(t, w, http.StatusConflict)
		if er := decodeErr(t, w); er.Error.Code != CodeIllegalTransition || !strings.Contains(er.Error.Message, "stopped") {
			t.Fatalf("%s after stop: %+v", path, er)
		}
	}
	// The idempotent retry of an event accepted before the stop still answers.
	ev["payload"] = map[string]any{"method": "thread/start", "api_key": "sk-secret"}
	wantStatus(t, e.do("POST", "/internal/v1/workers/w1/events", ev), http.StatusOK)

	w = e.do("POST", "/internal/v1/workers", map[string]any{
		"worker_id": "w1", "workspace_ref": "git@example:repo", "adapter": "in_memory", "metadata": map[string]any{"a": "x", "b": 1},
	})
	wantStatus(t, w, http.StatusOK)
	if r := decode[workerBody](t, w); !r.Reattached || r.IdempotentReplay || r.Worker.Status != store.WorkerStarting || r.Worker.LatestSeq != 7 || r.Worker.HeartbeatState != HeartbeatMissing {
		t.Fatalf("reattach: %s", w.Body.String())
	}
}

func TestCreate(t *testing.T) {
	e := newEnv(t)
	body := map[string]any{"worker_id": "w1", "metadata": map[string]any{"k": []int{1, 2}}}
	wantStatus(t, e.do("POST", "/internal/v1/workers", body), http.StatusCreated)
	w := e.do("POST", "/internal/v1/workers", `{"metadata": {"k": [1, 2]}, "worker_id": "w1"}`)
	wantStatus(t, w, http.StatusOK)
	if r := decode[workerBody](t, w); !r.IdempotentReplay || r.Worker.LatestSeq != 1 {
		t.Fatalf("replay: %s", w.Body.String())
	}
	for name, tc := range map[string]struct {
		body any
		as   string
	}{
		"other metadata":  {map[string]any{"worker_id": "w1", "metadata": map[string]any{"k": 1}}, owner},
		"other adapter":   {map[string]any{"worker_id": "w1", "metadata": map[string]any{"k": []int{1, 2}}, "adapter": "x"}, owner},
		"other principal": {body, other},
	} {
		w := e.do("POST", "/internal/v1/workers", tc.body, as(tc.as))
		wantStatus(t, w, http.StatusConflict)
		if er := decodeErr(t, w); er.Error.Code != httpapi.CodeConflict || !strings.Contains(er.Error.Message, "worker_id") {
			t.Fatalf("%s: %+v", name, er)
		}
	}
	// Without an id (and even without a body) the server names the worker.
	for _, b := range []any{nil, map[string]any{"adapter": "in_memory"}} {
		w := e.do("POST", "/internal/v1/workers", b)
		wantStatus(t, w, http.StatusCreated)
		r := decode[workerBody](t, w)
		if len(r.Worker.WorkerID) != 36 || string(r.Worker.Metadata) != `{}` {
			t.Fatalf("generated worker: %s", w.Body.String())
		}
		wantStatus(t, e.do("GET", "/internal/v1/workers/"+r.Worker.WorkerID, nil), http.StatusOK)
	}
}

func TestOwnershipAndAuth(t *testing.T) {
	e := newEnv(t)
	e.create("w1")
	routes := []struct{ method, path string }{
		{"GET", "/internal/v1/workers/w1"},
		{"POST", "/internal/v1/workers/w1/heartbeat"},
		{"POST", "/internal/v1/workers/w1/events"},
		{"GET", "/internal/v1/workers/w1/events"},
		{"POST", "/internal/v1/workers/w1/stop"},
	}
	for _, rt := range routes {
		var body any
		if strings.HasSuffix(rt.path, "/events") && rt.method == "POST" {
			body = map[string]any{"event_type": "worker.response"}
		}
		w := e.do(rt.method, rt.path, body, as(other))
		wantStatus(t, w, http.StatusForbidden)
		if er := decodeErr(t, w); er.Error.Code != httpapi.CodeForbidden {
			t.Fatalf("%s %s as other: %+v", rt.method, rt.path, er)
		}
		w = e.do(rt.method, rt.path, body, as(owner, func(c *auth.Claims) { c.RunID = "some-run" }))
		wantStatus(t, w, http.StatusForbidden)
		w = e.do(rt.method, rt.path, body, noSig())
		wantStatus(t, w, http.StatusUnauthorized)
		w = e.do(rt.method, strings.Replace(rt.path, "/w1", "/nope", 1), body)
		wantStatus(t, w, http.StatusNotFound)
		if er := decodeErr(t, w); er.Error.Code != httpapi.CodeNotFound || !strings.Contains(er.Error.Message, "worker_id") {
			t.Fatalf("%s unknown: %+v", rt.path, er)
		}
	}
	wantStatus(t, e.do("POST", "/internal/v1/workers", map[string]any{"worker_id": "w2"}, as(owner, func(c *auth.Claims) { c.ThreadID = "t" })), http.StatusForbidden)
	wantStatus(t, e.do("POST", "/internal/v1/workers", map[string]any{"worker_id": "w2"}, noSig()), http.StatusUnauthorized)
	// Nothing the other principal tried changed the worker.
	if g := decode[workerBody](t, e.do("GET", "/internal/v1/workers/w1", nil)); g.Worker.LatestSeq != 1 || g.Worker.Status != store.WorkerStarting {
		t.Fatalf("worker changed by a forbidden request: %+v", g.Worker)
	}
	// A guest principal owns its workers like a user.
	guest := as("guest:scope-1")
	wantStatus(t, e.do("POST", "/internal/v1/workers", map[string]any{"worker_id": "g1"}, guest), http.StatusCreated)
	wantStatus(t, e.do("GET", "/internal/v1/workers/g1", nil, guest), http.StatusOK)
	wantStatus(t, e.do("GET", "/internal/v1/workers/g1", nil), http.StatusForbidden)
}

func TestMalformedInput(t *testing.T) {
	e := newEnv(t)
	e.create("w1")
	long := func(n int) string { return strings.Repeat("a", n) }
	bigObject := func(n int) string { return `{"blob":"` + long(n) + `"}` }
	cases := []struct {
		name, method, path string
		body               any
		status             int
		field              string
	}{
		{"create id type", "POST", "/internal/v1/workers", `{"worker_id":5}`, 400, "worker_id"},
		{"create unknown", "POST", "/internal/v1/workers", `{"bogus":1}`, 400, "bogus"},
		{"create id chars", "POST", "/internal/v1/workers", `{"worker_id":"a b"}`, 400, "worker_id"},
		{"create id slash", "POST", "/internal/v1/workers", `{"worker_id":"a/b"}`, 400, "worker_id"},
		{"create id long", "POST", "/internal/v1/workers", map[string]any{"worker_id": long(201)}, 400, "worker_id"},
		{"create metadata array", "POST", "/internal/v1/workers", `{"metadata":[1]}`, 400, "metadata"},
		{"create metadata string", "POST", "/internal/v1/workers", `{"metadata":"x"}`, 400, "metadata"},
		{"create metadata big", "POST", "/internal/v1/workers", `{"metadata":` + bigObject(MaxMetadataBytes) + `}`, 400, "metadata"},
		{"create workspace NUL", "POST", "/internal/v1/workers", `{"workspace_ref":"a\u0000b"}`, 400, "workspace_ref"},
		{"create workspace long", "POST", "/internal/v1/workers", map[string]any{"workspace_ref": long(MaxRefLen + 1)}, 400, "workspace_ref"},
		{"create codex home type", "POST", "/internal/v1/workers", `{"codex_home_ref":true}`, 400, "codex_home_ref"},
		{"create adapter chars", "POST", "/internal/v1/workers", `{"adapter":"in memory"}`, 400, "adapter"},
		{"create array body", "POST", "/internal/v1/workers", `[]`, 400, "body"},
		{"create truncated", "POST", "/internal/v1/workers", `{"worker_id":`, 400, "body"},
		{"create trailing", "POST", "/internal/v1/workers", `{} {}`, 400, "body"},
		{"create not json", "POST", "/internal/v1/workers", `worker`, 400, "body"},
		{"create nested unknown type", "POST", "/internal/v1/workers", `{"metadata":{"a":1},"adapter":["x"]}`, 400, "adapter"},

		{"event no body", "POST", "/internal/v1/workers/w1/events", nil, 400, "body"},
		{"event no type", "POST", "/internal/v1/workers/w1/events", `{}`, 400, "event_type"},
		{"event type number", "POST", "/internal/v1/workers/w1/events", `{"event_type":7}`, 400, "event_type"},
		{"event run type", "POST", "/internal/v1/workers/w1/events", `{"event_type":"run.delta"}`, 400, "event_type"},
		{"event bare prefix", "POST", "/internal/v1/workers/w1/events", `{"event_type":"worker."}`, 400, "event_type"},
		{"event upper", "POST", "/internal/v1/workers/w1/events", `{"event_type":"Worker.Response"}`, 400, "event_type"},
		{"event started", "POST", "/internal/v1/workers/w1/events", `{"event_type":"worker.started"}`, 400, "event_type"},
		{"event type long", "POST", "/internal/v1/workers/w1/events", map[string]any{"event_type": "worker." + long(100)}, 400, "event_type"},
		{"event payload array", "POST", "/internal/v1/workers/w1/events", `{"event_type":"worker.x","payload":[1]}`, 400, "payload"},
		{"event payload string", "POST", "/internal/v1/workers/w1/events", `{"event_type":"worker.x","payload":"x"}`, 400, "payload"},
		{"event payload big", "POST", "/internal/v1/workers/w1/events", `{"event_type":"worker.x","payload":` + bigObject(MaxPayloadBytes) + `}`, 400, "payload"},
		{"event key space", "POST", "/internal/v1/workers/w1/events", `{"event_type":"worker.x","idempotency_key":"a b"}`, 400, "idempotency_key"},
		{"event key long", "POST", "/internal/v1/workers/w1/events", map[string]any{"event_type": "worker.x", "idempotency_key": long(201)}, 400, "idempotency_key"},
		{"event key type", "POST", "/internal/v1/workers/w1/events", `{"event_type":"worker.x","idempotency_key":{}}`, 400, "idempotency_key"},
		{"event reason type", "POST", "/internal/v1/workers/w1/events", `{"event_type":"worker.stopped","payload":{"reason":5}}`, 400, "payload.reason"},
		{"event reason long", "POST", "/internal/v1/workers/w1/events", map[string]any{"event_type": "worker.failed", "payload": map[string]any{"reason": long(httpapi.MaxReasonLen + 1)}}, 400, "payload.reason"},
		{"event unknown", "POST", "/internal/v1/workers/w1/events", `{"event_type":"worker.x","extra":1}`, 400, "extra"},
		{"event expected seq", "POST", "/internal/v1/workers/w1/events", `{"event_type":"worker.x","expected_previous_seq":1}`, 400, "expected_previous_seq"},

		{"heartbeat unknown", "POST", "/internal/v1/workers/w1/heartbeat", `{"status":"ok"}`, 400, "status"},
		{"heartbeat array", "POST", "/internal/v1/workers/w1/heartbeat", `[1]`, 400, "body"},
		{"stop reason type", "POST", "/internal/v1/workers/w1/stop", `{"reason":5}`, 400, "reason"},
		{"stop reason long", "POST", "/internal/v1/workers/w1/stop", map[string]any{"reason": long(httpapi.MaxReasonLen + 1)}, 400, "reason"},
		{"stop reason NUL", "POST", "/internal/v1/workers/w1/stop", `{"reason":"a\u0000"}`, 400, "reason"},
		{"stop unknown", "POST", "/internal/v1/workers/w1/stop", `{"why":"x"}`, 400, "why"},

		{"list negative", "GET", "/internal/v1/workers/w1/events?after_seq=-1", nil, 400, "after_seq"},
		{"list text", "GET", "/internal/v1/workers/w1/events?after_seq=abc", nil, 400, "after_seq"},
		{"list twice", "GET", "/internal/v1/workers/w1/events?after_seq=1&after_seq=2", nil, 400, "after_seq"},
		{"list limit zero", "GET", "/internal/v1/workers/w1/events?limit=0", nil, 400, "limit"},
		{"list limit big", "GET", "/internal/v1/workers/w1/events?limit=5000", nil, 400, "limit"},
		{"list limit overflow", "GET", "/internal/v1/workers/w1/events?limit=99999999999999999999", nil, 400, "limit"},

		{"path id chars", "GET", "/internal/v1/workers/a%20b", nil, 400, "worker_id"},
		{"path id long", "GET", "/internal/v1/workers/" + long(201), nil, 400, "worker_id"},
		{"path id percent", "POST", "/internal/v1/workers/w%00/heartbeat", nil, 400, "worker_id"},

		{"body over limit", "POST", "/internal/v1/workers/w1/events", `{"event_type":"worker.x","payload":` + bigObject(httpapi.DefaultMaxBodyBytes) + `}`, 413, "body"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := e.do(tc.method, tc.path, tc.body)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d; body %.300s", w.Code, tc.status, w.Body.String())
			}
			er := decodeErr(t, w)
			if !strings.HasPrefix(er.Error.Message, tc.field+":") {
				t.Fatalf("message %q does not start with the field %q", er.Error.Message, tc.field)
			}
		})
	}
	// None of it reached the store.
	if g := decode[workerBody](t, e.do("GET", "/internal/v1/workers/w1", nil)); g.Worker.LatestSeq != 1 || g.Worker.Status != store.WorkerStarting {
		t.Fatalf("malformed requests changed the worker: %+v", g.Worker)
	}
}

func TestConcurrentEventsGapFree(t *testing.T) {
	e := newEnv(t)
	e.create("w1")
	const goroutines, each = 16, 5
	var wg sync.WaitGroup
	codes := make(chan int, goroutines*each)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				w := e.do("POST", "/internal/v1/workers/w1/events", map[string]any{
					"event_type": "worker.response", "payload": map[string]any{"g": g, "i": i}, "idempotency_key": fmt.Sprintf("k-%d-%d", g, i),
				})
				codes <- w.Code
			}
		}()
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusCreated {
			t.Fatalf("concurrent event answered %d", c)
		}
	}
	page := decode[eventsBody](t, e.do("GET", "/internal/v1/workers/w1/events?limit=1000", nil))
	if len(page.Events) != 1+goroutines*each {
		t.Fatalf("%d events, want %d", len(page.Events), 1+goroutines*each)
	}
	for i, ev := range page.Events {
		if ev.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d: not gap-free", i, ev.Seq)
		}
	}
}

func TestStoreFailureIs503(t *testing.T) {
	e := newEnv(t)
	e.create("w1")
	_ = e.st.Close()
	w := e.do("GET", "/internal/v1/workers/w1", nil)
	wantStatus(t, w, http.StatusServiceUnavailable)
	if er := decodeErr(t, w); er.Error.Code != httpapi.CodeUnavailable {
		t.Fatalf("closed store: %+v", er)
	}
	if !strings.Contains(e.logText(), "worker store error") {
		t.Fatalf("store failure not logged: %s", e.logText())
	}
}

func TestHeartbeatState(t *testing.T) {
	now := time.Date(2026, 2, 19, 10, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { t := now.Add(-d); return &t }
	for _, tc := range []struct {
		status string
		last   *time.Time
		want   string
	}{
		{store.WorkerStarting, nil, HeartbeatMissing},
		{store.WorkerRunning, at(0), HeartbeatFresh},
		{store.WorkerRunning, at(DefaultStaleAfter), HeartbeatFresh},
		{store.WorkerRunning, at(DefaultStaleAfter + time.Millisecond), HeartbeatStale},
		{store.WorkerStopping, at(time.Hour), HeartbeatStale},
		{store.WorkerRunning, at(-time.Minute), HeartbeatFresh}, // a clock behind the database's
		{store.WorkerStopped, at(0), store.WorkerStopped},
		{store.WorkerFailed, nil, store.WorkerFailed},
	} {
		w := store.Worker{Status: tc.status, LastHeartbeatAt: tc.last}
		if got := HeartbeatState(w, now, DefaultStaleAfter); got != tc.want {
			t.Errorf("status %s, heartbeat %v: %s, want %s", tc.status, tc.last, got, tc.want)
		}
	}
}
