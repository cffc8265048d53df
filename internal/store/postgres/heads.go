package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

// head is what the driver remembers of a run's log after its own writes:
// enough to compute the next event without reading the run row.
type head struct {
	seq    int64
	hash   string
	status string
}

// maxHeads bounds the memory of the head cache; past it the cache starts
// over (a forgotten head only costs one append the full path).
const maxHeads = 100_000

// heads is the driver's memory of run heads. It is a hint: a stale entry
// (another replica appended, the janitor reclaimed) makes the fast path
// find nothing to update, and the full path decides.
type heads struct {
	mu sync.Mutex
	m  map[string]head
}

func (h *heads) get(runID string) (head, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := h.m[runID]
	return v, ok
}

// put records hd unless a later head is already known. Terminal runs are
// forgotten: their appends are rare and the full path handles them.
func (h *heads) put(runID string, hd head) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if store.Terminal(hd.status) {
		delete(h.m, runID)
		return
	}
	if cur, ok := h.m[runID]; ok && cur.seq >= hd.seq {
		return
	}
	if h.m == nil || len(h.m) >= maxHeads {
		h.m = make(map[string]head)
	}
	h.m[runID] = hd
}

func (h *heads) forget(runID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.m, runID)
}

// sqlstateFenceLost is raised by oa_append_fast when the fence no longer
// holds the lease (migration 00060).
const sqlstateFenceLost = "OA001"

// fastAppend is one append computed from a remembered head: the event as
// it will be stored, the arguments of oa_append_fast and the head after it.
type fastAppend struct {
	ev   store.Event
	args []any
	next head
}

const appendFastSQL = `SELECT oa_append_fast($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)`

// prepareFast computes in as the successor of hd. ok=false when the quick
// path does not apply (invalid input, an expected seq that does not match,
// a transition the state machine refuses or replays): the full path then
// decides, exactly as the contract says.
func prepareFast(hd head, in store.AppendInput) (fastAppend, bool) {
	eventType := strings.TrimSpace(in.EventType)
	key := strings.TrimSpace(in.IdempotencyKey)
	if eventType == "" || !storable(in.RunID) {
		return fastAppend{}, false
	}
	if checkText("event_type", eventType, "idempotency_key", key, "traceparent", in.Trace.TraceParent,
		"tracestate", in.Trace.TraceState, "request_id", in.Trace.RequestID) != nil {
		return fastAppend{}, false
	}
	if in.Fence != nil && checkText("fence owner", in.Fence.Owner) != nil {
		return fastAppend{}, false
	}
	if in.ExpectedPreviousSeq != nil && *in.ExpectedPreviousSeq != hd.seq {
		return fastAppend{}, false
	}
	payload, err := runs.CanonicalizeRaw(in.Payload)
	if err != nil {
		return fastAppend{}, false
	}
	out, err := runs.Transition(hd.status, eventType, payload)
	if err != nil || out.Idempotent {
		return fastAppend{}, false
	}
	seq := hd.seq + 1
	hash := runs.EventHash(in.RunID, seq, eventType, payload, hd.hash)
	var owner string
	var gen int64
	if in.Fence != nil {
		owner, gen = in.Fence.Owner, in.Fence.Generation
	}
	return fastAppend{
		ev: store.Event{RunID: in.RunID, Seq: seq, EventType: eventType, Payload: json.RawMessage(payload),
			PrevHash: hd.hash, EventHash: hash, IdempotencyKey: key, Trace: in.Trace},
		args: []any{in.RunID, seq, hd.hash, hd.status, eventType, string(payload), hash, key,
			in.Trace.TraceParent, in.Trace.TraceState, in.Trace.RequestID,
			out.Status, out.Terminal, out.ReasonClass, out.Reason, in.ProcessedFrameID,
			in.Fence != nil, owner, gen},
		next: head{seq: seq, hash: hash, status: out.Status},
	}, true
}

// fallBack reports whether err from oa_append_fast means "let the full path
// decide" (a lost fence, a seen idempotency key) rather than a failure.
func fallBack(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == sqlstateFenceLost || pgErr.Code == "23505")
}

// appendFastMany appends consecutive events of one run from the remembered
// head (oa_append_fast), in one round trip and one (implicit) transaction:
// all of them or none. ok=false means the fast path did not apply and
// nothing was written: the caller takes the full path, which decides every
// outcome (replays, fences, sequence conflicts, illegal transitions) the
// way the contract says. ok=true with an error is a failure of the call
// itself (for example a broken connection), reported as is.
func (s *Store) appendFastMany(ctx context.Context, in []store.AppendInput) ([]store.Event, bool, error) {
	hd, known := s.heads.get(in[0].RunID)
	if !known {
		return nil, false, nil
	}
	calls := make([]fastAppend, 0, len(in))
	for _, x := range in {
		c, ok := prepareFast(hd, x)
		if !ok {
			return nil, false, nil
		}
		calls = append(calls, c)
		hd = c.next
	}
	created := make([]pgtype.Timestamptz, len(calls))
	var err error
	if len(calls) == 1 {
		err = s.pool.QueryRow(ctx, appendFastSQL, calls[0].args...).Scan(&created[0])
	} else {
		// A batch without BEGIN is one implicit transaction: an error in
		// any call rolls back every one.
		b := &pgx.Batch{}
		for i, c := range calls {
			b.Queue(appendFastSQL, c.args...).QueryRow(func(row pgx.Row) error { return row.Scan(&created[i]) })
		}
		err = s.pool.SendBatch(ctx, b).Close()
	}
	runID := in[0].RunID
	switch {
	case fallBack(err):
		s.heads.forget(runID) // lost fence or a seen key: the full path answers
		return nil, false, nil
	case err != nil:
		s.heads.forget(runID)
		return nil, true, fmt.Errorf("postgres: append %s to run %s: %w", store.EventTypes(in), runID, err)
	}
	// The first call finds the remembered head or nothing, and each later
	// one follows the one before under the same row lock: either all
	// applied or none did.
	valid := 0
	for _, c := range created {
		if c.Valid {
			valid++
		}
	}
	switch valid {
	case 0:
		s.heads.forget(runID) // someone else moved the head
		return nil, false, nil
	case len(created):
	default:
		// Cannot happen (see above); never retry on the full path, which
		// would append the applied ones again.
		s.heads.forget(runID)
		return nil, true, fmt.Errorf("postgres: append to run %s: %d of %d events applied", runID, valid, len(created))
	}
	evs := make([]store.Event, len(calls))
	notices := make([]store.Notice, len(calls))
	for i, c := range calls {
		evs[i] = c.ev
		evs[i].CreatedAt = created[i].Time.UTC()
		notices[i] = store.Notice{Kind: store.NoticeEvent, RunID: runID, Seq: c.ev.Seq}
	}
	s.heads.put(runID, hd)
	s.notes.publish(notices...)
	return evs, true, nil
}
