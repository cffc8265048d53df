package httpapi

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/oaruntime/oaruntime/internal/auth"
	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

func TestHealthz(t *testing.T) {
	e := newEnv(t)
	w := e.do("GET", "/healthz", nil, noSig())
	wantStatus(t, w, http.StatusOK)
	if got := decodeJSON[map[string]any](t, w); got["status"] != "ok" || got["version"] != "test" {
		t.Fatalf("healthz body %v", got)
	}
	wantStatus(t, e.do("GET", "/metrics", nil, noSig()), http.StatusOK)
}

func TestReadyzNamesFailingCheck(t *testing.T) {
	e := newEnv(t)
	w := e.do("GET", "/readyz", nil, noSig())
	wantStatus(t, w, http.StatusOK)
	if got := decodeJSON[map[string]any](t, w); got["status"] != "ready" {
		t.Fatalf("body %v", got)
	}

	e.setReady("projector", errors.New("projector stopped"))
	e.setReady("notification_listener", errors.New("listener down"))
	w = e.do("GET", "/readyz", nil, noSig())
	wantStatus(t, w, http.StatusServiceUnavailable)
	got := decodeJSON[struct {
		Status string            `json:"status"`
		Failed string            `json:"failed"`
		Error  string            `json:"error"`
		Checks map[string]string `json:"checks"`
	}](t, w)
	if got.Status != "not_ready" || got.Failed != "notification_listener" || got.Error != "listener down" {
		t.Fatalf("body %+v", got)
	}
	if got.Checks["database"] != "ok" || got.Checks["projector"] != "error: projector stopped" {
		t.Fatalf("checks %+v", got.Checks)
	}

	e.setReady("notification_listener", nil)
	w = e.do("GET", "/readyz", nil, noSig())
	wantStatus(t, w, http.StatusServiceUnavailable)
	if f := decodeJSON[map[string]any](t, w)["failed"]; f != "projector" {
		t.Fatalf("failed = %v, want projector", f)
	}
}

var uuidRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestRequestIDAlwaysPresent(t *testing.T) {
	e := newEnv(t, withRoutes(Route{Pattern: "GET /test/panic", Public: true, Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") })}))
	run := e.createRun("run-rid")
	requests := []struct {
		name   string
		method string
		path   string
		body   any
		opts   []reqOpt
	}{
		{"healthz", "GET", "/healthz", nil, nil},
		{"readyz", "GET", "/readyz", nil, nil},
		{"run", "GET", "/internal/v1/runs/" + run.RunID, nil, nil},
		{"unauthorized", "GET", "/internal/v1/runs/" + run.RunID, nil, []reqOpt{noSig()}},
		{"forbidden", "GET", "/internal/v1/runs/" + run.RunID, nil, []reqOpt{as(other)}},
		{"not found", "GET", "/internal/v1/runs/nope", nil, nil},
		{"no route", "GET", "/nowhere", nil, nil},
		{"method not allowed", "DELETE", "/internal/v1/runs", nil, nil},
		{"bad json", "POST", "/internal/v1/runs", "{", nil},
		{"too large", "POST", "/internal/v1/runs", strings.Repeat(" ", DefaultMaxBodyBytes+1), nil},
		{"panic", "GET", "/test/panic", nil, nil},
		{"stream", "GET", "/internal/v1/runs/" + run.RunID + "/stream", nil, nil},
	}
	for _, rq := range requests {
		t.Run(rq.name, func(t *testing.T) {
			w := e.do(rq.method, rq.path, rq.body, rq.opts...)
			if id := w.Header().Get("x-request-id"); !uuidRe.MatchString(id) {
				t.Fatalf("generated x-request-id %q is not a UUIDv7 (status %d)", id, w.Code)
			}
			kept := e.do(rq.method, rq.path, rq.body, append(rq.opts, header("X-Request-ID", "client-req-0001"))...)
			if id := kept.Header().Get("x-request-id"); id != "client-req-0001" {
				t.Fatalf("incoming x-request-id not kept: %q", id)
			}
		})
	}

	for name, bad := range map[string]string{
		"too long":    strings.Repeat("a", MaxRequestIDLen+1),
		"space":       "req id",
		"control":     "req\x01id",
		"non-ascii":   "req-é",
		"quote ok":    `"quoted"`, // visible ASCII: kept
		"max length":  strings.Repeat("b", MaxRequestIDLen),
		"single char": "x",
	} {
		w := e.do("GET", "/healthz", nil, header("X-Request-ID", bad))
		got := w.Header().Get("x-request-id")
		keep := validRequestID(bad)
		if keep && got != bad || !keep && !uuidRe.MatchString(got) {
			t.Errorf("%s: incoming %q -> %q (keep=%v)", name, bad, got, keep)
		}
	}
}

func TestPanicIsA500EnvelopeAndCounted(t *testing.T) {
	e := newEnv(t, withRoutes(Route{Pattern: "GET /test/panic", Public: true, Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") })}))
	w := e.do("GET", "/test/panic", nil)
	wantStatus(t, w, http.StatusInternalServerError)
	if env := decodeErr(t, w); env.Error.Code != CodeInternal || strings.Contains(env.Error.Message, "boom") {
		t.Fatalf("envelope %+v (must not leak the panic value)", env)
	}
	if n := e.httpCount("/test/panic", "GET", "5xx"); n != 1 {
		t.Fatalf("5xx count for the panic route = %v, want 1", n)
	}
	if logs := e.logs.String(); !strings.Contains(logs, `"panic":"boom"`) || !strings.Contains(logs, "stack") {
		t.Fatalf("panic not logged with its stack: %s", logs)
	}
}

func TestCreateRun(t *testing.T) {
	e := newEnv(t)
	body := map[string]any{
		"run_id": "run-1", "thread_id": "thread-1",
		"provider":      map[string]any{"name": "scripted", "faults": map[string]any{"latency_ms": 5, "error_rate": 0.5}},
		"tools":         []any{"echo", map[string]any{"name": "sleep"}},
		"authorization": map[string]any{"authorization_id": "auth-1", "mode": "delegated_budget", "max_total_sats": 100},
		"output_schema": map[string]any{"type": "object", "required": []any{"answer"}},
		"metadata":      map[string]any{"b": 1, "a": 2},
	}
	w := e.do("POST", "/internal/v1/runs", body)
	wantStatus(t, w, http.StatusCreated)
	run := decodeJSON[runResponse](t, w).Run
	if run.RunID != "run-1" || run.ThreadID != "thread-1" || run.OwnerSub != owner || run.Status != store.StatusCreated {
		t.Fatalf("run %+v", run)
	}
	if string(run.Metadata) != `{"a":2,"b":1}` {
		t.Fatalf("metadata not canonical: %s", run.Metadata)
	}

	// Identical repeat (keys in another order): 200 with the same run.
	w = e.do("POST", "/internal/v1/runs", `{"metadata":{"a":2,"b":1},"thread_id":"thread-1","run_id":"run-1",
		"provider":{"faults":{"error_rate":0.5,"latency_ms":5},"name":"scripted"},"tools":["echo",{"name":"sleep"}],
		"authorization":{"max_total_sats":100,"mode":"delegated_budget","authorization_id":"auth-1"},
		"output_schema":{"required":["answer"],"type":"object"}}`)
	wantStatus(t, w, http.StatusOK)
	if again := decodeJSON[runResponse](t, w).Run; again.RunID != run.RunID || !again.CreatedAt.Equal(run.CreatedAt) {
		t.Fatalf("replay returned %+v", again)
	}

	// Same id, other fields: 409.
	w = e.do("POST", "/internal/v1/runs", map[string]any{"run_id": "run-1", "thread_id": "thread-2"})
	wantStatus(t, w, http.StatusConflict)
	if env := decodeErr(t, w); env.Error.Code != CodeConflict || !strings.HasPrefix(env.Error.Message, "run_id:") {
		t.Fatalf("envelope %+v", env)
	}
	// Same id and fields by another principal: 409, never the other's run.
	w = e.do("POST", "/internal/v1/runs", body, as(other))
	wantStatus(t, w, http.StatusConflict)

	// Without run_id: a generated UUIDv7; with a run-bound token: the token's.
	w = e.do("POST", "/internal/v1/runs", map[string]any{"thread_id": "t"})
	wantStatus(t, w, http.StatusCreated)
	if id := decodeJSON[runResponse](t, w).Run.RunID; !uuidRe.MatchString(id) {
		t.Fatalf("generated run_id %q", id)
	}
	w = e.do("POST", "/internal/v1/runs", map[string]any{"thread_id": "t"}, as(owner, func(c *auth.Claims) { c.RunID = "bound-run" }))
	wantStatus(t, w, http.StatusCreated)
	if id := decodeJSON[runResponse](t, w).Run.RunID; id != "bound-run" {
		t.Fatalf("run_id %q, want the token's", id)
	}
	// Bindings that disagree with the body: 403.
	for name, mod := range map[string]func(*auth.Claims){
		"run":    func(c *auth.Claims) { c.RunID = "other-run" },
		"thread": func(c *auth.Claims) { c.ThreadID = "other-thread" },
	} {
		w = e.do("POST", "/internal/v1/runs", map[string]any{"run_id": "run-x", "thread_id": "t"}, as(owner, mod))
		wantStatus(t, w, http.StatusForbidden)
		if env := decodeErr(t, w); !strings.Contains(env.Error.Message, "claim mismatch for "+name) {
			t.Fatalf("%s: %+v", name, env)
		}
	}
}

func TestGetRunAccess(t *testing.T) {
	e := newEnv(t)
	run := e.createRun("run-get")
	path := "/internal/v1/runs/" + run.RunID
	w := e.do("GET", path, nil)
	wantStatus(t, w, http.StatusOK)
	if got := decodeJSON[runResponse](t, w).Run; got.Status != "created" || got.LatestSeq != 0 || got.CreatedAt.IsZero() {
		t.Fatalf("run %+v", got)
	}
	cases := []struct {
		name   string
		opts   []reqOpt
		status int
		code   string
		msg    string
	}{
		{"other principal", []reqOpt{as(other)}, 403, CodeForbidden, "run does not belong to principal"},
		{"token bound to another run", []reqOpt{as(owner, func(c *auth.Claims) { c.RunID = "x" })}, 403, CodeForbidden, "claim mismatch for run_id"},
		{"token bound to another thread", []reqOpt{as(owner, func(c *auth.Claims) { c.ThreadID = "x" })}, 403, CodeForbidden, "claim mismatch for thread_id"},
		{"token bound to this run", []reqOpt{as(owner, func(c *auth.Claims) { c.RunID = run.RunID; c.ThreadID = "thread-1" })}, 200, "", ""},
		{"guest", []reqOpt{as("guest:thread-1")}, 403, CodeForbidden, "run does not belong"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := e.do("GET", path, nil, tc.opts...)
			wantStatus(t, w, tc.status)
			if tc.code != "" {
				if env := decodeErr(t, w); env.Error.Code != tc.code || !strings.Contains(env.Error.Message, tc.msg) {
					t.Fatalf("envelope %+v", env)
				}
			}
		})
	}
	w = e.do("GET", "/internal/v1/runs/missing", nil)
	wantStatus(t, w, http.StatusNotFound)
	if env := decodeErr(t, w); env.Error.Code != CodeNotFound || !strings.HasPrefix(env.Error.Message, "run_id:") {
		t.Fatalf("envelope %+v", env)
	}
}

func TestAuthFailures(t *testing.T) {
	e := newEnv(t)
	run := e.createRun("run-auth")
	path := "/internal/v1/runs/" + run.RunID
	replayed := sign(owner)
	wantStatus(t, e.do("GET", path, nil, header(auth.Header, replayed)), http.StatusOK)
	cases := []struct {
		name, sig, msg string
	}{
		{"missing", "", "missing runtime signature"},
		{"garbage", "v1.x", "invalid token encoding"},
		{"wrong secret", auth.Sign([]byte("other"), auth.NewClaims(time.Now(), owner, time.Minute)), "invalid token signature"},
		{"expired", sign(owner, func(c *auth.Claims) { c.Iat -= 200; c.Exp = c.Iat + 100 }), "token expired"},
		{"future", sign(owner, func(c *auth.Claims) { c.Iat += 120; c.Exp = c.Iat + 60 }), "token issued in the future"},
		{"too long lived", sign(owner, func(c *auth.Claims) { c.Exp = c.Iat + 301 }), "invalid token claims"},
		{"bad sub", sign("root"), "invalid token claims"},
		{"replayed", replayed, "token nonce already used"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := e.do("GET", path, nil, header(auth.Header, tc.sig))
			wantStatus(t, w, http.StatusUnauthorized)
			if env := decodeErr(t, w); env.Error.Code != CodeUnauthorized || !strings.Contains(env.Error.Message, tc.msg) {
				t.Fatalf("envelope %+v, want message %q", env, tc.msg)
			}
		})
	}
}

// POST /runs with input: the run and its first frame in one request.
func TestCreateRunWithInput(t *testing.T) {
	e := newEnv(t)
	body := map[string]any{"run_id": "run-in", "thread_id": "thread-1",
		"input": map[string]any{"frame_id": "f1", "type": "user_message", "payload": map[string]any{"text": "hi"}}}
	w := e.do("POST", "/internal/v1/runs", body)
	wantStatus(t, w, http.StatusCreated)
	fr, err := e.st.NextFrame(t.Context(), "run-in", 0)
	if err != nil || fr.FrameID != "f1" || fr.Type != "user_message" || string(fr.Payload) != `{"text":"hi"}` || fr.Trace.RequestID == "" {
		t.Fatalf("input frame %+v, %v", fr, err)
	}
	// A replay: 200, still one frame.
	wantStatus(t, e.do("POST", "/internal/v1/runs", body), http.StatusOK)
	if _, err := e.st.NextFrame(t.Context(), "run-in", fr.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("replay added a frame: %v", err)
	}
	// The same frame id with another payload: 409.
	body["input"] = map[string]any{"frame_id": "f1", "type": "user_message", "payload": map[string]any{"text": "other"}}
	wantStatus(t, e.do("POST", "/internal/v1/runs", body), http.StatusConflict)

	// Invalid input: 400 naming the field inside input, and no run.
	for _, tc := range []struct {
		input any
		want  string
	}{
		{map[string]any{"frame_id": "f1", "type": "bogus"}, "input.type:"},
		{map[string]any{"type": "user_message"}, "input.frame_id:"},
		{map[string]any{"frame_id": "f1", "type": "user_message", "payload": map[string]any{"text": 5}}, "input.payload.text:"},
		{map[string]any{"frame_id": "f1", "type": "user_message", "thread_id": "thread-2", "payload": map[string]any{"text": "hi"}}, "input.thread_id:"},
		{"text", "input:"},
	} {
		w := e.do("POST", "/internal/v1/runs", map[string]any{"run_id": "run-bad", "thread_id": "thread-1", "input": tc.input})
		wantStatus(t, w, http.StatusBadRequest)
		if env := decodeErr(t, w); !strings.HasPrefix(env.Error.Message, tc.want) {
			t.Errorf("input %v: message %q, want prefix %q", tc.input, env.Error.Message, tc.want)
		}
	}
	if _, err := e.st.GetRun(t.Context(), "run-bad"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("an invalid input left a run: %v", err)
	}
}

func TestFrames(t *testing.T) {
	e := newEnv(t)
	run := e.createRun("run-frames")
	path := "/internal/v1/runs/" + run.RunID + "/frames"
	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

	w := e.do("POST", path, `{"frame_id":"f1","type":"user_message","payload":{"text":"hi","b":[1,2]}}`,
		header("traceparent", traceparent), header("tracestate", "vendor=1"), header("X-Request-ID", "req-frames-1"))
	wantStatus(t, w, http.StatusAccepted)
	got := decodeJSON[map[string]any](t, w)
	if got["status"] != "accepted" || got["idempotentReplay"] != false || got["frame_id"] != "f1" || got["run_id"] != run.RunID {
		t.Fatalf("body %v", got)
	}
	fr, err := e.st.NextFrame(t.Context(), run.RunID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if string(fr.Payload) != `{"b":[1,2],"text":"hi"}` {
		t.Fatalf("payload not canonical: %s", fr.Payload)
	}
	if fr.Trace.TraceParent != traceparent || fr.Trace.TraceState != "vendor=1" || fr.Trace.RequestID != "req-frames-1" {
		t.Fatalf("trace not stored: %+v", fr.Trace)
	}

	// The same frame with keys reordered and whitespace: a replay.
	w = e.do("POST", path, "{ \"type\":\"user_message\", \"payload\":{\"b\":[1, 2],\"text\":\"hi\"}, \"frame_id\":\"f1\" }")
	wantStatus(t, w, http.StatusOK)
	if got := decodeJSON[map[string]any](t, w); got["idempotentReplay"] != true || got["idempotent_replay"] != true {
		t.Fatalf("replay body %v", got)
	}
	for name, body := range map[string]string{
		"other payload": `{"frame_id":"f1","type":"user_message","payload":{"text":"bye"}}`,
		"other type":    `{"frame_id":"f1","type":"finish","payload":{"text":"hi","b":[1,2]}}`,
	} {
		w = e.do("POST", path, body)
		wantStatus(t, w, http.StatusConflict)
		if env := decodeErr(t, w); env.Error.Code != CodeConflict || !strings.HasPrefix(env.Error.Message, "frame_id:") {
			t.Fatalf("%s: %+v", name, env)
		}
	}
	for _, typ := range []string{"cancel", "finish", "complete", "fail", "error"} {
		wantStatus(t, e.do("POST", path, map[string]any{"frame_id": "f-" + typ, "type": typ, "payload": map[string]any{"reason": "r"}}), http.StatusAccepted)
	}
	wantStatus(t, e.do("POST", path, map[string]any{"frame_id": "f-script", "type": "user_message",
		"payload": map[string]any{"script": []any{map[string]any{"say": "x"}, map[string]any{"tool": "echo", "input": map[string]any{"a": 1}}, map[string]any{"answer": "done"}}}}), http.StatusAccepted)
	wantStatus(t, e.do("POST", path, map[string]any{"frame_id": "f-thread", "type": "finish", "thread_id": "thread-1", "occurred_at": "2026-02-19T10:11:12Z"}), http.StatusAccepted)

	w = e.do("POST", "/internal/v1/runs/missing/frames", map[string]any{"frame_id": "f", "type": "finish"})
	wantStatus(t, w, http.StatusNotFound)
}

func TestEvents(t *testing.T) {
	e := newEnv(t)
	run := e.createRun("run-events")
	path := "/internal/v1/runs/" + run.RunID + "/events"

	w := e.do("POST", path, map[string]any{"event_type": "run.started", "payload": map[string]any{}, "expected_previous_seq": 0})
	wantStatus(t, w, http.StatusCreated)
	ev := decodeJSON[eventResponse](t, w).Event
	if ev.Seq != 1 || ev.PrevHash != "" || ev.EventHash != runs.EventHash(run.RunID, 1, "run.started", []byte("{}"), "") {
		t.Fatalf("event %+v", ev)
	}

	// Sanitized before hashing: the secret goes, the id and the date stay.
	w = e.do("POST", path, `{"event_type":"run.delta","idempotency_key":"k1","payload":{"text":"on 2026-02-19 call 555-123-4567","api_key":"sk-abcdefghijklmnopqrstuv","tool_call_id":"0195f3a2-7c4e-7b1a-9f00-123456789012"}}`)
	wantStatus(t, w, http.StatusCreated)
	ev2 := decodeJSON[eventResponse](t, w).Event
	wantPayload := `{"api_key":"[REDACTED]","text":"on 2026-02-19 call [REDACTED_PHONE]","tool_call_id":"0195f3a2-7c4e-7b1a-9f00-123456789012"}`
	if string(ev2.Payload) != wantPayload {
		t.Fatalf("payload %s\nwant    %s", ev2.Payload, wantPayload)
	}
	if ev2.EventHash != runs.EventHash(run.RunID, 2, "run.delta", []byte(wantPayload), ev.EventHash) {
		t.Fatal("event hash does not cover the sanitized canonical payload")
	}

	// Idempotency key seen: 200 with the original event, even with another payload.
	w = e.do("POST", path, map[string]any{"event_type": "run.delta", "idempotency_key": "k1", "payload": map[string]any{"text": "other"}})
	wantStatus(t, w, http.StatusOK)
	if r := decodeJSON[eventResponse](t, w); !r.IdempotentReplay || r.Event.Seq != 2 {
		t.Fatalf("replay %+v", r)
	}
	// Sequence mismatch: 409 naming expected_previous_seq.
	w = e.do("POST", path, map[string]any{"event_type": "run.delta", "expected_previous_seq": 1})
	wantStatus(t, w, http.StatusConflict)
	if env := decodeErr(t, w); !strings.HasPrefix(env.Error.Message, "expected_previous_seq: 1 does not match the run's latest seq 2") {
		t.Fatalf("envelope %+v", env)
	}
	// Finish, then an illegal transition: 400.
	wantStatus(t, e.do("POST", path, map[string]any{"event_type": "run.finished", "payload": map[string]any{"status": "succeeded", "reason_class": "completed"}}), http.StatusCreated)
	w = e.do("POST", path, map[string]any{"event_type": "run.started"})
	wantStatus(t, w, http.StatusBadRequest)
	if env := decodeErr(t, w); env.Error.Code != CodeIllegalTransition || !strings.HasPrefix(env.Error.Message, "event_type:") {
		t.Fatalf("envelope %+v", env)
	}
	w = e.do("POST", path, map[string]any{"event_type": "run.finished", "payload": map[string]any{"status": "bogus"}})
	wantStatus(t, w, http.StatusBadRequest)

	// Listing and paging.
	w = e.do("GET", path+"?after_seq=0&limit=2", nil)
	wantStatus(t, w, http.StatusOK)
	page := decodeJSON[eventsResponse](t, w)
	if len(page.Events) != 2 || page.NextCursor == nil || *page.NextCursor != 2 {
		t.Fatalf("page 1: %d events, cursor %v", len(page.Events), page.NextCursor)
	}
	w = e.do("GET", path+"?after_seq=2&limit=2", nil)
	page = decodeJSON[eventsResponse](t, w)
	if len(page.Events) != 1 || page.Events[0].EventType != "run.finished" || page.NextCursor != nil {
		t.Fatalf("page 2: %+v", page)
	}
	w = e.do("GET", path+"?after_seq=3", nil)
	if body := w.Body.String(); !strings.Contains(body, `"events":[]`) || !strings.Contains(body, `"next_cursor":null`) {
		t.Fatalf("empty page %s", body)
	}

	// Below the retention floor: 410.
	if err := e.st.PruneEvents(t.Context(), run.RunID, 1); err != nil {
		t.Fatal(err)
	}
	w = e.do("GET", path+"?after_seq=0", nil)
	wantStatus(t, w, http.StatusGone)
	if env := decodeErr(t, w); env.Error.Code != CodeStaleCursor || !strings.HasPrefix(env.Error.Message, "after_seq:") {
		t.Fatalf("envelope %+v", env)
	}
	wantStatus(t, e.do("GET", path+"?after_seq=1", nil), http.StatusOK)
}

func TestCancel(t *testing.T) {
	e := newEnv(t)
	run := e.createRun("run-cancel")
	path := "/internal/v1/runs/" + run.RunID + "/cancel"

	w := e.do("POST", path, map[string]any{"reason": "user asked"})
	wantStatus(t, w, http.StatusAccepted)
	want := cancelResponse{RunID: run.RunID, Status: store.StatusCanceling, CancelRequested: true}
	if got := decodeJSON[cancelResponse](t, w); got != want {
		t.Fatalf("first cancel %+v", got)
	}
	ev, err := e.st.FindEventByType(t.Context(), run.RunID, "run.cancel_requested")
	if err != nil {
		t.Fatal(err)
	}
	if string(ev.Payload) != `{"reason":"user asked","requested_at":"2026-02-19T10:11:12Z","requested_by":"user:42"}` {
		t.Fatalf("payload %s", ev.Payload)
	}

	// Replay (empty body allowed): 200, one event.
	w = e.do("POST", path, nil)
	wantStatus(t, w, http.StatusOK)
	want.IdempotentReplay = true
	if got := decodeJSON[cancelResponse](t, w); got != want {
		t.Fatalf("replay %+v", got)
	}
	if evs, _ := e.st.ListEvents(t.Context(), run.RunID, 0, 100); len(evs) != 1 {
		t.Fatalf("%d events after two cancels, want 1", len(evs))
	}

	// A terminal run answers 200 with its status.
	done := e.createRun("run-done")
	wantStatus(t, e.do("POST", "/internal/v1/runs/"+done.RunID+"/events", map[string]any{"event_type": "run.finished", "payload": map[string]any{"status": "succeeded"}}), http.StatusCreated)
	w = e.do("POST", "/internal/v1/runs/"+done.RunID+"/cancel", "")
	wantStatus(t, w, http.StatusOK)
	if got := decodeJSON[cancelResponse](t, w); got != (cancelResponse{RunID: done.RunID, Status: "succeeded", CancelRequested: true, IdempotentReplay: true}) {
		t.Fatalf("terminal %+v", got)
	}
	wantStatus(t, e.do("POST", path, nil, as(other)), http.StatusForbidden)
}

func TestVerify(t *testing.T) {
	e := newEnv(t)
	run := e.createRun("run-verify")
	path := "/internal/v1/runs/" + run.RunID
	for i := 0; i < 5; i++ {
		wantStatus(t, e.do("POST", path+"/events", map[string]any{"event_type": "run.delta", "payload": map[string]any{"i": i}}), http.StatusCreated)
	}
	w := e.do("GET", path+"/verify", nil)
	wantStatus(t, w, http.StatusOK)
	got := decodeJSON[verifyResponse](t, w)
	cur, _ := e.st.GetRun(t.Context(), run.RunID)
	evs, _ := e.st.ListEvents(t.Context(), run.RunID, 0, 10)
	if !got.OK || got.EventCount != 5 || got.HeadHash != evs[4].EventHash || cur.LatestSeq != 5 {
		t.Fatalf("verify %+v", got)
	}

	// After retention the first kept event anchors the chain.
	if err := e.st.PruneEvents(t.Context(), run.RunID, 2); err != nil {
		t.Fatal(err)
	}
	got = decodeJSON[verifyResponse](t, e.do("GET", path+"/verify", nil))
	if !got.OK || got.EventCount != 3 || got.RetentionFloorSeq != 2 {
		t.Fatalf("after prune %+v", got)
	}

	// Tamper with a stored payload behind the store's back.
	db, err := sql.Open("sqlite", e.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(t.Context(), `UPDATE run_events SET payload = '{"i":99}' WHERE run_id = ? AND seq = 4`, run.RunID); err != nil {
		t.Fatal(err)
	}
	w = e.do("GET", path+"/verify", nil)
	wantStatus(t, w, http.StatusOK)
	got = decodeJSON[verifyResponse](t, w)
	if got.OK || got.BrokenSeq != 4 || got.Reason != runs.BrokenEventHash || got.EventCount != 1 {
		t.Fatalf("tampered %+v", got)
	}
}

func TestStreamDelegates(t *testing.T) {
	e := newEnv(t)
	run := e.createRun("run-stream")
	path := "/internal/v1/runs/" + run.RunID + "/stream"
	wantStatus(t, e.do("GET", path, nil, noSig()), http.StatusUnauthorized)
	wantStatus(t, e.do("GET", path, nil, as(other)), http.StatusForbidden)
	wantStatus(t, e.do("GET", "/internal/v1/runs/nope/stream", nil), http.StatusNotFound)
	if s := e.stream.served(); len(s) != 0 {
		t.Fatalf("stream served before authorization: %v", s)
	}
	w := e.do("GET", path, nil)
	wantStatus(t, w, http.StatusOK)
	if s := e.stream.served(); len(s) != 1 || s[0] != run.RunID || !strings.Contains(w.Body.String(), "[DONE]") {
		t.Fatalf("served %v body %q", s, w.Body.String())
	}
}

func TestMountedRoutes(t *testing.T) {
	signed := Route{Pattern: "POST /api/khala/token", Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sub, ok := Principal(r)
		WriteJSON(w, http.StatusOK, map[string]any{"sub": sub, "ok": ok})
	})}
	public := Route{Pattern: "GET /sync/v1", Public: true, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, ok := Principal(r)
		WriteJSON(w, http.StatusOK, map[string]any{"ok": ok})
	})}
	e := newEnv(t, withRoutes(signed, public))
	wantStatus(t, e.do("POST", "/api/khala/token", "{}", noSig()), http.StatusUnauthorized)
	w := e.do("POST", "/api/khala/token", "{}", as("guest:abc"))
	wantStatus(t, w, http.StatusOK)
	if got := decodeJSON[map[string]any](t, w); got["sub"] != "guest:abc" || got["ok"] != true {
		t.Fatalf("principal %v", got)
	}
	w = e.do("GET", "/sync/v1", nil, noSig())
	wantStatus(t, w, http.StatusOK)
	if got := decodeJSON[map[string]any](t, w); got["ok"] != false {
		t.Fatalf("public route saw a principal: %v", got)
	}
	if n := e.httpCount("/api/khala/token", "POST", "4xx"); n != 1 {
		t.Fatalf("mounted route not labelled by pattern: %v", n)
	}
}

func TestMetricsLabelsArePatterns(t *testing.T) {
	e := newEnv(t)
	run := e.createRun("run-metrics-0195f3a2")
	e.do("GET", "/internal/v1/runs/"+run.RunID, nil)
	e.do("GET", "/internal/v1/runs/another-id-123", nil)
	e.do("GET", "/internal/v1/runs/"+run.RunID+"/events?after_seq=0", nil)
	e.do("POST", "/internal/v1/runs/"+run.RunID+"/frames", "{")
	e.do("GET", "/no/such/path/run-metrics-0195f3a2", nil)
	e.do("BREW", "/internal/v1/runs", nil)

	allowed := map[string]bool{telemetry.UnmatchedRoute: true}
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/internal/v1/runs", "/internal/v1/runs/{run_id}",
		"/internal/v1/runs/{run_id}/frames", "/internal/v1/runs/{run_id}/events", "/internal/v1/runs/{run_id}/stream",
		"/internal/v1/runs/{run_id}/cancel", "/internal/v1/runs/{run_id}/verify"} {
		allowed[p] = true
	}
	f := e.gather()[telemetry.HTTPRequests]
	if f == nil {
		t.Fatal("no HTTP metric")
	}
	seen := map[string]bool{}
	for _, m := range f.GetMetric() {
		l := labels(m)
		if m.GetCounter().GetValue() == 0 {
			continue
		}
		if !allowed[l["route"]] {
			t.Errorf("route label %q is not a pattern", l["route"])
		}
		for k := range l {
			for _, forbidden := range telemetry.ForbiddenLabelKeys {
				if k == forbidden {
					t.Errorf("forbidden label key %q", k)
				}
			}
		}
		seen[l["route"]+" "+l["method"]+" "+l["status_class"]] = true
	}
	for _, want := range []string{
		"/internal/v1/runs POST 2xx", "/internal/v1/runs/{run_id} GET 2xx", "/internal/v1/runs/{run_id} GET 4xx",
		"/internal/v1/runs/{run_id}/events GET 2xx", "/internal/v1/runs/{run_id}/frames POST 4xx",
		"unmatched GET 4xx", "unmatched other 4xx",
	} {
		if !seen[want] {
			t.Errorf("missing series %q; have %v", want, seen)
		}
	}
}

func TestTraceContext(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	e := newEnv(t, withTracer(tp.Tracer("test")))
	run := e.createRun("run-trace")
	exp.Reset()

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	w := e.do("POST", "/internal/v1/runs/"+run.RunID+"/frames", map[string]any{"frame_id": "f1", "type": "finish"},
		header("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01"), header("X-Request-ID", "req-trace"))
	wantStatus(t, w, http.StatusAccepted)
	if w.Header().Get("traceparent") != "" {
		t.Fatal("traceparent echoed")
	}
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans", len(spans))
	}
	sp := spans[0]
	if sp.Name != "POST /internal/v1/runs/{run_id}/frames" || sp.SpanContext.TraceID().String() != traceID || sp.Parent.SpanID().String() != "00f067aa0ba902b7" {
		t.Fatalf("span %q trace %s parent %s", sp.Name, sp.SpanContext.TraceID(), sp.Parent.SpanID())
	}
	// The stored trace context is the server span's, so the executor's spans
	// become its children.
	fr, err := e.st.NextFrame(t.Context(), run.RunID, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("00-%s-%s-01", traceID, sp.SpanContext.SpanID())
	if fr.Trace.TraceParent != want || fr.Trace.RequestID != "req-trace" {
		t.Fatalf("stored trace %+v, want traceparent %s", fr.Trace, want)
	}
	// The log line carries the correlation ids once each.
	var line map[string]any
	for _, l := range strings.Split(strings.TrimSpace(e.logs.String()), "\n") {
		if strings.Contains(l, "req-trace") && strings.Contains(l, `"msg":"http request"`) {
			if strings.Count(l, `"request_id"`) != 1 || strings.Count(l, `"trace_id"`) != 1 {
				t.Fatalf("duplicate correlation keys: %s", l)
			}
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatal(err)
			}
		}
	}
	if line["trace_id"] != traceID || line["route"] != "/internal/v1/runs/{run_id}/frames" || line["run_id"] != run.RunID || line["status"] != float64(202) || line["sub"] != owner {
		t.Fatalf("log line %v", line)
	}
}

func TestConcurrentIdempotency(t *testing.T) {
	e := newEnv(t)
	run := e.createRun("run-concurrent")
	base := "/internal/v1/runs/" + run.RunID

	// The same frame from 8 clients at once: one 202, the rest replays.
	codes := make(chan int, 8)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes <- e.do("POST", base+"/frames", `{"frame_id":"same","type":"user_message","payload":{"text":"hi"}}`).Code
		}()
	}
	wg.Wait()
	close(codes)
	count := map[int]int{}
	for c := range codes {
		count[c]++
	}
	if count[http.StatusAccepted] != 1 || count[http.StatusOK] != 7 {
		t.Fatalf("same frame: %v", count)
	}

	// Three cancels at once: one 202, two 200, exactly one event.
	codes = make(chan int, 3)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes <- e.do("POST", base+"/cancel", nil).Code
		}()
	}
	wg.Wait()
	close(codes)
	count = map[int]int{}
	for c := range codes {
		count[c]++
	}
	if count[http.StatusAccepted] != 1 || count[http.StatusOK] != 2 {
		t.Fatalf("cancels: %v", count)
	}
	evs, err := e.st.ListEvents(t.Context(), run.RunID, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].EventType != "run.cancel_requested" {
		t.Fatalf("events after concurrent cancels: %+v", evs)
	}
}

func TestBodyLimitWithoutContentLength(t *testing.T) {
	e := newEnv(t)
	big := `{"thread_id":"` + strings.Repeat("x", DefaultMaxBodyBytes) + `"}`
	r := httptest.NewRequestWithContext(t.Context(), "POST", "/internal/v1/runs", strings.NewReader(big))
	r.ContentLength = -1 // chunked: only the reader limit can stop it
	r.Header.Set(auth.Header, sign(owner))
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, r)
	wantStatus(t, w, http.StatusRequestEntityTooLarge)
	if env := decodeErr(t, w); env.Error.Code != CodePayloadTooLarge || !strings.HasPrefix(env.Error.Message, "body:") {
		t.Fatalf("envelope %+v", env)
	}
}

func TestUnmatchedRoutes(t *testing.T) {
	e := newEnv(t)
	w := e.do("GET", "/internal/v1/nothing", nil)
	wantStatus(t, w, http.StatusNotFound)
	if env := decodeErr(t, w); env.Error.Code != CodeNotFound {
		t.Fatalf("envelope %+v", env)
	}
	w = e.do("PUT", "/internal/v1/runs/x/cancel", nil)
	wantStatus(t, w, http.StatusMethodNotAllowed)
	if env := decodeErr(t, w); env.Error.Code != CodeMethodNotAllowed || w.Header().Get("Allow") == "" {
		t.Fatalf("envelope %+v allow %q", env, w.Header().Get("Allow"))
	}
	// Path cleaning redirects still work and carry a request id.
	w = e.do("GET", "/internal/v1/runs/../runs/x", nil)
	if (w.Code != http.StatusMovedPermanently && w.Code != http.StatusTemporaryRedirect) || w.Header().Get("Location") != "/internal/v1/runs/x" || w.Header().Get("x-request-id") == "" {
		t.Fatalf("redirect %d %v", w.Code, w.Header())
	}
}

func TestOversizedBodyIsLabelledByRoute(t *testing.T) {
	e := newEnv(t)
	w := e.do("POST", "/internal/v1/runs", strings.Repeat(" ", DefaultMaxBodyBytes+1))
	wantStatus(t, w, http.StatusRequestEntityTooLarge)
	if n := e.httpCount("/internal/v1/runs", "POST", "4xx"); n != 1 {
		t.Fatalf("413 counted under the route %v times, want 1", n)
	}
}

// Frames and events check access from the run identity the node remembers
// (created here, or read once); the answers must be those of a read.
func TestWriteAccessFromRememberedIdentity(t *testing.T) {
	e := newEnv(t)
	run := e.createRun("run-ident") // remembered by the create
	for _, w := range []struct {
		name, path string
		body       func(i int) map[string]any
		ok         int
	}{
		{"frames", "/internal/v1/runs/" + run.RunID + "/frames", func(i int) map[string]any {
			return map[string]any{"frame_id": fmt.Sprintf("f%d", i), "type": "user_message", "payload": map[string]any{"text": "hi"}}
		}, http.StatusAccepted},
		{"events", "/internal/v1/runs/" + run.RunID + "/events", func(i int) map[string]any {
			return map[string]any{"event_type": "run.delta", "payload": map[string]any{"i": i}}
		}, http.StatusCreated},
	} {
		t.Run(w.name, func(t *testing.T) {
			cases := []struct {
				name   string
				opts   []reqOpt
				status int
				msg    string
			}{
				{"owner", nil, w.ok, ""},
				{"other principal", []reqOpt{as(other)}, 403, "run does not belong to principal"},
				{"token bound to another run", []reqOpt{as(owner, func(c *auth.Claims) { c.RunID = "x" })}, 403, "claim mismatch for run_id"},
				{"token bound to another thread", []reqOpt{as(owner, func(c *auth.Claims) { c.ThreadID = "x" })}, 403, "claim mismatch for thread_id"},
				{"token bound to this run and thread", []reqOpt{as(owner, func(c *auth.Claims) { c.RunID = run.RunID; c.ThreadID = "thread-1" })}, w.ok, ""},
			}
			for i, tc := range cases {
				rw := e.do("POST", w.path, w.body(i), tc.opts...)
				wantStatus(t, rw, tc.status)
				if tc.msg != "" {
					if env := decodeErr(t, rw); env.Error.Code != CodeForbidden || !strings.Contains(env.Error.Message, tc.msg) {
						t.Fatalf("%s: envelope %+v", tc.name, env)
					}
				}
			}
		})
	}
	// A run this node never saw is read: unknown is 404.
	rw := e.do("POST", "/internal/v1/runs/missing/frames", map[string]any{"frame_id": "f", "type": "user_message", "payload": map[string]any{}})
	wantStatus(t, rw, http.StatusNotFound)
}

// fakeExecutor hands out slots (up to free) and records what became of them.
type fakeExecutor struct {
	mu       sync.Mutex
	free     int
	started  []store.LeaseGrant
	canceled []string
}

type fakeSlot struct {
	x     *fakeExecutor
	runID string
}

func (x *fakeExecutor) Reserve(runID string) (Slot, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.free == 0 {
		return nil, false
	}
	x.free--
	return &fakeSlot{x: x, runID: runID}, true
}

func (s *fakeSlot) Owner() string      { return "node-test" }
func (s *fakeSlot) TTL() time.Duration { return time.Minute }
func (s *fakeSlot) Start(g store.LeaseGrant) {
	s.x.mu.Lock()
	defer s.x.mu.Unlock()
	s.x.started = append(s.x.started, g)
}
func (s *fakeSlot) Cancel() {
	s.x.mu.Lock()
	defer s.x.mu.Unlock()
	s.x.canceled = append(s.x.canceled, s.runID)
	s.x.free++
}

// A run created with input goes to the node's executor leased at creation
// when a slot is free; a replay gives its slot back; a run without input,
// or with no slot free, is created unleased (claimed later).
func TestCreateRunWithInputLeasedToExecutor(t *testing.T) {
	x := &fakeExecutor{free: 1}
	e := newEnv(t, func(d *Deps) { d.Executor = x })
	input := map[string]any{"frame_id": "f1", "type": "user_message", "payload": map[string]any{"text": "hi"}}
	body := map[string]any{"run_id": "run-x", "thread_id": "thread-1", "input": input}
	wantStatus(t, e.do("POST", "/internal/v1/runs", body), http.StatusCreated)
	if len(x.started) != 1 {
		t.Fatalf("started %d slots, want 1", len(x.started))
	}
	g := x.started[0]
	if g.Lease.RunID != "run-x" || g.Lease.Owner != "node-test" || g.Lease.Generation != 1 || g.Run == nil || g.Next == nil || g.Next.FrameID != "f1" {
		t.Fatalf("grant %+v", g)
	}
	if _, err := e.st.AcquireLease(t.Context(), "run-x", "node-other", time.Minute); !errors.Is(err, store.ErrLeaseHeld) {
		t.Fatalf("the created run is not leased to the executor: %v", err)
	}
	// A replay: 200, the slot reserved for it goes back.
	x.free = 1
	wantStatus(t, e.do("POST", "/internal/v1/runs", body), http.StatusOK)
	if len(x.started) != 1 || len(x.canceled) != 1 || x.canceled[0] != "run-x" {
		t.Fatalf("replay: started %d, canceled %v", len(x.started), x.canceled)
	}
	// No input: no slot asked for.
	wantStatus(t, e.do("POST", "/internal/v1/runs", map[string]any{"run_id": "run-bare", "thread_id": "thread-1"}), http.StatusCreated)
	// No slot free: created unleased, claimable.
	x.free = 0
	wantStatus(t, e.do("POST", "/internal/v1/runs", map[string]any{"run_id": "run-busy", "thread_id": "thread-1", "input": input}), http.StatusCreated)
	if len(x.started) != 1 || len(x.canceled) != 1 {
		t.Fatalf("started %d, canceled %v after creates without a slot", len(x.started), x.canceled)
	}
	grants, err := e.st.ClaimRunnable(t.Context(), "node-other", time.Minute, 10)
	if err != nil || len(grants) != 1 || grants[0].Lease.RunID != "run-busy" {
		t.Fatalf("claim = %+v, %v; want run-busy only", grants, err)
	}
}
