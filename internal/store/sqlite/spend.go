package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/oaruntime/oaruntime/internal/store"
)

// Spend operations run in write transactions on the single writer
// connection, so each read-decide-write is serializable without row locks.

var _ store.SpendStore = (*Store)(nil)

const spendAuthCols = `authorization_id, run_id, mode, max_total_sats, spent_sats, reserved_sats, expires_at, created_at, updated_at`

const spendResvCols = `reservation_id, authorization_id, run_id, call_key, amount_sats, committed_sats, state, created_at, updated_at`

func scanSpendAuthorization(row rowScanner) (store.Authorization, error) {
	var (
		a                    store.Authorization
		expires              sql.NullString
		createdAt, updatedAt string
	)
	if err := row.Scan(&a.AuthorizationID, &a.RunID, &a.Mode, &a.MaxTotalSats, &a.SpentSats, &a.ReservedSats,
		&expires, &createdAt, &updatedAt); err != nil {
		return store.Authorization{}, err
	}
	var err error
	if a.ExpiresAt, err = parseNullTS(expires); err != nil {
		return store.Authorization{}, err
	}
	if a.CreatedAt, err = parseTS(createdAt); err != nil {
		return store.Authorization{}, err
	}
	if a.UpdatedAt, err = parseTS(updatedAt); err != nil {
		return store.Authorization{}, err
	}
	return a, nil
}

func scanSpendReservation(row rowScanner) (store.Reservation, error) {
	var (
		r                    store.Reservation
		createdAt, updatedAt string
	)
	if err := row.Scan(&r.ReservationID, &r.AuthorizationID, &r.RunID, &r.CallKey, &r.AmountSats, &r.CommittedSats,
		&r.State, &createdAt, &updatedAt); err != nil {
		return store.Reservation{}, err
	}
	var err error
	if r.CreatedAt, err = parseTS(createdAt); err != nil {
		return store.Reservation{}, err
	}
	if r.UpdatedAt, err = parseTS(updatedAt); err != nil {
		return store.Reservation{}, err
	}
	return r, nil
}

type spendQuerier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func getSpendAuthorization(ctx context.Context, q spendQuerier, authID string) (store.Authorization, error) {
	a, err := scanSpendAuthorization(q.QueryRowContext(ctx, `SELECT `+spendAuthCols+` FROM spend_authorizations WHERE authorization_id = ?`, authID))
	if errors.Is(err, sql.ErrNoRows) {
		return a, fmt.Errorf("authorization %q: %w", authID, store.ErrNotFound)
	}
	return a, err
}

func getSpendReservation(ctx context.Context, q spendQuerier, id string) (store.Reservation, error) {
	r, err := scanSpendReservation(q.QueryRowContext(ctx, `SELECT `+spendResvCols+` FROM spend_reservations WHERE reservation_id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return r, fmt.Errorf("reservation %q: %w", id, store.ErrNotFound)
	}
	return r, err
}

// EnsureAuthorization implements store.SpendStore.
func (s *Store) EnsureAuthorization(ctx context.Context, in store.EnsureAuthorizationInput) (store.Authorization, bool, error) {
	if err := in.Check(); err != nil {
		return store.Authorization{}, false, fmt.Errorf("sqlite: ensure authorization: %w", err)
	}
	var (
		out     store.Authorization
		created bool
	)
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		cur, err := getSpendAuthorization(ctx, tx, in.AuthorizationID)
		switch {
		case err == nil:
			if !in.SameAs(cur) {
				return fmt.Errorf("authorization %q exists for run %q with other fields: %w", in.AuthorizationID, cur.RunID, store.ErrConflict)
			}
			out = cur
			return nil
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		var exists int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM runs WHERE run_id = ?`, in.RunID).Scan(&exists); err != nil {
			return err
		}
		if exists == 0 {
			return fmt.Errorf("run %q: %w", in.RunID, store.ErrNotFound)
		}
		var other string
		err = tx.QueryRowContext(ctx, `SELECT authorization_id FROM spend_authorizations WHERE run_id = ?`, in.RunID).Scan(&other)
		if err == nil {
			return fmt.Errorf("run %q already has authorization %q: %w", in.RunID, other, store.ErrConflict)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		now := formatTS(s.now())
		var expires any
		if in.ExpiresAt != nil {
			expires = formatTS(*in.ExpiresAt)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO spend_authorizations
			(authorization_id, run_id, mode, max_total_sats, expires_at, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?)`, in.AuthorizationID, in.RunID, in.Mode, in.MaxTotalSats, expires, now, now); err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		out, err = getSpendAuthorization(ctx, tx, in.AuthorizationID)
		created = true
		return err
	})
	if err != nil {
		return store.Authorization{}, false, fmt.Errorf("sqlite: ensure authorization %s: %w", in.AuthorizationID, err)
	}
	return out, created, nil
}

// GetAuthorization implements store.SpendStore.
func (s *Store) GetAuthorization(ctx context.Context, authID string) (store.Authorization, error) {
	a, err := getSpendAuthorization(ctx, s.reader, authID)
	if err != nil {
		return a, fmt.Errorf("sqlite: get authorization: %w", err)
	}
	return a, nil
}

// AuthorizationForRun implements store.SpendStore.
func (s *Store) AuthorizationForRun(ctx context.Context, runID string) (store.Authorization, error) {
	a, err := scanSpendAuthorization(s.reader.QueryRowContext(ctx, `SELECT `+spendAuthCols+` FROM spend_authorizations WHERE run_id = ?`, runID))
	if errors.Is(err, sql.ErrNoRows) {
		return a, fmt.Errorf("sqlite: authorization of run %q: %w", runID, store.ErrNotFound)
	}
	if err != nil {
		return a, fmt.Errorf("sqlite: authorization of run %q: %w", runID, err)
	}
	return a, nil
}

// Reserve implements store.SpendStore.
func (s *Store) Reserve(ctx context.Context, in store.ReserveInput) (store.Reservation, store.SpendDecision, error) {
	if err := in.Check(); err != nil {
		return store.Reservation{}, store.SpendDecision{}, fmt.Errorf("sqlite: reserve: %w", err)
	}
	var (
		res store.Reservation
		dec store.SpendDecision
	)
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		a, err := getSpendAuthorization(ctx, tx, in.AuthorizationID)
		if err != nil {
			return err
		}
		id := store.ReservationID(in.AuthorizationID, in.CallKey)
		var existing *store.Reservation
		switch r, err := getSpendReservation(ctx, tx, id); {
		case err == nil:
			existing, res = &r, r
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		now := s.now()
		action, reason := store.DecideReserve(a, existing, in.AmountSats, now)
		dec = store.SpendDecision{Allowed: action != store.ReserveDeny, Reason: reason, Replay: existing != nil}
		ts := formatTS(now)
		switch action {
		case store.ReserveInsert:
			if _, err := tx.ExecContext(ctx, `INSERT INTO spend_reservations
				(reservation_id, authorization_id, run_id, call_key, amount_sats, state, created_at, updated_at)
				VALUES (?, ?, ?, ?, ?, 'reserved', ?, ?)`, id, a.AuthorizationID, a.RunID, in.CallKey, in.AmountSats, ts, ts); err != nil {
				return fmt.Errorf("insert reservation: %w", err)
			}
		case store.ReserveReactivate:
			if _, err := tx.ExecContext(ctx, `UPDATE spend_reservations SET state = 'reserved', committed_sats = 0, updated_at = ?
				WHERE reservation_id = ?`, ts, id); err != nil {
				return fmt.Errorf("reactivate reservation: %w", err)
			}
		default:
			dec.Authorization = a
			return nil
		}
		if _, err := tx.ExecContext(ctx, `UPDATE spend_authorizations SET reserved_sats = reserved_sats + ?, updated_at = ?
			WHERE authorization_id = ?`, in.AmountSats, ts, a.AuthorizationID); err != nil {
			return fmt.Errorf("reserve budget: %w", err)
		}
		if res, err = getSpendReservation(ctx, tx, id); err != nil {
			return err
		}
		dec.Authorization, err = getSpendAuthorization(ctx, tx, a.AuthorizationID)
		return err
	})
	if err != nil {
		return store.Reservation{}, store.SpendDecision{}, fmt.Errorf("sqlite: reserve %s/%s: %w", in.AuthorizationID, in.CallKey, err)
	}
	return res, dec, nil
}

// Commit implements store.SpendStore.
func (s *Store) Commit(ctx context.Context, reservationID string, actualSats int64) (store.Reservation, error) {
	var out store.Reservation
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		r, err := getSpendReservation(ctx, tx, reservationID)
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
		ts := formatTS(s.now())
		if _, err := tx.ExecContext(ctx, `UPDATE spend_reservations SET state = 'committed', committed_sats = ?, updated_at = ?
			WHERE reservation_id = ?`, actualSats, ts, reservationID); err != nil {
			return fmt.Errorf("commit reservation: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE spend_authorizations
			SET spent_sats = spent_sats + ?, reserved_sats = reserved_sats - ?, updated_at = ?
			WHERE authorization_id = ?`, actualSats, r.AmountSats, ts, r.AuthorizationID); err != nil {
			return fmt.Errorf("charge budget: %w", err)
		}
		out, err = getSpendReservation(ctx, tx, reservationID)
		return err
	})
	if err != nil {
		return store.Reservation{}, fmt.Errorf("sqlite: commit %s: %w", reservationID, err)
	}
	return out, nil
}

// Release implements store.SpendStore.
func (s *Store) Release(ctx context.Context, reservationID string) (store.Reservation, error) {
	var out store.Reservation
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		r, err := getSpendReservation(ctx, tx, reservationID)
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
		ts := formatTS(s.now())
		if _, err := tx.ExecContext(ctx, `UPDATE spend_reservations SET state = 'released', updated_at = ?
			WHERE reservation_id = ?`, ts, reservationID); err != nil {
			return fmt.Errorf("release reservation: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE spend_authorizations SET reserved_sats = reserved_sats - ?, updated_at = ?
			WHERE authorization_id = ?`, r.AmountSats, ts, r.AuthorizationID); err != nil {
			return fmt.Errorf("return budget: %w", err)
		}
		out, err = getSpendReservation(ctx, tx, reservationID)
		return err
	})
	if err != nil {
		return store.Reservation{}, fmt.Errorf("sqlite: release %s: %w", reservationID, err)
	}
	return out, nil
}

// ReleaseRunReservations implements store.SpendStore.
func (s *Store) ReleaseRunReservations(ctx context.Context, runID string) (int, error) {
	// Every finished run calls this; most hold nothing, and a read on the
	// reader pool spares them a turn on the single writer connection.
	var open int
	if err := s.reader.QueryRowContext(ctx, `SELECT COUNT(*) FROM spend_reservations
		WHERE run_id = ? AND state = 'reserved'`, runID).Scan(&open); err != nil {
		return 0, fmt.Errorf("sqlite: release reservations of run %s: %w", runID, err)
	}
	if open == 0 {
		return 0, nil
	}
	var n int
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		var sum sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*), SUM(amount_sats) FROM spend_reservations
			WHERE run_id = ? AND state = 'reserved'`, runID).Scan(&n, &sum); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		ts := formatTS(s.now())
		if _, err := tx.ExecContext(ctx, `UPDATE spend_reservations SET state = 'released', updated_at = ?
			WHERE run_id = ? AND state = 'reserved'`, ts, runID); err != nil {
			return fmt.Errorf("release reservations: %w", err)
		}
		// One authorization per run, so every released row belongs to it.
		if _, err := tx.ExecContext(ctx, `UPDATE spend_authorizations SET reserved_sats = reserved_sats - ?, updated_at = ?
			WHERE run_id = ?`, sum.Int64, ts, runID); err != nil {
			return fmt.Errorf("return budget: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sqlite: release reservations of run %s: %w", runID, err)
	}
	return n, nil
}

// GetReservation implements store.SpendStore.
func (s *Store) GetReservation(ctx context.Context, reservationID string) (store.Reservation, error) {
	r, err := getSpendReservation(ctx, s.reader, reservationID)
	if err != nil {
		return r, fmt.Errorf("sqlite: get reservation: %w", err)
	}
	return r, nil
}

// ListReservations implements store.SpendStore.
func (s *Store) ListReservations(ctx context.Context, runID string) ([]store.Reservation, error) {
	rows, err := s.reader.QueryContext(ctx, `SELECT `+spendResvCols+` FROM spend_reservations WHERE run_id = ? ORDER BY id`, runID)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list reservations of run %s: %w", runID, err)
	}
	defer rows.Close()
	var out []store.Reservation
	for rows.Next() {
		r, err := scanSpendReservation(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlite: list reservations of run %s: %w", runID, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list reservations of run %s: %w", runID, err)
	}
	return out, nil
}
