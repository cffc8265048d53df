package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

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

// fastAppend is one append computed from a remembered head: the event as
// it will be stored, the run-level effects of its transition and the head
// after it.
type fastAppend struct {
	ev         store.Event
	out        runs.Outcome
	frameID    int64
	fence      *store.Fence
	prevStatus string
	next       head
}

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
	return fastAppend{
		ev: store.Event{RunID: in.RunID, Seq: seq, EventType: eventType, Payload: json.RawMessage(payload),
			PrevHash: hd.hash, EventHash: hash, IdempotencyKey: key, Trace: in.Trace},
		out: out, frameID: in.ProcessedFrameID, fence: in.Fence, prevStatus: hd.status,
		next: head{seq: seq, hash: hash, status: out.Status},
	}, true
}

// prepareFastMany computes consecutive events of one run from its
// remembered head; ok=false sends them to the full path. One fence for all
// and distinct idempotency keys: anything else is rare enough to leave to
// the full path, which decides it.
func (s *Store) prepareFastMany(in []store.AppendInput) ([]fastAppend, bool) {
	hd, known := s.heads.get(in[0].RunID)
	if !known {
		return nil, false
	}
	calls := make([]fastAppend, 0, len(in))
	keys := make(map[string]bool, len(in))
	for _, x := range in {
		c, ok := prepareFast(hd, x)
		if !ok || !sameFence(in[0].Fence, x.Fence) {
			return nil, false
		}
		if k := c.ev.IdempotencyKey; k != "" {
			if keys[k] {
				return nil, false
			}
			keys[k] = true
		}
		calls = append(calls, c)
		hd = c.next
	}
	return calls, true
}

func sameFence(a, b *store.Fence) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// appendFastMany appends consecutive events of one run from the remembered
// head, all of them or none, through the appends batcher (group.go), which
// commits the fast appends of many runs together. ok=false means the fast
// path did not apply and nothing was written: the caller takes the full
// path, which decides every outcome (replays, fences, sequence conflicts,
// illegal transitions) the way the contract says. ok=true with an error is a
// failure of the call itself (for example a broken connection), reported as
// is.
func (s *Store) appendFastMany(ctx context.Context, in []store.AppendInput) ([]store.Event, bool, error) {
	calls, ok := s.prepareFastMany(in)
	if !ok {
		return nil, false, nil
	}
	runID := in[0].RunID
	o, err := s.appends.submit(ctx, groupEntry{runID: runID, calls: calls})
	if err == nil {
		err = o.err
	}
	switch {
	case err != nil:
		s.heads.forget(runID)
		return nil, true, fmt.Errorf("postgres: append %s to run %s: %w", store.EventTypes(in), runID, err)
	case !o.applied:
		s.heads.forget(runID) // someone else moved the head, a lost fence or a seen key: the full path answers
		return nil, false, nil
	}
	evs := make([]store.Event, len(calls))
	notices := make([]store.Notice, len(calls))
	for i, c := range calls {
		evs[i] = c.ev
		evs[i].CreatedAt = o.created[i]
		notices[i] = store.Notice{Kind: store.NoticeEvent, RunID: runID, Seq: c.ev.Seq, Leased: in[0].Fence != nil}
	}
	s.heads.put(runID, calls[len(calls)-1].next)
	s.notes.publish(notices...)
	return evs, true, nil
}
