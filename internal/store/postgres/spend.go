package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/oaruntime/oaruntime/internal/store"
)

// Spend operations lock the authorization row FOR UPDATE before reading or
// writing any of its reservations, in every method, so one budget's
// operations are serialized across pool connections and replicas while
// other budgets proceed in parallel. The lock order (authorization, then
// reservation) is the same everywhere, so they cannot deadlock each other.

var _ store.SpendStore = (*Store)(nil)

const spendAuthCols = `authorization_id, run_id, mode, max_total_sats, spent_sats, reserved_sats, expires_at, created_at, updated_at`

const spendResvCols = `reservation_id, authorization_id, run_id, call_key, amount_sats, committed_sats, state, created_at, updated_at`

func scanSpendAuthorization(row pgx.Row) (store.Authorization, error) {
	var a store.Authorization
	if err := row.Scan(&a.AuthorizationID, &a.RunID, &a.Mode, &a.MaxTotalSats, &a.SpentSats, &a.ReservedSats,
		&a.ExpiresAt, &a.CreatedAt, &a.UpdatedAt); err != nil {
		return store.Authorization{}, err
	}
	if a.ExpiresAt != nil {
		u := a.ExpiresAt.UTC()
		a.ExpiresAt = &u
	}
	a.CreatedAt, a.UpdatedAt = a.CreatedAt.UTC(), a.UpdatedAt.UTC()
	return a, nil
}

func scanSpendReservation(row pgx.Row) (store.Reservation, error) {
	var r store.Reservation
	if err := row.Scan(&r.ReservationID, &r.AuthorizationID, &r.RunID, &r.CallKey, &r.AmountSats, &r.CommittedSats,
		&r.State, &r.CreatedAt, &r.UpdatedAt); err != nil {
		return store.Reservation{}, err
	}
	r.CreatedAt, r.UpdatedAt = r.CreatedAt.UTC(), r.UpdatedAt.UTC()
	return r, nil
}

// spendAuthorization reads an authorization; lock adds FOR UPDATE.
func spendAuthorization(ctx context.Context, q pgx.Tx, authID string, lock bool) (store.Authorization, error) {
	sql := `SELECT ` + spendAuthCols + ` FROM spend_authorizations WHERE authorization_id = $1`
	if lock {
		sql += ` FOR UPDATE`
	}
	a, err := scanSpendAuthorization(q.QueryRow(ctx, sql, authID))
	if errors.Is(err, pgx.ErrNoRows) {
		return a, fmt.Errorf("authorization %q: %w", authID, store.ErrNotFound)
	}
	return a, err
}

func spendReservation(ctx context.Context, q pgx.Tx, id string, lock bool) (store.Reservation, error) {
	sql := `SELECT ` + spendResvCols + ` FROM spend_reservations WHERE reservation_id = $1`
	if lock {
		sql += ` FOR UPDATE`
	}
	r, err := scanSpendReservation(q.QueryRow(ctx, sql, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("reservation %q: %w", id, store.ErrNotFound)
	}
	return r, err
}

// EnsureAuthorization implements store.SpendStore. INSERT ... ON CONFLICT
// DO NOTHING makes concurrent first calls wait for each other; the loser
// then reads the winner's row and compares.
func (s *Store) EnsureAuthorization(ctx context.Context, in store.EnsureAuthorizationInput) (store.Authorization, bool, error) {
	if err := in.Check(); err != nil {
		return store.Authorization{}, false, fmt.Errorf("postgres: ensure authorization: %w", err)
	}
	if err := checkText("authorization_id", in.AuthorizationID, "run_id", in.RunID); err != nil {
		return store.Authorization{}, false, fmt.Errorf("postgres: ensure authorization: %v: %w", err, store.ErrInvalidSpend)
	}
	var expires *time.Time
	if in.ExpiresAt != nil {
		e := in.ExpiresAt.UTC().Truncate(time.Microsecond)
		expires = &e
	}
	var (
		out     store.Authorization
		created bool
	)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO spend_authorizations (authorization_id, run_id, mode, max_total_sats, expires_at)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`,
			in.AuthorizationID, in.RunID, in.Mode, in.MaxTotalSats, expires)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23503" { // foreign_key_violation
			return fmt.Errorf("run %q: %w", in.RunID, store.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		created = tag.RowsAffected() == 1
		out, err = spendAuthorization(ctx, tx, in.AuthorizationID, false)
		if errors.Is(err, store.ErrNotFound) {
			// The conflict was on run_id: the run has another authorization.
			return fmt.Errorf("run %q already has another authorization: %w", in.RunID, store.ErrConflict)
		}
		if err != nil {
			return err
		}
		if !created && !in.SameAs(out) {
			return fmt.Errorf("authorization %q exists for run %q with other fields: %w", in.AuthorizationID, out.RunID, store.ErrConflict)
		}
		return nil
	})
	if err != nil {
		return store.Authorization{}, false, fmt.Errorf("postgres: ensure authorization %s: %w", in.AuthorizationID, err)
	}
	return out, created, nil
}

// GetAuthorization implements store.SpendStore.
func (s *Store) GetAuthorization(ctx context.Context, authID string) (store.Authorization, error) {
	if !storable(authID) {
		return store.Authorization{}, fmt.Errorf("postgres: get authorization %q: %w", authID, store.ErrNotFound)
	}
	a, err := scanSpendAuthorization(s.pool.QueryRow(ctx, `SELECT `+spendAuthCols+` FROM spend_authorizations WHERE authorization_id = $1`, authID))
	if errors.Is(err, pgx.ErrNoRows) {
		return a, fmt.Errorf("postgres: get authorization %q: %w", authID, store.ErrNotFound)
	}
	if err != nil {
		return a, fmt.Errorf("postgres: get authorization %q: %w", authID, err)
	}
	return a, nil
}

// AuthorizationForRun implements store.SpendStore.
func (s *Store) AuthorizationForRun(ctx context.Context, runID string) (store.Authorization, error) {
	if !storable(runID) {
		return store.Authorization{}, fmt.Errorf("postgres: authorization of run %q: %w", runID, store.ErrNotFound)
	}
	a, err := scanSpendAuthorization(s.pool.QueryRow(ctx, `SELECT `+spendAuthCols+` FROM spend_authorizations WHERE run_id = $1`, runID))
	if errors.Is(err, pgx.ErrNoRows) {
		return a, fmt.Errorf("postgres: authorization of run %q: %w", runID, store.ErrNotFound)
	}
	if err != nil {
		return a, fmt.Errorf("postgres: authorization of run %q: %w", runID, err)
	}
	return a, nil
}

// Reserve implements store.SpendStore.
func (s *Store) Reserve(ctx context.Context, in store.ReserveInput) (store.Reservation, store.SpendDecision, error) {
	if err := in.Check(); err != nil {
		return store.Reservation{}, store.SpendDecision{}, fmt.Errorf("postgres: reserve: %w", err)
	}
	if !storable(in.AuthorizationID) {
		return store.Reservation{}, store.SpendDecision{}, fmt.Errorf("postgres: reserve: authorization %q: %w", in.AuthorizationID, store.ErrNotFound)
	}
	if err := checkText("call_key", in.CallKey); err != nil {
		return store.Reservation{}, store.SpendDecision{}, fmt.Errorf("postgres: reserve: %v: %w", err, store.ErrInvalidSpend)
	}
	var (
		res store.Reservation
		dec store.SpendDecision
	)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		a, err := spendAuthorization(ctx, tx, in.AuthorizationID, true)
		if err != nil {
			return err
		}
		// Read after the lock: a wait for the lock must not make an expired
		// authorization look live.
		var now time.Time
		if err := tx.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&now); err != nil {
			return err
		}
		id := store.ReservationID(in.AuthorizationID, in.CallKey)
		var existing *store.Reservation
		switch r, err := spendReservation(ctx, tx, id, true); {
		case err == nil:
			existing, res = &r, r
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		action, reason := store.DecideReserve(a, existing, in.AmountSats, now)
		dec = store.SpendDecision{Allowed: action != store.ReserveDeny, Reason: reason, Replay: existing != nil}
		switch action {
		case store.ReserveInsert:
			if _, err := tx.Exec(ctx, `INSERT INTO spend_reservations
				(reservation_id, authorization_id, run_id, call_key, amount_sats, state)
				VALUES ($1, $2, $3, $4, $5, 'reserved')`, id, a.AuthorizationID, a.RunID, in.CallKey, in.AmountSats); err != nil {
				return fmt.Errorf("insert reservation: %w", err)
			}
		case store.ReserveReactivate:
			if _, err := tx.Exec(ctx, `UPDATE spend_reservations SET state = 'reserved', committed_sats = 0, updated_at = now()
				WHERE reservation_id = $1`, id); err != nil {
				return fmt.Errorf("reactivate reservation: %w", err)
			}
		default:
			dec.Authorization = a
			return nil
		}
		dec.Authorization, err = scanSpendAuthorization(tx.QueryRow(ctx, `UPDATE spend_authorizations
			SET reserved_sats = reserved_sats + $2, updated_at = now()
			WHERE authorization_id = $1 RETURNING `+spendAuthCols, a.AuthorizationID, in.AmountSats))
		if err != nil {
			return fmt.Errorf("reserve budget: %w", err)
		}
		res, err = spendReservation(ctx, tx, id, false)
		return err
	})
	if err != nil {
		return store.Reservation{}, store.SpendDecision{}, fmt.Errorf("postgres: reserve %s/%s: %w", in.AuthorizationID, in.CallKey, err)
	}
	return res, dec, nil
}

// lockReservation locks a reservation's authorization, then the reservation.
// The first, unlocked read only finds which authorization to lock; the
// state is re-read under the lock.
func lockReservation(ctx context.Context, tx pgx.Tx, id string) (store.Reservation, error) {
	r, err := spendReservation(ctx, tx, id, false)
	if err != nil {
		return r, err
	}
	if _, err := spendAuthorization(ctx, tx, r.AuthorizationID, true); err != nil {
		return r, err
	}
	return spendReservation(ctx, tx, id, true)
}

// Commit implements store.SpendStore.
func (s *Store) Commit(ctx context.Context, reservationID string, actualSats int64) (store.Reservation, error) {
	if !storable(reservationID) {
		return store.Reservation{}, fmt.Errorf("postgres: commit %q: %w", reservationID, store.ErrNotFound)
	}
	var out store.Reservation
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		r, err := lockReservation(ctx, tx, reservationID)
		if err != nil {
			return err
		}
		if actualSats < 0 || actualSats > r.AmountSats {
			return fmt.Errorf("actual %d outside 0..%d reserved: %w", actualSats, r.AmountSats, store.ErrInvalidSpend)
		}
		switch r.State {
		case store.ReservationCommitted:
			if r.CommittedSats != actualSats {
				return fmt.Errorf("committed %d already, not %d: %w", r.CommittedSats, actualSats, store.ErrConflict)
			}
			out = r
			return nil
		case store.ReservationReleased:
			return fmt.Errorf("commit of a released reservation: %w", store.ErrReservationFinalized)
		}
		if _, err := tx.Exec(ctx, `UPDATE spend_authorizations
			SET spent_sats = spent_sats + $2, reserved_sats = reserved_sats - $3, updated_at = now()
			WHERE authorization_id = $1`, r.AuthorizationID, actualSats, r.AmountSats); err != nil {
			return fmt.Errorf("charge budget: %w", err)
		}
		out, err = scanSpendReservation(tx.QueryRow(ctx, `UPDATE spend_reservations
			SET state = 'committed', committed_sats = $2, updated_at = now()
			WHERE reservation_id = $1 RETURNING `+spendResvCols, reservationID, actualSats))
		return err
	})
	if err != nil {
		return store.Reservation{}, fmt.Errorf("postgres: commit %s: %w", reservationID, err)
	}
	return out, nil
}

// Release implements store.SpendStore.
func (s *Store) Release(ctx context.Context, reservationID string) (store.Reservation, error) {
	if !storable(reservationID) {
		return store.Reservation{}, fmt.Errorf("postgres: release %q: %w", reservationID, store.ErrNotFound)
	}
	var out store.Reservation
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		r, err := lockReservation(ctx, tx, reservationID)
		if err != nil {
			return err
		}
		switch r.State {
		case store.ReservationReleased:
			out = r
			return nil
		case store.ReservationCommitted:
			return fmt.Errorf("release of a committed reservation: %w", store.ErrReservationFinalized)
		}
		if _, err := tx.Exec(ctx, `UPDATE spend_authorizations SET reserved_sats = reserved_sats - $2, updated_at = now()
			WHERE authorization_id = $1`, r.AuthorizationID, r.AmountSats); err != nil {
			return fmt.Errorf("return budget: %w", err)
		}
		out, err = scanSpendReservation(tx.QueryRow(ctx, `UPDATE spend_reservations SET state = 'released', updated_at = now()
			WHERE reservation_id = $1 RETURNING `+spendResvCols, reservationID))
		return err
	})
	if err != nil {
		return store.Reservation{}, fmt.Errorf("postgres: release %s: %w", reservationID, err)
	}
	return out, nil
}

// ReleaseRunReservations implements store.SpendStore.
func (s *Store) ReleaseRunReservations(ctx context.Context, runID string) (int, error) {
	if !storable(runID) {
		return 0, nil
	}
	var n int
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var authID string
		err := tx.QueryRow(ctx, `SELECT authorization_id FROM spend_authorizations WHERE run_id = $1 FOR UPDATE`, runID).Scan(&authID)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		var sum int64
		if err := tx.QueryRow(ctx, `WITH released AS (
				UPDATE spend_reservations SET state = 'released', updated_at = now()
				WHERE authorization_id = $1 AND state = 'reserved' RETURNING amount_sats)
			SELECT COUNT(*), COALESCE(SUM(amount_sats), 0) FROM released`, authID).Scan(&n, &sum); err != nil {
			return fmt.Errorf("release reservations: %w", err)
		}
		if n == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE spend_authorizations SET reserved_sats = reserved_sats - $2, updated_at = now()
			WHERE authorization_id = $1`, authID, sum); err != nil {
			return fmt.Errorf("return budget: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("postgres: release reservations of run %s: %w", runID, err)
	}
	return n, nil
}

// GetReservation implements store.SpendStore.
func (s *Store) GetReservation(ctx context.Context, reservationID string) (store.Reservation, error) {
	if !storable(reservationID) {
		return store.Reservation{}, fmt.Errorf("postgres: get reservation %q: %w", reservationID, store.ErrNotFound)
	}
	r, err := scanSpendReservation(s.pool.QueryRow(ctx, `SELECT `+spendResvCols+` FROM spend_reservations WHERE reservation_id = $1`, reservationID))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("postgres: get reservation %q: %w", reservationID, store.ErrNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("postgres: get reservation %q: %w", reservationID, err)
	}
	return r, nil
}

// ListReservations implements store.SpendStore.
func (s *Store) ListReservations(ctx context.Context, runID string) ([]store.Reservation, error) {
	if !storable(runID) {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT `+spendResvCols+` FROM spend_reservations WHERE run_id = $1 ORDER BY id`, runID)
	if err != nil {
		return nil, fmt.Errorf("postgres: list reservations of run %s: %w", runID, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Reservation, error) { return scanSpendReservation(r) })
	if err != nil {
		return nil, fmt.Errorf("postgres: list reservations of run %s: %w", runID, err)
	}
	return out, nil
}
