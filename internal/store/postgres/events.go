package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

const eventCols = `run_id, seq, event_type, payload, prev_hash, event_hash,
	COALESCE(idempotency_key, ''), traceparent, tracestate, request_id, created_at`

// scanEvent scans eventCols, then into more the columns a query selects
// after them.
func scanEvent(row pgx.Row, more ...any) (store.Event, error) {
	var e store.Event
	var payload []byte
	err := row.Scan(append([]any{&e.RunID, &e.Seq, &e.EventType, &payload, &e.PrevHash, &e.EventHash,
		&e.IdempotencyKey, &e.Trace.TraceParent, &e.Trace.TraceState, &e.Trace.RequestID, &e.CreatedAt}, more...)...)
	if err != nil {
		return store.Event{}, err
	}
	e.Payload = json.RawMessage(payload)
	e.CreatedAt = e.CreatedAt.UTC()
	return e, nil
}

// writeTx runs fn in a transaction and, once it committed, sends the
// notices fn noted through the notifier: listeners never see a notice of an
// uncommitted write, and no write transaction holds PostgreSQL's NOTIFY
// commit lock.
func (s *Store) writeTx(ctx context.Context, fn func(tx pgx.Tx, note func(store.Notice)) error) error {
	var notices []store.Notice
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		notices = notices[:0]
		return fn(tx, func(n store.Notice) { notices = append(notices, n) })
	})
	if err == nil && len(notices) > 0 {
		s.notes.publish(notices...)
	}
	return err
}

// AppendEvent implements store.Store.
func (s *Store) AppendEvent(ctx context.Context, in store.AppendInput) (store.Event, bool, error) {
	res, err := s.appendEvents(ctx, []store.AppendInput{in})
	if err != nil {
		return store.Event{}, false, err
	}
	return res[0].Event, res[0].Replay, nil
}

// AppendEvents implements store.Store.
func (s *Store) AppendEvents(ctx context.Context, in []store.AppendInput) ([]store.AppendResult, error) {
	if err := store.CheckSameRun(in); err != nil {
		return nil, fmt.Errorf("postgres: append events: %w", err)
	}
	return s.appendEvents(ctx, in)
}

// appendEvents appends in (one run's events) in one transaction: in one
// call of oa_append_fast each from the remembered head, or else through
// appendTx, which decides every replay and refusal.
func (s *Store) appendEvents(ctx context.Context, in []store.AppendInput) ([]store.AppendResult, error) {
	if evs, done, err := s.appendFastMany(ctx, in); done {
		if err != nil {
			return nil, err
		}
		out := make([]store.AppendResult, len(evs))
		for i, ev := range evs {
			out[i] = store.AppendResult{Event: ev}
		}
		return out, nil
	}
	var (
		out    []store.AppendResult
		status string
	)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		out = out[:0]
		for _, x := range in {
			ev, replay, st, err := s.appendTx(ctx, tx, x)
			if err != nil {
				if len(in) > 1 {
					err = fmt.Errorf("%s: %w", strings.TrimSpace(x.EventType), err)
				}
				return err
			}
			out = append(out, store.AppendResult{Event: ev, Replay: replay})
			if !replay {
				status = st
			}
		}
		return nil
	})
	runID := in[0].RunID
	if err != nil {
		s.heads.forget(runID)
		return nil, fmt.Errorf("postgres: append %s to run %s: %w", store.EventTypes(in), runID, err)
	}
	var notices []store.Notice
	var last *store.Event
	for i := range out {
		if !out[i].Replay {
			last = &out[i].Event
			notices = append(notices, store.Notice{Kind: store.NoticeEvent, RunID: runID, Seq: last.Seq, Leased: in[i].Fence != nil})
		}
	}
	if last != nil {
		s.heads.put(runID, head{seq: last.Seq, hash: last.EventHash, status: status})
		s.notes.publish(notices...)
	}
	return out, nil
}

// appendTx performs one append inside tx, in the order the contract fixes:
// idempotency replay, fence, expected seq, state machine, insert, run update.
// It also returns the run's status after the append. The caller publishes
// the notice once tx committed.
func (s *Store) appendTx(ctx context.Context, tx pgx.Tx, in store.AppendInput) (store.Event, bool, string, error) {
	eventType := strings.TrimSpace(in.EventType)
	if eventType == "" {
		return store.Event{}, false, "", errors.New("event_type is required")
	}
	key := strings.TrimSpace(in.IdempotencyKey)
	if !storable(in.RunID) {
		return store.Event{}, false, "", store.ErrNotFound
	}
	if err := checkText("event_type", eventType, "idempotency_key", key, "traceparent", in.Trace.TraceParent,
		"tracestate", in.Trace.TraceState, "request_id", in.Trace.RequestID); err != nil {
		return store.Event{}, false, "", err
	}
	if in.Fence != nil {
		if err := checkText("fence owner", in.Fence.Owner); err != nil {
			return store.Event{}, false, "", fmt.Errorf("%w: %v", store.ErrFenced, err)
		}
	}
	payload, err := runs.CanonicalizeRaw(in.Payload)
	if err != nil {
		return store.Event{}, false, "", fmt.Errorf("payload: %w", err)
	}

	// The row lock serializes appends of one run: seq = latest_seq+1 is
	// then gap-free and head_hash is the true predecessor. NO KEY UPDATE
	// leaves FK checks of concurrent frame and lease writes unblocked.
	var (
		status   string
		latest   int64
		headHash string
	)
	err = tx.QueryRow(ctx,
		`SELECT status, latest_seq, head_hash FROM runs WHERE run_id = $1 FOR NO KEY UPDATE`,
		in.RunID).Scan(&status, &latest, &headHash)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Event{}, false, "", store.ErrNotFound
	}
	if err != nil {
		return store.Event{}, false, "", fmt.Errorf("lock run: %w", err)
	}

	if key != "" {
		prev, err := scanEvent(tx.QueryRow(ctx,
			`SELECT `+eventCols+` FROM run_events WHERE run_id = $1 AND idempotency_key = $2`, in.RunID, key))
		if err == nil {
			return prev, true, "", nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return store.Event{}, false, "", fmt.Errorf("idempotency lookup: %w", err)
		}
	}

	if in.Fence != nil {
		if err := checkFence(ctx, tx, in.RunID, *in.Fence); err != nil {
			return store.Event{}, false, "", err
		}
	}

	if in.ExpectedPreviousSeq != nil && *in.ExpectedPreviousSeq != latest {
		return store.Event{}, false, "", fmt.Errorf("%w: expected previous seq %d, latest is %d",
			store.ErrSeqConflict, *in.ExpectedPreviousSeq, latest)
	}

	out, err := runs.Transition(status, eventType, payload)
	if err != nil {
		return store.Event{}, false, "", transitionError{err}
	}
	if out.Idempotent {
		prev, err := scanEvent(tx.QueryRow(ctx, `SELECT `+eventCols+` FROM run_events
			WHERE run_id = $1 AND event_type = 'run.finished' ORDER BY seq DESC LIMIT 1`, in.RunID))
		if err == nil {
			return prev, true, "", nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return store.Event{}, false, "", fmt.Errorf("read run.finished: %w", err)
		}
		// The original was pruned: nothing to replay, so record the repeat.
	}

	seq := latest + 1
	hash := runs.EventHash(in.RunID, seq, eventType, payload, headHash)
	var keyParam any
	if key != "" {
		keyParam = key
	}
	ev, err := scanEvent(tx.QueryRow(ctx, `
		INSERT INTO run_events (run_id, seq, event_type, payload, prev_hash, event_hash,
			idempotency_key, traceparent, tracestate, request_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
		RETURNING `+eventCols,
		in.RunID, seq, eventType, string(payload), headHash, hash,
		keyParam, in.Trace.TraceParent, in.Trace.TraceState, in.Trace.RequestID))
	if err != nil {
		return store.Event{}, false, "", fmt.Errorf("insert event: %w", err)
	}

	_, err = tx.Exec(ctx, `
		UPDATE runs SET
			latest_seq = $2,
			head_hash = $3,
			status = $4,
			terminal_reason_class = CASE WHEN $5 THEN $6 ELSE terminal_reason_class END,
			terminal_reason       = CASE WHEN $5 THEN $7 ELSE terminal_reason END,
			terminal_at           = CASE WHEN $5 THEN now() ELSE terminal_at END,
			last_processed_frame_id = GREATEST(last_processed_frame_id, $8),
			updated_at = now()
		WHERE run_id = $1`,
		in.RunID, seq, hash, out.Status, out.Terminal && !out.Idempotent, out.ReasonClass, out.Reason, in.ProcessedFrameID)
	if err != nil {
		return store.Event{}, false, "", fmt.Errorf("update run: %w", err)
	}
	if in.Fence != nil {
		// The holder's own append is the progress the janitor looks for.
		if _, err := tx.Exec(ctx, `UPDATE run_leases SET last_progress_seq = $2, heartbeat_at = now() WHERE run_id = $1`,
			in.RunID, seq); err != nil {
			return store.Event{}, false, "", fmt.Errorf("mark progress: %w", err)
		}
	}
	if out.Terminal && !out.Idempotent {
		// A finished run needs no executor: its lease is released with
		// the event that finished it, whoever appended it.
		if _, err := tx.Exec(ctx, `UPDATE run_leases SET state = 'released', expires_at = clock_timestamp()
			WHERE run_id = $1 AND state = 'held'`, in.RunID); err != nil {
			return store.Event{}, false, "", fmt.Errorf("release lease of the finished run: %w", err)
		}
	}
	return ev, false, out.Status, nil
}

// transitionError keeps the state machine's message and matches both
// store.ErrIllegalTransition and runs.ErrIllegalTransition.
type transitionError struct{ err error }

func (e transitionError) Error() string        { return e.err.Error() }
func (e transitionError) Unwrap() error        { return e.err }
func (e transitionError) Is(target error) bool { return target == store.ErrIllegalTransition }

// checkFence accepts the write only while (owner, generation) holds a live,
// unreclaimed lease. Locking the lease row makes a concurrent steal or
// reclaim wait for this append (or this append see the new generation), so a
// fenced write can never commit after its lease was taken over. NO KEY
// UPDATE rather than SHARE because the append then records progress on it.
// clock_timestamp() because now() is frozen at the start of a transaction
// that may have waited for the run's row lock.
func checkFence(ctx context.Context, tx pgx.Tx, runID string, f store.Fence) error {
	var (
		state, owner string
		gen          int64
		live         bool
	)
	err := tx.QueryRow(ctx, `
		SELECT state, owner, generation, COALESCE(expires_at > clock_timestamp(), false)
		FROM run_leases WHERE run_id = $1 FOR NO KEY UPDATE`, runID).Scan(&state, &owner, &gen, &live)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: run has no lease", store.ErrFenced)
	}
	if err != nil {
		return fmt.Errorf("read lease: %w", err)
	}
	if state != leaseHeld || owner != f.Owner || gen != f.Generation || !live {
		return fmt.Errorf("%w: fence %s/%d, lease is %s by %q generation %d (live=%t)",
			store.ErrFenced, f.Owner, f.Generation, state, owner, gen, live)
	}
	return nil
}

// defaultListLimit applies when ListEvents gets limit <= 0.
const defaultListLimit = 100

// ListEvents implements store.Store. A limit <= 0 means 100.
func (s *Store) ListEvents(ctx context.Context, runID string, afterSeq int64, limit int) ([]store.Event, error) {
	if limit <= 0 {
		limit = defaultListLimit
	}
	if !storable(runID) {
		return nil, fmt.Errorf("postgres: list events of %q: %w", runID, store.ErrNotFound)
	}
	rows, err := s.pool.Query(ctx, `SELECT `+eventCols+` FROM run_events
		WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`, runID, afterSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("postgres: list events of %s: %w", runID, err)
	}
	evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.Event, error) { return scanEvent(r) })
	if err != nil {
		return nil, fmt.Errorf("postgres: list events of %s: %w", runID, err)
	}
	if len(evs) == 0 {
		if _, err := s.GetRun(ctx, runID); err != nil {
			return nil, fmt.Errorf("postgres: list events: %w", err)
		}
	}
	return evs, nil
}

// FindEventByType implements store.Store.
func (s *Store) FindEventByType(ctx context.Context, runID, eventType string) (store.Event, error) {
	if !storable(runID) || !storable(eventType) {
		return store.Event{}, fmt.Errorf("postgres: find %q event of %q: %w", eventType, runID, store.ErrNotFound)
	}
	ev, err := scanEvent(s.pool.QueryRow(ctx, `SELECT `+eventCols+` FROM run_events
		WHERE run_id = $1 AND event_type = $2 ORDER BY seq DESC LIMIT 1`, runID, eventType))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Event{}, fmt.Errorf("postgres: find %s event of %s: %w", eventType, runID, store.ErrNotFound)
	}
	if err != nil {
		return store.Event{}, fmt.Errorf("postgres: find %s event of %s: %w", eventType, runID, err)
	}
	return ev, nil
}

// PruneEvents implements store.Store. The floor never moves backwards nor
// past the run's latest seq; the chain head lives on the run row, so later
// appends still link to the pruned predecessor.
func (s *Store) PruneEvents(ctx context.Context, runID string, throughSeq int64) error {
	if !storable(runID) {
		return fmt.Errorf("postgres: prune events of %q: %w", runID, store.ErrNotFound)
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var floor int64
		err := tx.QueryRow(ctx, `
			UPDATE runs SET retention_floor_seq = GREATEST(retention_floor_seq, LEAST($2::bigint, latest_seq))
			WHERE run_id = $1 RETURNING retention_floor_seq`, runID, throughSeq).Scan(&floor)
		if errors.Is(err, pgx.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM run_events WHERE run_id = $1 AND seq <= $2`, runID, floor)
		return err
	})
	if err != nil {
		return fmt.Errorf("postgres: prune events of %s through %d: %w", runID, throughSeq, err)
	}
	return nil
}

// payloadTSLayout renders timestamps in event payloads exactly as the SQLite
// driver does (fixed-width UTC, microseconds), so logs read the same on both.
const payloadTSLayout = "2006-01-02T15:04:05.000000Z"

func formatTime(t time.Time) string { return t.UTC().Format(payloadTSLayout) }
