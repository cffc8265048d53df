package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

const eventColumns = `run_id, seq, event_type, payload, prev_hash, event_hash, idempotency_key,
	traceparent, tracestate, request_id, created_at`

func scanEvent(row rowScanner) (store.Event, error) {
	var (
		e         store.Event
		payload   string
		createdAt string
	)
	err := row.Scan(&e.RunID, &e.Seq, &e.EventType, &payload, &e.PrevHash, &e.EventHash, &e.IdempotencyKey,
		&e.Trace.TraceParent, &e.Trace.TraceState, &e.Trace.RequestID, &createdAt)
	if err != nil {
		return store.Event{}, err
	}
	e.Payload = []byte(payload)
	if e.CreatedAt, err = parseTS(createdAt); err != nil {
		return store.Event{}, err
	}
	return e, nil
}

// transitionError carries the state machine's message and matches
// store.ErrIllegalTransition (runs cannot import store, so its sentinel is its own).
type transitionError struct{ err error }

func (e transitionError) Error() string        { return e.err.Error() }
func (e transitionError) Unwrap() error        { return e.err }
func (e transitionError) Is(target error) bool { return target == store.ErrIllegalTransition }

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
		return nil, fmt.Errorf("sqlite: append events: %w", err)
	}
	return s.appendEvents(ctx, in)
}

// appendEvents appends one run's events in one write transaction.
func (s *Store) appendEvents(ctx context.Context, in []store.AppendInput) ([]store.AppendResult, error) {
	out := make([]store.AppendResult, 0, len(in))
	err := s.write(ctx, func(tx *sql.Tx, notify func(store.Notice)) error {
		out = out[:0]
		for _, x := range in {
			ev, replay, err := s.appendTx(ctx, tx, x, notify)
			if err != nil {
				if len(in) > 1 {
					err = fmt.Errorf("%s: %w", strings.TrimSpace(x.EventType), err)
				}
				return err
			}
			out = append(out, store.AppendResult{Event: ev, Replay: replay})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("sqlite: append %s to run %s: %w", store.EventTypes(in), in[0].RunID, err)
	}
	return out, nil
}

// appendTx is the whole append inside the caller's write transaction, in the
// order the contract fixes: idempotency replay, fence, expected seq, state
// machine, chain, run row.
func (s *Store) appendTx(ctx context.Context, tx *sql.Tx, in store.AppendInput, notify func(store.Notice)) (store.Event, bool, error) {
	eventType := strings.TrimSpace(in.EventType)
	if eventType == "" {
		return store.Event{}, false, errors.New("event_type is required")
	}
	payload, err := runs.CanonicalizeRaw(in.Payload)
	if err != nil {
		return store.Event{}, false, fmt.Errorf("payload: %w", err)
	}
	key := strings.TrimSpace(in.IdempotencyKey)

	run, err := getRunTx(ctx, tx, in.RunID)
	if err != nil {
		return store.Event{}, false, err
	}

	if key != "" {
		ev, err := scanEvent(tx.QueryRowContext(ctx,
			`SELECT `+eventColumns+` FROM run_events WHERE run_id = ? AND idempotency_key = ?`, in.RunID, key))
		if err == nil {
			return ev, true, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return store.Event{}, false, err
		}
	}

	now := s.now()
	if in.Fence != nil {
		if err := checkFence(ctx, tx, in.RunID, *in.Fence, now); err != nil {
			return store.Event{}, false, err
		}
	}

	if in.ExpectedPreviousSeq != nil && *in.ExpectedPreviousSeq != run.LatestSeq {
		return store.Event{}, false, fmt.Errorf("expected previous seq %d, latest is %d: %w",
			*in.ExpectedPreviousSeq, run.LatestSeq, store.ErrSeqConflict)
	}

	out, err := runs.Transition(run.Status, eventType, payload)
	if err != nil {
		return store.Event{}, false, transitionError{err}
	}
	if out.Idempotent {
		ev, err := scanEvent(tx.QueryRowContext(ctx, `SELECT `+eventColumns+` FROM run_events
			WHERE run_id = ? AND event_type = 'run.finished' ORDER BY seq DESC LIMIT 1`, in.RunID))
		if err == nil {
			return ev, true, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return store.Event{}, false, err
		}
		// The original was pruned: nothing to replay, so record the repeat.
	}

	var head string
	if err := tx.QueryRowContext(ctx, `SELECT head_hash FROM runs WHERE run_id = ?`, in.RunID).Scan(&head); err != nil {
		return store.Event{}, false, err
	}
	seq := run.LatestSeq + 1
	ev := store.Event{
		RunID:          in.RunID,
		Seq:            seq,
		EventType:      eventType,
		Payload:        payload,
		PrevHash:       head,
		EventHash:      runs.EventHash(in.RunID, seq, eventType, payload, head),
		IdempotencyKey: key,
		Trace:          in.Trace,
		CreatedAt:      now,
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO run_events
		(run_id, seq, event_type, payload, prev_hash, event_hash, idempotency_key,
		 traceparent, tracestate, request_id, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		ev.RunID, ev.Seq, ev.EventType, string(ev.Payload), ev.PrevHash, ev.EventHash, ev.IdempotencyKey,
		ev.Trace.TraceParent, ev.Trace.TraceState, ev.Trace.RequestID, formatTS(now))
	if err != nil {
		return store.Event{}, false, fmt.Errorf("insert event: %w", err)
	}

	ts := formatTS(now)
	if out.Terminal && !out.Idempotent {
		_, err = tx.ExecContext(ctx, `UPDATE runs SET latest_seq = ?, head_hash = ?, status = ?,
			terminal_reason_class = ?, terminal_reason = ?, terminal_at = ?,
			last_processed_frame_id = MAX(last_processed_frame_id, ?), updated_at = ?
			WHERE run_id = ?`,
			seq, ev.EventHash, out.Status, out.ReasonClass, out.Reason, ts, in.ProcessedFrameID, ts, in.RunID)
	} else {
		_, err = tx.ExecContext(ctx, `UPDATE runs SET latest_seq = ?, head_hash = ?, status = ?,
			last_processed_frame_id = MAX(last_processed_frame_id, ?), updated_at = ?
			WHERE run_id = ?`,
			seq, ev.EventHash, out.Status, in.ProcessedFrameID, ts, in.RunID)
	}
	if err != nil {
		return store.Event{}, false, fmt.Errorf("update run: %w", err)
	}
	if in.Fence != nil {
		// The holder's own append is the progress the janitor looks for.
		_, err = tx.ExecContext(ctx, `UPDATE run_leases SET last_progress_seq = ?, heartbeat_at = ? WHERE run_id = ?`,
			seq, ts, in.RunID)
		if err != nil {
			return store.Event{}, false, fmt.Errorf("mark progress: %w", err)
		}
	}
	if out.Terminal && !out.Idempotent {
		// A finished run needs no executor: its lease is released with
		// the event that finished it, whoever appended it.
		_, err = tx.ExecContext(ctx, `UPDATE run_leases SET released = 1, expires_at = ?, heartbeat_at = ?
			WHERE run_id = ? AND released = 0 AND reclaimed = 0`, ts, ts, in.RunID)
		if err != nil {
			return store.Event{}, false, fmt.Errorf("release lease of the finished run: %w", err)
		}
	}
	notify(store.Notice{Kind: store.NoticeEvent, RunID: in.RunID, Seq: seq, Leased: in.Fence != nil})
	return ev, false, nil
}

// checkFence accepts a write only from the current, live, unreleased and
// unreclaimed holder.
func checkFence(ctx context.Context, tx *sql.Tx, runID string, f store.Fence, now time.Time) error {
	var (
		owner               string
		gen                 int64
		expires             string
		released, reclaimed bool
	)
	err := tx.QueryRowContext(ctx, `SELECT owner, generation, expires_at, released, reclaimed
		FROM run_leases WHERE run_id = ?`, runID).Scan(&owner, &gen, &expires, &released, &reclaimed)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("fence %s/%d: run has no lease: %w", f.Owner, f.Generation, store.ErrFenced)
	}
	if err != nil {
		return fmt.Errorf("fence: %w", err)
	}
	exp, err := parseTS(expires)
	if err != nil {
		return err
	}
	switch {
	case owner != f.Owner || gen != f.Generation:
		return fmt.Errorf("fence %s/%d: lease now held by %s/%d: %w", f.Owner, f.Generation, owner, gen, store.ErrFenced)
	case released:
		return fmt.Errorf("fence %s/%d: lease was released: %w", f.Owner, f.Generation, store.ErrFenced)
	case reclaimed:
		return fmt.Errorf("fence %s/%d: lease was reclaimed: %w", f.Owner, f.Generation, store.ErrFenced)
	case !exp.After(now):
		return fmt.Errorf("fence %s/%d: lease expired at %s: %w", f.Owner, f.Generation, expires, store.ErrFenced)
	}
	return nil
}

// ListEvents implements store.Store. limit <= 0 means 100.
func (s *Store) ListEvents(ctx context.Context, runID string, afterSeq int64, limit int) ([]store.Event, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.reader.QueryContext(ctx, `SELECT `+eventColumns+` FROM run_events
		WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?`, runID, afterSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlite: list events of %s: %w", runID, err)
	}
	defer rows.Close()
	var out []store.Event
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, fmt.Errorf("sqlite: list events of %s: %w", runID, err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlite: list events of %s: %w", runID, err)
	}
	if len(out) == 0 {
		// Distinguish "nothing new" from "no such run" only when it matters.
		if _, err := s.GetRun(ctx, runID); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// FindEventByType implements store.Store.
func (s *Store) FindEventByType(ctx context.Context, runID, eventType string) (store.Event, error) {
	e, err := scanEvent(s.reader.QueryRowContext(ctx, `SELECT `+eventColumns+` FROM run_events
		WHERE run_id = ? AND event_type = ? ORDER BY seq DESC LIMIT 1`, runID, eventType))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Event{}, fmt.Errorf("sqlite: find %s event of %s: %w", eventType, runID, store.ErrNotFound)
	}
	if err != nil {
		return store.Event{}, fmt.Errorf("sqlite: find %s event of %s: %w", eventType, runID, err)
	}
	return e, nil
}

// PruneEvents implements store.Store. throughSeq is clamped to the run's
// latest seq; the floor never goes down.
func (s *Store) PruneEvents(ctx context.Context, runID string, throughSeq int64) error {
	return s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		run, err := getRunTx(ctx, tx, runID)
		if err != nil {
			return fmt.Errorf("sqlite: prune events: %w", err)
		}
		through := min(throughSeq, run.LatestSeq)
		if through <= run.RetentionFloorSeq {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM run_events WHERE run_id = ? AND seq <= ?`, runID, through); err != nil {
			return fmt.Errorf("sqlite: prune events of %s: %w", runID, err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE runs SET retention_floor_seq = ? WHERE run_id = ?`, through, runID); err != nil {
			return fmt.Errorf("sqlite: prune events of %s: %w", runID, err)
		}
		return nil
	})
}
