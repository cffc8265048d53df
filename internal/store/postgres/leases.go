package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

// Lease times use clock_timestamp(), not now(): now() is frozen at
// transaction start, which after a lock wait would understate expiries and
// count a just-expired lease as live.

// Lease row states. "free": never leased; "held": a holder has it (live
// until expires_at); "released": given up by its holder; "reclaimed": the
// janitor took it from a holder whose lease expired.
const (
	leaseFree      = "free"
	leaseHeld      = "held"
	leaseReleased  = "released"
	leaseReclaimed = "reclaimed"
)

const nonTerminal = `('created', 'running', 'canceling')`

func ttlMicros(ttl time.Duration) (int64, error) {
	if ttl < time.Microsecond {
		return 0, fmt.Errorf("lease ttl %v must be at least 1µs", ttl)
	}
	return ttl.Microseconds(), nil
}

// leaseArgs checks the owner and ttl of a lease to take (acquire, claim,
// create leased) and returns the ttl in microseconds.
func leaseArgs(owner string, ttl time.Duration) (int64, error) {
	us, err := ttlMicros(ttl)
	if err != nil {
		return 0, err
	}
	if owner == "" {
		return 0, errors.New("owner is required")
	}
	if err := checkText("owner", owner); err != nil {
		return 0, err
	}
	return us, nil
}

// AcquireLease implements store.Store. The lease row is locked FOR UPDATE so
// that concurrent acquirers decide one after the other.
func (s *Store) AcquireLease(ctx context.Context, runID, owner string, ttl time.Duration) (store.LeaseGrant, error) {
	us, err := leaseArgs(owner, ttl)
	if err != nil {
		return store.LeaseGrant{}, fmt.Errorf("postgres: acquire lease of %s: %w", runID, err)
	}
	if !storable(runID) {
		return store.LeaseGrant{}, fmt.Errorf("postgres: acquire lease of %q: %w", runID, store.ErrNotFound)
	}
	var grant store.LeaseGrant
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var (
			state, holder string
			gen           int64
			live          bool
			exp           time.Time
		)
		err := tx.QueryRow(ctx, `
			SELECT state, owner, generation, COALESCE(expires_at > clock_timestamp(), false), COALESCE(expires_at, clock_timestamp())
			FROM run_leases WHERE run_id = $1 FOR UPDATE`, runID).Scan(&state, &holder, &gen, &live, &exp)
		if errors.Is(err, pgx.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		switch {
		case state == leaseHeld && holder == owner:
			// Re-acquiring one's own lease keeps the generation: nobody else
			// held it in between, so the holder's writes stay valid.
			grant.Result = store.LeaseRenewed
		case state == leaseHeld && live:
			grant = store.LeaseGrant{Result: store.LeaseHeld,
				Lease: store.Lease{RunID: runID, Owner: holder, Generation: gen, ExpiresAt: exp.UTC()}}
			return fmt.Errorf("%w: held by %q until %s", store.ErrLeaseHeld, holder, formatTime(exp))
		case state == leaseHeld, state == leaseReclaimed:
			// Taking over from a holder that lost the lease (expired, or
			// reclaimed by the janitor) is a steal.
			grant.Result, gen = store.LeaseStolen, gen+1
		default: // free or released
			grant.Result, gen = store.LeaseAcquired, gen+1
		}
		err = tx.QueryRow(ctx, `
			UPDATE run_leases SET state = 'held', owner = $2, generation = $3,
				expires_at = clock_timestamp() + $4 * interval '1 microsecond', heartbeat_at = clock_timestamp(),
				acquired_at = CASE WHEN $5 THEN acquired_at ELSE clock_timestamp() END
			WHERE run_id = $1 RETURNING expires_at`,
			runID, owner, gen, us, grant.Result == store.LeaseRenewed).Scan(&exp)
		if err != nil {
			return err
		}
		grant.Lease = store.Lease{RunID: runID, Owner: owner, Generation: gen, ExpiresAt: exp.UTC()}
		return nil
	})
	if err != nil {
		// On ErrLeaseHeld the grant describes the holder (result "held").
		return grant, fmt.Errorf("postgres: acquire lease of %s for %s: %w", runID, owner, err)
	}
	return grant, nil
}

// RenewLease implements store.Store. A lease that expired but was neither
// stolen, reclaimed nor released can still be renewed: nobody else acted on
// it, and the row lock orders a late renew against a reclaiming janitor.
func (s *Store) RenewLease(ctx context.Context, l store.Lease, ttl time.Duration) (store.Lease, error) {
	us, err := ttlMicros(ttl)
	if err != nil {
		return store.Lease{}, fmt.Errorf("postgres: renew lease of %s: %w", l.RunID, err)
	}
	if !storable(l.RunID) || !storable(l.Owner) {
		return store.Lease{}, fmt.Errorf("postgres: renew lease of %q: %w", l.RunID, store.ErrFenced)
	}
	var exp time.Time
	err = s.pool.QueryRow(ctx, `
		UPDATE run_leases SET expires_at = clock_timestamp() + $4 * interval '1 microsecond', heartbeat_at = clock_timestamp()
		WHERE run_id = $1 AND owner = $2 AND generation = $3 AND state = 'held'
		RETURNING expires_at`, l.RunID, l.Owner, l.Generation, us).Scan(&exp)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Lease{}, fmt.Errorf("postgres: renew lease of %s for %s/%d: %w", l.RunID, l.Owner, l.Generation, store.ErrFenced)
	}
	if err != nil {
		return store.Lease{}, fmt.Errorf("postgres: renew lease of %s: %w", l.RunID, err)
	}
	l.ExpiresAt = exp.UTC()
	return l, nil
}

// ReleaseLease implements store.Store.
func (s *Store) ReleaseLease(ctx context.Context, l store.Lease) error {
	if !storable(l.RunID) || !storable(l.Owner) {
		return nil // such a lease cannot exist
	}
	_, err := s.pool.Exec(ctx, `
		UPDATE run_leases SET state = 'released', expires_at = clock_timestamp()
		WHERE run_id = $1 AND owner = $2 AND generation = $3 AND state = 'held'`,
		l.RunID, l.Owner, l.Generation)
	if err != nil {
		return fmt.Errorf("postgres: release lease of %s: %w", l.RunID, err)
	}
	return nil
}

// ClaimRunnable implements store.Store. The candidate lease rows are locked
// FOR UPDATE SKIP LOCKED, so replicas claiming at the same time take
// disjoint runs instead of queueing behind each other.
func (s *Store) ClaimRunnable(ctx context.Context, owner string, ttl time.Duration, limit int) ([]store.LeaseGrant, error) {
	us, err := leaseArgs(owner, ttl)
	if err != nil {
		return nil, fmt.Errorf("postgres: claim runnable: %w", err)
	}
	if limit <= 0 {
		return nil, nil
	}
	// The claim also returns each run's row and first pending frame, so
	// that the executor starts without reading them again.
	rows, err := s.pool.Query(ctx, `
		WITH cand AS (
			SELECT l.run_id, l.state AS prev_state
			FROM run_leases l JOIN runs r ON r.run_id = l.run_id
			WHERE l.state <> 'held'
			  AND r.status IN `+nonTerminal+`
			  AND (r.status = 'canceling' OR EXISTS (
			      SELECT 1 FROM frames f WHERE f.run_id = r.run_id AND f.id > r.last_processed_frame_id))
			ORDER BY r.updated_at, r.run_id
			LIMIT $2
			FOR UPDATE OF l SKIP LOCKED
		)
		UPDATE run_leases l SET state = 'held', owner = $1, generation = l.generation + 1,
			expires_at = clock_timestamp() + $3 * interval '1 microsecond', heartbeat_at = clock_timestamp(), acquired_at = clock_timestamp()
		FROM cand JOIN runs r ON r.run_id = cand.run_id
			LEFT JOIN LATERAL (
				SELECT `+frameCols+` FROM frames
				WHERE frames.run_id = r.run_id AND frames.id > r.last_processed_frame_id
				ORDER BY frames.id LIMIT 1) nf ON true
		WHERE l.run_id = cand.run_id
		RETURNING l.run_id, l.owner, l.generation, l.expires_at, cand.prev_state = 'reclaimed', `+
		qualify("r", runCols)+`, `+qualify("nf", frameCols), owner, limit, us)
	if err != nil {
		return nil, fmt.Errorf("postgres: claim runnable for %s: %w", owner, err)
	}
	grants, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.LeaseGrant, error) {
		var (
			g      store.LeaseGrant
			stolen bool
			run    runScanner
			next   nullFrameScanner
		)
		dest := append([]any{&g.Lease.RunID, &g.Lease.Owner, &g.Lease.Generation, &g.Lease.ExpiresAt, &stolen}, run.dest()...)
		if err := r.Scan(append(dest, next.dest()...)...); err != nil {
			return g, err
		}
		g.Lease.ExpiresAt = g.Lease.ExpiresAt.UTC()
		g.Result = store.LeaseAcquired
		if stolen {
			g.Result = store.LeaseStolen
		}
		rr := run.run()
		g.Run, g.Next = &rr, next.frame()
		return g, nil
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: claim runnable for %s: %w", owner, err)
	}
	return grants, nil
}

// ReclaimExpired implements store.Store. Each run is reclaimed in its own
// transaction that re-checks the expiry under FOR UPDATE SKIP LOCKED, so
// janitors of several replicas never reclaim one expiry twice and never wait
// on each other or on a busy run.
func (s *Store) ReclaimExpired(ctx context.Context, now time.Time, maxAttempts, limit int) ([]store.Reclaim, error) {
	if limit <= 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `
		SELECT l.run_id FROM run_leases l JOIN runs r ON r.run_id = l.run_id
		WHERE l.state = 'held' AND l.expires_at < $1 AND r.status IN `+nonTerminal+`
		ORDER BY l.expires_at, l.run_id LIMIT $2`, now, limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: reclaim expired: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("postgres: reclaim expired: %w", err)
	}
	var out []store.Reclaim
	for _, id := range ids {
		var (
			rec store.Reclaim
			ok  bool
			seq int64
		)
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			var err error
			rec, ok, seq, err = s.reclaimTx(ctx, tx, id, now, maxAttempts)
			return err
		})
		if err != nil {
			return out, fmt.Errorf("postgres: reclaim run %s: %w", id, err)
		}
		if ok {
			out = append(out, rec)
			s.heads.forget(id)
			s.notes.publish(store.Notice{Kind: store.NoticeEvent, RunID: id, Seq: seq})
		}
	}
	return out, nil
}

// reclaimTx reclaims one expired lease inside tx; seq is the last event it
// appended (the caller publishes its notice once tx committed).
func (s *Store) reclaimTx(ctx context.Context, tx pgx.Tx, runID string, now time.Time, maxAttempts int) (rec store.Reclaim, ok bool, seq int64, err error) {
	var (
		owner             string
		expires           time.Time
		attempts          int
		progress, lostSeq int64
	)
	err = tx.QueryRow(ctx, `
		SELECT l.owner, l.expires_at, r.recovery_attempts, l.last_progress_seq, l.lost_event_seq
		FROM runs r JOIN run_leases l ON l.run_id = r.run_id
		WHERE r.run_id = $1 AND l.state = 'held' AND l.expires_at < $2 AND r.status IN `+nonTerminal+`
		FOR UPDATE OF r, l SKIP LOCKED`, runID, now).Scan(&owner, &expires, &attempts, &progress, &lostSeq)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Reclaim{}, false, 0, nil // taken by another janitor, renewed, or finished meanwhile
	}
	if err != nil {
		return store.Reclaim{}, false, 0, fmt.Errorf("lock expired lease: %w", err)
	}
	attempts++
	if progress > lostSeq {
		attempts = 1 // the executor appended since the previous reclaim
	}
	payload, err := runs.Canonical(map[string]any{
		"lease_owner":       owner,
		"lease_expires_at":  formatTime(expires),
		"detected_at":       formatTime(now),
		"last_progress_seq": progress,
	})
	if err != nil {
		return store.Reclaim{}, false, 0, err
	}
	lost, _, _, err := s.appendTx(ctx, tx, store.AppendInput{RunID: runID, EventType: "run.executor_lost", Payload: payload})
	if err != nil {
		return store.Reclaim{}, false, 0, fmt.Errorf("append run.executor_lost: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE run_leases SET state = 'reclaimed', lost_event_seq = $2 WHERE run_id = $1`,
		runID, lost.Seq); err != nil {
		return store.Reclaim{}, false, 0, fmt.Errorf("mark lease reclaimed: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE runs SET recovery_attempts = $2, last_recovery_at = $3 WHERE run_id = $1`,
		runID, attempts, now); err != nil {
		return store.Reclaim{}, false, 0, fmt.Errorf("count recovery: %w", err)
	}
	rec = store.Reclaim{RunID: runID, Owner: owner, Attempts: attempts, Outcome: store.ReclaimResumed}
	seq = lost.Seq
	if attempts > maxAttempts {
		fin, err := runs.Canonical(map[string]any{
			"status":       store.StatusFailed,
			"reason_class": "executor_recovery_exhausted",
			"reason":       "janitor recovery attempts exceeded",
			"attempts":     attempts,
		})
		if err != nil {
			return store.Reclaim{}, false, 0, err
		}
		fev, _, _, err := s.appendTx(ctx, tx, store.AppendInput{RunID: runID, EventType: "run.finished", Payload: fin})
		if err != nil {
			return store.Reclaim{}, false, 0, fmt.Errorf("append run.finished: %w", err)
		}
		seq = fev.Seq
		rec.Outcome = store.ReclaimExhausted
	}
	return rec, true, seq, nil
}
