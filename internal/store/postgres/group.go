package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Group commit of fast appends (see batch.go): the appends of many runs in
// one call of oa_append_group (migration 00070).

// groupEntry is one run's consecutive fast appends.
type groupEntry struct {
	runID string
	calls []fastAppend
}

// groupOutcome: applied=false without an error means nothing was written
// and the full path decides.
type groupOutcome struct {
	created []time.Time // per call, when applied
	applied bool
	err     error
}

const appendGroupSQL = `SELECT o_run_id, o_seq, o_created_at FROM oa_append_group(
	$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
	$18, $19, $20, $21, $22, $23, $24, $25, $26, $27)`

// applyAppends applies batch in one call; one outcome per entry.
func (s *Store) applyAppends(ctx context.Context, batch []groupEntry) []groupOutcome {
	out := make([]groupOutcome, len(batch))
	// One entry per run in a call (the function's contract): a second one
	// for the same run (two writers at once: API clients appending to one
	// run, or a fenced-out executor racing the new one) is answered "not
	// applied" and takes the full path, which orders them. The others go in
	// run_id order: the lock order between calls (see 00070).
	order := firstOf(len(batch), func(i int) string { return batch[i].runID })
	slices.SortFunc(order, func(x, y int) int { return strings.Compare(batch[x].runID, batch[y].runID) })
	var a groupArgs
	for _, i := range order {
		a.add(batch[i])
	}
	got := make(map[string][]appliedEvent, len(order))
	rows, err := s.pool.Query(ctx, appendGroupSQL, a.list()...)
	if err == nil {
		var (
			runID string
			x     appliedEvent
		)
		_, err = pgx.ForEachRow(rows, []any{&runID, &x.seq, &x.at}, func() error {
			got[runID] = append(got[runID], x)
			return nil
		})
	}
	for _, i := range order {
		rs := got[batch[i].runID]
		switch {
		case refusedCall(err):
		case err != nil:
			out[i].err = err
		case len(rs) > 0:
			out[i] = outcomeOf(batch[i], rs)
		}
	}
	return out
}

// appliedEvent is a row of oa_append_group: an event it stored.
type appliedEvent struct {
	seq int64
	at  time.Time
}

// outcomeOf matches the events stored for e to its calls.
func outcomeOf(e groupEntry, rs []appliedEvent) groupOutcome {
	if len(rs) != len(e.calls) {
		// Cannot happen (a run's events are applied all or none); never
		// retry on the full path, which would append the applied ones again.
		return groupOutcome{err: fmt.Errorf("%d of %d events applied", len(rs), len(e.calls))}
	}
	created := make([]time.Time, len(e.calls))
	first := e.calls[0].ev.Seq
	for _, r := range rs {
		i := r.seq - first
		if i < 0 || i >= int64(len(created)) || !created[i].IsZero() {
			return groupOutcome{err: fmt.Errorf("stored seq %d is not one of %d..%d", r.seq, first, first+int64(len(created))-1)}
		}
		created[i] = r.at.UTC()
	}
	return groupOutcome{created: created, applied: true}
}

// groupArgs are the columns of oa_append_group: per run (g) and per event (e).
type groupArgs struct {
	gRunID, gPrevHash, gPrevStatus, gHash, gStatus, gReasonClass, gReason, gOwner []string
	gPrevSeq, gSeq, gFrameID, gGeneration                                         []int64
	gTerminal, gFenced, gKeyed                                                    []bool
	gFirstEvent, gEvents                                                          []int32

	eRunID, eType, ePayload, ePrevHash, eHash, eKey, eTraceParent, eTraceState, eRequestID []string
	eSeq                                                                                   []int64
}

func (a *groupArgs) add(e groupEntry) {
	first, last := e.calls[0], e.calls[len(e.calls)-1]
	a.gFirstEvent = append(a.gFirstEvent, int32(len(a.eRunID)+1)) // SQL arrays count from 1
	a.gEvents = append(a.gEvents, int32(len(e.calls)))
	var frameID int64
	keyed := false
	for _, c := range e.calls {
		frameID = max(frameID, c.frameID)
		keyed = keyed || c.ev.IdempotencyKey != ""
		ev := c.ev
		a.eRunID = append(a.eRunID, ev.RunID)
		a.eSeq = append(a.eSeq, ev.Seq)
		a.eType = append(a.eType, ev.EventType)
		a.ePayload = append(a.ePayload, string(ev.Payload))
		a.ePrevHash = append(a.ePrevHash, ev.PrevHash)
		a.eHash = append(a.eHash, ev.EventHash)
		a.eKey = append(a.eKey, ev.IdempotencyKey)
		a.eTraceParent = append(a.eTraceParent, ev.Trace.TraceParent)
		a.eTraceState = append(a.eTraceState, ev.Trace.TraceState)
		a.eRequestID = append(a.eRequestID, ev.Trace.RequestID)
	}
	var owner string
	var gen int64
	if first.fence != nil {
		owner, gen = first.fence.Owner, first.fence.Generation
	}
	a.gRunID = append(a.gRunID, e.runID)
	a.gPrevSeq = append(a.gPrevSeq, first.ev.Seq-1)
	a.gPrevHash = append(a.gPrevHash, first.ev.PrevHash)
	a.gPrevStatus = append(a.gPrevStatus, first.prevStatus)
	a.gSeq = append(a.gSeq, last.next.seq)
	a.gHash = append(a.gHash, last.next.hash)
	a.gStatus = append(a.gStatus, last.next.status)
	a.gTerminal = append(a.gTerminal, last.out.Terminal)
	a.gReasonClass = append(a.gReasonClass, last.out.ReasonClass)
	a.gReason = append(a.gReason, last.out.Reason)
	a.gFrameID = append(a.gFrameID, frameID)
	a.gFenced = append(a.gFenced, first.fence != nil)
	a.gOwner = append(a.gOwner, owner)
	a.gGeneration = append(a.gGeneration, gen)
	a.gKeyed = append(a.gKeyed, keyed)
}

func (a *groupArgs) list() []any {
	return []any{a.gRunID, a.gPrevSeq, a.gPrevHash, a.gPrevStatus, a.gSeq, a.gHash, a.gStatus,
		a.gTerminal, a.gReasonClass, a.gReason, a.gFrameID, a.gFenced, a.gOwner, a.gGeneration,
		a.gFirstEvent, a.gEvents, a.gKeyed,
		a.eRunID, a.eSeq, a.eType, a.ePayload, a.ePrevHash, a.eHash,
		a.eKey, a.eTraceParent, a.eTraceState, a.eRequestID}
}
