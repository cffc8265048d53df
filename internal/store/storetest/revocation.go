package storetest

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// RunRevocation runs the token revocation sub-suite (store.RevocationStore).
// newStore returns a fresh, migrated, empty store per call.
func RunRevocation(t *testing.T, newStore func(t *testing.T) store.RevocationStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.RevocationStore)
	}{
		{"UnknownIsNotRevoked", rvTestUnknown},
		{"RevokeIsVisible", rvTestRevoke},
		{"IdempotentKeepsLaterExpiry", rvTestIdempotent},
		{"PruneDeletesOnlyExpired", rvTestPrune},
		{"InvalidInput", rvTestInvalid},
		{"UnstorableLookupIsNotRevoked", rvTestUnstorableLookup},
		{"ConcurrentRevokes", rvTestConcurrentRevokes},
		{"ConcurrentPrunes", rvTestConcurrentPrunes},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

// rvBase is a fixed instant with microsecond precision, the finest both
// drivers keep, so boundary comparisons are exact.
var rvBase = time.Date(2030, 1, 2, 3, 4, 5, 123456000, time.UTC)

func rvRevoke(t *testing.T, s store.RevocationStore, jti string, exp time.Time, reason string) {
	t.Helper()
	if err := s.RevokeToken(t.Context(), jti, exp, reason); err != nil {
		t.Fatalf("RevokeToken(%q): %v", jti, err)
	}
}

func rvWant(t *testing.T, s store.RevocationStore, jti string, want bool) {
	t.Helper()
	got, err := s.IsTokenRevoked(t.Context(), jti)
	if err != nil {
		t.Fatalf("IsTokenRevoked(%q): %v", jti, err)
	}
	if got != want {
		t.Fatalf("IsTokenRevoked(%q) = %v, want %v", jti, got, want)
	}
}

func rvPrune(t *testing.T, s store.RevocationStore, now time.Time, want int) {
	t.Helper()
	n, err := s.PruneRevocations(t.Context(), now)
	if err != nil {
		t.Fatalf("PruneRevocations(%s): %v", now.Format(time.RFC3339Nano), err)
	}
	if n != want {
		t.Fatalf("PruneRevocations(%s) deleted %d, want %d", now.Format(time.RFC3339Nano), n, want)
	}
}

func rvTestUnknown(t *testing.T, s store.RevocationStore) {
	rvWant(t, s, "00112233445566778899aabbccddeeff", false)
	rvPrune(t, s, rvBase, 0)
}

func rvTestRevoke(t *testing.T, s store.RevocationStore) {
	rvRevoke(t, s, "jti-a", rvBase.Add(time.Minute), "compromised device")
	rvWant(t, s, "jti-a", true)
	rvWant(t, s, "jti-b", false)
	// Lookups are exact: no prefix or case folding.
	rvWant(t, s, "jti-", false)
	rvWant(t, s, "JTI-A", false)
	// A revocation whose expiry already passed is still recorded until
	// pruned: the row, not the clock, decides.
	rvRevoke(t, s, "jti-old", rvBase.Add(-time.Hour), "")
	rvWant(t, s, "jti-old", true)
	// Unicode reasons and a non-UTC expiry are accepted.
	rvRevoke(t, s, "jti-c", rvBase.In(time.FixedZone("x", 5*3600)), "révoqué ✓")
	rvWant(t, s, "jti-c", true)
}

func rvTestIdempotent(t *testing.T, s store.RevocationStore) {
	early, late := rvBase, rvBase.Add(10*time.Minute)
	between := rvBase.Add(5 * time.Minute)

	// Second call with an earlier expiry must not shorten the first.
	rvRevoke(t, s, "shorter-second", late, "first")
	rvRevoke(t, s, "shorter-second", early, "second")
	// Second call with a later expiry lengthens the first.
	rvRevoke(t, s, "longer-second", early, "first")
	rvRevoke(t, s, "longer-second", late, "second")
	// Plain repeat.
	rvRevoke(t, s, "same", early, "r")
	rvRevoke(t, s, "same", early, "r")

	rvPrune(t, s, between, 1) // only "same" expired
	rvWant(t, s, "shorter-second", true)
	rvWant(t, s, "longer-second", true)
	rvWant(t, s, "same", false)
	rvPrune(t, s, late.Add(time.Microsecond), 2)
	rvWant(t, s, "shorter-second", false)
	rvWant(t, s, "longer-second", false)
}

func rvTestPrune(t *testing.T, s store.RevocationStore) {
	for i := range 5 {
		rvRevoke(t, s, fmt.Sprintf("p%d", i), rvBase.Add(time.Duration(i)*time.Second), "")
	}
	// Strictly before now: the row expiring exactly at now stays.
	rvPrune(t, s, rvBase.Add(2*time.Second), 2)
	rvWant(t, s, "p0", false)
	rvWant(t, s, "p1", false)
	rvWant(t, s, "p2", true)
	rvPrune(t, s, rvBase.Add(2*time.Second), 0)
	// One microsecond past the expiry is enough.
	rvPrune(t, s, rvBase.Add(2*time.Second+time.Microsecond), 1)
	rvWant(t, s, "p2", false)
	rvWant(t, s, "p4", true)
	// Revoking a pruned jti again records it again.
	rvRevoke(t, s, "p0", rvBase.Add(time.Hour), "")
	rvWant(t, s, "p0", true)
	rvPrune(t, s, rvBase.Add(time.Minute), 2) // p3, p4
	rvWant(t, s, "p0", true)
}

func rvTestInvalid(t *testing.T, s store.RevocationStore) {
	exp := rvBase.Add(time.Minute)
	cases := []struct {
		name, jti, reason string
	}{
		{"empty jti", "", "x"},
		{"jti too long", strings.Repeat("j", store.MaxRevocationJTILen+1), ""},
		{"reason too long", "ok-jti", strings.Repeat("r", store.MaxRevocationReasonLen+1)},
		{"NUL in jti", "a\x00b", ""},
		{"NUL in reason", "ok-jti", "a\x00b"},
		{"invalid UTF-8 jti", "a\xffb", ""},
		{"invalid UTF-8 reason", "ok-jti", "a\xffb"},
	}
	for _, c := range cases {
		err := s.RevokeToken(t.Context(), c.jti, exp, c.reason)
		if !errors.Is(err, store.ErrInvalidRevocation) {
			t.Errorf("%s: RevokeToken error %v, want ErrInvalidRevocation", c.name, err)
		}
	}
	// Nothing was half-written by the rejected calls.
	rvWant(t, s, "ok-jti", false)
	rvPrune(t, s, exp.Add(time.Hour), 0)

	// The bounds themselves are accepted.
	long := strings.Repeat("j", store.MaxRevocationJTILen)
	rvRevoke(t, s, long, exp, strings.Repeat("r", store.MaxRevocationReasonLen))
	rvWant(t, s, long, true)
}

func rvTestUnstorableLookup(t *testing.T, s store.RevocationStore) {
	for _, jti := range []string{"a\x00b", "a\xffb", ""} {
		rvWant(t, s, jti, false)
	}
}

func rvTestConcurrentRevokes(t *testing.T, s store.RevocationStore) {
	const workers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each*2)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				// Everyone revokes "shared" (replicas racing on one
				// token) and their own ids.
				if err := s.RevokeToken(t.Context(), "shared", rvBase.Add(time.Duration(w)*time.Second), "race"); err != nil {
					errs <- fmt.Errorf("shared by %d: %w", w, err)
				}
				if err := s.RevokeToken(t.Context(), fmt.Sprintf("w%d-%d", w, i), rvBase, ""); err != nil {
					errs <- fmt.Errorf("w%d-%d: %w", w, i, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	rvWant(t, s, "shared", true)
	for w := range workers {
		for i := range each {
			rvWant(t, s, fmt.Sprintf("w%d-%d", w, i), true)
		}
	}
	// The latest expiry any racer wrote survived: pruning just before it
	// keeps "shared" and deletes every per-worker id.
	rvPrune(t, s, rvBase.Add(time.Duration(workers-1)*time.Second), workers*each)
	rvWant(t, s, "shared", true)
}

func rvTestConcurrentPrunes(t *testing.T, s store.RevocationStore) {
	const rows = 50
	for i := range rows {
		rvRevoke(t, s, fmt.Sprintf("c%d", i), rvBase, "")
	}
	rvRevoke(t, s, "keeper", rvBase.Add(time.Hour), "")
	const pruners = 4
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int
	)
	for range pruners {
		wg.Go(func() {
			n, err := s.PruneRevocations(t.Context(), rvBase.Add(time.Second))
			if err != nil {
				t.Errorf("PruneRevocations: %v", err)
				return
			}
			mu.Lock()
			total += n
			mu.Unlock()
		})
	}
	wg.Wait()
	if total != rows {
		t.Fatalf("concurrent pruners deleted %d rows in all, want %d (each row exactly once)", total, rows)
	}
	rvWant(t, s, "keeper", true)
	rvWant(t, s, "c0", false)
}
