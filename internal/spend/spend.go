// Package spend enforces a run's spend authorization: every priced call
// (model or tool) reserves its price from the run's budget before it runs
// and then commits what it cost or releases the reservation. Decisions use
// a closed set of reasons (Reasons) that policy.decision events, the
// policy_decisions_total metric and parity failures share.
//
// Rules:
//   - A free call (amount 0) is always allowed and touches nothing: no
//     authorization is needed to spend nothing, and no metric is recorded,
//     so the denial-ratio alert measures priced calls only.
//   - A priced call of a run without an authorization document is denied
//     with denied_authorization_missing; a malformed document with the
//     reason of its ParseAuthorization error.
//   - The authorization is stored on the first priced call, bound to the
//     run (one budget per run, never shared). The store then decides:
//     deny_all -> denied_explicit, expired -> denied_authorization_expired,
//     spent + reserved + amount > max_total_sats -> budget_exhausted.
//   - A retried call (same call key, e.g. after an executor crash) gets its
//     first reservation back instead of reserving twice.
//
// The Guard was written against the original's defect list: its denials
// emitted no telemetry (here every decision on a priced call is counted and
// every denial is a parity failure of class policy), and only max_total_sats
// was ever enforced (here it is the only limit, and the documented one).
package spend

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// Policy reasons (closed set; telemetry's reason label accepts every one).
const (
	ReasonAllowed                   = store.SpendAllowed
	ReasonBudgetExhausted           = store.SpendBudgetExhausted
	ReasonAuthorizationMissing      = store.SpendDeniedAuthorizationMissing
	ReasonAuthorizationExpired      = store.SpendDeniedAuthorizationExpired
	ReasonExplicit                  = store.SpendDeniedExplicit
	ReasonInvalidMode               = store.SpendDeniedInvalidMode
	ReasonIdempotencyConflict       = store.SpendDeniedIdempotencyConflict
	DecisionAllowed, DecisionDenied = "allowed", "denied"
	// Component is the parity failure component of spend denials.
	Component = "spend"
)

// Reasons is the closed set of reasons a Guard decision can carry.
func Reasons() []string {
	return []string{
		ReasonAllowed, ReasonBudgetExhausted, ReasonAuthorizationMissing, ReasonAuthorizationExpired,
		ReasonExplicit, ReasonInvalidMode, ReasonIdempotencyConflict,
	}
}

// ErrNoGuard is returned by a nil *Guard asked to authorize a priced call:
// an executor wired without spend enforcement must not run priced calls.
var ErrNoGuard = errors.New("spend: no guard configured for a priced call")

// Store is what the Guard needs of the store (store.SpendStore has it).
type Store interface {
	EnsureAuthorization(ctx context.Context, in store.EnsureAuthorizationInput) (store.Authorization, bool, error)
	AuthorizationForRun(ctx context.Context, runID string) (store.Authorization, error)
	Reserve(ctx context.Context, in store.ReserveInput) (store.Reservation, store.SpendDecision, error)
	Commit(ctx context.Context, reservationID string, actualSats int64) (store.Reservation, error)
	Release(ctx context.Context, reservationID string) (store.Reservation, error)
	ReleaseRunReservations(ctx context.Context, runID string) (int, error)
}

// Guard makes spend decisions for the executor.
type Guard struct {
	st Store
	m  *telemetry.Metrics
}

// NewGuard returns a Guard over st; m may be nil.
func NewGuard(st Store, m *telemetry.Metrics) *Guard { return &Guard{st: st, m: m} }

// Figures are a budget's amounts at one moment.
type Figures struct {
	MaxTotalSats  int64 `json:"max_total_sats"`
	SpentSats     int64 `json:"spent_sats"`
	ReservedSats  int64 `json:"reserved_sats"`
	RemainingSats int64 `json:"remaining_sats"`
}

func figures(a store.Authorization) Figures {
	return Figures{MaxTotalSats: a.MaxTotalSats, SpentSats: a.SpentSats, ReservedSats: a.ReservedSats, RemainingSats: a.RemainingSats()}
}

// Decision is the outcome of Authorize.
type Decision struct {
	Allowed bool   `json:"allowed"`
	Reason  string `json:"reason"`
	// Detail is a human-readable explanation (for run.finished's reason and
	// the tool error the model sees).
	Detail     string `json:"detail,omitempty"`
	AmountSats int64  `json:"amount_sats"`
	CallKey    string `json:"call_key,omitempty"`
	// Reservation is the call's reservation: nil for a free call and for a
	// denial without one. Pass the Decision to Commit or Release.
	Reservation     *store.Reservation `json:"reservation,omitempty"`
	AuthorizationID string             `json:"authorization_id,omitempty"`
	Mode            string             `json:"authorization_mode,omitempty"`
	// Budget is the budget after the decision; nil when no stored
	// authorization was consulted (free call, missing or bad document).
	Budget *Figures `json:"budget,omitempty"`
}

// BudgetExhausted reports a denial for budget, the case that also appends
// policy.budget_exhausted.
func (d Decision) BudgetExhausted() bool { return !d.Allowed && d.Reason == ReasonBudgetExhausted }

// Payload is the spend part of a policy.decision event payload: decision,
// reason, policy "spend", amount_sats, and when known authorization_id,
// authorization_mode, reservation_id and budget. The caller adds its own
// fields (tool_name, tool_call_id, frame_id).
func (d Decision) Payload() map[string]any {
	p := map[string]any{"decision": DecisionDenied, "reason": d.Reason, "policy": "spend", "amount_sats": d.AmountSats}
	if d.Allowed {
		p["decision"] = DecisionAllowed
	}
	if d.Detail != "" {
		p["detail"] = d.Detail
	}
	if d.AuthorizationID != "" {
		p["authorization_id"] = d.AuthorizationID
		p["authorization_mode"] = d.Mode
	}
	if d.Reservation != nil {
		p["reservation_id"] = d.Reservation.ReservationID
	}
	if d.Budget != nil {
		p["budget"] = map[string]any{
			"max_total_sats": d.Budget.MaxTotalSats, "spent_sats": d.Budget.SpentSats,
			"reserved_sats": d.Budget.ReservedSats, "remaining_sats": d.Budget.RemainingSats,
		}
	}
	return p
}

// Authorize decides a call of run priced at amountSats. callKey identifies
// the call across retries (the executor's idempotency key of the call). An
// error means the decision could not be made (store unavailable, invalid
// input); it is not a denial and records no metric.
func (g *Guard) Authorize(ctx context.Context, run store.Run, callKey string, amountSats int64) (Decision, error) {
	d := Decision{AmountSats: amountSats, CallKey: callKey}
	switch {
	case amountSats < 0:
		return d, fmt.Errorf("spend: authorize %s: negative price %d: %w", callKey, amountSats, store.ErrInvalidSpend)
	case amountSats == 0:
		d.Allowed, d.Reason = true, ReasonAllowed
		return d, nil
	case g == nil:
		return d, ErrNoGuard
	case callKey == "":
		return d, fmt.Errorf("spend: authorize: empty call key: %w", store.ErrInvalidSpend)
	}
	env, present, err := ParseAuthorization(run.Authorization)
	if !present {
		return g.deny(d, ReasonAuthorizationMissing, fmt.Sprintf("the run has no spend authorization for a call costing %d sats", amountSats)), nil
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return g.deny(d, fe.Reason, "invalid spend authorization: "+fe.Error()), nil
	}
	if err != nil {
		return d, fmt.Errorf("spend: authorize %s: %w", callKey, err)
	}
	d.AuthorizationID, d.Mode = env.AuthorizationID, env.Mode
	a, _, err := g.st.EnsureAuthorization(ctx, store.EnsureAuthorizationInput{
		AuthorizationID: env.AuthorizationID, RunID: run.RunID, Mode: env.Mode,
		MaxTotalSats: env.MaxTotalSats, ExpiresAt: env.ExpiresAt,
	})
	if errors.Is(err, store.ErrConflict) {
		// The id belongs to another run's budget (or this run's stored
		// authorization differs): never spend from someone else's budget.
		return g.deny(d, ReasonIdempotencyConflict, fmt.Sprintf("authorization %s is bound to another run or other limits", env.AuthorizationID)), nil
	}
	if err != nil {
		return d, fmt.Errorf("spend: authorize %s: %w", callKey, err)
	}
	if amountSats > store.MaxSpendAmount {
		// No budget can be this large (max_total_sats is bounded alike), so
		// the store would refuse the input; the honest answer is a denial.
		f := figures(a)
		d.Budget = &f
		return g.deny(d, ReasonBudgetExhausted, denyDetail(ReasonBudgetExhausted, amountSats, f, env)), nil
	}
	res, sd, err := g.st.Reserve(ctx, store.ReserveInput{AuthorizationID: env.AuthorizationID, CallKey: callKey, AmountSats: amountSats})
	if err != nil {
		return d, fmt.Errorf("spend: authorize %s: %w", callKey, err)
	}
	f := figures(sd.Authorization)
	d.Budget = &f
	if !sd.Allowed {
		// No reservation on a denial, even when the call key has one (a
		// conflicting or released retry): Release must not touch it.
		return g.deny(d, sd.Reason, denyDetail(sd.Reason, amountSats, f, env)), nil
	}
	d.Allowed, d.Reason, d.Reservation = true, ReasonAllowed, &res
	g.m.PolicyDecision(DecisionAllowed, ReasonAllowed)
	return d, nil
}

func denyDetail(reason string, amount int64, f Figures, env Envelope) string {
	switch reason {
	case ReasonBudgetExhausted:
		return fmt.Sprintf("call costs %d sats, %d of %d remain", amount, f.RemainingSats, f.MaxTotalSats)
	case ReasonAuthorizationExpired:
		return fmt.Sprintf("authorization %s expired at %s", env.AuthorizationID, env.ExpiresAt.Format(time.RFC3339))
	case ReasonExplicit:
		return fmt.Sprintf("authorization %s is %s", env.AuthorizationID, env.Mode)
	case ReasonIdempotencyConflict:
		return "the call was retried with another price"
	}
	return reason
}

func (g *Guard) deny(d Decision, reason, detail string) Decision {
	d.Allowed, d.Reason, d.Detail = false, reason, detail
	if g != nil {
		g.m.PolicyDecision(DecisionDenied, reason)
		g.m.ParityFailure(telemetry.ParityPolicy, reason, Component)
	}
	return d
}

// Commit charges actualSats (at most the reserved amount) for an allowed
// call. It is a no-op for a free call and for a reservation that an
// earlier execution of the same call already committed.
func (g *Guard) Commit(ctx context.Context, d Decision, actualSats int64) error {
	if !d.Allowed || d.Reservation == nil || d.Reservation.State == store.ReservationCommitted {
		return nil
	}
	if g == nil {
		return ErrNoGuard
	}
	r, err := g.st.Commit(ctx, d.Reservation.ReservationID, actualSats)
	if err != nil {
		return fmt.Errorf("spend: commit %s: %w", d.CallKey, err)
	}
	*d.Reservation = r
	return nil
}

// Release returns an allowed call's reservation to the budget (the call
// failed, timed out or was canceled). No-op for a free call and for a
// reservation an earlier execution already committed: that charge stands.
func (g *Guard) Release(ctx context.Context, d Decision) error {
	if !d.Allowed || d.Reservation == nil || d.Reservation.State == store.ReservationCommitted {
		return nil
	}
	if g == nil {
		return ErrNoGuard
	}
	r, err := g.st.Release(ctx, d.Reservation.ReservationID)
	if err != nil {
		return fmt.Errorf("spend: release %s: %w", d.CallKey, err)
	}
	*d.Reservation = r
	return nil
}

// ReleaseRun releases whatever a finished run still holds reserved (a call
// interrupted by a crash or shutdown that was never retried).
func (g *Guard) ReleaseRun(ctx context.Context, runID string) (int, error) {
	if g == nil {
		return 0, nil
	}
	n, err := g.st.ReleaseRunReservations(ctx, runID)
	if err != nil {
		return n, fmt.Errorf("spend: release reservations of run %s: %w", runID, err)
	}
	return n, nil
}

// Budget is a run's budget for its receipt: the limits, the figures when
// the run started (nothing spent: a budget belongs to one run) and now.
type Budget struct {
	AuthorizationID string     `json:"authorization_id"`
	Mode            string     `json:"mode"`
	ExpiresAt       *time.Time `json:"expires_at,omitempty"`
	Before          Figures    `json:"before"`
	After           Figures    `json:"after"`
}

func budgetOf(a store.Authorization) Budget {
	return Budget{
		AuthorizationID: a.AuthorizationID, Mode: a.Mode, ExpiresAt: a.ExpiresAt,
		Before: Figures{MaxTotalSats: a.MaxTotalSats, RemainingSats: a.MaxTotalSats},
		After:  figures(a),
	}
}

// BudgetSnapshot returns the stored budget of runID; the error wraps
// store.ErrNotFound when the run has no stored authorization (it made no
// priced call; see BudgetForRun).
func (g *Guard) BudgetSnapshot(ctx context.Context, runID string) (Budget, error) {
	if g == nil {
		return Budget{}, fmt.Errorf("spend: budget of run %s: %w", runID, store.ErrNotFound)
	}
	a, err := g.st.AuthorizationForRun(ctx, runID)
	if err != nil {
		return Budget{}, fmt.Errorf("spend: budget of run %s: %w", runID, err)
	}
	return budgetOf(a), nil
}

// BudgetForRun is BudgetSnapshot falling back to the run's authorization
// document when nothing is stored yet (before == after, nothing spent).
// ok=false when the run has no usable authorization at all.
func (g *Guard) BudgetForRun(ctx context.Context, run store.Run) (Budget, bool, error) {
	b, err := g.BudgetSnapshot(ctx, run.RunID)
	if err == nil {
		return b, true, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return Budget{}, false, err
	}
	env, present, perr := ParseAuthorization(run.Authorization)
	if !present || perr != nil {
		return Budget{}, false, nil
	}
	f := Figures{MaxTotalSats: env.MaxTotalSats, RemainingSats: env.MaxTotalSats}
	return Budget{AuthorizationID: env.AuthorizationID, Mode: env.Mode, ExpiresAt: env.ExpiresAt, Before: f, After: f}, true, nil
}
