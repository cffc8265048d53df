package spend_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/oaruntime/oaruntime/internal/spend"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/sqlite"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

func TestParseAuthorization(t *testing.T) {
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name    string
		raw     string
		present bool
		want    spend.Envelope
		field   string // expected FieldError field; "" = no error
		reason  string
	}{
		{name: "absent", raw: ``},
		{name: "null", raw: `null`},
		{name: "delegated", raw: `{"authorization_id":"a1","mode":"delegated_budget","max_total_sats":100}`, present: true,
			want: spend.Envelope{AuthorizationID: "a1", Mode: "delegated_budget", MaxTotalSats: 100}},
		{name: "with expiry and extra fields", raw: `{"authorization_id":"a1","mode":"delegated_budget","max_total_sats":0,"expires_at":"2030-01-02T04:04:05+01:00","max_per_call_sats":3}`, present: true,
			want: spend.Envelope{AuthorizationID: "a1", Mode: "delegated_budget", MaxTotalSats: 0, ExpiresAt: &exp}},
		{name: "deny_all without max", raw: `{"authorization_id":"a1","mode":"deny_all"}`, present: true,
			want: spend.Envelope{AuthorizationID: "a1", Mode: "deny_all"}},
		{name: "deny_all ignores max", raw: `{"authorization_id":"a1","mode":"deny_all","max_total_sats":50}`, present: true,
			want: spend.Envelope{AuthorizationID: "a1", Mode: "deny_all"}},
		{name: "not an object", raw: `[1]`, present: true, field: "authorization", reason: spend.ReasonAuthorizationMissing},
		{name: "missing id", raw: `{"mode":"deny_all"}`, present: true, field: "authorization.authorization_id", reason: spend.ReasonAuthorizationMissing},
		{name: "empty id", raw: `{"authorization_id":"","mode":"deny_all"}`, present: true, field: "authorization.authorization_id", reason: spend.ReasonAuthorizationMissing},
		{name: "numeric id", raw: `{"authorization_id":7,"mode":"deny_all"}`, present: true, field: "authorization.authorization_id", reason: spend.ReasonAuthorizationMissing},
		{name: "missing mode", raw: `{"authorization_id":"a1","max_total_sats":1}`, present: true, field: "authorization.mode", reason: spend.ReasonInvalidMode},
		{name: "unknown mode", raw: `{"authorization_id":"a1","mode":"interactive","max_total_sats":1}`, present: true, field: "authorization.mode", reason: spend.ReasonInvalidMode},
		{name: "delegated without max", raw: `{"authorization_id":"a1","mode":"delegated_budget"}`, present: true, field: "authorization.max_total_sats", reason: spend.ReasonAuthorizationMissing},
		{name: "negative max", raw: `{"authorization_id":"a1","mode":"delegated_budget","max_total_sats":-1}`, present: true, field: "authorization.max_total_sats", reason: spend.ReasonAuthorizationMissing},
		{name: "fractional max", raw: `{"authorization_id":"a1","mode":"delegated_budget","max_total_sats":1.5}`, present: true, field: "authorization.max_total_sats", reason: spend.ReasonAuthorizationMissing},
		{name: "huge max", raw: `{"authorization_id":"a1","mode":"delegated_budget","max_total_sats":1e300}`, present: true, field: "authorization.max_total_sats", reason: spend.ReasonAuthorizationMissing},
		{name: "bad expiry", raw: `{"authorization_id":"a1","mode":"delegated_budget","max_total_sats":1,"expires_at":"tomorrow"}`, present: true, field: "authorization.expires_at", reason: spend.ReasonAuthorizationMissing},
		{name: "numeric expiry", raw: `{"authorization_id":"a1","mode":"delegated_budget","max_total_sats":1,"expires_at":1700000000}`, present: true, field: "authorization.expires_at", reason: spend.ReasonAuthorizationMissing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env, present, err := spend.ParseAuthorization(json.RawMessage(tc.raw))
			if present != tc.present {
				t.Fatalf("present = %v, want %v", present, tc.present)
			}
			if tc.field != "" {
				var fe *spend.FieldError
				if !errors.As(err, &fe) || fe.Field != tc.field || fe.Reason != tc.reason {
					t.Fatalf("err = %#v, want FieldError{Field:%q Reason:%q}", err, tc.field, tc.reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if env.AuthorizationID != tc.want.AuthorizationID || env.Mode != tc.want.Mode || env.MaxTotalSats != tc.want.MaxTotalSats ||
				(env.ExpiresAt == nil) != (tc.want.ExpiresAt == nil) || (env.ExpiresAt != nil && !env.ExpiresAt.Equal(*tc.want.ExpiresAt)) {
				t.Fatalf("envelope = %+v, want %+v", env, tc.want)
			}
		})
	}
}

// ---- harness ----

type harness struct {
	st  *sqlite.Store
	g   *spend.Guard
	reg *prometheus.Registry
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "rt.db"), sqlite.WithMigrate(), sqlite.WithSynchronous("NORMAL"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	reg := prometheus.NewRegistry()
	m := telemetry.NewMetrics(reg, telemetry.BuildInfo{Version: "test"})
	return &harness{st: st, g: spend.NewGuard(st, m), reg: reg}
}

func (h *harness) run(t *testing.T, id, auth string) store.Run {
	t.Helper()
	in := store.CreateRunInput{RunID: id, ThreadID: "th-" + id, OwnerSub: "user:1"}
	if auth != "" {
		in.Authorization = json.RawMessage(auth)
	}
	r, _, err := h.st.CreateRun(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (h *harness) counter(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue metric
				}
			}
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

func (h *harness) decisions(t *testing.T, decision, reason string) float64 {
	return h.counter(t, telemetry.PolicyDecisions, map[string]string{"decision": decision, "reason": reason})
}

func (h *harness) parity(t *testing.T, reason string) float64 {
	return h.counter(t, telemetry.ParityFailures, map[string]string{"class": "policy", "reason_class": reason, "component": "spend"})
}

func authDoc(id, mode string, maxSats int64, expires *time.Time) string {
	doc := map[string]any{"authorization_id": id, "mode": mode, "max_total_sats": maxSats}
	if expires != nil {
		doc["expires_at"] = expires.Format(time.RFC3339Nano)
	}
	b, _ := json.Marshal(doc)
	return string(b)
}

// ---- Guard ----

func TestAuthorizeDecisions(t *testing.T) {
	past := time.Now().Add(-time.Hour)
	future := time.Now().Add(time.Hour)
	tests := []struct {
		name    string
		auth    string
		amount  int64
		allowed bool
		reason  string
		stored  bool // a reservation exists afterwards
	}{
		{"free call without authorization", "", 0, true, spend.ReasonAllowed, false},
		{"free call under deny_all", authDoc("a", "deny_all", 0, nil), 0, true, spend.ReasonAllowed, false},
		{"priced call without authorization", "", 5, false, spend.ReasonAuthorizationMissing, false},
		{"malformed authorization", `{"authorization_id":"a","mode":"delegated_budget"}`, 5, false, spend.ReasonAuthorizationMissing, false},
		{"unknown mode", `{"authorization_id":"a","mode":"interactive","max_total_sats":9}`, 5, false, spend.ReasonInvalidMode, false},
		{"within budget", authDoc("a", "delegated_budget", 10, nil), 10, true, spend.ReasonAllowed, true},
		{"over budget", authDoc("a", "delegated_budget", 10, nil), 11, false, spend.ReasonBudgetExhausted, false},
		{"price above any budget", authDoc("a", "delegated_budget", store.MaxSpendAmount, nil), store.MaxSpendAmount + 1, false, spend.ReasonBudgetExhausted, false},
		{"deny_all", authDoc("a", "deny_all", 100, nil), 1, false, spend.ReasonExplicit, false},
		{"expired", authDoc("a", "delegated_budget", 100, &past), 1, false, spend.ReasonAuthorizationExpired, false},
		{"not yet expired", authDoc("a", "delegated_budget", 100, &future), 1, true, spend.ReasonAllowed, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			run := h.run(t, "run-1", tc.auth)
			d, err := h.g.Authorize(context.Background(), run, "f:1:m1:spend", tc.amount)
			if err != nil {
				t.Fatalf("authorize: %v", err)
			}
			if d.Allowed != tc.allowed || d.Reason != tc.reason {
				t.Fatalf("decision = %+v, want allowed=%v reason=%s", d, tc.allowed, tc.reason)
			}
			if (d.Reservation != nil) != tc.stored {
				t.Fatalf("reservation = %+v, want present=%v", d.Reservation, tc.stored)
			}
			rows, err := h.st.ListReservations(context.Background(), "run-1")
			if err != nil || len(rows) != map[bool]int{true: 1, false: 0}[tc.stored] {
				t.Fatalf("stored reservations = %+v, %v", rows, err)
			}
			decided := "allowed"
			if !tc.allowed {
				decided = "denied"
			}
			wantCount := 1.0
			if tc.amount == 0 {
				wantCount = 0 // free calls are not spend decisions
			}
			if got := h.decisions(t, decided, tc.reason); got != wantCount {
				t.Errorf("policy_decisions{%s,%s} = %v, want %v", decided, tc.reason, got, wantCount)
			}
			wantParity := 0.0
			if !tc.allowed {
				wantParity = 1
			}
			if got := h.parity(t, tc.reason); got != wantParity {
				t.Errorf("parity_failures{policy,%s,spend} = %v, want %v", tc.reason, got, wantParity)
			}
			if d.BudgetExhausted() != (tc.reason == spend.ReasonBudgetExhausted) {
				t.Errorf("BudgetExhausted() = %v", d.BudgetExhausted())
			}
			if !tc.allowed && d.Detail == "" {
				t.Errorf("denial without detail")
			}
		})
	}
}

func TestCommitReleaseAndBudget(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	run := h.run(t, "run-1", authDoc("auth-1", "delegated_budget", 20, nil))

	b, ok, err := h.g.BudgetForRun(ctx, run)
	if err != nil || !ok || b.Before.RemainingSats != 20 || b.After != b.Before {
		t.Fatalf("budget before any call = %+v ok=%v err=%v", b, ok, err)
	}
	if _, err := h.g.BudgetSnapshot(ctx, "run-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("snapshot before any priced call: err = %v, want ErrNotFound", err)
	}

	d1, err := h.g.Authorize(ctx, run, "call-1", 8)
	if err != nil || !d1.Allowed {
		t.Fatalf("call-1: %+v %v", d1, err)
	}
	if d1.Budget == nil || d1.Budget.ReservedSats != 8 || d1.Budget.RemainingSats != 12 || d1.AuthorizationID != "auth-1" {
		t.Fatalf("call-1 decision budget = %+v", d1)
	}
	if err := h.g.Commit(ctx, d1, 6); err != nil {
		t.Fatal(err)
	}
	if d1.Reservation.State != store.ReservationCommitted || d1.Reservation.CommittedSats != 6 {
		t.Fatalf("commit did not update the decision's reservation: %+v", d1.Reservation)
	}
	// Releasing after commit keeps the charge.
	if err := h.g.Release(ctx, d1); err != nil {
		t.Fatal(err)
	}

	d2, err := h.g.Authorize(ctx, run, "call-2", 10)
	if err != nil || !d2.Allowed {
		t.Fatalf("call-2: %+v %v", d2, err)
	}
	if err := h.g.Release(ctx, d2); err != nil {
		t.Fatal(err)
	}
	d3, err := h.g.Authorize(ctx, run, "call-3", 15)
	if err != nil || d3.Allowed || !d3.BudgetExhausted() {
		t.Fatalf("call-3 (15 with 14 left): %+v %v", d3, err)
	}
	p := d3.Payload()
	budget, _ := p["budget"].(map[string]any)
	if p["decision"] != "denied" || p["reason"] != "budget_exhausted" || p["authorization_id"] != "auth-1" ||
		p["amount_sats"] != int64(15) || budget["remaining_sats"] != int64(14) || budget["spent_sats"] != int64(6) {
		t.Fatalf("denial payload = %v", p)
	}
	// A denial carries no reservation, so Commit and Release do nothing.
	if err := h.g.Release(ctx, d3); err != nil {
		t.Fatal(err)
	}
	if err := h.g.Commit(ctx, d3, 15); err != nil {
		t.Fatal(err)
	}

	d4, err := h.g.Authorize(ctx, run, "call-4", 4)
	if err != nil || !d4.Allowed {
		t.Fatalf("call-4: %+v %v", d4, err)
	}
	// The run finishes with call-4 still reserved (its executor died).
	n, err := h.g.ReleaseRun(ctx, "run-1")
	if err != nil || n != 1 {
		t.Fatalf("release run: n=%d err=%v", n, err)
	}
	b, err = h.g.BudgetSnapshot(ctx, "run-1")
	if err != nil {
		t.Fatal(err)
	}
	want := spend.Budget{AuthorizationID: "auth-1", Mode: "delegated_budget",
		Before: spend.Figures{MaxTotalSats: 20, RemainingSats: 20},
		After:  spend.Figures{MaxTotalSats: 20, SpentSats: 6, RemainingSats: 14}}
	if b.AuthorizationID != want.AuthorizationID || b.Mode != want.Mode || b.Before != want.Before || b.After != want.After {
		t.Fatalf("budget = %+v, want %+v", b, want)
	}
	if b2, ok, err := h.g.BudgetForRun(ctx, run); err != nil || !ok || b2.After != want.After {
		t.Fatalf("BudgetForRun with a stored row = %+v ok=%v err=%v", b2, ok, err)
	}
	if _, ok, err := h.g.BudgetForRun(ctx, h.run(t, "run-none", "")); err != nil || ok {
		t.Fatalf("BudgetForRun without authorization: ok=%v err=%v", ok, err)
	}
}

func TestRetriedCallReusesReservation(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	run := h.run(t, "run-1", authDoc("auth-1", "delegated_budget", 10, nil))
	d1, err := h.g.Authorize(ctx, run, "f:1:m1:t0:spend", 7)
	if err != nil || !d1.Allowed {
		t.Fatal(d1, err)
	}
	// The executor crashed before committing; its successor asks again.
	d2, err := h.g.Authorize(ctx, run, "f:1:m1:t0:spend", 7)
	if err != nil || !d2.Allowed || d2.Reservation.ReservationID != d1.Reservation.ReservationID {
		t.Fatalf("retry: %+v %v", d2, err)
	}
	if err := h.g.Commit(ctx, d2, 7); err != nil {
		t.Fatal(err)
	}
	// And once more after the commit (crash before the result was recorded).
	d3, err := h.g.Authorize(ctx, run, "f:1:m1:t0:spend", 7)
	if err != nil || !d3.Allowed || d3.Reservation.State != store.ReservationCommitted {
		t.Fatalf("retry after commit: %+v %v", d3, err)
	}
	if err := h.g.Commit(ctx, d3, 7); err != nil {
		t.Fatal(err)
	}
	if err := h.g.Release(ctx, d3); err != nil {
		t.Fatal(err)
	}
	b, err := h.g.BudgetSnapshot(ctx, "run-1")
	if err != nil || b.After.SpentSats != 7 || b.After.ReservedSats != 0 {
		t.Fatalf("charged once? budget = %+v %v", b, err)
	}
}

func TestAuthorizationBoundToOneRun(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	doc := authDoc("shared", "delegated_budget", 100, nil)
	r1 := h.run(t, "run-1", doc)
	r2 := h.run(t, "run-2", doc)
	if d, err := h.g.Authorize(ctx, r1, "k", 1); err != nil || !d.Allowed {
		t.Fatalf("run-1: %+v %v", d, err)
	}
	d, err := h.g.Authorize(ctx, r2, "k", 1)
	if err != nil || d.Allowed || d.Reason != spend.ReasonIdempotencyConflict {
		t.Fatalf("run-2 spending run-1's budget: %+v %v", d, err)
	}
	if got := h.parity(t, spend.ReasonIdempotencyConflict); got != 1 {
		t.Fatalf("parity failures = %v", got)
	}
}

// failingStore fails every call: a store outage is an error, not a denial.
type failingStore struct{ spend.Store }

var errDown = errors.New("database down")

func (failingStore) EnsureAuthorization(context.Context, store.EnsureAuthorizationInput) (store.Authorization, bool, error) {
	return store.Authorization{}, false, errDown
}

func TestStoreErrorIsNotADecision(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := &harness{g: spend.NewGuard(failingStore{}, telemetry.NewMetrics(reg, telemetry.BuildInfo{})), reg: reg}
	run := store.Run{RunID: "run-1", Authorization: json.RawMessage(authDoc("a", "delegated_budget", 5, nil))}
	if _, err := h.g.Authorize(context.Background(), run, "k", 1); !errors.Is(err, errDown) {
		t.Fatalf("err = %v, want the store's error", err)
	}
	if got := h.counter(t, telemetry.PolicyDecisions, nil); got != 0 {
		t.Fatalf("policy decisions recorded for a store error: %v", got)
	}
}

func TestInvalidCalls(t *testing.T) {
	h := newHarness(t)
	run := h.run(t, "run-1", authDoc("a", "delegated_budget", 5, nil))
	for _, tc := range []struct {
		key    string
		amount int64
	}{{"k", -1}, {"", 1}, {string(make([]byte, store.MaxCallKeyLen+1)), 1}} {
		if _, err := h.g.Authorize(context.Background(), run, tc.key, tc.amount); !errors.Is(err, store.ErrInvalidSpend) {
			t.Errorf("key len %d amount %d: err = %v, want ErrInvalidSpend", len(tc.key), tc.amount, err)
		}
	}
}

func TestNilGuard(t *testing.T) {
	var g *spend.Guard
	ctx := context.Background()
	d, err := g.Authorize(ctx, store.Run{RunID: "r"}, "k", 0)
	if err != nil || !d.Allowed {
		t.Fatalf("free call on a nil guard: %+v %v", d, err)
	}
	if _, err := g.Authorize(ctx, store.Run{RunID: "r"}, "k", 1); !errors.Is(err, spend.ErrNoGuard) {
		t.Fatalf("priced call on a nil guard: err = %v", err)
	}
	if err := g.Commit(ctx, d, 0); err != nil {
		t.Fatal(err)
	}
	if n, err := g.ReleaseRun(ctx, "r"); err != nil || n != 0 {
		t.Fatal(n, err)
	}
}

// TestReasonsAreLabelValues keeps the decision reasons inside telemetry's
// closed sets, so none of them is ever recorded as "other".
func TestReasonsAreLabelValues(t *testing.T) {
	lv := telemetry.LabelValues()
	for _, r := range spend.Reasons() {
		if !slices.Contains(lv[telemetry.LabelReason], r) {
			t.Errorf("reason %q is not a value of label reason", r)
		}
		if !slices.Contains(lv[telemetry.LabelReasonClass], r) {
			t.Errorf("reason %q is not a value of label reason_class", r)
		}
	}
	if !slices.Contains(lv[telemetry.LabelComponent], spend.Component) {
		t.Errorf("component %q is not a value of label component", spend.Component)
	}
	if !slices.Contains(lv[telemetry.LabelDecision], spend.DecisionDenied) || !slices.Contains(lv[telemetry.LabelDecision], spend.DecisionAllowed) {
		t.Errorf("decision values missing: %v", lv[telemetry.LabelDecision])
	}
}

// Example of the payload a denial contributes to policy.decision.
func ExampleDecision_Payload() {
	d := spend.Decision{Reason: spend.ReasonAuthorizationMissing, AmountSats: 5}
	b, _ := json.Marshal(d.Payload())
	fmt.Println(string(b))
	// Output: {"amount_sats":5,"decision":"denied","policy":"spend","reason":"denied_authorization_missing"}
}
