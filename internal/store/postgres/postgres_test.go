package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

// testURL returns OA_TEST_DATABASE_URL, skipping loudly when it is unset,
// except in CI where a missing database must fail the build.
func testURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv("OA_TEST_DATABASE_URL")
	if u == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("OA_TEST_DATABASE_URL is unset but CI is set: PostgreSQL driver tests cannot run")
		}
		t.Skip("SKIPPING PostgreSQL driver tests: set OA_TEST_DATABASE_URL=postgres://... to run them")
	}
	return u
}

// newTestStore opens a store in a fresh schema, migrated, dropped after the test.
func newTestStore(t *testing.T, opts ...Option) *Store {
	t.Helper()
	dbURL := testURL(t)
	schema := fmt.Sprintf("oatest_%d_%06x", time.Now().UnixNano()%1e9, rand.N(1<<24))
	ctx := context.Background()
	s, err := Open(ctx, dbURL, append([]Option{WithSchema(schema), WithMigrate()}, opts...)...)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() {
		_ = s.Close()
		dropSchema(t, dbURL, schema)
	})
	return s
}

func dropSchema(t *testing.T, dbURL, schema string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u, _, err := splitSchemaParam(dbURL)
	if err != nil {
		t.Errorf("drop schema: %v", err)
		return
	}
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Errorf("drop schema %s: connect: %v", schema, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		t.Errorf("drop schema %s: %v", schema, err)
	}
}

func mustCreateRun(t *testing.T, s store.Store, id string) store.Run {
	t.Helper()
	r, _, err := s.CreateRun(context.Background(), store.CreateRunInput{RunID: id, ThreadID: "th-" + id, OwnerSub: "user:1"})
	if err != nil {
		t.Fatalf("create run %s: %v", id, err)
	}
	return r
}

func mustFrame(t *testing.T, s store.Store, runID, frameID string) store.Frame {
	t.Helper()
	f, _, err := s.InsertFrame(context.Background(), store.InsertFrameInput{
		RunID: runID, FrameID: frameID, Type: "user_message", Payload: json.RawMessage(`{"text":"hi"}`),
	})
	if err != nil {
		t.Fatalf("insert frame %s/%s: %v", runID, frameID, err)
	}
	return f
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSplitSchemaParam(t *testing.T) {
	for _, tc := range []struct {
		in, wantURL, wantSchema string
	}{
		{"postgres://u@h:5432/db?sslmode=disable", "postgres://u@h:5432/db?sslmode=disable", ""},
		{"postgres://u@h/db?schema=tenant_a&sslmode=disable", "postgres://u@h/db?sslmode=disable", "tenant_a"},
		{"postgresql://u:p%40ss@h/db?schema=x", "postgresql://u:p%40ss@h/db", "x"},
		{"host=h dbname=db", "host=h dbname=db", ""},
	} {
		gotURL, gotSchema, err := splitSchemaParam(tc.in)
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		if gotURL != tc.wantURL || gotSchema != tc.wantSchema {
			t.Errorf("%s: got (%q, %q), want (%q, %q)", tc.in, gotURL, gotSchema, tc.wantURL, tc.wantSchema)
		}
	}
}

func TestOpenRejectsBadSchema(t *testing.T) {
	for _, name := range []string{"Upper", "1abc", "a-b", "x;drop", "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghij"} {
		_, err := Open(context.Background(), "postgres://u@127.0.0.1:1/db", WithSchema(name))
		if err == nil || !strings.Contains(err.Error(), "schema") {
			t.Errorf("schema %q: got %v, want a schema error", name, err)
		}
	}
}

func TestMigrateStatusAndVersion(t *testing.T) {
	dbURL := testURL(t)
	ctx := context.Background()
	schema := fmt.Sprintf("oatest_mig_%06x", rand.N(1<<24))
	s, err := Open(ctx, dbURL, WithSchema(schema))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(); dropSchema(t, dbURL, schema) })

	if v, err := s.SchemaVersion(ctx); err != nil || v != 0 {
		t.Fatalf("before migrate: version %d, err %v; want 0, nil", v, err)
	}
	st, err := s.MigrationStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) == 0 || st[0].State != "pending" {
		t.Fatalf("status before migrate: %+v", st)
	}
	for range 2 { // idempotent
		if err := s.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	st, err = s.MigrationStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range st {
		if m.State != "applied" {
			t.Errorf("migration %d (%s): state %s", m.Source.Version, m.Source.Path, m.State)
		}
	}
	v, err := s.SchemaVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := st[len(st)-1].Source.Version; v != want {
		t.Errorf("schema version %d, want %d", v, want)
	}
	var n int
	if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'runs'`, schema).Scan(&n); err != nil || n != 1 {
		t.Errorf("runs table in schema %s: count %d err %v", schema, n, err)
	}
}

func TestSchemaFromURLAndIsolation(t *testing.T) {
	a := newTestStore(t)
	dbURL := testURL(t)
	ctx := context.Background()
	schemaB := fmt.Sprintf("oatest_url_%06x", rand.N(1<<24))
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Skipf("OA_TEST_DATABASE_URL is not URL-form; schema-in-URL test needs one: %v", err)
	}
	q := u.Query()
	q.Set(URLSchemaParam, schemaB)
	u.RawQuery = q.Encode()
	b, err := Open(ctx, u.String(), WithMigrate())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(); dropSchema(t, dbURL, schemaB) })
	if b.Schema() != schemaB {
		t.Fatalf("schema from URL: got %q want %q", b.Schema(), schemaB)
	}

	watchA, err := a.Watch(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	mustCreateRun(t, b, "only-in-b")
	if _, _, err := b.AppendEvent(ctx, store.AppendInput{RunID: "only-in-b", EventType: "run.started"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.GetRun(ctx, "only-in-b"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("store a sees store b's run: err=%v", err)
	}
	// A write in a proves a's listener is live; b's notice must not precede it.
	mustCreateRun(t, a, "in-a")
	if _, _, err := a.AppendEvent(ctx, store.AppendInput{RunID: "in-a", EventType: "run.started"}); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-watchA:
		if n.RunID != "in-a" {
			t.Fatalf("store a received a notice for %q: channels are not isolated", n.RunID)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no notice on store a")
	}
}

func TestConcurrentAppendsAreGapFreeAndChained(t *testing.T) {
	s := newTestStore(t)
	mustCreateRun(t, s, "r1")
	const workers, each = 8, 25
	appendConcurrently(t, []*Store{s}, "r1", workers, each)
	checkChain(t, s, "r1") // gap-free seqs, prev_hash and event_hash, latest_seq = events
	if r, err := s.GetRun(context.Background(), "r1"); err != nil || r.LatestSeq != workers*each {
		t.Fatalf("latest_seq %d (%v), want %d", r.LatestSeq, err, workers*each)
	}
}

// appendConcurrently has workers goroutines append each run.delta events to
// runID at once, worker w through stores[w % len(stores)].
func appendConcurrently(t *testing.T, stores []*Store, runID string, workers, each int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			s := stores[w%len(stores)]
			for i := range each {
				p := json.RawMessage(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))
				if _, _, err := s.AppendEvent(context.Background(), store.AppendInput{RunID: runID, EventType: "run.delta", Payload: p}); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestConcurrentSameIdempotencyKey(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	mustCreateRun(t, s, "r1")
	const n = 10
	var (
		wg      sync.WaitGroup
		fresh   atomic.Int32
		seqSeen sync.Map
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev, replay, err := s.AppendEvent(ctx, store.AppendInput{
				RunID: "r1", EventType: "tool.call", Payload: json.RawMessage(`{"id":"t1"}`), IdempotencyKey: " k1 ",
			})
			if err != nil {
				t.Error(err)
				return
			}
			if !replay {
				fresh.Add(1)
			}
			seqSeen.Store(ev.Seq, true)
		}()
	}
	wg.Wait()
	if fresh.Load() != 1 {
		t.Fatalf("%d appends were not replays, want exactly 1", fresh.Load())
	}
	count := 0
	seqSeen.Range(func(_, _ any) bool { count++; return true })
	if count != 1 {
		t.Fatalf("replays returned %d distinct seqs", count)
	}
}

func TestAppendSemantics(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	mustCreateRun(t, s, "r1")
	zero := int64(0)
	one := int64(1)
	steps := []struct {
		name    string
		in      store.AppendInput
		wantErr error
		replay  bool
		seq     int64
	}{
		{"start", store.AppendInput{EventType: "run.started", ExpectedPreviousSeq: &zero}, nil, false, 1},
		{"stale expected seq", store.AppendInput{EventType: "run.delta", ExpectedPreviousSeq: &zero}, store.ErrSeqConflict, false, 0},
		{"keyed", store.AppendInput{EventType: "run.delta", IdempotencyKey: "k", ExpectedPreviousSeq: &one}, nil, false, 2},
		{"key replays before seq check", store.AppendInput{EventType: "run.delta", IdempotencyKey: "k", ExpectedPreviousSeq: &zero}, nil, true, 2},
		{"illegal", store.AppendInput{EventType: "run.finished", Payload: json.RawMessage(`{"status":"bogus"}`)}, store.ErrIllegalTransition, false, 0},
		{"finish", store.AppendInput{EventType: "run.finished", Payload: json.RawMessage(`{"status":"succeeded","reason_class":"completed","reason":"done"}`)}, nil, false, 3},
		{"finish repeat", store.AppendInput{EventType: "run.finished", Payload: json.RawMessage(`{"status":"succeeded"}`)}, nil, true, 3},
		{"after terminal", store.AppendInput{EventType: "run.delta"}, store.ErrIllegalTransition, false, 0},
		{"fenced without lease", store.AppendInput{EventType: "run.delta", Fence: &store.Fence{Owner: "x", Generation: 1}}, store.ErrFenced, false, 0},
	}
	for _, st := range steps {
		st.in.RunID = "r1"
		ev, replay, err := s.AppendEvent(ctx, st.in)
		if st.wantErr != nil {
			if !errors.Is(err, st.wantErr) {
				t.Fatalf("%s: err %v, want %v", st.name, err, st.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if replay != st.replay || ev.Seq != st.seq {
			t.Fatalf("%s: replay=%t seq=%d, want replay=%t seq=%d", st.name, replay, ev.Seq, st.replay, st.seq)
		}
	}
	r, err := s.GetRun(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != store.StatusSucceeded || r.TerminalReasonClass != "completed" || r.TerminalReason != "done" || r.TerminalAt == nil {
		t.Fatalf("terminal fields: %+v", r)
	}
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "nope", EventType: "run.started"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown run: %v", err)
	}
}

func TestPruneKeepsChain(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	mustCreateRun(t, s, "r1")
	var last store.Event
	for range 3 {
		ev, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta"})
		if err != nil {
			t.Fatal(err)
		}
		last = ev
	}
	if err := s.PruneEvents(ctx, "r1", 99); err != nil { // clamps to latest
		t.Fatal(err)
	}
	r, _ := s.GetRun(ctx, "r1")
	if r.RetentionFloorSeq != 3 {
		t.Fatalf("floor %d, want 3", r.RetentionFloorSeq)
	}
	ev, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta"})
	if err != nil {
		t.Fatal(err)
	}
	if ev.Seq != 4 || ev.PrevHash != last.EventHash {
		t.Fatalf("after prune: seq %d prev %q, want 4 %q", ev.Seq, ev.PrevHash, last.EventHash)
	}
	if err := s.PruneEvents(ctx, "r1", 1); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.GetRun(ctx, "r1"); r.RetentionFloorSeq != 3 {
		t.Fatalf("floor moved back to %d", r.RetentionFloorSeq)
	}
}

func TestLeaseLifecycleAndFencing(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	mustCreateRun(t, s, "r1")
	g1, err := s.AcquireLease(ctx, "r1", "a", time.Minute)
	if err != nil || g1.Result != store.LeaseAcquired {
		t.Fatalf("acquire: %+v %v", g1, err)
	}
	if g, err := s.AcquireLease(ctx, "r1", "b", time.Minute); !errors.Is(err, store.ErrLeaseHeld) ||
		g.Result != store.LeaseHeld || g.Lease.Owner != "a" {
		t.Fatalf("second owner: %+v %v, want ErrLeaseHeld describing holder a", g, err)
	}
	if g, err := s.AcquireLease(ctx, "r1", "a", time.Minute); err != nil || g.Result != store.LeaseRenewed || g.Lease.Generation != g1.Lease.Generation {
		t.Fatalf("re-acquire by holder: %+v %v", g, err)
	}
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.started", Fence: g1.Lease.Fence()}); err != nil {
		t.Fatalf("fenced append by holder: %v", err)
	}
	// Let a's lease lapse, then b steals it: a's writes must be fenced off.
	if _, err := s.AcquireLease(ctx, "r1", "a", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	g2, err := s.AcquireLease(ctx, "r1", "b", time.Minute)
	if err != nil || g2.Result != store.LeaseStolen || g2.Lease.Generation <= g1.Lease.Generation {
		t.Fatalf("steal: %+v %v", g2, err)
	}
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta", Fence: g1.Lease.Fence()}); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("stale fence append: %v, want ErrFenced", err)
	}
	if _, err := s.RenewLease(ctx, g1.Lease, time.Minute); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("stale renew: %v, want ErrFenced", err)
	}
	renewed, err := s.RenewLease(ctx, g2.Lease, 2*time.Minute)
	if err != nil || !renewed.ExpiresAt.After(g2.Lease.ExpiresAt) {
		t.Fatalf("renew: %+v %v", renewed, err)
	}
	if err := s.ReleaseLease(ctx, g1.Lease); err != nil { // lost lease: no-op
		t.Fatal(err)
	}
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta", Fence: g2.Lease.Fence()}); err != nil {
		t.Fatalf("release of a lost lease disturbed the holder: %v", err)
	}
	if err := s.ReleaseLease(ctx, g2.Lease); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta", Fence: g2.Lease.Fence()}); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("append after release: %v, want ErrFenced", err)
	}
	if _, err := s.AcquireLease(ctx, "missing", "a", time.Minute); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("acquire unknown run: %v", err)
	}
}

func TestClaimRunnableConcurrentReplicasNeverShare(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	const nRuns = 40
	for i := range nRuns {
		id := fmt.Sprintf("run-%02d", i)
		mustCreateRun(t, s, id)
		if i%4 != 0 { // every fourth run has no work and must not be claimed
			mustFrame(t, s, id, "f1")
		}
	}
	const replicas = 5
	var (
		mu      sync.Mutex
		claimed = map[string]string{}
		wg      sync.WaitGroup
	)
	for r := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprintf("replica-%d", r)
			for {
				gs, err := s.ClaimRunnable(ctx, owner, time.Minute, 3)
				if err != nil {
					t.Error(err)
					return
				}
				if len(gs) == 0 {
					return
				}
				mu.Lock()
				for _, g := range gs {
					if prev, dup := claimed[g.Lease.RunID]; dup {
						t.Errorf("run %s claimed by %s and %s", g.Lease.RunID, prev, owner)
					}
					claimed[g.Lease.RunID] = owner
					if g.Lease.Owner != owner || g.Result != store.LeaseAcquired {
						t.Errorf("grant %+v", g)
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if want := nRuns - nRuns/4; len(claimed) != want {
		t.Fatalf("claimed %d runs, want %d", len(claimed), want)
	}
	for id := range claimed {
		var i int
		fmt.Sscanf(id, "run-%d", &i)
		if i%4 == 0 {
			t.Errorf("run %s without work was claimed", id)
		}
	}
}

func TestReclaimExpiredConcurrentJanitors(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	const nRuns = 20
	for i := range nRuns {
		id := fmt.Sprintf("run-%02d", i)
		mustCreateRun(t, s, id)
		if _, err := s.AcquireLease(ctx, id, "dead-executor", time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().Add(time.Minute)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		count = map[string]int{}
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			recs, err := s.ReclaimExpired(ctx, now, 3, 100)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			for _, r := range recs {
				count[r.RunID]++
				if r.Outcome != store.ReclaimResumed || r.Attempts != 1 || r.Owner != "dead-executor" {
					t.Errorf("reclaim %+v", r)
				}
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(count) != nRuns {
		t.Fatalf("reclaimed %d runs, want %d", len(count), nRuns)
	}
	for id, c := range count {
		if c != 1 {
			t.Errorf("run %s reclaimed %d times", id, c)
		}
		evs, err := s.ListEvents(ctx, id, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 1 || evs[0].EventType != "run.executor_lost" {
			t.Errorf("run %s events %+v", id, evs)
		}
	}
}

func TestReclaimExhaustsWithoutProgress(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	mustCreateRun(t, s, "r1")
	mustFrame(t, s, "r1", "f1")
	now := time.Now()
	var last store.Reclaim
	for i := 1; i <= 4; i++ {
		gs, err := s.ClaimRunnable(ctx, "exec", time.Millisecond, 10)
		if err != nil || len(gs) != 1 {
			t.Fatalf("claim %d: %+v %v", i, gs, err)
		}
		now = now.Add(time.Minute)
		recs, err := s.ReclaimExpired(ctx, now, 3, 10)
		if err != nil || len(recs) != 1 {
			t.Fatalf("reclaim %d: %+v %v", i, recs, err)
		}
		last = recs[0]
		if last.Attempts != i {
			t.Fatalf("reclaim %d: attempts %d", i, last.Attempts)
		}
	}
	if last.Outcome != store.ReclaimExhausted {
		t.Fatalf("4th reclaim outcome %s", last.Outcome)
	}
	r, err := s.GetRun(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != store.StatusFailed || r.TerminalReasonClass != "executor_recovery_exhausted" || r.RecoveryAttempts != 4 {
		t.Fatalf("run after exhaustion: %+v", r)
	}
	if gs, err := s.ClaimRunnable(ctx, "exec", time.Minute, 10); err != nil || len(gs) != 0 {
		t.Fatalf("terminal run claimed: %+v %v", gs, err)
	}
}

func TestWatchDeliversEventAndFrameNotices(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	if s.ListenerUp() {
		t.Fatal("ListenerUp before any Watch")
	}
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !s.ListenerUp() {
		t.Fatal("ListenerUp false after Watch connected")
	}
	mustCreateRun(t, s, "r1")
	mustFrame(t, s, "r1", "f1")
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.started"}); err != nil {
		t.Fatal(err)
	}
	got := []store.Notice{<-ch, <-ch}
	want := []store.Notice{{Kind: store.NoticeFrame, RunID: "r1"}, {Kind: store.NoticeEvent, RunID: "r1", Seq: 1}}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("notice %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	// A rolled-back append must not notify.
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.finished", Payload: json.RawMessage(`{}`)}); err == nil {
		t.Fatal("illegal finish accepted")
	}
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta"}); err != nil {
		t.Fatal(err)
	}
	if n := <-ch; n.Seq != 2 {
		t.Fatalf("notice after rollback: %+v, want seq 2", n)
	}
}

// flakyProxy forwards TCP to PostgreSQL and can refuse new connections
// while keeping established ones, so the test can hold the listener down.
type flakyProxy struct {
	ln     net.Listener
	target string
	refuse atomic.Bool
}

func startProxy(t *testing.T, target string) *flakyProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &flakyProxy{ln: ln, target: target}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if p.refuse.Load() {
				_ = c.Close()
				continue
			}
			go func() {
				up, err := net.Dial("tcp", target)
				if err != nil {
					_ = c.Close()
					return
				}
				go func() { _, _ = io.Copy(up, c); _ = up.Close() }()
				_, _ = io.Copy(c, up)
				_ = c.Close()
			}()
		}
	}()
	return p
}

func TestWatchRecoversAfterListenerKilled(t *testing.T) {
	dbURL := testURL(t)
	cfg, err := pgx.ParseConfig(mustStrip(t, dbURL))
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(dbURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("this test needs a postgres:// OA_TEST_DATABASE_URL, got an unparsable one: %v", err)
	}
	proxy := startProxy(t, net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port)))
	u.Host = proxy.ln.Addr().String()
	t.Setenv("OA_TEST_DATABASE_URL", u.String())
	s := newTestStore(t, WithListenerBackoff(10*time.Millisecond, 50*time.Millisecond))
	ctx := t.Context()

	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !s.ListenerUp() {
		t.Fatal("listener not up after Watch")
	}
	mustCreateRun(t, s, "r1")
	// Hold a pool connection open now: the pool must keep working while the
	// proxy refuses new connections.
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}

	admin, err := pgx.Connect(ctx, mustStrip(t, dbURL))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var pid uint32
	if err := admin.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1`,
		"oaruntime-listener:"+s.Schema()).Scan(&pid); err != nil {
		t.Fatalf("find listener backend: %v", err)
	}

	proxy.refuse.Store(true)
	var ok bool
	if err := admin.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, pid).Scan(&ok); err != nil || !ok {
		t.Fatalf("terminate listener %d: %v %v", pid, ok, err)
	}
	eventually(t, "ListenerUp to go false", func() bool { return !s.ListenerUp() })
	// Written while the listener is away: its notification is lost.
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.started"}); err != nil {
		t.Fatal(err)
	}
	if s.ListenerUp() {
		t.Fatal("ListenerUp came back while new connections are refused")
	}

	proxy.refuse.Store(false)
	eventually(t, "ListenerUp to go true", s.ListenerUp)
	select {
	case n := <-ch:
		if n != (store.Notice{Kind: store.NoticeEvent}) {
			t.Fatalf("first notice after reconnect %+v, want the synthetic re-read-all notice", n)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no synthetic notice after reconnect")
	}
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta"}); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-ch:
		if n.RunID != "r1" || n.Seq != 2 {
			t.Fatalf("notice after reconnect %+v, want r1 seq 2", n)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no notice after reconnect")
	}
	var newPID uint32
	if err := admin.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1`,
		"oaruntime-listener:"+s.Schema()).Scan(&newPID); err != nil || newPID == pid {
		t.Fatalf("listener backend after reconnect: pid %d (old %d) err %v", newPID, pid, err)
	}
}

func mustStrip(t *testing.T, dbURL string) string {
	t.Helper()
	u, _, err := splitSchemaParam(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestWatchEndsWithContextAndClose(t *testing.T) {
	s := newTestStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	for range ch { // drains until closed
	}
	eventually(t, "ListenerUp false after the only Watch ended", func() bool { return !s.ListenerUp() })

	ch2, err := s.Watch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range ch2 {
	}
	if _, err := s.Watch(context.Background()); err == nil {
		t.Fatal("Watch after Close succeeded")
	}
}

func TestCreateRunAndFramesIdempotency(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	in := store.CreateRunInput{RunID: "r1", ThreadID: "t", OwnerSub: "user:1",
		Metadata: json.RawMessage(`{ "b":1, "a":"<x>" }`), Tools: json.RawMessage(`null`)}
	r, created, err := s.CreateRun(ctx, in)
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	if string(r.Metadata) != `{"a":"<x>","b":1}` || r.Tools != nil || r.Status != store.StatusCreated {
		t.Fatalf("stored run: metadata %s tools %s status %s", r.Metadata, r.Tools, r.Status)
	}
	if _, created, err := s.CreateRun(ctx, in); err != nil || created {
		t.Fatalf("replay: created=%v err=%v", created, err)
	}
	in.ThreadID = "other"
	if _, _, err := s.CreateRun(ctx, in); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("conflicting create: %v", err)
	}

	f1 := mustFrame(t, s, "r1", "f1")
	if f, ins, err := s.InsertFrame(ctx, store.InsertFrameInput{RunID: "r1", FrameID: "f1", Type: "user_message", Payload: json.RawMessage(`{"text": "hi"}`)}); err != nil || ins || f.ID != f1.ID {
		t.Fatalf("frame replay: %+v %v %v", f, ins, err)
	}
	if _, _, err := s.InsertFrame(ctx, store.InsertFrameInput{RunID: "r1", FrameID: "f1", Type: "cancel", Payload: json.RawMessage(`{"text":"hi"}`)}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("frame conflict: %v", err)
	}
	if _, _, err := s.InsertFrame(ctx, store.InsertFrameInput{RunID: "nope", FrameID: "f1", Type: "cancel"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("frame for unknown run: %v", err)
	}
	f2 := mustFrame(t, s, "r1", "f2")
	got, err := s.NextFrame(ctx, "r1", f1.ID)
	if err != nil || got.FrameID != "f2" || got.ID != f2.ID {
		t.Fatalf("next frame: %+v %v", got, err)
	}
	if _, err := s.NextFrame(ctx, "r1", f2.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("no next frame: %v", err)
	}
	if f1.PayloadHash != runs.PayloadHash([]byte(`{"text":"hi"}`)) {
		t.Fatalf("payload hash %s", f1.PayloadHash)
	}
}

func TestReclaimCountResetsAfterProgress(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	mustCreateRun(t, s, "r1")
	mustFrame(t, s, "r1", "f1")
	now := time.Now()
	claimAndReclaim := func(progress bool) (store.LeaseGrant, store.Reclaim) {
		t.Helper()
		gs, err := s.ClaimRunnable(ctx, "exec", time.Millisecond, 10)
		if err != nil || len(gs) != 1 {
			t.Fatalf("claim: %+v %v", gs, err)
		}
		if progress {
			// Fence checks need a live lease: renew first, as an executor would.
			l, err := s.RenewLease(ctx, gs[0].Lease, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta", Fence: l.Fence()}); err != nil {
				t.Fatal(err)
			}
		}
		now = now.Add(time.Hour)
		recs, err := s.ReclaimExpired(ctx, now, 3, 10)
		if err != nil || len(recs) != 1 {
			t.Fatalf("reclaim: %+v %v", recs, err)
		}
		return gs[0], recs[0]
	}
	g, r := claimAndReclaim(false)
	if g.Result != store.LeaseAcquired || r.Attempts != 1 {
		t.Fatalf("first: grant %s attempts %d", g.Result, r.Attempts)
	}
	g, r = claimAndReclaim(false)
	if g.Result != store.LeaseStolen || r.Attempts != 2 {
		t.Fatalf("second: grant %s attempts %d", g.Result, r.Attempts)
	}
	if _, r = claimAndReclaim(true); r.Attempts != 1 {
		t.Fatalf("after progress: attempts %d, want 1", r.Attempts)
	}
	lost, err := s.FindEventByType(ctx, "r1", "run.executor_lost")
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Owner    string `json:"lease_owner"`
		Progress int64  `json:"last_progress_seq"`
	}
	if err := json.Unmarshal(lost.Payload, &p); err != nil || p.Owner != "exec" || p.Progress != 3 {
		t.Fatalf("executor_lost payload %s (%v)", lost.Payload, err)
	}
}

func TestRenewAfterExpiryWithoutTakeover(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	mustCreateRun(t, s, "r1")
	g, err := s.AcquireLease(ctx, "r1", "a", time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta", Fence: g.Lease.Fence()}); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("append on expired lease: %v, want ErrFenced", err)
	}
	l, err := s.RenewLease(ctx, g.Lease, time.Minute)
	if err != nil {
		t.Fatalf("renew after expiry nobody acted on: %v", err)
	}
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta", Fence: l.Fence()}); err != nil {
		t.Fatalf("append after renew: %v", err)
	}
	if recs, err := s.ReclaimExpired(ctx, time.Now(), 3, 10); err != nil || len(recs) != 0 {
		t.Fatalf("renewed lease reclaimed: %+v %v", recs, err)
	}
}

// PostgreSQL text cannot hold NUL or invalid UTF-8; such ids must read as
// absent and such writes must fail with a message naming the field, never
// with a raw encoding error from the server.
func TestUnstorableText(t *testing.T) {
	s := newTestStore(t)
	ctx := context.Background()
	mustCreateRun(t, s, "r1")
	bad := []string{"r\x001", "r\xff1"}
	for _, id := range bad {
		if _, err := s.GetRun(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("GetRun(%q): %v", id, err)
		}
		if _, err := s.ListEvents(ctx, id, 0, 10); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("ListEvents(%q): %v", id, err)
		}
		if _, err := s.NextFrame(ctx, id, 0); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("NextFrame(%q): %v", id, err)
		}
		if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: id, EventType: "run.delta"}); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("AppendEvent(%q): %v", id, err)
		}
		if _, err := s.AcquireLease(ctx, id, "o", time.Minute); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("AcquireLease(%q): %v", id, err)
		}
	}
	for _, tc := range []struct {
		field string
		call  func() error
	}{
		{"event_type", func() error {
			_, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.\x00delta"})
			return err
		}},
		{"idempotency_key", func() error {
			_, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta", IdempotencyKey: "\xff"})
			return err
		}},
		{"frame_id", func() error {
			_, _, err := s.InsertFrame(ctx, store.InsertFrameInput{RunID: "r1", FrameID: "f\x00", Type: "cancel"})
			return err
		}},
		{"thread_id", func() error {
			_, _, err := s.CreateRun(ctx, store.CreateRunInput{RunID: "r2", ThreadID: "\xfe", OwnerSub: "user:1"})
			return err
		}},
	} {
		err := tc.call()
		if err == nil || !strings.Contains(err.Error(), tc.field) || strings.Contains(err.Error(), "SQLSTATE") {
			t.Errorf("%s: got %v, want an error naming the field", tc.field, err)
		}
	}
	// NUL inside JSON is an escape, which the json column stores verbatim.
	if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: "r1", EventType: "run.delta", Payload: json.RawMessage(`{"a":"x\u0000y"}`)}); err != nil {
		t.Errorf("escaped NUL in payload: %v", err)
	}
}

// BenchmarkAppendEvent reports append throughput: one run per goroutine, so
// it measures the transaction path rather than row-lock contention.
func BenchmarkAppendEvent(b *testing.B) {
	s := newBenchStore(b)
	ctx := context.Background()
	var runN atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id := fmt.Sprintf("bench-%d", runN.Add(1))
		if _, _, err := s.CreateRun(ctx, store.CreateRunInput{RunID: id, ThreadID: "t", OwnerSub: "user:b"}); err != nil {
			b.Error(err)
			return
		}
		for pb.Next() {
			if _, _, err := s.AppendEvent(ctx, store.AppendInput{RunID: id, EventType: "run.delta", Payload: json.RawMessage(`{"delta":"x"}`)}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// newBenchStore opens a store on a schema of its own, dropped at the end.
func newBenchStore(b *testing.B) *Store {
	b.Helper()
	dbURL := os.Getenv("OA_TEST_DATABASE_URL")
	if dbURL == "" {
		b.Skip("SKIPPING: set OA_TEST_DATABASE_URL to benchmark the PostgreSQL driver")
	}
	schema := fmt.Sprintf("oabench_%06x", rand.N(1<<24))
	ctx := context.Background()
	s, err := Open(ctx, dbURL, WithSchema(schema), WithMigrate())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = s.Close()
		conn, err := pgx.Connect(ctx, mustStripB(b, dbURL))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			b.Fatal(err)
		}
	})
	return s
}

func mustStripB(b *testing.B, dbURL string) string {
	b.Helper()
	u, _, err := splitSchemaParam(dbURL)
	if err != nil {
		b.Fatal(err)
	}
	return u
}
