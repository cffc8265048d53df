package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Group commit of fast appends. Under load many executors append to many
// runs at once; as transactions of their own, PostgreSQL spends most of its
// time on per-statement and per-commit work rather than on rows. The group
// committer lets a few flushers each take whatever appends are waiting and
// apply them in one call of oa_append_group (migration 00070): one round
// trip and one commit for all of them. An append that finds an idle flusher
// goes at once, so a quiet system waits for no batch to fill.

const (
	// groupMax bounds one call: its arrays, and the time its members wait.
	groupMax = 256
	// groupTimeout bounds one call. A flush does not use its members'
	// contexts: once taken, an append's outcome must be learned, not
	// abandoned (it may commit).
	groupTimeout = 30 * time.Second
)

// errStoreClosed answers appends still waiting when the store closes.
var errStoreClosed = errors.New("store closed")

const (
	entryQueued int32 = iota
	entryTaken
	entryAbandoned
)

// groupEntry is one run's consecutive fast appends.
type groupEntry struct {
	runID string
	calls []fastAppend
	state atomic.Int32
	done  chan groupOutcome // buffered: the flusher never waits for the caller
}

type groupOutcome struct {
	created []time.Time // per call, when applied
	applied bool
	err     error
}

type groupCommitter struct {
	s        *Store
	queue    chan *groupEntry
	flushers int
	closed   chan struct{}
}

func newGroupCommitter(s *Store, flushers int) *groupCommitter {
	return &groupCommitter{s: s, queue: make(chan *groupEntry, 4*groupMax), flushers: max(1, flushers),
		closed: make(chan struct{})}
}

// submit waits for the outcome of calls (one run's appends). applied=false
// without an error means nothing was written and the full path decides.
func (g *groupCommitter) submit(ctx context.Context, runID string, calls []fastAppend) ([]time.Time, bool, error) {
	e := &groupEntry{runID: runID, calls: calls, done: make(chan groupOutcome, 1)}
	select {
	case g.queue <- e:
	case <-ctx.Done():
		return nil, false, ctx.Err()
	case <-g.closed:
		return nil, false, errStoreClosed
	}
	select {
	case o := <-e.done:
		return o.created, o.applied, o.err
	case <-ctx.Done():
		if e.state.CompareAndSwap(entryQueued, entryAbandoned) {
			return nil, false, ctx.Err()
		}
	case <-g.closed:
		if e.state.CompareAndSwap(entryQueued, entryAbandoned) {
			return nil, false, errStoreClosed
		}
	}
	// A flusher took it: its outcome is the truth, whatever ctx says.
	o := <-e.done
	return o.created, o.applied, o.err
}

// run starts the flushers and returns when done is closed and they have
// finished their calls.
func (g *groupCommitter) run(done <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range g.flushers {
		wg.Go(func() { g.flushLoop(ctx, done) })
	}
	<-done
	close(g.closed)
	wg.Wait()
	cancel()
}

func (g *groupCommitter) flushLoop(ctx context.Context, done <-chan struct{}) {
	for {
		var first *groupEntry
		select {
		case first = <-g.queue:
		case <-done:
			return
		}
		batch := g.take(first)
	drain:
		for len(batch) < groupMax {
			select {
			case e := <-g.queue:
				batch = append(batch, g.take(e)...)
			default:
				break drain
			}
		}
		g.flush(ctx, batch)
	}
}

// take claims e unless its caller gave up waiting.
func (g *groupCommitter) take(e *groupEntry) []*groupEntry {
	if e.state.CompareAndSwap(entryQueued, entryTaken) {
		return []*groupEntry{e}
	}
	return nil
}

const appendGroupSQL = `SELECT o_run_id, o_seq, o_created_at FROM oa_append_group(
	$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
	$18, $19, $20, $21, $22, $23, $24, $25, $26, $27)`

// flush applies batch in one call and answers every member.
func (g *groupCommitter) flush(ctx context.Context, batch []*groupEntry) {
	if len(batch) == 0 {
		return
	}
	// One entry per run in a call (the function's contract): a second one
	// for the same run, rare (a fenced-out writer racing the new one), is
	// answered "not applied" and takes the full path.
	in := make([]*groupEntry, 0, len(batch))
	seen := make(map[string]bool, len(batch))
	for _, e := range batch {
		if seen[e.runID] {
			e.done <- groupOutcome{}
			continue
		}
		seen[e.runID] = true
		in = append(in, e)
	}
	// run_id order: the lock order between calls (see 00070).
	slices.SortFunc(in, func(x, y *groupEntry) int { return strings.Compare(x.runID, y.runID) })
	var a groupArgs
	for _, e := range in {
		a.add(e)
	}
	ctx, cancel := context.WithTimeout(ctx, groupTimeout)
	defer cancel()
	got := make(map[string][]appliedEvent, len(in))
	rows, err := g.s.pool.Query(ctx, appendGroupSQL, a.list()...)
	if err == nil {
		for rows.Next() {
			var (
				runID string
				x     appliedEvent
			)
			if err = rows.Scan(&runID, &x.seq, &x.at); err != nil {
				break
			}
			got[runID] = append(got[runID], x)
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	var pgErr *pgconn.PgError
	for _, e := range in {
		rs := got[e.runID]
		switch {
		case errors.As(err, &pgErr):
			// The server refused the call and rolled all of it back (a
			// deadlock, say): every member takes the full path.
			e.done <- groupOutcome{}
		case err != nil:
			e.done <- groupOutcome{err: err}
		case len(rs) == 0:
			e.done <- groupOutcome{}
		default:
			e.done <- outcomeOf(e, rs)
		}
	}
}

// appliedEvent is a row of oa_append_group: an event it stored.
type appliedEvent struct {
	seq int64
	at  time.Time
}

// outcomeOf matches the events stored for e to its calls.
func outcomeOf(e *groupEntry, rs []appliedEvent) groupOutcome {
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

func (a *groupArgs) add(e *groupEntry) {
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
