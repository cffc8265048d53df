package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

const runColumns = `run_id, thread_id, owner_sub, status, latest_seq,
	provider_json, tools_json, authorization_json, output_schema_json, metadata_json,
	terminal_reason_class, terminal_reason, terminal_at,
	last_processed_frame_id, retention_floor_seq, recovery_attempts, last_recovery_at,
	created_at, updated_at`

type rowScanner interface{ Scan(dest ...any) error }

func scanRun(row rowScanner) (store.Run, error) {
	var (
		r                                   store.Run
		provider, tools, auth, schema, meta sql.NullString
		terminalAt, lastRecovery            sql.NullString
		createdAt, updatedAt                string
	)
	err := row.Scan(&r.RunID, &r.ThreadID, &r.OwnerSub, &r.Status, &r.LatestSeq,
		&provider, &tools, &auth, &schema, &meta,
		&r.TerminalReasonClass, &r.TerminalReason, &terminalAt,
		&r.LastProcessedFrameID, &r.RetentionFloorSeq, &r.RecoveryAttempts, &lastRecovery,
		&createdAt, &updatedAt)
	if err != nil {
		return store.Run{}, err
	}
	r.Provider, r.Tools, r.Authorization = rawOrNil(provider), rawOrNil(tools), rawOrNil(auth)
	r.OutputSchema, r.Metadata = rawOrNil(schema), rawOrNil(meta)
	if r.TerminalAt, err = parseNullTS(terminalAt); err != nil {
		return store.Run{}, err
	}
	if r.LastRecoveryAt, err = parseNullTS(lastRecovery); err != nil {
		return store.Run{}, err
	}
	if r.CreatedAt, err = parseTS(createdAt); err != nil {
		return store.Run{}, err
	}
	if r.UpdatedAt, err = parseTS(updatedAt); err != nil {
		return store.Run{}, err
	}
	return r, nil
}

func rawOrNil(s sql.NullString) json.RawMessage {
	if !s.Valid {
		return nil
	}
	return json.RawMessage(s.String)
}

// canonicalDoc canonicalizes an optional JSON document; absent and JSON null
// are both stored as SQL NULL so that they compare equal on a create replay.
func canonicalDoc(field string, raw json.RawMessage) (sql.NullString, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return sql.NullString{}, nil
	}
	c, err := runs.CanonicalizeRaw(t)
	if err != nil {
		return sql.NullString{}, fmt.Errorf("%s: %w", field, err)
	}
	return sql.NullString{String: string(c), Valid: true}, nil
}

// CreateRun implements store.Store.
func (s *Store) CreateRun(ctx context.Context, in store.CreateRunInput) (store.Run, bool, error) {
	g, created, err := s.createRun(ctx, in, "", 0)
	if err != nil {
		return store.Run{}, false, err
	}
	return *g.Run, created, nil
}

// CreateLeasedRun implements store.Store: a new run with input is always
// leased (one writer, one transaction).
func (s *Store) CreateLeasedRun(ctx context.Context, in store.CreateRunInput, owner string, ttl time.Duration) (store.LeaseGrant, bool, error) {
	if err := checkLeaseArgs(owner, ttl); err != nil {
		return store.LeaseGrant{}, false, fmt.Errorf("sqlite: create leased run %s: %w", in.RunID, err)
	}
	return s.createRun(ctx, in, owner, ttl)
}

// createRun creates in's run, leased to owner (unless "") when it is new
// and has input.
func (s *Store) createRun(ctx context.Context, in store.CreateRunInput, owner string, ttl time.Duration) (store.LeaseGrant, bool, error) {
	if in.RunID == "" {
		return store.LeaseGrant{}, false, errors.New("sqlite: create run: run_id is required")
	}
	if in.OwnerSub == "" {
		return store.LeaseGrant{}, false, errors.New("sqlite: create run: owner is required")
	}
	docs := make([]sql.NullString, 5)
	for i, d := range []struct {
		name string
		raw  json.RawMessage
	}{
		{"provider", in.Provider}, {"tools", in.Tools}, {"authorization", in.Authorization},
		{"output_schema", in.OutputSchema}, {"metadata", in.Metadata},
	} {
		c, err := canonicalDoc(d.name, d.raw)
		if err != nil {
			return store.LeaseGrant{}, false, fmt.Errorf("sqlite: create run %s: %w", in.RunID, err)
		}
		docs[i] = c
	}
	var input *validFrame
	if in.Input != nil {
		fin := *in.Input
		fin.RunID = in.RunID
		f, err := newFrame(fin)
		if err != nil {
			return store.LeaseGrant{}, false, fmt.Errorf("sqlite: create run %s: input: %w", in.RunID, err)
		}
		input = &f
	}

	var (
		g       store.LeaseGrant
		created bool
	)
	err := s.write(ctx, func(tx *sql.Tx, notify func(store.Notice)) error {
		run, isNew, err := s.createRunTx(ctx, tx, in, docs)
		if err != nil {
			return err
		}
		g, created = store.LeaseGrant{Run: &run}, isNew
		if input == nil {
			return nil
		}
		leased := isNew && owner != ""
		fr, _, err := s.insertFrameTx(ctx, tx, func(n store.Notice) {
			n.Leased = leased
			notify(n)
		}, *input)
		if err != nil || !leased {
			return err
		}
		// Born held, generation 1, as a claim would leave it.
		now := s.now()
		expires := now.Add(ttl).Truncate(time.Microsecond)
		if err := takeLeaseTx(ctx, tx, run.RunID, owner, 1, now, expires); err != nil {
			return err
		}
		g.Lease = store.Lease{RunID: run.RunID, Owner: owner, Generation: 1, ExpiresAt: expires}
		g.Result, g.Next = store.LeaseAcquired, &fr
		return nil
	})
	if err != nil {
		return store.LeaseGrant{}, false, err
	}
	return g, created, nil
}

// createRunTx inserts the run inside tx, or finds it stored before with the
// same fields (a replay); other fields are ErrConflict.
func (s *Store) createRunTx(ctx context.Context, tx *sql.Tx, in store.CreateRunInput, docs []sql.NullString) (store.Run, bool, error) {
	existing, err := scanRun(tx.QueryRowContext(ctx, `SELECT `+runColumns+` FROM runs WHERE run_id = ?`, in.RunID))
	switch {
	case err == nil:
		same := existing.ThreadID == in.ThreadID && existing.OwnerSub == in.OwnerSub
		for i, have := range []json.RawMessage{existing.Provider, existing.Tools, existing.Authorization, existing.OutputSchema, existing.Metadata} {
			same = same && (have == nil) == !docs[i].Valid && string(have) == docs[i].String
		}
		if !same {
			return store.Run{}, false, fmt.Errorf("sqlite: create run %s: exists with other fields: %w", in.RunID, store.ErrConflict)
		}
		return existing, false, nil
	case !errors.Is(err, sql.ErrNoRows):
		return store.Run{}, false, fmt.Errorf("sqlite: create run %s: %w", in.RunID, err)
	}
	now := formatTS(s.now())
	_, err = tx.ExecContext(ctx, `INSERT INTO runs (run_id, thread_id, owner_sub, status,
		provider_json, tools_json, authorization_json, output_schema_json, metadata_json,
		created_at, updated_at)
		VALUES (?, ?, ?, 'created', ?, ?, ?, ?, ?, ?, ?)`,
		in.RunID, in.ThreadID, in.OwnerSub, docs[0], docs[1], docs[2], docs[3], docs[4], now, now)
	if err != nil {
		return store.Run{}, false, fmt.Errorf("sqlite: create run %s: %w", in.RunID, err)
	}
	run, err := scanRun(tx.QueryRowContext(ctx, `SELECT `+runColumns+` FROM runs WHERE run_id = ?`, in.RunID))
	if err != nil {
		return store.Run{}, false, fmt.Errorf("sqlite: create run %s: read back: %w", in.RunID, err)
	}
	return run, true, nil
}

// GetRun implements store.Store.
func (s *Store) GetRun(ctx context.Context, runID string) (store.Run, error) {
	r, err := scanRun(s.reader.QueryRowContext(ctx, `SELECT `+runColumns+` FROM runs WHERE run_id = ?`, runID))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Run{}, fmt.Errorf("sqlite: get run %s: %w", runID, store.ErrNotFound)
	}
	if err != nil {
		return store.Run{}, fmt.Errorf("sqlite: get run %s: %w", runID, err)
	}
	return r, nil
}

// getRunTx reads a run inside a write transaction.
func getRunTx(ctx context.Context, tx *sql.Tx, runID string) (store.Run, error) {
	r, err := scanRun(tx.QueryRowContext(ctx, `SELECT `+runColumns+` FROM runs WHERE run_id = ?`, runID))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Run{}, fmt.Errorf("run %s: %w", runID, store.ErrNotFound)
	}
	if err != nil {
		return store.Run{}, fmt.Errorf("run %s: %w", runID, err)
	}
	return r, nil
}
