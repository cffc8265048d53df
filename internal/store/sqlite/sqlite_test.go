package sqlite_test

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/sqlite"
	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

func openT(t testing.TB, path string, opts ...sqlite.Option) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), path, opts...)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openT(t, filepath.Join(t.TempDir(), "runtime.db"), sqlite.WithMigrate())
	})
}

func TestMigrate(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "sub", "dir", "runtime.db") // parent dirs are created
	s := openT(t, path)

	if v, err := s.SchemaVersion(ctx); err != nil || v != 0 {
		t.Fatalf("SchemaVersion before Migrate = %d, %v; want 0", v, err)
	}
	st, err := s.MigrationStatus(ctx)
	if err != nil {
		t.Fatalf("MigrationStatus: %v", err)
	}
	if len(st) == 0 {
		t.Fatalf("no migrations listed")
	}
	for _, m := range st {
		if m.State != goose.StatePending {
			t.Fatalf("migration %d is %s before Migrate", m.Source.Version, m.State)
		}
	}
	if _, err := s.GetRun(ctx, "x"); err == nil {
		t.Fatalf("GetRun on an unmigrated database succeeded")
	}

	for range 2 { // applying twice is a no-op
		if err := s.Migrate(ctx); err != nil {
			t.Fatalf("Migrate: %v", err)
		}
	}
	st, err = s.MigrationStatus(ctx)
	if err != nil {
		t.Fatalf("MigrationStatus: %v", err)
	}
	last := st[len(st)-1].Source.Version
	for _, m := range st {
		if m.State != goose.StateApplied || m.AppliedAt.IsZero() {
			t.Fatalf("migration %d is %s after Migrate", m.Source.Version, m.State)
		}
	}
	if v, err := s.SchemaVersion(ctx); err != nil || v != last {
		t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, last)
	}
}

func TestReopenKeepsData(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "runtime.db")
	s, err := sqlite.Open(ctx, path, sqlite.WithMigrate())
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if _, _, err := s.CreateRun(ctx, store.CreateRunInput{RunID: "r", ThreadID: "t", OwnerSub: "user:1"}); err != nil {
		t.Fatalf("CreateRun: %v", err)
	}
	ev, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r", EventType: "run.started", Payload: json.RawMessage(`{}`)})
	if err != nil {
		t.Fatalf("AppendEvent: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if s.ListenerUp() {
		t.Fatalf("ListenerUp after Close")
	}

	s2 := openT(t, path, sqlite.WithMigrate())
	evs, err := s2.ListEvents(ctx, "r", 0, 10)
	if err != nil || len(evs) != 1 || evs[0].EventHash != ev.EventHash {
		t.Fatalf("after reopen: %+v, %v", evs, err)
	}
}

func TestOpenRejectsBadOptions(t *testing.T) {
	cases := []struct {
		name string
		path string
		opts []sqlite.Option
	}{
		{"empty path", "", nil},
		{"synchronous", filepath.Join(t.TempDir(), "a.db"), []sqlite.Option{sqlite.WithSynchronous("OFF")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if s, err := sqlite.Open(t.Context(), c.path, c.opts...); err == nil {
				_ = s.Close()
				t.Fatalf("Open succeeded")
			}
		})
	}
}

func TestWatchAfterClose(t *testing.T) {
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "runtime.db"), sqlite.WithMigrate())
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	ch, err := s.Watch(t.Context())
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, ok := <-ch; ok {
		t.Fatalf("watch channel still open after Close")
	}
	if _, err := s.Watch(t.Context()); err == nil {
		t.Fatalf("Watch after Close succeeded")
	}
}

// TestTwoHandlesOneFile: a second handle on the same file (the `migrate`
// or `khala` commands beside a running server) waits on busy_timeout instead
// of failing, and both see one gap-free log.
func TestTwoHandlesOneFile(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "runtime.db")
	a := openT(t, path, sqlite.WithMigrate())
	b := openT(t, path)
	if _, _, err := a.CreateRun(ctx, store.CreateRunInput{RunID: "r", ThreadID: "t", OwnerSub: "user:1"}); err != nil {
		t.Fatalf("CreateRun: %v", err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			for range 5 {
				if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r", EventType: "run.delta", Payload: json.RawMessage(`{}`)}); err != nil {
					t.Errorf("AppendEvent: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	evs, err := b.ListEvents(ctx, "r", 0, 100)
	if err != nil || len(evs) != 40 {
		t.Fatalf("ListEvents = %d events, %v; want 40", len(evs), err)
	}
	for i, e := range evs {
		if e.Seq != int64(i+1) {
			t.Fatalf("seq %d at %d", e.Seq, i)
		}
	}
}

// TestStoredTimestamps pins the on-disk layout the migrations document:
// fixed-width UTC text with microseconds, comparable as strings.
func TestStoredTimestamps(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "runtime.db")
	s := openT(t, path, sqlite.WithMigrate())
	if _, _, err := s.CreateRun(ctx, store.CreateRunInput{RunID: "r", ThreadID: "t", OwnerSub: "user:1"}); err != nil {
		t.Fatalf("CreateRun: %v", err)
	}
	if _, err := s.AcquireLease(ctx, "r", "o", time.Minute); err != nil {
		t.Fatalf("AcquireLease: %v", err)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=query_only(1)")
	if err != nil {
		t.Fatalf("open raw: %v", err)
	}
	defer db.Close()
	layout := regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$`)
	for _, q := range []string{
		`SELECT created_at FROM runs`, `SELECT updated_at FROM runs`,
		`SELECT expires_at FROM run_leases`, `SELECT heartbeat_at FROM run_leases`,
	} {
		var v string
		if err := db.QueryRowContext(ctx, q).Scan(&v); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if !layout.MatchString(v) {
			t.Fatalf("%s = %q, want YYYY-MM-DDTHH:MM:SS.ffffffZ", q, v)
		}
	}
}

// TestClock: WithClock drives lease expiry, so an injected clock can expire a
// lease without sleeping.
func TestClock(t *testing.T) {
	ctx := t.Context()
	var (
		mu  sync.Mutex
		now = time.Date(2026, 2, 19, 12, 0, 0, 0, time.UTC)
	)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := openT(t, filepath.Join(t.TempDir(), "runtime.db"), sqlite.WithMigrate(), sqlite.WithClock(clock))
	if _, _, err := s.CreateRun(ctx, store.CreateRunInput{RunID: "r", ThreadID: "t", OwnerSub: "user:1"}); err != nil {
		t.Fatalf("CreateRun: %v", err)
	}
	g, err := s.AcquireLease(ctx, "r", "a", 10*time.Second)
	if err != nil || !g.Lease.ExpiresAt.Equal(now.Add(10*time.Second)) {
		t.Fatalf("AcquireLease = %+v, %v", g, err)
	}
	if _, err := s.AcquireLease(ctx, "r", "b", 10*time.Second); !errors.Is(err, store.ErrLeaseHeld) {
		t.Fatalf("AcquireLease before expiry: %v", err)
	}
	mu.Lock()
	now = now.Add(11 * time.Second)
	mu.Unlock()
	if g, err := s.AcquireLease(ctx, "r", "b", 10*time.Second); err != nil || g.Result != store.LeaseStolen {
		t.Fatalf("AcquireLease after expiry = %+v, %v; want stolen", g, err)
	}
}

// BenchmarkAppendEvent reports append throughput with parallel appenders on
// one run (the worst case: every append contends for the same chain head).
func BenchmarkAppendEvent(b *testing.B) {
	for _, sync := range []string{"FULL", "NORMAL"} {
		b.Run("synchronous="+sync, func(b *testing.B) {
			s := openT(b, filepath.Join(b.TempDir(), "runtime.db"), sqlite.WithMigrate(), sqlite.WithSynchronous(sync))
			if _, _, err := s.CreateRun(b.Context(), store.CreateRunInput{RunID: "r", ThreadID: "t", OwnerSub: "user:1"}); err != nil {
				b.Fatalf("CreateRun: %v", err)
			}
			b.SetParallelism(4)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i++
					if _, _, err := s.AppendEvent(b.Context(), store.AppendInput{RunID: "r", EventType: "run.delta",
						Payload: json.RawMessage(fmt.Sprintf(`{"delta":"%d"}`, i))}); err != nil {
						b.Errorf("AppendEvent: %v", err)
						return
					}
				}
			})
		})
	}
}
