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
	nf, err := newFrame(in)
	if err != nil {
		return store.Frame{}, false, err
	}
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
		frame, inserted, err = s.insertFrameTx(ctx, tx, notify, nf)
		return err
	})
	if err != nil {
		return store.Frame{}, false, err
	}
	return frame, inserted, nil
}

// validFrame is an InsertFrameInput checked, its payload canonical.
type validFrame struct {
	in            store.InsertFrameInput
	payload, hash string
}

func newFrame(in store.InsertFrameInput) (validFrame, error) {
	if in.FrameID == "" {
		return validFrame{}, errors.New("sqlite: insert frame: frame_id is required")
	}
	if in.Type == "" {
		return validFrame{}, errors.New("sqlite: insert frame: type is required")
	}
	payload, err := runs.CanonicalizeRaw(in.Payload)
	if err != nil {
		return validFrame{}, fmt.Errorf("sqlite: insert frame %s/%s: payload: %w", in.RunID, in.FrameID, err)
	}
	return validFrame{in: in, payload: string(payload), hash: runs.PayloadHash(payload)}, nil
}

// insertFrameTx inserts f into its run (which exists) inside tx, or finds
// the same frame stored before (a replay); the same frame id with another
// type or payload is ErrConflict.
func (s *Store) insertFrameTx(ctx context.Context, tx *sql.Tx, notify func(store.Notice), f validFrame) (store.Frame, bool, error) {
	in := f.in
	existing, err := scanFrame(tx.QueryRowContext(ctx,
		`SELECT `+frameColumns+` FROM frames WHERE run_id = ? AND frame_id = ?`, in.RunID, in.FrameID))
	switch {
	case err == nil:
		if existing.Type != in.Type || existing.PayloadHash != f.hash {
			return store.Frame{}, false, fmt.Errorf("sqlite: insert frame %s/%s: exists with another type or payload: %w",
				in.RunID, in.FrameID, store.ErrConflict)
		}
		return existing, false, nil
	case !errors.Is(err, sql.ErrNoRows):
		return store.Frame{}, false, fmt.Errorf("sqlite: insert frame %s/%s: %w", in.RunID, in.FrameID, err)
	}
	frame, err := scanFrame(tx.QueryRowContext(ctx, `INSERT INTO frames
		(run_id, frame_id, frame_type, payload, payload_hash, traceparent, tracestate, request_id, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING `+frameColumns,
		in.RunID, in.FrameID, in.Type, f.payload, f.hash,
		in.Trace.TraceParent, in.Trace.TraceState, in.Trace.RequestID, formatTS(s.now())))
	if err != nil {
		return store.Frame{}, false, fmt.Errorf("sqlite: insert frame %s/%s: %w", in.RunID, in.FrameID, err)
	}
	notify(store.Notice{Kind: store.NoticeFrame, RunID: in.RunID})
	return frame, true, nil
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
