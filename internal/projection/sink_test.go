package projection

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/notify"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// fakeKhala is an external Khala mutation endpoint that can be taken down in
// several ways.
type fakeKhala struct {
	mode atomic.Value // string
	mu   sync.Mutex
	docs map[string]string // document_id -> summary_hash of the last accepted write
	seen map[string]int    // request paths
}

func newFakeKhala() *fakeKhala {
	f := &fakeKhala{docs: map[string]string{}, seen: map[string]int{}}
	f.mode.Store("up")
	return f
}

func (f *fakeKhala) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.seen[r.Method+" "+r.URL.Path]++
	f.mu.Unlock()
	if r.URL.Path != MutationPath || r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	switch f.mode.Load().(string) {
	case "http_5xx":
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	case "auth_error":
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	case "khala_error":
		_, _ = w.Write([]byte(`{"status":"error","errorMessage":"schema mismatch"}`))
		return
	case "timeout":
		select {
		case <-r.Context().Done():
		case <-time.After(500 * time.Millisecond):
		}
		return
	case "network_error":
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				_ = c.Close()
				return
			}
		}
	}
	if r.Header.Get("authorization") != "Khala admin-secret" {
		http.Error(w, "bad key", http.StatusUnauthorized)
		return
	}
	var req MutationRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Args) != 1 || req.Format != "khala_encoded_json" ||
		(req.Path != MutationUpsertRunSummary && req.Path != MutationUpsertCodexWorkerSummary) {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	h, err := SummaryHash(req.Args[0].Summary)
	if err != nil || h != req.Args[0].SummaryHash {
		_, _ = w.Write([]byte(`{"status":"error","errorMessage":"hash does not match summary"}`))
		return
	}
	f.mu.Lock()
	f.docs[req.Args[0].DocumentID] = h
	f.mu.Unlock()
	_, _ = w.Write([]byte(`{"status":"success","value":null}`))
}

func (f *fakeKhala) hash(docID string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.docs[docID]
}

// TestHTTPSinkOutage: Khala goes down in every classified way while events
// keep coming; checkpoints hold, sink_up shows it, then everything converges
// with matching hashes.
func TestHTTPSinkOutage(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		fk := newFakeKhala()
		srv := httptest.NewServer(fk)
		defer srv.Close()
		hub := notify.NewHub()
		go func() { _ = hub.Run(ctx, st) }()
		m, reg := newMetrics(t)
		sink := &HTTPSink{BaseURL: srv.URL + "/", AdminKey: "admin-secret", Timeout: 150 * time.Millisecond, Store: st}
		p := New(st, sink, hub, m, Config{Serving: true, PollInterval: 20 * time.Millisecond,
			BackoffMin: 5 * time.Millisecond, BackoffMax: 40 * time.Millisecond})
		if p.SinkName() != "http" {
			t.Fatalf("sink name %q", p.SinkName())
		}
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer p.Stop()

		runIDs := []string{"a", "b", "c"}
		for _, id := range runIDs {
			mkRun(t, st, id, "run.started")
		}
		converged := func() bool {
			for _, id := range runIDs {
				run, err := st.GetRun(ctx, id)
				if err != nil {
					return false
				}
				cp, ok := checkpoint(t, st, id)
				if !ok || cp.LastSeq != run.LatestSeq || fk.hash(RunDocKey(id)) != cp.SummaryHash {
					return false
				}
			}
			return true
		}
		eventually(t, "initial convergence", converged)

		held := map[string]int64{}
		for _, id := range runIDs {
			cp, _ := checkpoint(t, st, id)
			held[id] = cp.LastSeq
		}
		for _, class := range []string{ClassHTTP5xx, ClassAuthError, ClassKhalaError, ClassTimeout, ClassNetworkError} {
			fk.mode.Store(class)
			for _, id := range runIDs {
				appendEv(t, st, id, "run.delta")
			}
			eventually(t, class+" failures", func() bool {
				return metricValue(t, reg, telemetry.KhalaProjectionWriteFailures, map[string]string{"reason_class": class}) >= 1
			})
			if up := metricValue(t, reg, telemetry.KhalaSinkUp, nil); up != 0 {
				t.Fatalf("%s: sink_up = %v while Khala fails", class, up)
			}
			for _, id := range runIDs {
				if cp, _ := checkpoint(t, st, id); cp.LastSeq != held[id] {
					t.Fatalf("%s: checkpoint of %s moved to %d while Khala failed", class, id, cp.LastSeq)
				}
			}
		}
		if got := metricValue(t, reg, telemetry.KhalaProjectionWrites, map[string]string{"result": "error"}); got < 5 {
			t.Fatalf("error writes = %v", got)
		}
		fk.mode.Store("up")

		eventually(t, "convergence after the outage", converged)
		if up := metricValue(t, reg, telemetry.KhalaSinkUp, nil); up != 1 {
			t.Fatalf("sink_up = %v after recovery", up)
		}
		for _, id := range runIDs {
			cp, _ := checkpoint(t, st, id)
			if cp.LastSeq != held[id]+5 {
				t.Fatalf("%s converged at %d, want %d (no update lost)", id, cp.LastSeq, held[id]+5)
			}
		}
		rep, err := p.Audit(ctx, 10)
		if err != nil || rep.Status != "ok" || rep.Sampled != 3 {
			t.Fatalf("audit after recovery = %+v, %v", rep, err)
		}
	})
}

func TestHTTPSinkClassification(t *testing.T) {
	ctx := context.Background()
	fk := newFakeKhala()
	srv := httptest.NewServer(fk)
	defer srv.Close()
	in := store.ProjectionWriteInput{Projection: store.ProjectionRun, EntityID: "r1", DocKey: RunDocKey("r1"),
		Doc: json.RawMessage(`{"run_id":"r1"}`)}
	h, _ := SummaryHash(in.Doc)
	in.Hash = h
	tests := []struct {
		mode, key, url string
		want           string
	}{
		{"up", "wrong", srv.URL, ClassAuthError},
		{"http_5xx", "admin-secret", srv.URL, ClassHTTP5xx},
		{"auth_error", "admin-secret", srv.URL, ClassAuthError},
		{"khala_error", "admin-secret", srv.URL, ClassKhalaError},
		{"timeout", "admin-secret", srv.URL, ClassTimeout},
		{"network_error", "admin-secret", srv.URL, ClassNetworkError},
		{"up", "admin-secret", srv.URL + "/nowhere", ClassHTTP4xx},
		{"up", "admin-secret", "", ClassSinkException},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s/%s", tc.mode, tc.want), func(t *testing.T) {
			fk.mode.Store(tc.mode)
			s := &HTTPSink{BaseURL: tc.url, AdminKey: tc.key, Timeout: 100 * time.Millisecond}
			err := s.post(ctx, in)
			if err == nil || classOf(err) != tc.want {
				t.Fatalf("err = %v (class %s), want class %s", err, classOf(err), tc.want)
			}
		})
	}
	fk.mode.Store("up")
	if err := (&HTTPSink{BaseURL: srv.URL, AdminKey: "admin-secret"}).post(ctx, in); err != nil {
		t.Fatalf("healthy post: %v", err)
	}
	if fk.hash(RunDocKey("r1")) != h {
		t.Fatal("fake Khala did not store the document")
	}
}

// TestOutageCutsPassShort: while Khala is down a pass stops after a few
// failures instead of paying a timeout for every entity; injected faults
// do not cut passes short.
func TestOutageCutsPassShort(t *testing.T) {
	st, _ := openSQLite(t)
	ctx := context.Background()
	fk := newFakeKhala()
	srv := httptest.NewServer(fk)
	defer srv.Close()
	for i := range 10 {
		mkRun(t, st, fmt.Sprintf("r%d", i), "run.started")
	}
	fk.mode.Store("http_5xx")
	p := New(st, &HTTPSink{BaseURL: srv.URL, AdminKey: "admin-secret", Store: st}, nil, nil, Config{Serving: true})
	p.Cycle(ctx)
	fk.mu.Lock()
	posts := fk.seen["POST "+MutationPath]
	fk.mu.Unlock()
	if posts != maxSinkFailuresPerPass {
		t.Fatalf("%d posts in a pass against a down sink, want %d", posts, maxSinkFailuresPerPass)
	}
	m, reg := newMetrics(t)
	p2 := New(st, nil, nil, m, Config{Serving: true})
	p2.SetFault(1)
	p2.Cycle(ctx)
	if got := metricValue(t, reg, telemetry.KhalaProjectionWriteFailures, nil); got != 10 {
		t.Fatalf("injected failures in one pass = %v, want 10", got)
	}
}
