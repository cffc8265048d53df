package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

const runCols = `run_id, thread_id, owner_sub, status, latest_seq,
	provider, tools, authorization_doc, output_schema, metadata,
	terminal_reason_class, terminal_reason, terminal_at,
	last_processed_frame_id, retention_floor_seq, recovery_attempts, last_recovery_at,
	created_at, updated_at`

// runScanner holds one row of runCols while it is scanned.
type runScanner struct {
	r                                store.Run
	prov, tools, authz, schema, meta []byte
	terminalAt, lastRecovery         *time.Time
}

func (x *runScanner) dest() []any {
	r := &x.r
	return []any{&r.RunID, &r.ThreadID, &r.OwnerSub, &r.Status, &r.LatestSeq,
		&x.prov, &x.tools, &x.authz, &x.schema, &x.meta,
		&r.TerminalReasonClass, &r.TerminalReason, &x.terminalAt,
		&r.LastProcessedFrameID, &r.RetentionFloorSeq, &r.RecoveryAttempts, &x.lastRecovery,
		&r.CreatedAt, &r.UpdatedAt}
}

func (x *runScanner) run() store.Run {
	r := x.r
	r.Provider, r.Tools, r.Authorization = rawOrNil(x.prov), rawOrNil(x.tools), rawOrNil(x.authz)
	r.OutputSchema, r.Metadata = rawOrNil(x.schema), rawOrNil(x.meta)
	r.TerminalAt, r.LastRecoveryAt = utcPtr(x.terminalAt), utcPtr(x.lastRecovery)
	r.CreatedAt, r.UpdatedAt = r.CreatedAt.UTC(), r.UpdatedAt.UTC()
	return r
}

func scanRun(row pgx.Row) (store.Run, error) {
	var x runScanner
	if err := row.Scan(x.dest()...); err != nil {
		return store.Run{}, err
	}
	return x.run(), nil
}

func rawOrNil(b []byte) json.RawMessage {
	if len(b) == 0 {
		return nil
	}
	return json.RawMessage(b)
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// canonicalDoc canonicalizes an optional JSON document; absent and JSON null
// are both stored as SQL NULL so that they compare equal on a create replay.
func canonicalDoc(field string, raw json.RawMessage) ([]byte, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return nil, nil
	}
	c, err := runs.CanonicalizeRaw(raw)
	if err != nil {
		return nil, fmt.Errorf("postgres: %s: %w", field, err)
	}
	return c, nil
}

// jsonParam passes a JSON document as a json parameter, nil as SQL NULL.
func jsonParam(b []byte) any {
	if b == nil {
		return nil
	}
	return string(b)
}

// CreateRun implements store.Store.
func (s *Store) CreateRun(ctx context.Context, in store.CreateRunInput) (store.Run, bool, error) {
	g, created, err := s.createRun(ctx, in, nil)
	if err != nil {
		return store.Run{}, false, err
	}
	return *g.Run, created, nil
}

// CreateLeasedRun implements store.Store. Only the batched insert leases
// (the common case); the transactional path below creates the lease row
// free, and the run is claimed.
func (s *Store) CreateLeasedRun(ctx context.Context, in store.CreateRunInput, owner string, ttl time.Duration) (store.LeaseGrant, bool, error) {
	us, err := leaseArgs(owner, ttl)
	if err != nil {
		return store.LeaseGrant{}, false, fmt.Errorf("postgres: create leased run %s: %w", in.RunID, err)
	}
	return s.createRun(ctx, in, &leaseItem{owner: owner, ttlMicros: us})
}

// createRun creates in's run, leased as asked when the batch inserts it.
func (s *Store) createRun(ctx context.Context, in store.CreateRunInput, lease *leaseItem) (store.LeaseGrant, bool, error) {
	fail := func(err error) (store.LeaseGrant, bool, error) { return store.LeaseGrant{}, false, err }
	if in.RunID == "" {
		return fail(errors.New("postgres: create run: run_id is required"))
	}
	if in.OwnerSub == "" {
		return fail(errors.New("postgres: create run: owner is required"))
	}
	if err := checkText("run_id", in.RunID, "thread_id", in.ThreadID, "owner", in.OwnerSub); err != nil {
		return fail(fmt.Errorf("postgres: create run: %w", err))
	}
	docs := make([][]byte, 5)
	for i, d := range []struct {
		name string
		raw  json.RawMessage
	}{
		{"provider", in.Provider}, {"tools", in.Tools}, {"authorization", in.Authorization},
		{"output_schema", in.OutputSchema}, {"metadata", in.Metadata},
	} {
		c, err := canonicalDoc(d.name, d.raw)
		if err != nil {
			return fail(err)
		}
		docs[i] = c
	}
	var input *frameItem
	if in.Input == nil {
		lease = nil // nothing to execute
	}
	if in.Input != nil {
		in.Input = new(*in.Input) // a copy: the caller's stays as it was
		in.Input.RunID = in.RunID
		it, err := newFrameItem(*in.Input)
		if err != nil {
			return fail(fmt.Errorf("postgres: create run %s: input: %w", in.RunID, err))
		}
		input = &it
	}

	// The common case, a new run, goes with the others waiting (one
	// statement, one commit: applyCreates). A run id seen before takes the
	// transaction below, which compares.
	o, err := s.creates.submit(ctx, createItem{runID: in.RunID, threadID: in.ThreadID, owner: in.OwnerSub, docs: docs, input: input, lease: lease})
	if err == nil {
		err = o.err
	}
	if err != nil {
		return fail(fmt.Errorf("postgres: create run %s: %w", in.RunID, err))
	}
	if o.inserted {
		return o.grant, true, nil // applyCreates noted it
	}
	args := []any{in.RunID, in.ThreadID, in.OwnerSub,
		jsonParam(docs[0]), jsonParam(docs[1]), jsonParam(docs[2]), jsonParam(docs[3]), jsonParam(docs[4])}
	var run store.Run
	var created bool
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		r, err := scanRun(tx.QueryRow(ctx, `
			INSERT INTO runs (run_id, thread_id, owner_sub, provider, tools, authorization_doc, output_schema, metadata)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
			ON CONFLICT (run_id) DO NOTHING
			RETURNING `+runCols, args...))
		if err == nil {
			if _, err := tx.Exec(ctx, `INSERT INTO run_leases (run_id) VALUES ($1)`, in.RunID); err != nil {
				return fmt.Errorf("create lease row: %w", err)
			}
			if input != nil { // a new run has no frames: nothing to compare
				if _, err := tx.Exec(ctx, insertFrameSQL, input.args()...); err != nil {
					return fmt.Errorf("insert input frame: %w", err)
				}
			}
			run, created = r, true
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		existing, err := scanRun(tx.QueryRow(ctx, `SELECT `+runCols+` FROM runs WHERE run_id = $1`, in.RunID))
		if err != nil {
			return err
		}
		same := existing.ThreadID == in.ThreadID && existing.OwnerSub == in.OwnerSub &&
			bytes.Equal(existing.Provider, docs[0]) && bytes.Equal(existing.Tools, docs[1]) &&
			bytes.Equal(existing.Authorization, docs[2]) && bytes.Equal(existing.OutputSchema, docs[3]) &&
			bytes.Equal(existing.Metadata, docs[4])
		if !same {
			return fmt.Errorf("%w: run %s exists with different fields", store.ErrConflict, in.RunID)
		}
		run = existing
		return nil
	})
	if err != nil {
		return fail(fmt.Errorf("postgres: create run %s: %w", in.RunID, err))
	}
	if created {
		s.created(run, input != nil, false)
		return store.LeaseGrant{Run: &run}, true, nil
	}
	if input != nil {
		// A replay of the create: the input as InsertFrame would take it.
		if _, _, err := s.InsertFrame(ctx, *in.Input); err != nil {
			return fail(fmt.Errorf("postgres: create run %s: input: %w", in.RunID, err))
		}
	}
	return store.LeaseGrant{Run: &run}, false, nil
}

// created notes a new run: its head for the fast appends, and the notice
// of its input frame (after the commit).
func (s *Store) created(run store.Run, withInput, leased bool) {
	s.heads.put(run.RunID, head{status: run.Status})
	if withInput {
		s.notes.publish(store.Notice{Kind: store.NoticeFrame, RunID: run.RunID, Leased: leased})
	}
}

// GetRun implements store.Store.
func (s *Store) GetRun(ctx context.Context, runID string) (store.Run, error) {
	if !storable(runID) {
		return store.Run{}, fmt.Errorf("postgres: get run %q: %w", runID, store.ErrNotFound)
	}
	r, err := scanRun(s.pool.QueryRow(ctx, `SELECT `+runCols+` FROM runs WHERE run_id = $1`, runID))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Run{}, fmt.Errorf("postgres: get run %s: %w", runID, store.ErrNotFound)
	}
	if err != nil {
		return store.Run{}, fmt.Errorf("postgres: get run %s: %w", runID, err)
	}
	return r, nil
}

const frameCols = `id, run_id, frame_id, frame_type, payload, payload_hash,
	traceparent, tracestate, request_id, created_at`

// qualify prefixes each column of a column list with alias.
func qualify(alias, cols string) string {
	parts := strings.Split(cols, ",")
	for i, c := range parts {
		parts[i] = alias + "." + strings.TrimSpace(c)
	}
	return strings.Join(parts, ", ")
}

// nullFrameScanner scans frameCols that may all be NULL (no frame).
type nullFrameScanner struct {
	id                                     *int64
	runID, frameID, typ, hash, tp, ts, rid *string
	payload                                []byte
	created                                *time.Time
}

func (x *nullFrameScanner) dest() []any {
	return []any{&x.id, &x.runID, &x.frameID, &x.typ, &x.payload, &x.hash, &x.tp, &x.ts, &x.rid, &x.created}
}

func (x *nullFrameScanner) frame() *store.Frame {
	if x.id == nil {
		return nil
	}
	return &store.Frame{ID: *x.id, RunID: *x.runID, FrameID: *x.frameID, Type: *x.typ, Payload: json.RawMessage(x.payload),
		PayloadHash: *x.hash, Trace: store.TraceContext{TraceParent: *x.tp, TraceState: *x.ts, RequestID: *x.rid},
		CreatedAt: x.created.UTC()}
}

func scanFrame(row pgx.Row) (store.Frame, error) {
	var f store.Frame
	var payload []byte
	err := row.Scan(&f.ID, &f.RunID, &f.FrameID, &f.Type, &payload, &f.PayloadHash,
		&f.Trace.TraceParent, &f.Trace.TraceState, &f.Trace.RequestID, &f.CreatedAt)
	if err != nil {
		return store.Frame{}, err
	}
	f.Payload = json.RawMessage(payload)
	f.CreatedAt = f.CreatedAt.UTC()
	return f, nil
}

// InsertFrame implements store.Store. The run row is locked first so that
// frames of one run get ids in commit order: an executor that has processed
// frame N never later finds a committed frame of that run with an id below N.
func (s *Store) InsertFrame(ctx context.Context, in store.InsertFrameInput) (store.Frame, bool, error) {
	it, err := newFrameItem(in)
	if err != nil {
		return store.Frame{}, false, err
	}
	// The common case, a new frame, goes with the others waiting (one call,
	// one commit: applyFrames); the run row is locked before the frame id is
	// drawn, so the frames of a run commit in id order and the executor's
	// cursor never skips one. A seen frame id or an unknown run takes the
	// transaction below, which tells them apart.
	o, err := s.frames.submit(ctx, it)
	if err == nil {
		err = o.err
	}
	if err != nil {
		return store.Frame{}, false, fmt.Errorf("postgres: insert frame %s/%s: %w", in.RunID, in.FrameID, err)
	}
	if o.inserted {
		s.notes.publish(store.Notice{Kind: store.NoticeFrame, RunID: in.RunID})
		return o.frame, true, nil
	}
	var frame store.Frame
	var inserted bool
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var one int
		err := tx.QueryRow(ctx, `SELECT 1 FROM runs WHERE run_id = $1 FOR NO KEY UPDATE`, in.RunID).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		f, err := scanFrame(tx.QueryRow(ctx, insertFrameSQL, it.args()...))
		if err == nil {
			frame, inserted = f, true
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		existing, err := scanFrame(tx.QueryRow(ctx,
			`SELECT `+frameCols+` FROM frames WHERE run_id = $1 AND frame_id = $2`, in.RunID, in.FrameID))
		if err != nil {
			return err
		}
		if existing.Type != in.Type || existing.PayloadHash != it.hash {
			return fmt.Errorf("%w: frame_id already used with another type or payload", store.ErrConflict)
		}
		frame = existing
		return nil
	})
	if err != nil {
		return store.Frame{}, false, fmt.Errorf("postgres: insert frame %s/%s: %w", in.RunID, in.FrameID, err)
	}
	if inserted {
		s.notes.publish(store.Notice{Kind: store.NoticeFrame, RunID: in.RunID})
	}
	return frame, inserted, nil
}

// NextFrame implements store.Store.
func (s *Store) NextFrame(ctx context.Context, runID string, afterID int64) (store.Frame, error) {
	if !storable(runID) {
		return store.Frame{}, fmt.Errorf("postgres: next frame of %q: %w", runID, store.ErrNotFound)
	}
	f, err := scanFrame(s.pool.QueryRow(ctx,
		`SELECT `+frameCols+` FROM frames WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT 1`, runID, afterID))
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Frame{}, fmt.Errorf("postgres: next frame of %s after %d: %w", runID, afterID, store.ErrNotFound)
	}
	if err != nil {
		return store.Frame{}, fmt.Errorf("postgres: next frame of %s after %d: %w", runID, afterID, err)
	}
	return f, nil
}

// createItem is a new run waiting for applyCreates; docs are the canonical
// provider, tools, authorization, output_schema and metadata (nil: NULL).
type createItem struct {
	runID, threadID, owner string
	docs                   [][]byte
	input                  *frameItem // the run's first frame, when given
	lease                  *leaseItem // lease the new run to, when given (with input only)
}

// leaseItem asks for a new run's lease (CreateLeasedRun).
type leaseItem struct {
	owner     string
	ttlMicros int64
}

// createOutcome: inserted=false without an error means nothing was written
// (the run id exists, or the call was refused) and the full path decides.
// grant.Run is the inserted run; grant.Lease is set when it was leased.
type createOutcome struct {
	grant    store.LeaseGrant
	inserted bool
	err      error
}

// applyCreates inserts new runs and their lease rows in one statement. A
// run id seen before (in the table or earlier in the batch) is skipped for
// the full path. Run ids go in byte order, so that two calls inserting the
// same ids wait for each other in one order, never in a cycle.
func (s *Store) applyCreates(ctx context.Context, items []createItem) []createOutcome {
	out := make([]createOutcome, len(items))
	order := firstOf(len(items), func(i int) string { return items[i].runID })
	slices.SortFunc(order, func(x, y int) int { return strings.Compare(items[x].runID, items[y].runID) })
	cols := make([][]*string, 8)
	// Leases: one per run ('' = none, the row starts free).
	lowners := make([]string, 0, len(order))
	lttls := make([]int64, 0, len(order))
	for _, i := range order {
		it := items[i]
		cols[0] = append(cols[0], &it.runID)
		cols[1] = append(cols[1], &it.threadID)
		cols[2] = append(cols[2], &it.owner)
		for d := range 5 {
			var v *string
			if it.docs[d] != nil {
				v = new(string(it.docs[d]))
			}
			cols[3+d] = append(cols[3+d], v)
		}
		var l leaseItem
		if it.lease != nil {
			l = *it.lease
		}
		lowners, lttls = append(lowners, l.owner), append(lttls, l.ttlMicros)
	}
	// Input frames: inserted with their new run (a new run has no frames,
	// so there is nothing to compare).
	fcols := make([][]string, 8)
	for _, i := range order {
		if f := items[i].input; f != nil {
			for c, v := range f.values() {
				fcols[c] = append(fcols[c], v)
			}
		}
	}
	args := make([]any, 0, len(cols)+len(fcols)+2)
	for _, c := range cols {
		args = append(args, c)
	}
	for _, c := range fcols {
		args = append(args, c)
	}
	args = append(args, lowners, lttls)
	// A leased run's lease row is born held (generation 1), as a claim
	// would leave it; the statement returns it and the input frame, which
	// the executor starts from.
	rows, err := s.pool.Query(ctx, `
		WITH r AS (
			INSERT INTO runs (run_id, thread_id, owner_sub, provider, tools, authorization_doc, output_schema, metadata)
			SELECT x.run_id, x.thread_id, x.owner_sub, x.provider::json, x.tools::json, x.authz::json,
				x.output_schema::json, x.metadata::json
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
				AS x(run_id, thread_id, owner_sub, provider, tools, authz, output_schema, metadata)
			ON CONFLICT (run_id) DO NOTHING
			RETURNING `+runCols+`
		), l AS (
			INSERT INTO run_leases (run_id, state, owner, generation, expires_at, heartbeat_at, acquired_at)
			SELECT r.run_id,
				CASE WHEN z.owner = '' THEN 'free' ELSE 'held' END, z.owner,
				CASE WHEN z.owner = '' THEN 0 ELSE 1 END,
				CASE WHEN z.owner = '' THEN NULL ELSE clock_timestamp() + z.ttl * interval '1 microsecond' END,
				CASE WHEN z.owner = '' THEN NULL ELSE clock_timestamp() END,
				CASE WHEN z.owner = '' THEN NULL ELSE clock_timestamp() END
			FROM r JOIN unnest($1::text[], $17::text[], $18::bigint[]) AS z(run_id, owner, ttl) ON z.run_id = r.run_id
			RETURNING run_id, owner, generation, expires_at
		), f AS (
			INSERT INTO frames (`+frameWriteCols+`)
			SELECT y.run_id, y.frame_id, y.frame_type, y.payload::json, y.payload_hash, y.traceparent, y.tracestate, y.request_id
			FROM unnest($9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[])
				AS y(run_id, frame_id, frame_type, payload, payload_hash, traceparent, tracestate, request_id)
			JOIN r ON r.run_id = y.run_id
			RETURNING `+frameCols+`
		)
		SELECT `+qualify("r", runCols)+`, l.owner, l.generation, l.expires_at, `+qualify("f", frameCols)+`
		FROM r JOIN l ON l.run_id = r.run_id LEFT JOIN f ON f.run_id = r.run_id`, args...)
	got := map[string]store.LeaseGrant{}
	if err == nil {
		var gs []store.LeaseGrant
		gs, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.LeaseGrant, error) {
			var (
				run     runScanner
				owner   string
				gen     int64
				expires *time.Time
				next    nullFrameScanner
			)
			dest := append(run.dest(), &owner, &gen, &expires)
			if err := row.Scan(append(dest, next.dest()...)...); err != nil {
				return store.LeaseGrant{}, err
			}
			r := run.run()
			g := store.LeaseGrant{Run: &r}
			if owner != "" && expires != nil {
				g.Lease = store.Lease{RunID: r.RunID, Owner: owner, Generation: gen, ExpiresAt: expires.UTC()}
				g.Result = store.LeaseAcquired
				g.Next = next.frame()
			}
			return g, nil
		})
		for _, g := range gs {
			got[g.Run.RunID] = g
		}
	}
	for _, i := range order {
		g, ok := got[items[i].runID]
		switch {
		case refusedCall(err):
		case err != nil:
			out[i].err = err
		case ok:
			// Noted before the caller hears of it: the executor may claim
			// the run as soon as it is committed, and its first append
			// should find the head.
			s.created(*g.Run, items[i].input != nil, g.Lease.Owner != "")
			out[i] = createOutcome{grant: g, inserted: true}
		}
	}
	return out
}

// newFrameItem checks in and canonicalizes its payload.
func newFrameItem(in store.InsertFrameInput) (frameItem, error) {
	if in.FrameID == "" {
		return frameItem{}, errors.New("postgres: insert frame: frame_id is required")
	}
	if in.Type == "" {
		return frameItem{}, errors.New("postgres: insert frame: type is required")
	}
	if !storable(in.RunID) {
		return frameItem{}, fmt.Errorf("postgres: insert frame: run %q: %w", in.RunID, store.ErrNotFound)
	}
	if err := checkText("frame_id", in.FrameID, "type", in.Type, "traceparent", in.Trace.TraceParent,
		"tracestate", in.Trace.TraceState, "request_id", in.Trace.RequestID); err != nil {
		return frameItem{}, fmt.Errorf("postgres: insert frame: %w", err)
	}
	payload, err := runs.CanonicalizeRaw(in.Payload)
	if err != nil {
		return frameItem{}, fmt.Errorf("postgres: insert frame %s/%s: payload: %w", in.RunID, in.FrameID, err)
	}
	return frameItem{runID: in.RunID, frameID: in.FrameID, typ: in.Type, payload: payload,
		hash: runs.PayloadHash(payload), trace: in.Trace}, nil
}

// frameItem is a new frame waiting for applyFrames; payload is canonical.
type frameItem struct {
	runID, frameID, typ string
	payload             []byte
	hash                string
	trace               store.TraceContext
}

// frameWriteCols are the columns a new frame is written with, in the order
// of frameItem.args.
const frameWriteCols = `run_id, frame_id, frame_type, payload, payload_hash, traceparent, tracestate, request_id`

// insertFrameSQL inserts one frame unless its frame id is taken (no row
// returned then).
const insertFrameSQL = `INSERT INTO frames (` + frameWriteCols + `) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
	ON CONFLICT (run_id, frame_id) DO NOTHING RETURNING ` + frameCols

// values are the values of frameWriteCols.
func (f frameItem) values() []string {
	return []string{f.runID, f.frameID, f.typ, string(f.payload), f.hash, f.trace.TraceParent, f.trace.TraceState, f.trace.RequestID}
}

// args are values as query arguments.
func (f frameItem) args() []any {
	vs := f.values()
	out := make([]any, len(vs))
	for i, v := range vs {
		out[i] = v
	}
	return out
}

// frameOutcome: inserted=false without an error means nothing was written
// (an unknown run, a seen frame id, or a refused call) and the full path
// decides.
type frameOutcome struct {
	frame    store.Frame
	inserted bool
	err      error
}

// applyFrames inserts new frames of many runs in one call of
// oa_insert_frames (migration 00070): grouped by run in run_id order (the
// lock order between calls), each run's frames in the order they came.
func (s *Store) applyFrames(ctx context.Context, items []frameItem) []frameOutcome {
	out := make([]frameOutcome, len(items))
	key := func(runID, frameID string) string { return runID + "\x00" + frameID }
	order := firstOf(len(items), func(i int) string { return key(items[i].runID, items[i].frameID) })
	slices.SortStableFunc(order, func(x, y int) int { return strings.Compare(items[x].runID, items[y].runID) })
	cols := make([][]string, 8)
	for _, i := range order {
		for c, v := range items[i].values() {
			cols[c] = append(cols[c], v)
		}
	}
	args := make([]any, len(cols))
	for i, c := range cols {
		args[i] = c
	}
	rows, err := s.pool.Query(ctx, `SELECT `+frameCols+` FROM oa_insert_frames($1, $2, $3, $4, $5, $6, $7, $8)`, args...)
	got := map[string]store.Frame{}
	if err == nil {
		var fs []store.Frame
		fs, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Frame, error) { return scanFrame(row) })
		for _, f := range fs {
			got[key(f.RunID, f.FrameID)] = f
		}
	}
	for _, i := range order {
		f, ok := got[key(items[i].runID, items[i].frameID)]
		switch {
		case refusedCall(err):
		case err != nil:
			out[i].err = err
		case ok:
			out[i] = frameOutcome{frame: f, inserted: true}
		}
	}
	return out
}
