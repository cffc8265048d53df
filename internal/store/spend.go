package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Spend errors. Policy outcomes (budget exhausted, expired, explicit deny)
// are not errors: Reserve reports them in its SpendDecision.
var (
	// ErrInvalidSpend: malformed input (empty id, unknown mode, amount out
	// of range, commit above the reserved amount). Nothing was written.
	ErrInvalidSpend = errors.New("invalid spend input")
	// ErrReservationFinalized: committing a released reservation or
	// releasing a committed one.
	ErrReservationFinalized = errors.New("reservation already finalized")
)

// Authorization modes (closed set). The original's interactive and
// delegated_budget_with_threshold modes needed a consent flow we do not have;
// a mode outside this set is rejected rather than guessed at.
const (
	// AuthModeDelegatedBudget allows priced calls while spent + reserved +
	// amount <= max_total_sats and the authorization has not expired.
	AuthModeDelegatedBudget = "delegated_budget"
	// AuthModeDenyAll denies every priced call (denied_explicit).
	AuthModeDenyAll = "deny_all"
)

// ValidAuthMode reports whether mode is in the closed set.
func ValidAuthMode(mode string) bool {
	return mode == AuthModeDelegatedBudget || mode == AuthModeDenyAll
}

// Reservation states. reserved -> committed | released; a released
// reservation is reserved again only by a Reserve retry of its call key.
const (
	ReservationReserved  = "reserved"
	ReservationCommitted = "committed"
	ReservationReleased  = "released"
)

// Spend policy reasons: the values of policy.decision's reason and of the
// policy_decisions_total{reason} label (telemetry's closed set holds them).
const (
	SpendAllowed                    = "allowed"
	SpendBudgetExhausted            = "budget_exhausted"
	SpendDeniedAuthorizationMissing = "denied_authorization_missing"
	SpendDeniedAuthorizationExpired = "denied_authorization_expired"
	SpendDeniedExplicit             = "denied_explicit"
	SpendDeniedInvalidMode          = "denied_invalid_authorization_mode"
	SpendDeniedIdempotencyConflict  = "denied_idempotency_conflict"
)

// Input bounds, checked by both drivers.
const (
	MaxSpendIDLen  = 200
	MaxCallKeyLen  = 512
	MaxSpendAmount = int64(1) << 52 // far above any budget; keeps sums far from overflow
)

// Authorization is one run's spend budget. authorization_id is bound to the
// run that first presented it: the budget is per run, never shared.
type Authorization struct {
	AuthorizationID string     `json:"authorization_id"`
	RunID           string     `json:"run_id"`
	Mode            string     `json:"mode"`
	MaxTotalSats    int64      `json:"max_total_sats"`
	SpentSats       int64      `json:"spent_sats"`
	ReservedSats    int64      `json:"reserved_sats"`
	ExpiresAt       *time.Time `json:"expires_at,omitempty"`
	CreatedAt       time.Time  `json:"created_at"`
	UpdatedAt       time.Time  `json:"updated_at"`
}

// RemainingSats is max - spent - reserved, floored at 0.
func (a Authorization) RemainingSats() int64 {
	return max(a.MaxTotalSats-a.SpentSats-a.ReservedSats, 0)
}

// Reservation holds part of a budget for one priced call.
type Reservation struct {
	ReservationID   string    `json:"reservation_id"`
	AuthorizationID string    `json:"authorization_id"`
	RunID           string    `json:"run_id"`
	CallKey         string    `json:"call_key"`
	AmountSats      int64     `json:"amount_sats"`    // reserved
	CommittedSats   int64     `json:"committed_sats"` // actual, set by Commit (<= AmountSats)
	State           string    `json:"state"`
	CreatedAt       time.Time `json:"created_at"`
	UpdatedAt       time.Time `json:"updated_at"`
}

// ReservationID is the id of the reservation of callKey under authID. It is
// derived, not random, so a retried call names the same row.
func ReservationID(authID, callKey string) string {
	h := sha256.Sum256([]byte(authID + "\x00" + callKey))
	return "rsv_" + hex.EncodeToString(h[:16])
}

// EnsureAuthorizationInput records a run's authorization. Idempotent: the
// same fields return the stored row (created=false, spent and reserved as
// they are now); another run or other fields give ErrConflict.
type EnsureAuthorizationInput struct {
	AuthorizationID string
	RunID           string
	Mode            string
	MaxTotalSats    int64
	ExpiresAt       *time.Time // nil = never; stored at microsecond precision
}

// Check validates in (ErrInvalidSpend).
func (in EnsureAuthorizationInput) Check() error {
	switch {
	case in.AuthorizationID == "" || len(in.AuthorizationID) > MaxSpendIDLen:
		return fmt.Errorf("authorization_id must be 1-%d bytes: %w", MaxSpendIDLen, ErrInvalidSpend)
	case in.RunID == "" || len(in.RunID) > MaxSpendIDLen:
		return fmt.Errorf("run_id must be 1-%d bytes: %w", MaxSpendIDLen, ErrInvalidSpend)
	case !ValidAuthMode(in.Mode):
		return fmt.Errorf("mode %q is not %s or %s: %w", in.Mode, AuthModeDelegatedBudget, AuthModeDenyAll, ErrInvalidSpend)
	case in.MaxTotalSats < 0 || in.MaxTotalSats > MaxSpendAmount:
		return fmt.Errorf("max_total_sats %d out of range 0..%d: %w", in.MaxTotalSats, MaxSpendAmount, ErrInvalidSpend)
	}
	return nil
}

// SameAs reports whether a stored authorization carries exactly in's fields.
func (in EnsureAuthorizationInput) SameAs(a Authorization) bool {
	if a.AuthorizationID != in.AuthorizationID || a.RunID != in.RunID || a.Mode != in.Mode || a.MaxTotalSats != in.MaxTotalSats {
		return false
	}
	if (a.ExpiresAt == nil) != (in.ExpiresAt == nil) {
		return false
	}
	return a.ExpiresAt == nil || a.ExpiresAt.Equal(in.ExpiresAt.UTC().Truncate(time.Microsecond))
}

// ReserveInput reserves AmountSats (> 0) of an authorization for one call.
// CallKey identifies the call across retries: a second Reserve with the same
// key returns the first one's reservation instead of reserving again.
type ReserveInput struct {
	AuthorizationID string
	CallKey         string
	AmountSats      int64
}

// Check validates in (ErrInvalidSpend).
func (in ReserveInput) Check() error {
	switch {
	case in.AuthorizationID == "" || len(in.AuthorizationID) > MaxSpendIDLen:
		return fmt.Errorf("authorization_id must be 1-%d bytes: %w", MaxSpendIDLen, ErrInvalidSpend)
	case in.CallKey == "" || len(in.CallKey) > MaxCallKeyLen:
		return fmt.Errorf("call_key must be 1-%d bytes: %w", MaxCallKeyLen, ErrInvalidSpend)
	case in.AmountSats <= 0 || in.AmountSats > MaxSpendAmount:
		// A free call needs no reservation; the spend guard never sends one.
		return fmt.Errorf("amount_sats %d out of range 1..%d: %w", in.AmountSats, MaxSpendAmount, ErrInvalidSpend)
	}
	return nil
}

// SpendDecision is the policy outcome of a Reserve.
type SpendDecision struct {
	Allowed bool   `json:"allowed"`
	Reason  string `json:"reason"` // SpendAllowed or a denial reason
	// Replay: the call key already had a reservation, which is returned.
	Replay bool `json:"replay,omitempty"`
	// Authorization is the row after the operation (budget figures).
	Authorization Authorization `json:"authorization"`
}

// ReserveAction is what a driver does with a Reserve, decided by
// DecideReserve from the rows it locked. Both drivers share the decision so
// that they cannot disagree on policy.
type ReserveAction int

const (
	ReserveDeny       ReserveAction = iota // write nothing, report the reason
	ReserveInsert                          // new reservation, reserved += amount
	ReserveReplay                          // return the existing reservation unchanged
	ReserveReactivate                      // released -> reserved again, reserved += amount
)

// DecideReserve decides a Reserve against the locked authorization a, the
// existing reservation of the call key (nil when none) and the current time.
// Order: idempotency first (a granted reservation stays granted even if the
// authorization expired since), then mode, expiry, budget.
func DecideReserve(a Authorization, existing *Reservation, amount int64, now time.Time) (ReserveAction, string) {
	if existing != nil {
		if existing.AmountSats != amount {
			return ReserveDeny, SpendDeniedIdempotencyConflict
		}
		if existing.State != ReservationReleased {
			return ReserveReplay, SpendAllowed
		}
	}
	if a.Mode != AuthModeDelegatedBudget {
		if a.Mode == AuthModeDenyAll {
			return ReserveDeny, SpendDeniedExplicit
		}
		return ReserveDeny, SpendDeniedInvalidMode
	}
	if a.ExpiresAt != nil && !now.Before(*a.ExpiresAt) {
		return ReserveDeny, SpendDeniedAuthorizationExpired
	}
	if a.SpentSats+a.ReservedSats+amount > a.MaxTotalSats {
		return ReserveDeny, SpendBudgetExhausted
	}
	if existing != nil {
		return ReserveReactivate, SpendAllowed
	}
	return ReserveInsert, SpendAllowed
}

// SpendStore is the spend contract, implemented by both drivers' *Store
// beside store.Store. Every method is one transaction; the authorization row
// is locked before any reservation row, so concurrent callers (goroutines or
// replicas) never overspend a budget.
type SpendStore interface {
	// EnsureAuthorization records a run's authorization (idempotent; see
	// EnsureAuthorizationInput). An unknown run gives ErrNotFound.
	EnsureAuthorization(ctx context.Context, in EnsureAuthorizationInput) (a Authorization, created bool, err error)
	// GetAuthorization returns ErrNotFound when it does not exist.
	GetAuthorization(ctx context.Context, authorizationID string) (Authorization, error)
	// AuthorizationForRun returns the run's authorization, or ErrNotFound.
	AuthorizationForRun(ctx context.Context, runID string) (Authorization, error)

	// Reserve decides with DecideReserve and applies the action atomically.
	// A denial writes nothing and returns the existing reservation of the
	// call key, if any. An unknown authorization gives ErrNotFound.
	Reserve(ctx context.Context, in ReserveInput) (Reservation, SpendDecision, error)
	// Commit charges actualSats (0..AmountSats) of a reserved reservation:
	// spent += actual, reserved -= amount. Repeating it with the same actual
	// replays; another actual gives ErrConflict; a released reservation
	// gives ErrReservationFinalized.
	Commit(ctx context.Context, reservationID string, actualSats int64) (Reservation, error)
	// Release returns a reserved reservation's amount to the budget.
	// Repeating it replays; a committed reservation gives ErrReservationFinalized.
	Release(ctx context.Context, reservationID string) (Reservation, error)
	// ReleaseRunReservations releases every still reserved reservation of a
	// run (the run finished, or its executor died mid-call) and reports how
	// many it released.
	ReleaseRunReservations(ctx context.Context, runID string) (int, error)

	// GetReservation returns ErrNotFound when it does not exist.
	GetReservation(ctx context.Context, reservationID string) (Reservation, error)
	// ListReservations returns a run's reservations in creation order.
	ListReservations(ctx context.Context, runID string) ([]Reservation, error)
}
