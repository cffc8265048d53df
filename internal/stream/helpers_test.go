package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/notify"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/stream/sseclient"
)

// memStore is an in-memory EventReader. With a hub it publishes a notice
// after every append, as the real drivers do after commit; without one,
// notices are "lost" and only polling finds new events.
type memStore struct {
	mu     sync.Mutex
	runs   map[string]store.Run
	events map[string][]store.Event
	hub    *notify.Hub
	lists  atomic.Int64
}

func newMemStore(hub *notify.Hub) *memStore {
	return &memStore{runs: map[string]store.Run{}, events: map[string][]store.Event{}, hub: hub}
}

func (m *memStore) createRun(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.runs[id] = store.Run{RunID: id, Status: store.StatusCreated}
}

// appendEvent appends the next event of runID; a run.finished makes the run
// succeeded.
func (m *memStore) appendEvent(runID, eventType, payload string) store.Event {
	return m.appendWith(runID, eventType, payload, true)
}

// appendQuiet appends without a notice, even when the store has a hub.
func (m *memStore) appendQuiet(runID, eventType, payload string) store.Event {
	return m.appendWith(runID, eventType, payload, false)
}

func (m *memStore) appendWith(runID, eventType, payload string, publish bool) store.Event {
	m.mu.Lock()
	run := m.runs[runID]
	run.LatestSeq++
	ev := store.Event{RunID: runID, Seq: run.LatestSeq, EventType: eventType, Payload: json.RawMessage(payload)}
	switch eventType {
	case "run.started":
		run.Status = store.StatusRunning
	case "run.finished":
		run.Status = store.StatusSucceeded
	}
	m.runs[runID] = run
	m.events[runID] = append(m.events[runID], ev)
	hub := m.hub
	m.mu.Unlock()
	if hub != nil && publish {
		hub.Publish(store.Notice{Kind: store.NoticeEvent, RunID: runID, Seq: ev.Seq})
	}
	return ev
}

// prune deletes events with seq <= through and raises the floor.
func (m *memStore) prune(runID string, through int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var kept []store.Event
	for _, ev := range m.events[runID] {
		if ev.Seq > through {
			kept = append(kept, ev)
		}
	}
	m.events[runID] = kept
	run := m.runs[runID]
	run.RetentionFloorSeq = max(run.RetentionFloorSeq, through)
	m.runs[runID] = run
}

func (m *memStore) GetRun(ctx context.Context, runID string) (store.Run, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	run, ok := m.runs[runID]
	if !ok {
		return store.Run{}, fmt.Errorf("get run %s: %w", runID, store.ErrNotFound)
	}
	return run, nil
}

func (m *memStore) ListEvents(ctx context.Context, runID string, afterSeq int64, limit int) ([]store.Event, error) {
	m.lists.Add(1)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []store.Event
	for _, ev := range m.events[runID] {
		if ev.Seq > afterSeq && len(out) < limit {
			out = append(out, ev)
		}
	}
	return out, nil
}

// harness runs a Service behind a real HTTP server.
type harness struct {
	t        *testing.T
	st       *memStore
	hub      *notify.Hub
	svc      *Service
	srv      *httptest.Server
	sessions chan sessionSummary
}

func newHarness(t *testing.T, cfg Config, withHub, publish bool) *harness {
	t.Helper()
	var hub *notify.Hub
	if withHub {
		hub = notify.NewHub()
	}
	var pub *notify.Hub
	if publish {
		pub = hub
	}
	h := &harness{t: t, st: newMemStore(pub), hub: hub, sessions: make(chan sessionSummary, 64)}
	h.svc = New(cfg, h.st, hub, nil, nil)
	h.svc.onSessionEnd = func(s sessionSummary) { h.sessions <- s }
	mux := http.NewServeMux()
	mux.HandleFunc("GET /runs/{run_id}/stream", func(w http.ResponseWriter, r *http.Request) {
		run, err := h.st.GetRun(r.Context(), r.PathValue("run_id"))
		if errors.Is(err, store.ErrNotFound) {
			http.NotFound(w, r)
			return
		}
		h.svc.Serve(w, r, run)
	})
	h.srv = httptest.NewServer(mux)
	t.Cleanup(func() {
		h.svc.Shutdown()
		h.srv.Close()
	})
	return h
}

func (h *harness) url(runID, query string) string {
	u := h.srv.URL + "/runs/" + runID + "/stream"
	if query != "" {
		u += "?" + query
	}
	return u
}

// session waits for the next finished session summary.
func (h *harness) session() sessionSummary {
	h.t.Helper()
	select {
	case s := <-h.sessions:
		return s
	case <-time.After(30 * time.Second):
		h.t.Fatal("no stream session ended")
		return sessionSummary{}
	}
}

// response is one complete stream response, read until the server ended it.
type response struct {
	status   int
	header   http.Header
	body     []byte            // non-stream bodies (errors)
	events   []sseclient.Event // stream messages in order
	comments []string          // comment lines, e.g. "heartbeat"
	err      error             // nil when the body ended cleanly (EOF)
}

// get sends one GET (no reconnect) and reads the whole response.
func get(t *testing.T, ctx context.Context, url string, header http.Header) response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	out := response{status: resp.StatusCode, header: resp.Header}
	if resp.StatusCode != http.StatusOK {
		out.body, out.err = io.ReadAll(resp.Body)
		return out
	}
	p := sseclient.NewParser(resp.Body)
	for {
		ev, err := p.Next()
		out.comments = append(out.comments, p.Comments()...)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				out.err = err
			}
			return out
		}
		if ev != nil {
			out.events = append(out.events, *ev)
		}
	}
}

func ids(evs []sseclient.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.ID
		if e.Done() {
			out[i] += "+DONE"
		}
	}
	return out
}
