package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

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

// appendFast tries the one-round-trip append (oa_append_fast) from the
// remembered head. ok=false means the fast path did not apply and nothing
// was written: the caller takes the full path, which decides every
// outcome (replays, fences, sequence conflicts, illegal transitions) the
// way the contract says. ok=true with an error is a failure of the call
// itself (for example a broken connection), reported as is.
func (s *Store) appendFast(ctx context.Context, in store.AppendInput) (store.Event, bool, error) {
	hd, known := s.heads.get(in.RunID)
	if !known {
		return store.Event{}, false, nil
	}
	eventType := strings.TrimSpace(in.EventType)
	key := strings.TrimSpace(in.IdempotencyKey)
	if eventType == "" || !storable(in.RunID) {
		return store.Event{}, false, nil
	}
	if checkText("event_type", eventType, "idempotency_key", key, "traceparent", in.Trace.TraceParent,
		"tracestate", in.Trace.TraceState, "request_id", in.Trace.RequestID) != nil {
		return store.Event{}, false, nil
	}
	if in.Fence != nil && checkText("fence owner", in.Fence.Owner) != nil {
		return store.Event{}, false, nil
	}
	if in.ExpectedPreviousSeq != nil && *in.ExpectedPreviousSeq != hd.seq {
		return store.Event{}, false, nil
	}
	payload, err := runs.CanonicalizeRaw(in.Payload)
	if err != nil {
		return store.Event{}, false, nil
	}
	out, err := runs.Transition(hd.status, eventType, payload)
	if err != nil || out.Idempotent {
		return store.Event{}, false, nil
	}
	seq := hd.seq + 1
	hash := runs.EventHash(in.RunID, seq, eventType, payload, hd.hash)
	var owner string
	var gen int64
	if in.Fence != nil {
		owner, gen = in.Fence.Owner, in.Fence.Generation
	}
	ev := store.Event{RunID: in.RunID, Seq: seq, EventType: eventType, Payload: json.RawMessage(payload),
		PrevHash: hd.hash, EventHash: hash, IdempotencyKey: key, Trace: in.Trace}
	var created pgtype.Timestamptz
	err = s.pool.QueryRow(ctx, `SELECT oa_append_fast($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)`,
		in.RunID, seq, hd.hash, hd.status, eventType, string(payload), hash, key,
		in.Trace.TraceParent, in.Trace.TraceState, in.Trace.RequestID,
		out.Status, out.Terminal, out.ReasonClass, out.Reason, in.ProcessedFrameID,
		in.Fence != nil, owner, gen).Scan(&created)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && (pgErr.Code == sqlstateFenceLost || pgErr.Code == "23505"):
		s.heads.forget(in.RunID) // lost fence or a seen key: the full path answers
		return store.Event{}, false, nil
	case err != nil:
		s.heads.forget(in.RunID)
		return store.Event{}, true, fmt.Errorf("postgres: append %s to run %s: %w", eventType, in.RunID, err)
	case !created.Valid:
		s.heads.forget(in.RunID) // someone else moved the head
		return store.Event{}, false, nil
	}
	ev.CreatedAt = created.Time.UTC()
	s.heads.put(in.RunID, head{seq: seq, hash: hash, status: out.Status})
	s.notes.publish(store.Notice{Kind: store.NoticeEvent, RunID: in.RunID, Seq: seq})
	return ev, true, nil
}
