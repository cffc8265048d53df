package stream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oaruntime/oaruntime/internal/notify"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/postgres"
	"github.com/oaruntime/oaruntime/internal/store/sqlite"
	"github.com/oaruntime/oaruntime/internal/stream/sseclient"
)

// readySource reports when the store's Watch has returned, so the test can
// append only once notices are flowing into the hub.
type readySource struct {
	st    store.Store
	ready chan struct{}
}

func (r readySource) Watch(ctx context.Context) (<-chan store.Notice, error) {
	ch, err := r.st.Watch(ctx)
	close(r.ready)
	return ch, err
}

func TestRealStores(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "oa.db"), sqlite.WithMigrate())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		testRealStore(t, st)
	})
	t.Run("postgres", func(t *testing.T) {
		dbURL := os.Getenv("OA_TEST_DATABASE_URL")
		if dbURL == "" {
			if os.Getenv("CI") != "" {
				t.Fatal("OA_TEST_DATABASE_URL is unset but CI is set: the PostgreSQL stream test cannot run")
			}
			t.Skip("SKIPPING the PostgreSQL stream test: set OA_TEST_DATABASE_URL=postgres://... to run it")
		}
		schema := fmt.Sprintf("oastream_%d_%06x", time.Now().UnixNano()%1e9, rand.N(1<<24))
		st, err := postgres.Open(t.Context(), dbURL, postgres.WithSchema(schema), postgres.WithMigrate())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = st.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn, err := pgx.Connect(ctx, dbURL)
			if err != nil {
				t.Errorf("drop schema: %v", err)
				return
			}
			defer conn.Close(ctx)
			if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
				t.Errorf("drop schema: %v", err)
			}
		})
		testRealStore(t, st)
	})
}

// testRealStore streams a run of a real driver. Polling is effectively off
// (1 h), so the live events can only arrive through the driver's notices
// (LISTEN/NOTIFY or the SQLite broadcaster) and the hub.
func testRealStore(t *testing.T, st store.Store) {
	ctx := t.Context()
	hub := notify.NewHub()
	src := readySource{st: st, ready: make(chan struct{})}
	hubDone := make(chan error, 1)
	hubCtx, stopHub := context.WithCancel(ctx)
	go func() { hubDone <- hub.Run(hubCtx, src) }()
	t.Cleanup(func() {
		stopHub()
		if err := <-hubDone; err != nil {
			t.Errorf("hub.Run: %v", err)
		}
	})
	<-src.ready

	svc := New(Config{PollMin: time.Hour, PollMax: time.Hour}, st, hub, nil, nil)
	sessions := make(chan sessionSummary, 8)
	svc.onSessionEnd = func(s sessionSummary) { sessions <- s }
	mux := http.NewServeMux()
	mux.HandleFunc("GET /runs/{run_id}/stream", func(w http.ResponseWriter, r *http.Request) {
		run, err := st.GetRun(r.Context(), r.PathValue("run_id"))
		if errors.Is(err, store.ErrNotFound) {
			http.NotFound(w, r)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		svc.Serve(w, r, run)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(svc.Shutdown)
	url := srv.URL + "/runs/run_rs/stream"

	if _, _, err := st.CreateRun(ctx, store.CreateRunInput{RunID: "run_rs", ThreadID: "thr_1", OwnerSub: "user:1"}); err != nil {
		t.Fatal(err)
	}
	appendEv := func(typ, payload string) {
		t.Helper()
		if _, _, err := st.AppendEvent(ctx, store.AppendInput{RunID: "run_rs", EventType: typ, Payload: []byte(payload)}); err != nil {
			t.Errorf("append %s: %v", typ, err)
		}
	}
	appendEv("run.started", `{"phase":"boot"}`)

	var got []sseclient.Event
	err := sseclient.Stream(ctx, url, nil, "", func(e sseclient.Event) error {
		got = append(got, e)
		if e.ID == "1" {
			go func() {
				appendEv("run.delta", `{"delta":"hello"}`)
				appendEv("run.finished", `{"status":"succeeded","reason_class":"completed"}`)
			}()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"1", "2", "3", "3+DONE"}; !slices.Equal(ids(got), want) {
		t.Fatalf("ids %v, want %v", ids(got), want)
	}
	if want := `{"type":"text-delta","runId":"run_rs","delta":"hello"}`; got[1].Data != want {
		t.Fatalf("delta data %s, want %s", got[1].Data, want)
	}
	if s := waitSession(t, sessions); s.Outcome != OutcomeFinished || s.Wakeups == 0 || s.Polls != 0 {
		t.Fatalf("session %+v: want finished through notices alone", s)
	}

	// Resume after the first event: exactly the rest.
	got = nil
	if err := sseclient.Stream(ctx, url, nil, "1", func(e sseclient.Event) error { got = append(got, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"2", "3", "3+DONE"}; !slices.Equal(ids(got), want) {
		t.Fatalf("resume ids %v, want %v", ids(got), want)
	}
	waitSession(t, sessions)

	// At the head of a finished run: 204, nothing more.
	resp := get(t, ctx, url+"?cursor=3", nil)
	if resp.status != http.StatusNoContent {
		t.Fatalf("cursor at head of finished run: %d, want 204", resp.status)
	}

	// Below the retention floor: 410.
	if err := st.PruneEvents(ctx, "run_rs", 1); err != nil {
		t.Fatal(err)
	}
	resp = get(t, ctx, url+"?cursor=0", nil)
	if resp.status != http.StatusGone {
		t.Fatalf("cursor below floor: %d, want 410 (%s)", resp.status, resp.body)
	}
	got = nil
	if err := sseclient.Stream(ctx, url, nil, "1", func(e sseclient.Event) error { got = append(got, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"2", "3", "3+DONE"}; !slices.Equal(ids(got), want) {
		t.Fatalf("resume at the floor ids %v, want %v", ids(got), want)
	}
	waitSession(t, sessions)
}

func waitSession(t *testing.T, ch <-chan sessionSummary) sessionSummary {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(30 * time.Second):
		t.Fatal("no stream session ended")
		return sessionSummary{}
	}
}
