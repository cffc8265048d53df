package token

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/store/postgres"
	"github.com/oaruntime/oaruntime/internal/store/sqlite"
)

// fakeClock is a settable clock shared by the adapters of a test.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: testNow()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// countingBackend is an in-memory RevocationBackend that counts lookups and
// can be made to fail.
type countingBackend struct {
	mu      sync.Mutex
	rows    map[string]time.Time
	lookups int
	fail    error
	pruneAt []time.Time
}

func newCountingBackend() *countingBackend {
	return &countingBackend{rows: map[string]time.Time{}}
}

func (b *countingBackend) RevokeToken(_ context.Context, jti string, exp time.Time, _ string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail != nil {
		return b.fail
	}
	if old, ok := b.rows[jti]; !ok || exp.After(old) {
		b.rows[jti] = exp
	}
	return nil
}

func (b *countingBackend) IsTokenRevoked(_ context.Context, jti string) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lookups++
	if b.fail != nil {
		return false, b.fail
	}
	_, ok := b.rows[jti]
	return ok, nil
}

func (b *countingBackend) PruneRevocations(_ context.Context, now time.Time) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pruneAt = append(b.pruneAt, now)
	if b.fail != nil {
		return 0, b.fail
	}
	n := 0
	for jti, exp := range b.rows {
		if exp.Before(now) {
			delete(b.rows, jti)
			n++
		}
	}
	return n, nil
}

// revokeDirect writes a row as another replica would: past this adapter.
func (b *countingBackend) revokeDirect(jti string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rows[jti] = testNow().Add(time.Hour)
}

func (b *countingBackend) lookupCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lookups
}

func wantRevoked(t *testing.T, r Revocations, jti string, want bool) {
	t.Helper()
	got, err := r.IsRevoked(t.Context(), jti)
	if err != nil {
		t.Fatalf("IsRevoked(%s): %v", jti, err)
	}
	if got != want {
		t.Fatalf("IsRevoked(%s) = %v, want %v", jti, got, want)
	}
}

func wantLookups(t *testing.T, b *countingBackend, want int) {
	t.Helper()
	if got := b.lookupCount(); got != want {
		t.Fatalf("store lookups = %d, want %d", got, want)
	}
}

func TestStoreRevocationsCaching(t *testing.T) {
	t.Run("negative answers are reused for NegativeTTL only", func(t *testing.T) {
		clk, b := newFakeClock(), newCountingBackend()
		r := NewStoreRevocations(b, StoreRevocationsConfig{Now: clk.Now})
		wantRevoked(t, r, "j", false)
		wantRevoked(t, r, "j", false)
		wantLookups(t, b, 1)
		clk.Advance(DefaultNegativeTTL - time.Millisecond)
		wantRevoked(t, r, "j", false)
		wantLookups(t, b, 1)
		// Another replica revokes; the default bound is what this
		// replica may lag by.
		b.revokeDirect("j")
		clk.Advance(time.Millisecond)
		wantRevoked(t, r, "j", true)
		wantLookups(t, b, 2)
	})

	t.Run("positive answers are reused until no token can be alive", func(t *testing.T) {
		clk, b := newFakeClock(), newCountingBackend()
		r := NewStoreRevocations(b, StoreRevocationsConfig{Now: clk.Now})
		b.revokeDirect("j")
		for range 5 {
			wantRevoked(t, r, "j", true)
		}
		wantLookups(t, b, 1)
		clk.Advance(MaxTTL + DefaultLeeway - time.Second)
		wantRevoked(t, r, "j", true)
		wantLookups(t, b, 1)
		clk.Advance(time.Second)
		wantRevoked(t, r, "j", true) // asked again; the row is still there
		wantLookups(t, b, 2)
	})

	t.Run("negative caching can be disabled", func(t *testing.T) {
		b := newCountingBackend()
		r := NewStoreRevocations(b, StoreRevocationsConfig{NegativeTTL: -1, Now: fixedNow})
		for range 3 {
			wantRevoked(t, r, "j", false)
		}
		wantLookups(t, b, 3)
	})

	t.Run("errors are returned and never cached", func(t *testing.T) {
		b := newCountingBackend()
		r := NewStoreRevocations(b, StoreRevocationsConfig{Now: fixedNow})
		boom := errors.New("database is down")
		b.fail = boom
		if _, err := r.IsRevoked(t.Context(), "j"); !errors.Is(err, boom) {
			t.Fatalf("IsRevoked error %v, want it to wrap %v", err, boom)
		}
		b.mu.Lock()
		b.fail = nil
		b.mu.Unlock()
		b.revokeDirect("j")
		wantRevoked(t, r, "j", true)
		wantLookups(t, b, 2)
	})

	t.Run("a local revocation overrides a cached negative at once", func(t *testing.T) {
		b := newCountingBackend()
		r := NewStoreRevocations(b, StoreRevocationsConfig{NegativeTTL: time.Hour, Now: fixedNow})
		wantRevoked(t, r, "j", false)
		if err := r.RevokeToken(t.Context(), "j", testNow().Add(time.Minute), "test"); err != nil {
			t.Fatal(err)
		}
		wantRevoked(t, r, "j", true)
		wantLookups(t, b, 1) // answered from the cache
	})

	t.Run("a failed local revocation is not cached", func(t *testing.T) {
		b := newCountingBackend()
		r := NewStoreRevocations(b, StoreRevocationsConfig{Now: fixedNow})
		b.fail = errors.New("read-only")
		if err := r.RevokeToken(t.Context(), "j", testNow().Add(time.Minute), ""); err == nil {
			t.Fatal("RevokeToken succeeded over a failing store")
		}
		b.mu.Lock()
		b.fail = nil
		b.mu.Unlock()
		wantRevoked(t, r, "j", false)
	})

	t.Run("caches are bounded", func(t *testing.T) {
		clk, b := newFakeClock(), newCountingBackend()
		r := NewStoreRevocations(b, StoreRevocationsConfig{MaxCacheEntries: 3, Now: clk.Now})
		for i := range 10 {
			wantRevoked(t, r, fmt.Sprintf("n%d", i), false)
			b.revokeDirect(fmt.Sprintf("p%d", i))
			wantRevoked(t, r, fmt.Sprintf("p%d", i), true)
			if pos, neg := r.cacheSizes(); pos > 3 || neg > 3 {
				t.Fatalf("after %d: cache sizes %d positive, %d negative; bound 3", i+1, pos, neg)
			}
		}
		// An uncached positive is still answered, from the store.
		before := b.lookupCount()
		wantRevoked(t, r, "p9", true)
		wantLookups(t, b, before+1)
		// Expired entries make room again.
		clk.Advance(MaxTTL + DefaultLeeway)
		wantRevoked(t, r, "p9", true)
		wantRevoked(t, r, "p9", true)
		wantLookups(t, b, before+2)
	})
}

func TestStoreRevocationsPrune(t *testing.T) {
	clk, b := newFakeClock(), newCountingBackend()
	r := NewStoreRevocations(b, StoreRevocationsConfig{PruneGrace: 30 * time.Second, Now: clk.Now})
	if err := r.RevokeToken(t.Context(), "old", testNow().Add(-time.Minute), ""); err != nil {
		t.Fatal(err)
	}
	if err := r.RevokeToken(t.Context(), "recent", testNow().Add(-10*time.Second), ""); err != nil {
		t.Fatal(err)
	}
	wantRevoked(t, r, "neg", false)
	n, err := r.Prune(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("Prune deleted %d, want 1 (only the token expired beyond the grace)", n)
	}
	if want := testNow().Add(-30 * time.Second); !b.pruneAt[0].Equal(want) {
		t.Fatalf("store pruned before %s, want now minus grace %s", b.pruneAt[0], want)
	}
	// The cache is swept by time, not by the store's deletions.
	clk.Advance(MaxTTL + DefaultLeeway)
	if _, err := r.Prune(t.Context()); err != nil {
		t.Fatal(err)
	}
	if pos, neg := r.cacheSizes(); pos != 0 || neg != 0 {
		t.Fatalf("after expiry, Prune left %d positive and %d negative cache entries", pos, neg)
	}

	b.fail = errors.New("down")
	if _, err := r.Prune(t.Context()); err == nil {
		t.Fatal("Prune over a failing store returned no error")
	}
}

func TestStoreRevocationsRunPruningStopsWithContext(t *testing.T) {
	b := newCountingBackend()
	r := NewStoreRevocations(b, StoreRevocationsConfig{Now: fixedNow})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.RunPruning(ctx, time.Hour)
	}()
	// The first cycle runs at once; wait for it, then stop.
	for {
		b.mu.Lock()
		n := len(b.pruneAt)
		b.mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
}

// replicaPair returns two adapters over two handles of one database, as two
// replicas would have, sharing a fake clock.
type replicaPair struct {
	a, b *StoreRevocations
	clk  *fakeClock
}

func sqliteReplicas(t *testing.T) replicaPair {
	t.Helper()
	path := filepath.Join(t.TempDir(), "runtime.db")
	open := func() *sqlite.Store {
		s, err := sqlite.Open(context.Background(), path, sqlite.WithMigrate(), sqlite.WithSynchronous("NORMAL"))
		if err != nil {
			t.Fatalf("open sqlite: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	clk := newFakeClock()
	cfg := StoreRevocationsConfig{Now: clk.Now}
	return replicaPair{a: NewStoreRevocations(open(), cfg), b: NewStoreRevocations(open(), cfg), clk: clk}
}

func postgresReplicas(t *testing.T) replicaPair {
	t.Helper()
	u := os.Getenv("OA_TEST_DATABASE_URL")
	if u == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("OA_TEST_DATABASE_URL is unset but CI is set: the PostgreSQL revocation test cannot run")
		}
		t.Skip("SKIPPING PostgreSQL revocation test: set OA_TEST_DATABASE_URL=postgres://... to run it")
	}
	schema := fmt.Sprintf("oatest_rev_%06x", rand.N(1<<24))
	open := func() *postgres.Store {
		s, err := postgres.Open(context.Background(), u, postgres.WithSchema(schema), postgres.WithMigrate())
		if err != nil {
			t.Fatalf("open postgres: %v", err)
		}
		return s
	}
	sa, sb := open(), open()
	t.Cleanup(func() {
		_ = sb.Close()
		if _, err := sa.Pool().Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
		_ = sa.Close()
	})
	clk := newFakeClock()
	cfg := StoreRevocationsConfig{Now: clk.Now}
	return replicaPair{a: NewStoreRevocations(sa, cfg), b: NewStoreRevocations(sb, cfg), clk: clk}
}

// TestRevocationReachesAnotherReplica: a token revoked through replica A is
// rejected by A at once and by B as soon as B's negative answer ages out
// (DefaultNegativeTTL), through the shared database alone.
func TestRevocationReachesAnotherReplica(t *testing.T) {
	for _, tc := range []struct {
		name string
		pair func(t *testing.T) replicaPair
	}{{"sqlite", sqliteReplicas}, {"postgres", postgresReplicas}} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.pair(t)
			k := keyringOne(t)
			tok, err := newTestMinter(t, k).Mint(t.Context(), MintRequest{Subject: "user:42"})
			if err != nil {
				t.Fatal(err)
			}
			va := NewVerifier(VerifierConfig{Keyring: k, Revocations: p.a, Now: p.clk.Now})
			vb := NewVerifier(VerifierConfig{Keyring: k, Revocations: p.b, Now: p.clk.Now})
			for name, v := range map[string]*Verifier{"A": va, "B": vb} {
				if _, err := v.Verify(t.Context(), tok.Token); err != nil {
					t.Fatalf("replica %s before revocation: %v", name, err)
				}
			}

			if err := p.a.RevokeToken(t.Context(), tok.ID, tok.ExpiresAt, "lost laptop"); err != nil {
				t.Fatal(err)
			}
			if _, err := va.Verify(t.Context(), tok.Token); ReasonOf(err) != ReasonRevoked {
				t.Fatalf("replica A right after revoking: %v, want revoked", err)
			}
			// B answered "not revoked" a moment ago and may keep that
			// answer for at most DefaultNegativeTTL.
			p.clk.Advance(DefaultNegativeTTL)
			if _, err := vb.Verify(t.Context(), tok.Token); ReasonOf(err) != ReasonRevoked {
				t.Fatalf("replica B after %s: %v, want revoked", DefaultNegativeTTL, err)
			}
			// A fresh replica with an empty cache sees it too.
			if ok, err := p.b.b.IsTokenRevoked(t.Context(), tok.ID); err != nil || !ok {
				t.Fatalf("store via B: IsTokenRevoked = %v, %v", ok, err)
			}

			// Pruning on B after the token's expiry plus grace removes
			// the row for both.
			p.clk.Advance(MaxTTL + DefaultPruneGrace + time.Second)
			n, err := p.b.Prune(t.Context())
			if err != nil || n != 1 {
				t.Fatalf("Prune = %d, %v; want 1", n, err)
			}
			if ok, err := p.a.b.IsTokenRevoked(t.Context(), tok.ID); err != nil || ok {
				t.Fatalf("after pruning: IsTokenRevoked = %v, %v; want false", ok, err)
			}
		})
	}
}

// TestStoreRevocationFailureFailsClosed: a broken store makes Verify fail
// with ErrRevocationCheck (sync answers 503 / keeps live sessions), never
// accept the token.
func TestStoreRevocationFailureFailsClosed(t *testing.T) {
	b := newCountingBackend()
	b.fail = errors.New("connection refused")
	k := keyringOne(t)
	tok, err := newTestMinter(t, k).Mint(t.Context(), MintRequest{Subject: "user:42"})
	if err != nil {
		t.Fatal(err)
	}
	v := newTestVerifier(k, NewStoreRevocations(b, StoreRevocationsConfig{Now: fixedNow}))
	_, err = v.Verify(t.Context(), tok.Token)
	if !errors.Is(err, ErrRevocationCheck) || ReasonOf(err) != ReasonInvalidToken {
		t.Fatalf("Verify over a failing store: %v; want ErrRevocationCheck with reason invalid_token", err)
	}
}
