package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

const frameColumns = `id, run_id, frame_id, frame_type, payload, payload_hash,
	traceparent, tracestate, request_id, created_at`

func scanFrame(row rowScanner) (store.Frame, error) {
	var (
		f         store.Frame
		payload   string
		createdAt string
	)
	err := row.Scan(&f.ID, &f.RunID, &f.FrameID, &f.Type, &payload, &f.PayloadHash,
		&f.Trace.TraceParent, &f.Trace.TraceState, &f.Trace.RequestID, &createdAt)
	if err != nil {
		return store.Frame{}, err
	}
	f.Payload = []byte(payload)
	if f.CreatedAt, err = parseTS(createdAt); err != nil {
		return store.Frame{}, err
	}
	return f, nil
}

// InsertFrame implements store.Store.
func (s *Store) InsertFrame(ctx context.Context, in store.InsertFrameInput) (store.Frame, bool, error) {
	if in.FrameID == "" {
		return store.Frame{}, false, errors.New("sqlite: insert frame: frame_id is required")
	}
	if in.Type == "" {
		return store.Frame{}, false, errors.New("sqlite: insert frame: type is required")
	}
	payload, err := runs.CanonicalizeRaw(in.Payload)
	if err != nil {
		return store.Frame{}, false, fmt.Errorf("sqlite: insert frame %s/%s: payload: %w", in.RunID, in.FrameID, err)
	}
	hash := runs.PayloadHash(payload)

	var (
		frame    store.Frame
		inserted bool
	)
	err = s.write(ctx, func(tx *sql.Tx, notify func(store.Notice)) error {
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM runs WHERE run_id = ?`, in.RunID).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("sqlite: insert frame %s/%s: run: %w", in.RunID, in.FrameID, store.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("sqlite: insert frame %s/%s: %w", in.RunID, in.FrameID, err)
		}
		existing, err := scanFrame(tx.QueryRowContext(ctx,
			`SELECT `+frameColumns+` FROM frames WHERE run_id = ? AND frame_id = ?`, in.RunID, in.FrameID))
		switch {
		case err == nil:
			if existing.Type != in.Type || existing.PayloadHash != hash {
				return fmt.Errorf("sqlite: insert frame %s/%s: exists with another type or payload: %w",
					in.RunID, in.FrameID, store.ErrConflict)
			}
			frame = existing
			return nil
		case !errors.Is(err, sql.ErrNoRows):
			return fmt.Errorf("sqlite: insert frame %s/%s: %w", in.RunID, in.FrameID, err)
		}
		frame, err = scanFrame(tx.QueryRowContext(ctx, `INSERT INTO frames
			(run_id, frame_id, frame_type, payload, payload_hash, traceparent, tracestate, request_id, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING `+frameColumns,
			in.RunID, in.FrameID, in.Type, string(payload), hash,
			in.Trace.TraceParent, in.Trace.TraceState, in.Trace.RequestID, formatTS(s.now())))
		if err != nil {
			return fmt.Errorf("sqlite: insert frame %s/%s: %w", in.RunID, in.FrameID, err)
		}
		inserted = true
		notify(store.Notice{Kind: store.NoticeFrame, RunID: in.RunID})
		return nil
	})
	if err != nil {
		return store.Frame{}, false, err
	}
	return frame, inserted, nil
}

// NextFrame implements store.Store.
func (s *Store) NextFrame(ctx context.Context, runID string, afterID int64) (store.Frame, error) {
	f, err := scanFrame(s.reader.QueryRowContext(ctx,
		`SELECT `+frameColumns+` FROM frames WHERE run_id = ? AND id > ? ORDER BY id LIMIT 1`, runID, afterID))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Frame{}, fmt.Errorf("sqlite: next frame of %s after %d: %w", runID, afterID, store.ErrNotFound)
	}
	if err != nil {
		return store.Frame{}, fmt.Errorf("sqlite: next frame of %s after %d: %w", runID, afterID, err)
	}
	return f, nil
}
