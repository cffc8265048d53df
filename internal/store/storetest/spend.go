package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// SpendDriver is a driver that implements both contracts.
type SpendDriver interface {
	store.Store
	store.SpendStore
}

// RunSpend runs the spend sub-suite (store.SpendStore).
func RunSpend(t *testing.T, newStore func(t *testing.T) SpendDriver) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s SpendDriver)
	}{
		{"EnsureAuthorization", spTestEnsure},
		{"EnsureInvalidInputWritesNothing", spTestEnsureInvalid},
		{"EnsureConcurrent", spTestEnsureConcurrent},
		{"ReserveCommitRelease", spTestLifecycle},
		{"BudgetExhausted", spTestBudgetExhausted},
		{"Expired", spTestExpired},
		{"DenyAll", spTestDenyAll},
		{"CallKeyIdempotent", spTestCallKey},
		{"ReleasedCallKeyReservesAgain", spTestReactivate},
		{"InvalidReserveAndCommit", spTestInvalid},
		{"ReleaseRunReservations", spTestReleaseRun},
		{"ConcurrentNeverOverspends", spTestConcurrentReserve},
		{"ConcurrentSameCallKey", spTestConcurrentSameKey},
		{"ConcurrentReserveCommitRelease", spTestConcurrentMixed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

func spRun(t *testing.T, s SpendDriver, runID string) {
	t.Helper()
	if _, _, err := s.CreateRun(context.Background(), store.CreateRunInput{RunID: runID, ThreadID: "thread-" + runID, OwnerSub: "user:1"}); err != nil {
		t.Fatalf("create run %s: %v", runID, err)
	}
}

func spAuth(t *testing.T, s SpendDriver, authID, runID string, maxSats int64) store.Authorization {
	t.Helper()
	spRun(t, s, runID)
	a, created, err := s.EnsureAuthorization(context.Background(), store.EnsureAuthorizationInput{
		AuthorizationID: authID, RunID: runID, Mode: store.AuthModeDelegatedBudget, MaxTotalSats: maxSats,
	})
	if err != nil || !created {
		t.Fatalf("ensure authorization %s: created=%v err=%v", authID, created, err)
	}
	return a
}

func spReserve(t *testing.T, s SpendDriver, authID, key string, amount int64) (store.Reservation, store.SpendDecision) {
	t.Helper()
	r, d, err := s.Reserve(context.Background(), store.ReserveInput{AuthorizationID: authID, CallKey: key, AmountSats: amount})
	if err != nil {
		t.Fatalf("reserve %s %d: %v", key, amount, err)
	}
	return r, d
}

// spBudget asserts the stored figures and that they agree with the rows.
func spBudget(t *testing.T, s SpendDriver, authID string, spent, reserved int64) store.Authorization {
	t.Helper()
	a, err := s.GetAuthorization(context.Background(), authID)
	if err != nil {
		t.Fatalf("get authorization %s: %v", authID, err)
	}
	if a.SpentSats != spent || a.ReservedSats != reserved {
		t.Fatalf("authorization %s: spent=%d reserved=%d, want spent=%d reserved=%d", authID, a.SpentSats, a.ReservedSats, spent, reserved)
	}
	rows, err := s.ListReservations(context.Background(), a.RunID)
	if err != nil {
		t.Fatalf("list reservations: %v", err)
	}
	var rowSpent, rowReserved int64
	for _, r := range rows {
		switch r.State {
		case store.ReservationReserved:
			rowReserved += r.AmountSats
		case store.ReservationCommitted:
			rowSpent += r.CommittedSats
		}
	}
	if rowSpent != spent || rowReserved != reserved {
		t.Fatalf("reservation rows of %s sum to spent=%d reserved=%d, authorization says %d/%d", authID, rowSpent, rowReserved, spent, reserved)
	}
	return a
}

func spTestEnsure(t *testing.T, s SpendDriver) {
	ctx := context.Background()
	spRun(t, s, "run-a")
	spRun(t, s, "run-b")
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second).Add(123456789 * time.Nanosecond)
	in := store.EnsureAuthorizationInput{AuthorizationID: "auth-a", RunID: "run-a", Mode: store.AuthModeDelegatedBudget, MaxTotalSats: 100, ExpiresAt: &exp}
	a, created, err := s.EnsureAuthorization(ctx, in)
	if err != nil || !created {
		t.Fatalf("first ensure: created=%v err=%v", created, err)
	}
	if a.AuthorizationID != "auth-a" || a.RunID != "run-a" || a.Mode != store.AuthModeDelegatedBudget || a.MaxTotalSats != 100 ||
		a.SpentSats != 0 || a.ReservedSats != 0 || a.RemainingSats() != 100 {
		t.Fatalf("stored authorization = %+v", a)
	}
	if a.ExpiresAt == nil || !a.ExpiresAt.Equal(exp.Truncate(time.Microsecond)) {
		t.Fatalf("expires_at = %v, want %v", a.ExpiresAt, exp.Truncate(time.Microsecond))
	}
	spReserve(t, s, "auth-a", "k1", 10)

	// Identical repeat: the stored row, spent/reserved as they are now.
	again, created, err := s.EnsureAuthorization(ctx, in)
	if err != nil || created {
		t.Fatalf("repeat ensure: created=%v err=%v", created, err)
	}
	if again.ReservedSats != 10 {
		t.Fatalf("repeat ensure returned reserved=%d, want the live 10", again.ReservedSats)
	}

	conflicts := map[string]store.EnsureAuthorizationInput{}
	other := in
	other.MaxTotalSats = 101
	conflicts["other max"] = other
	other = in
	other.Mode = store.AuthModeDenyAll
	conflicts["other mode"] = other
	other = in
	other.ExpiresAt = nil
	conflicts["no expiry"] = other
	other = in
	later := exp.Add(time.Second)
	other.ExpiresAt = &later
	conflicts["other expiry"] = other
	other = in
	other.RunID = "run-b"
	conflicts["other run, same id"] = other
	conflicts["same run, other id"] = store.EnsureAuthorizationInput{AuthorizationID: "auth-a2", RunID: "run-a", Mode: store.AuthModeDelegatedBudget, MaxTotalSats: 100}
	for name, c := range conflicts {
		if _, _, err := s.EnsureAuthorization(ctx, c); !errors.Is(err, store.ErrConflict) {
			t.Errorf("%s: err = %v, want ErrConflict", name, err)
		}
	}
	if _, err := s.GetAuthorization(ctx, "auth-a2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("conflicting ensure stored auth-a2: err = %v", err)
	}

	if _, _, err := s.EnsureAuthorization(ctx, store.EnsureAuthorizationInput{AuthorizationID: "auth-x", RunID: "no-such-run", Mode: store.AuthModeDelegatedBudget, MaxTotalSats: 1}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown run: err = %v, want ErrNotFound", err)
	}
	if _, err := s.GetAuthorization(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("get unknown: err = %v", err)
	}
	byRun, err := s.AuthorizationForRun(ctx, "run-a")
	if err != nil || byRun.AuthorizationID != "auth-a" {
		t.Errorf("authorization for run-a = %+v, %v", byRun, err)
	}
	if _, err := s.AuthorizationForRun(ctx, "run-b"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("authorization for run-b: err = %v, want ErrNotFound", err)
	}
}

func spTestEnsureInvalid(t *testing.T, s SpendDriver) {
	ctx := context.Background()
	spRun(t, s, "run-a")
	ok := store.EnsureAuthorizationInput{AuthorizationID: "auth-a", RunID: "run-a", Mode: store.AuthModeDelegatedBudget, MaxTotalSats: 5}
	cases := map[string]func(*store.EnsureAuthorizationInput){
		"empty id":     func(in *store.EnsureAuthorizationInput) { in.AuthorizationID = "" },
		"empty run":    func(in *store.EnsureAuthorizationInput) { in.RunID = "" },
		"unknown mode": func(in *store.EnsureAuthorizationInput) { in.Mode = "interactive" },
		"empty mode":   func(in *store.EnsureAuthorizationInput) { in.Mode = "" },
		"negative max": func(in *store.EnsureAuthorizationInput) { in.MaxTotalSats = -1 },
		"huge max":     func(in *store.EnsureAuthorizationInput) { in.MaxTotalSats = store.MaxSpendAmount + 1 },
		"long id": func(in *store.EnsureAuthorizationInput) {
			in.AuthorizationID = string(make([]byte, store.MaxSpendIDLen+1))
		},
	}
	for name, mutate := range cases {
		in := ok
		mutate(&in)
		if _, _, err := s.EnsureAuthorization(ctx, in); !errors.Is(err, store.ErrInvalidSpend) {
			t.Errorf("%s: err = %v, want ErrInvalidSpend", name, err)
		}
	}
	if _, err := s.AuthorizationForRun(ctx, "run-a"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("invalid input stored an authorization: err = %v", err)
	}
	if _, _, err := s.EnsureAuthorization(ctx, ok); err != nil {
		t.Fatalf("valid input after invalid ones: %v", err)
	}
}

func spTestEnsureConcurrent(t *testing.T, s SpendDriver) {
	ctx := context.Background()
	spRun(t, s, "run-a")
	in := store.EnsureAuthorizationInput{AuthorizationID: "auth-a", RunID: "run-a", Mode: store.AuthModeDelegatedBudget, MaxTotalSats: 7}
	const n = 20
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		created int
		errs    []error
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, c, err := s.EnsureAuthorization(ctx, in)
			mu.Lock()
			defer mu.Unlock()
			if c {
				created++
			}
			if err != nil {
				errs = append(errs, err)
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 || created != 1 {
		t.Fatalf("%d concurrent ensures: created=%d (want 1), errors=%v", n, created, errs)
	}
}

func spTestLifecycle(t *testing.T, s SpendDriver) {
	ctx := context.Background()
	spAuth(t, s, "auth-a", "run-a", 100)

	r1, d := spReserve(t, s, "auth-a", "call-1", 30)
	if !d.Allowed || d.Reason != store.SpendAllowed || d.Replay {
		t.Fatalf("reserve 30 of 100: %+v", d)
	}
	if r1.State != store.ReservationReserved || r1.AmountSats != 30 || r1.RunID != "run-a" || r1.CallKey != "call-1" ||
		r1.ReservationID != store.ReservationID("auth-a", "call-1") {
		t.Fatalf("reservation = %+v", r1)
	}
	if d.Authorization.ReservedSats != 30 || d.Authorization.RemainingSats() != 70 {
		t.Fatalf("decision carries budget %+v, want reserved 30", d.Authorization)
	}
	spBudget(t, s, "auth-a", 0, 30)

	c, err := s.Commit(ctx, r1.ReservationID, 20)
	if err != nil || c.State != store.ReservationCommitted || c.CommittedSats != 20 {
		t.Fatalf("commit 20 of 30: %+v, %v", c, err)
	}
	a := spBudget(t, s, "auth-a", 20, 0)
	if a.RemainingSats() != 80 {
		t.Fatalf("remaining = %d, want 80 (the unused 10 returned)", a.RemainingSats())
	}
	// Repeat with the same actual replays without charging twice.
	if c2, err := s.Commit(ctx, r1.ReservationID, 20); err != nil || c2.State != store.ReservationCommitted {
		t.Fatalf("repeat commit: %+v, %v", c2, err)
	}
	spBudget(t, s, "auth-a", 20, 0)
	if _, err := s.Commit(ctx, r1.ReservationID, 21); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("commit with another actual: err = %v, want ErrConflict", err)
	}
	if _, err := s.Release(ctx, r1.ReservationID); !errors.Is(err, store.ErrReservationFinalized) {
		t.Fatalf("release of committed: err = %v, want ErrReservationFinalized", err)
	}

	r2, d := spReserve(t, s, "auth-a", "call-2", 50)
	if !d.Allowed {
		t.Fatalf("reserve 50 with 80 left: %+v", d)
	}
	spBudget(t, s, "auth-a", 20, 50)
	rel, err := s.Release(ctx, r2.ReservationID)
	if err != nil || rel.State != store.ReservationReleased || rel.CommittedSats != 0 {
		t.Fatalf("release: %+v, %v", rel, err)
	}
	spBudget(t, s, "auth-a", 20, 0)
	if _, err := s.Release(ctx, r2.ReservationID); err != nil {
		t.Fatalf("repeat release: %v", err)
	}
	spBudget(t, s, "auth-a", 20, 0)
	if _, err := s.Commit(ctx, r2.ReservationID, 1); !errors.Is(err, store.ErrReservationFinalized) {
		t.Fatalf("commit of released: err = %v, want ErrReservationFinalized", err)
	}
	// Commit of 0 (the call turned out free) returns the whole amount.
	r3, _ := spReserve(t, s, "auth-a", "call-3", 5)
	if _, err := s.Commit(ctx, r3.ReservationID, 0); err != nil {
		t.Fatalf("commit 0: %v", err)
	}
	spBudget(t, s, "auth-a", 20, 0)

	got, err := s.GetReservation(ctx, r1.ReservationID)
	if err != nil || got.CommittedSats != 20 {
		t.Fatalf("get reservation: %+v, %v", got, err)
	}
	list, err := s.ListReservations(ctx, "run-a")
	if err != nil || len(list) != 3 || list[0].CallKey != "call-1" || list[1].CallKey != "call-2" || list[2].CallKey != "call-3" {
		t.Fatalf("list reservations = %+v, %v", list, err)
	}
	if _, err := s.GetReservation(ctx, "rsv_nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get unknown reservation: err = %v", err)
	}
	if _, err := s.Commit(ctx, "rsv_nope", 1); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("commit unknown: err = %v", err)
	}
	if _, err := s.Release(ctx, "rsv_nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("release unknown: err = %v", err)
	}
}

func spTestBudgetExhausted(t *testing.T, s SpendDriver) {
	spAuth(t, s, "auth-a", "run-a", 100)
	if _, d := spReserve(t, s, "auth-a", "k1", 60); !d.Allowed {
		t.Fatalf("60 of 100: %+v", d)
	}
	_, d := spReserve(t, s, "auth-a", "k2", 41)
	if d.Allowed || d.Reason != store.SpendBudgetExhausted || d.Replay {
		t.Fatalf("41 more with 40 left: %+v", d)
	}
	if d.Authorization.ReservedSats != 60 || d.Authorization.RemainingSats() != 40 {
		t.Fatalf("denial carries budget %+v", d.Authorization)
	}
	// Exactly the rest is allowed: the limit is inclusive.
	if _, d := spReserve(t, s, "auth-a", "k3", 40); !d.Allowed {
		t.Fatalf("exactly the remaining 40: %+v", d)
	}
	if _, d := spReserve(t, s, "auth-a", "k4", 1); d.Allowed || d.Reason != store.SpendBudgetExhausted {
		t.Fatalf("1 more with 0 left: %+v", d)
	}
	spBudget(t, s, "auth-a", 0, 100)
	list, _ := s.ListReservations(context.Background(), "run-a")
	if len(list) != 2 {
		t.Fatalf("denials must write nothing; reservations = %+v", list)
	}

	spAuth(t, s, "auth-zero", "run-zero", 0)
	if _, d := spReserve(t, s, "auth-zero", "k1", 1); d.Allowed || d.Reason != store.SpendBudgetExhausted {
		t.Fatalf("max 0: %+v", d)
	}
}

func spTestExpired(t *testing.T, s SpendDriver) {
	ctx := context.Background()
	spRun(t, s, "run-past")
	spRun(t, s, "run-future")
	past := time.Now().Add(-time.Minute)
	future := time.Now().Add(time.Hour)
	for _, in := range []store.EnsureAuthorizationInput{
		{AuthorizationID: "auth-past", RunID: "run-past", Mode: store.AuthModeDelegatedBudget, MaxTotalSats: 100, ExpiresAt: &past},
		{AuthorizationID: "auth-future", RunID: "run-future", Mode: store.AuthModeDelegatedBudget, MaxTotalSats: 100, ExpiresAt: &future},
	} {
		if _, _, err := s.EnsureAuthorization(ctx, in); err != nil {
			t.Fatalf("ensure %s: %v", in.AuthorizationID, err)
		}
	}
	if _, d := spReserve(t, s, "auth-past", "k", 1); d.Allowed || d.Reason != store.SpendDeniedAuthorizationExpired {
		t.Fatalf("expired authorization: %+v", d)
	}
	if _, d := spReserve(t, s, "auth-future", "k", 1); !d.Allowed {
		t.Fatalf("live authorization: %+v", d)
	}
	spBudget(t, s, "auth-past", 0, 0)
}

func spTestDenyAll(t *testing.T, s SpendDriver) {
	ctx := context.Background()
	spRun(t, s, "run-a")
	if _, _, err := s.EnsureAuthorization(ctx, store.EnsureAuthorizationInput{AuthorizationID: "auth-a", RunID: "run-a", Mode: store.AuthModeDenyAll, MaxTotalSats: 1000}); err != nil {
		t.Fatal(err)
	}
	if _, d := spReserve(t, s, "auth-a", "k", 1); d.Allowed || d.Reason != store.SpendDeniedExplicit {
		t.Fatalf("deny_all: %+v", d)
	}
	spBudget(t, s, "auth-a", 0, 0)
}

func spTestCallKey(t *testing.T, s SpendDriver) {
	ctx := context.Background()
	spAuth(t, s, "auth-a", "run-a", 100)
	r1, d1 := spReserve(t, s, "auth-a", "call-1", 40)
	r2, d2 := spReserve(t, s, "auth-a", "call-1", 40)
	if !d1.Allowed || d1.Replay || !d2.Allowed || !d2.Replay || r1.ReservationID != r2.ReservationID {
		t.Fatalf("retry of a call: first %+v %+v, second %+v %+v", r1, d1, r2, d2)
	}
	spBudget(t, s, "auth-a", 0, 40)

	// Another amount under the same key is a different call: denied, nothing changes.
	r3, d3 := spReserve(t, s, "auth-a", "call-1", 41)
	if d3.Allowed || d3.Reason != store.SpendDeniedIdempotencyConflict || r3.ReservationID != r1.ReservationID {
		t.Fatalf("same key, other amount: %+v %+v", r3, d3)
	}
	spBudget(t, s, "auth-a", 0, 40)

	// A committed call retried (crash after commit) replays the commit.
	if _, err := s.Commit(ctx, r1.ReservationID, 40); err != nil {
		t.Fatal(err)
	}
	r4, d4 := spReserve(t, s, "auth-a", "call-1", 40)
	if !d4.Allowed || !d4.Replay || r4.State != store.ReservationCommitted {
		t.Fatalf("retry after commit: %+v %+v", r4, d4)
	}
	if _, err := s.Commit(ctx, r4.ReservationID, 40); err != nil {
		t.Fatalf("commit replay: %v", err)
	}
	spBudget(t, s, "auth-a", 40, 0)

	// A granted reservation stays granted when the retry comes after the
	// budget filled up.
	spReserve(t, s, "auth-a", "call-2", 10)
	spReserve(t, s, "auth-a", "filler", 50)
	if _, d := spReserve(t, s, "auth-a", "call-2", 10); !d.Allowed || !d.Replay {
		t.Fatalf("retry of a granted call on a full budget: %+v", d)
	}
	spBudget(t, s, "auth-a", 40, 60)
}

func spTestReactivate(t *testing.T, s SpendDriver) {
	ctx := context.Background()
	spAuth(t, s, "auth-a", "run-a", 50)
	r, _ := spReserve(t, s, "auth-a", "call-1", 30)
	if _, err := s.Release(ctx, r.ReservationID); err != nil {
		t.Fatal(err)
	}
	// A crash after the release but before the call's result was recorded:
	// the retry reserves again (budget permitting) under the same row.
	r2, d := spReserve(t, s, "auth-a", "call-1", 30)
	if !d.Allowed || !d.Replay || r2.State != store.ReservationReserved || r2.ReservationID != r.ReservationID {
		t.Fatalf("retry after release: %+v %+v", r2, d)
	}
	spBudget(t, s, "auth-a", 0, 30)
	if _, err := s.Release(ctx, r.ReservationID); err != nil {
		t.Fatal(err)
	}
	spReserve(t, s, "auth-a", "other", 30)
	if r3, d := spReserve(t, s, "auth-a", "call-1", 30); d.Allowed || d.Reason != store.SpendBudgetExhausted || r3.State != store.ReservationReleased {
		t.Fatalf("retry after release on a full budget: %+v %+v", r3, d)
	}
	spBudget(t, s, "auth-a", 0, 30)
}

func spTestInvalid(t *testing.T, s SpendDriver) {
	ctx := context.Background()
	spAuth(t, s, "auth-a", "run-a", 100)
	for name, in := range map[string]store.ReserveInput{
		"zero amount":     {AuthorizationID: "auth-a", CallKey: "k", AmountSats: 0},
		"negative amount": {AuthorizationID: "auth-a", CallKey: "k", AmountSats: -5},
		"huge amount":     {AuthorizationID: "auth-a", CallKey: "k", AmountSats: store.MaxSpendAmount + 1},
		"empty key":       {AuthorizationID: "auth-a", CallKey: "", AmountSats: 1},
		"empty auth":      {AuthorizationID: "", CallKey: "k", AmountSats: 1},
	} {
		if _, _, err := s.Reserve(ctx, in); !errors.Is(err, store.ErrInvalidSpend) {
			t.Errorf("%s: err = %v, want ErrInvalidSpend", name, err)
		}
	}
	if _, _, err := s.Reserve(ctx, store.ReserveInput{AuthorizationID: "nope", CallKey: "k", AmountSats: 1}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown authorization: err = %v, want ErrNotFound", err)
	}
	r, _ := spReserve(t, s, "auth-a", "k", 10)
	for _, actual := range []int64{-1, 11} {
		if _, err := s.Commit(ctx, r.ReservationID, actual); !errors.Is(err, store.ErrInvalidSpend) {
			t.Errorf("commit %d of 10: err = %v, want ErrInvalidSpend", actual, err)
		}
	}
	spBudget(t, s, "auth-a", 0, 10)
}

func spTestReleaseRun(t *testing.T, s SpendDriver) {
	ctx := context.Background()
	spAuth(t, s, "auth-a", "run-a", 100)
	spAuth(t, s, "auth-b", "run-b", 100)
	ra, _ := spReserve(t, s, "auth-a", "k1", 10)
	spReserve(t, s, "auth-a", "k2", 20)
	spReserve(t, s, "auth-a", "k3", 30)
	spReserve(t, s, "auth-b", "k1", 5)
	if _, err := s.Commit(ctx, ra.ReservationID, 7); err != nil {
		t.Fatal(err)
	}
	n, err := s.ReleaseRunReservations(ctx, "run-a")
	if err != nil || n != 2 {
		t.Fatalf("release run-a: n=%d err=%v, want 2", n, err)
	}
	spBudget(t, s, "auth-a", 7, 0)
	spBudget(t, s, "auth-b", 0, 5)
	if n, err := s.ReleaseRunReservations(ctx, "run-a"); err != nil || n != 0 {
		t.Fatalf("second release: n=%d err=%v", n, err)
	}
	if n, err := s.ReleaseRunReservations(ctx, "no-such-run"); err != nil || n != 0 {
		t.Fatalf("release of a run without authorization: n=%d err=%v", n, err)
	}
}

// spTestConcurrentReserve: 50 goroutines on one budget never overspend.
func spTestConcurrentReserve(t *testing.T, s SpendDriver) {
	ctx := context.Background()
	spAuth(t, s, "auth-a", "run-a", 100)
	const n = 50
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		allowed int
		reasons = map[string]int{}
		errs    []error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, d, err := s.Reserve(ctx, store.ReserveInput{AuthorizationID: "auth-a", CallKey: fmt.Sprintf("call-%d", i), AmountSats: 3})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			reasons[d.Reason]++
			if d.Allowed {
				allowed++
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("errors: %v", errs)
	}
	// 33 * 3 = 99 <= 100 < 34 * 3: exactly 33 fit.
	if allowed != 33 || reasons[store.SpendBudgetExhausted] != n-33 {
		t.Fatalf("allowed=%d reasons=%v, want 33 allowed and %d budget_exhausted", allowed, reasons, n-33)
	}
	spBudget(t, s, "auth-a", 0, 99)
}

func spTestConcurrentSameKey(t *testing.T, s SpendDriver) {
	ctx := context.Background()
	spAuth(t, s, "auth-a", "run-a", 100)
	const n = 50
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		ids  = map[string]int{}
		errs []error
	)
	fresh := 0
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, d, err := s.Reserve(ctx, store.ReserveInput{AuthorizationID: "auth-a", CallKey: "the-call", AmountSats: 60})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				errs = append(errs, err)
			case !d.Allowed:
				errs = append(errs, fmt.Errorf("denied: %+v", d))
			default:
				ids[r.ReservationID]++
				if !d.Replay {
					fresh++
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 || len(ids) != 1 || fresh != 1 {
		t.Fatalf("same call key from %d goroutines: ids=%v fresh=%d errs=%v; want one reservation, one fresh", n, ids, fresh, errs)
	}
	spBudget(t, s, "auth-a", 0, 60)
}

// spTestConcurrentMixed: reserve, then commit part or release, from 50
// goroutines; the budget ends consistent with the rows and within max.
func spTestConcurrentMixed(t *testing.T, s SpendDriver) {
	ctx := context.Background()
	const maxSats = 200
	spAuth(t, s, "auth-a", "run-a", maxSats)
	const n = 50
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		committed int64
		errs      []error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			amount := int64(5 + i%11)
			r, d, err := s.Reserve(ctx, store.ReserveInput{AuthorizationID: "auth-a", CallKey: fmt.Sprintf("call-%d", i), AmountSats: amount})
			if err == nil && d.Allowed {
				if i%3 == 0 {
					_, err = s.Release(ctx, r.ReservationID)
				} else {
					actual := amount - int64(i%2)
					if _, err = s.Commit(ctx, r.ReservationID, actual); err == nil {
						mu.Lock()
						committed += actual
						mu.Unlock()
					}
				}
			}
			if err == nil && !d.Allowed && d.Reason != store.SpendBudgetExhausted {
				err = fmt.Errorf("unexpected denial %+v", d)
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("errors: %v", errs)
	}
	a := spBudget(t, s, "auth-a", committed, 0)
	if a.SpentSats > maxSats || committed == 0 {
		t.Fatalf("spent %d of max %d (committed %d)", a.SpentSats, maxSats, committed)
	}
}
