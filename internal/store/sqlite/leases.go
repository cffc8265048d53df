package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

type leaseRow struct {
	owner           string
	generation      int64
	expiresAt       time.Time
	released        bool
	reclaimed       bool
	lastProgressSeq int64
	lostEventSeq    int64
}

// getLeaseTx returns the lease row of runID; ok=false when the run was never leased.
func getLeaseTx(ctx context.Context, tx *sql.Tx, runID string) (leaseRow, bool, error) {
	var (
		l   leaseRow
		exp string
	)
	err := tx.QueryRowContext(ctx, `SELECT owner, generation, expires_at, released, reclaimed,
		last_progress_seq, lost_event_seq FROM run_leases WHERE run_id = ?`, runID).
		Scan(&l.owner, &l.generation, &exp, &l.released, &l.reclaimed, &l.lastProgressSeq, &l.lostEventSeq)
	if errors.Is(err, sql.ErrNoRows) {
		return leaseRow{}, false, nil
	}
	if err != nil {
		return leaseRow{}, false, fmt.Errorf("read lease of %s: %w", runID, err)
	}
	if l.expiresAt, err = parseTS(exp); err != nil {
		return leaseRow{}, false, err
	}
	return l, true, nil
}

// takeLeaseTx gives runID's lease to owner with a new generation, keeping the
// progress bookkeeping of the row.
func takeLeaseTx(ctx context.Context, tx *sql.Tx, runID, owner string, gen int64, now, expires time.Time) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO run_leases (run_id, owner, generation, expires_at, heartbeat_at)
		VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner, generation = excluded.generation,
			expires_at = excluded.expires_at, heartbeat_at = excluded.heartbeat_at, released = 0, reclaimed = 0`,
		runID, owner, gen, formatTS(expires), formatTS(now))
	if err != nil {
		return fmt.Errorf("take lease of %s: %w", runID, err)
	}
	return nil
}

func checkTTL(ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("lease ttl must be positive, got %s", ttl)
	}
	return nil
}

// checkLeaseArgs checks the owner and ttl of a lease to take (acquire,
// claim, create leased).
func checkLeaseArgs(owner string, ttl time.Duration) error {
	if err := checkTTL(ttl); err != nil {
		return err
	}
	if owner == "" {
		return errors.New("owner is required")
	}
	return nil
}

// AcquireLease implements store.Store.
func (s *Store) AcquireLease(ctx context.Context, runID, owner string, ttl time.Duration) (store.LeaseGrant, error) {
	if err := checkLeaseArgs(owner, ttl); err != nil {
		return store.LeaseGrant{}, fmt.Errorf("sqlite: acquire lease of %s: %w", runID, err)
	}
	var grant store.LeaseGrant
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		if _, err := getRunTx(ctx, tx, runID); err != nil {
			return err
		}
		l, ok, err := getLeaseTx(ctx, tx, runID)
		if err != nil {
			return err
		}
		now := s.now()
		expires := now.Add(ttl).Truncate(time.Microsecond)
		live := ok && !l.released && !l.reclaimed
		switch {
		case !ok || l.released:
			grant.Result = store.LeaseAcquired
		case l.reclaimed:
			grant.Result = store.LeaseStolen
		case l.owner == owner:
			// Renewing keeps the generation: the holder's fence stays valid.
			if _, err := tx.ExecContext(ctx, `UPDATE run_leases SET expires_at = ?, heartbeat_at = ? WHERE run_id = ?`,
				formatTS(expires), formatTS(now), runID); err != nil {
				return fmt.Errorf("renew lease of %s: %w", runID, err)
			}
			grant = store.LeaseGrant{Result: store.LeaseRenewed,
				Lease: store.Lease{RunID: runID, Owner: owner, Generation: l.generation, ExpiresAt: expires}}
			return nil
		case live && l.expiresAt.After(now):
			grant = store.LeaseGrant{Result: store.LeaseHeld,
				Lease: store.Lease{RunID: runID, Owner: l.owner, Generation: l.generation, ExpiresAt: l.expiresAt}}
			return fmt.Errorf("run %s held by %s until %s: %w", runID, l.owner, formatTS(l.expiresAt), store.ErrLeaseHeld)
		default:
			grant.Result = store.LeaseStolen
		}
		gen := l.generation + 1
		if err := takeLeaseTx(ctx, tx, runID, owner, gen, now, expires); err != nil {
			return err
		}
		grant.Lease = store.Lease{RunID: runID, Owner: owner, Generation: gen, ExpiresAt: expires}
		return nil
	})
	if err != nil {
		return grant, fmt.Errorf("sqlite: acquire lease: %w", err)
	}
	return grant, nil
}

// RenewLease implements store.Store. A lease that expired but was neither
// stolen, reclaimed nor released can still be renewed: nobody else has acted on it.
func (s *Store) RenewLease(ctx context.Context, l store.Lease, ttl time.Duration) (store.Lease, error) {
	if err := checkTTL(ttl); err != nil {
		return store.Lease{}, fmt.Errorf("sqlite: renew lease of %s: %w", l.RunID, err)
	}
	now := s.now()
	expires := now.Add(ttl).Truncate(time.Microsecond)
	var n int64
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		res, err := tx.ExecContext(ctx, `UPDATE run_leases SET expires_at = ?, heartbeat_at = ?
			WHERE run_id = ? AND owner = ? AND generation = ? AND released = 0 AND reclaimed = 0`,
			formatTS(expires), formatTS(now), l.RunID, l.Owner, l.Generation)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return store.Lease{}, fmt.Errorf("sqlite: renew lease of %s: %w", l.RunID, err)
	}
	if n == 0 {
		return store.Lease{}, fmt.Errorf("sqlite: renew lease of %s by %s/%d: lease lost: %w",
			l.RunID, l.Owner, l.Generation, store.ErrFenced)
	}
	l.ExpiresAt = expires
	return l, nil
}

// ReleaseLease implements store.Store.
func (s *Store) ReleaseLease(ctx context.Context, l store.Lease) error {
	now := formatTS(s.now())
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		_, err := tx.ExecContext(ctx, `UPDATE run_leases SET released = 1, expires_at = ?, heartbeat_at = ?
			WHERE run_id = ? AND owner = ? AND generation = ? AND released = 0 AND reclaimed = 0`,
			now, now, l.RunID, l.Owner, l.Generation)
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlite: release lease of %s: %w", l.RunID, err)
	}
	return nil
}

// ClaimRunnable implements store.Store. The single writer connection makes
// the select-then-take atomic, which is what SKIP LOCKED buys PostgreSQL.
// A lease that merely expired is not claimable: it waits for the janitor, so
// that every lost executor is recorded as run.executor_lost and counted.
func (s *Store) ClaimRunnable(ctx context.Context, owner string, ttl time.Duration, limit int) ([]store.LeaseGrant, error) {
	if err := checkLeaseArgs(owner, ttl); err != nil {
		return nil, fmt.Errorf("sqlite: claim runnable: %w", err)
	}
	if limit <= 0 {
		return nil, nil
	}
	var grants []store.LeaseGrant
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		rows, err := tx.QueryContext(ctx, `SELECT r.run_id, COALESCE(l.generation, 0), COALESCE(l.reclaimed, 0)
			FROM runs r LEFT JOIN run_leases l ON l.run_id = r.run_id
			WHERE r.status IN ('created', 'running', 'canceling')
			  AND (l.run_id IS NULL OR l.released = 1 OR l.reclaimed = 1)
			  AND (r.status = 'canceling'
			       OR EXISTS (SELECT 1 FROM frames f WHERE f.run_id = r.run_id AND f.id > r.last_processed_frame_id))
			ORDER BY r.updated_at, r.run_id
			LIMIT ?`, limit)
		if err != nil {
			return err
		}
		type cand struct {
			runID     string
			gen       int64
			reclaimed bool
		}
		var cands []cand
		for rows.Next() {
			var c cand
			if err := rows.Scan(&c.runID, &c.gen, &c.reclaimed); err != nil {
				rows.Close()
				return err
			}
			cands = append(cands, c)
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if err := rows.Err(); err != nil {
			return err
		}
		now := s.now()
		expires := now.Add(ttl).Truncate(time.Microsecond)
		for _, c := range cands {
			if err := takeLeaseTx(ctx, tx, c.runID, owner, c.gen+1, now, expires); err != nil {
				return err
			}
			result := store.LeaseAcquired
			if c.reclaimed {
				result = store.LeaseStolen
			}
			grants = append(grants, store.LeaseGrant{Result: result,
				Lease: store.Lease{RunID: c.runID, Owner: owner, Generation: c.gen + 1, ExpiresAt: expires}})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: claim runnable: %w", err)
	}
	return grants, nil
}

// ReclaimExpired implements store.Store. Each run is reclaimed in its own
// transaction that re-checks the lease, so concurrent janitors (or a holder
// renewing at the last moment) never double-reclaim.
func (s *Store) ReclaimExpired(ctx context.Context, now time.Time, maxAttempts, limit int) ([]store.Reclaim, error) {
	if limit <= 0 {
		return nil, nil
	}
	now = now.UTC().Truncate(time.Microsecond)
	rows, err := s.reader.QueryContext(ctx, `SELECT l.run_id FROM run_leases l JOIN runs r ON r.run_id = l.run_id
		WHERE l.released = 0 AND l.reclaimed = 0 AND l.expires_at < ?
		  AND r.status IN ('created', 'running', 'canceling')
		ORDER BY l.expires_at, l.run_id LIMIT ?`, formatTS(now), limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: reclaim expired: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("sqlite: reclaim expired: %w", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Close(); err != nil {
		return nil, fmt.Errorf("sqlite: reclaim expired: %w", err)
	}

	var out []store.Reclaim
	for _, id := range ids {
		var (
			rec store.Reclaim
			did bool
		)
		err := s.write(ctx, func(tx *sql.Tx, notify func(store.Notice)) error {
			var err error
			rec, did, err = s.reclaimTx(ctx, tx, id, now, maxAttempts, notify)
			return err
		})
		if err != nil {
			return out, fmt.Errorf("sqlite: reclaim %s: %w", id, err)
		}
		if did {
			out = append(out, rec)
		}
	}
	return out, nil
}

func (s *Store) reclaimTx(ctx context.Context, tx *sql.Tx, runID string, now time.Time, maxAttempts int,
	notify func(store.Notice)) (store.Reclaim, bool, error) {
	run, err := getRunTx(ctx, tx, runID)
	if err != nil {
		return store.Reclaim{}, false, err
	}
	l, ok, err := getLeaseTx(ctx, tx, runID)
	if err != nil {
		return store.Reclaim{}, false, err
	}
	if !ok || l.released || l.reclaimed || !l.expiresAt.Before(now) || store.Terminal(run.Status) {
		return store.Reclaim{}, false, nil // someone acted on it since the scan
	}

	attempts := run.RecoveryAttempts + 1
	if l.lastProgressSeq > l.lostEventSeq {
		attempts = 1 // the executor appended since the previous reclaim
	}
	payload, err := runs.Canonical(map[string]any{
		"lease_owner":       l.owner,
		"lease_expires_at":  formatTS(l.expiresAt),
		"detected_at":       formatTS(now),
		"last_progress_seq": l.lastProgressSeq,
	})
	if err != nil {
		return store.Reclaim{}, false, err
	}
	lost, _, err := s.appendTx(ctx, tx, store.AppendInput{RunID: runID, EventType: "run.executor_lost", Payload: payload}, notify)
	if err != nil {
		return store.Reclaim{}, false, fmt.Errorf("append run.executor_lost: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE run_leases SET reclaimed = 1, lost_event_seq = ? WHERE run_id = ?`,
		lost.Seq, runID); err != nil {
		return store.Reclaim{}, false, fmt.Errorf("mark reclaimed: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE runs SET recovery_attempts = ?, last_recovery_at = ? WHERE run_id = ?`,
		attempts, formatTS(now), runID); err != nil {
		return store.Reclaim{}, false, fmt.Errorf("count recovery: %w", err)
	}

	rec := store.Reclaim{RunID: runID, Owner: l.owner, Attempts: attempts, Outcome: store.ReclaimResumed}
	if attempts > maxAttempts {
		payload, err := runs.Canonical(map[string]any{
			"status":       store.StatusFailed,
			"reason_class": "executor_recovery_exhausted",
			"reason":       "janitor recovery attempts exceeded",
			"attempts":     attempts,
		})
		if err != nil {
			return store.Reclaim{}, false, err
		}
		if _, _, err := s.appendTx(ctx, tx, store.AppendInput{RunID: runID, EventType: "run.finished", Payload: payload}, notify); err != nil {
			return store.Reclaim{}, false, fmt.Errorf("append run.finished: %w", err)
		}
		rec.Outcome = store.ReclaimExhausted
	}
	return rec, true, nil
}
