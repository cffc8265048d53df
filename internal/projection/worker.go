package projection

import (
	"context"
	"errors"
	"fmt"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// ErrNoWorkers is returned for worker work when the store has no worker side.
var ErrNoWorkers = errors.New("projection: the store does not project codex workers")

// workerEventsBatch is how many worker events one event-lane transaction
// appends at most.
const workerEventsBatch = 500

// ProjectWorker brings one codex worker up to date: it appends the events
// its event cursor has not reached to topic runtime.codex_worker_events (in
// seq order, each exactly once), then rebuilds its codex_worker_summary,
// decides and writes it through the sink exactly as for runs. Each lane
// advances its checkpoint only with a successful write and retries with
// its own backoff, so a failing sink never holds back the event stream.
func (p *Projector) ProjectWorker(ctx context.Context, workerID string) (Outcome, error) {
	if p.workers == nil {
		return Outcome{EntityID: workerID, DocKey: WorkerDocKey(workerID)}, ErrNoWorkers
	}
	return p.projectWorkerLanes(ctx, workerID, true, true)
}

// projectWorkerLanes runs the chosen lanes and keeps their retry and parking
// state.
func (p *Projector) projectWorkerLanes(ctx context.Context, workerID string, summary, events bool) (Outcome, error) {
	out, r, err := p.projectWorker(ctx, workerID, summary, events, false)
	sk, ek := entityKey{store.ProjectionCodexWorker, workerID}, entityKey{laneWorkerEvents, workerID}
	p.mu.Lock()
	defer p.mu.Unlock()
	if errors.Is(err, store.ErrNotFound) && r.loadFailed {
		delete(p.backoff, sk)
		delete(p.backoff, ek)
		return out, err
	}
	for _, l := range []struct {
		ran bool
		k   entityKey
		err error
	}{{summary, sk, r.summaryErr}, {events, ek, r.eventsErr}} {
		switch {
		case !l.ran:
		case r.loadFailed || l.err != nil:
			p.retryLaterLocked(l.k)
		default:
			delete(p.backoff, l.k)
		}
	}
	// Nothing could move (summary checkpoint ahead or current, event cursor
	// ahead or current): park until the worker, checkpoint or cursor change.
	if err == nil && summary && events && !out.Superseded && out.Result != "ok" && out.EventsAppended == 0 {
		p.parked[sk] = parkedState{latest: r.latest, cp: r.cpSeq, events: out.EventsCursor}
	} else {
		delete(p.parked, sk)
	}
	return out, err
}

// workerRun is what projectWorker learnt beyond the Outcome.
type workerRun struct {
	loadFailed            bool
	latest, cpSeq         int64 // the worker's latest seq; the summary checkpoint (0 when none)
	summaryErr, eventsErr error
}

// projectWorker projects one worker's lanes. force (reprojection) always
// writes the summary and replaces an event cursor that is ahead of the log.
func (p *Projector) projectWorker(ctx context.Context, workerID string, summary, events, force bool) (out Outcome, r workerRun, err error) {
	out = Outcome{EntityID: workerID, DocKey: WorkerDocKey(workerID)}
	// Checkpoint and cursor before the log, as for runs: a concurrent
	// writer can then only make a decision stale (the write's precondition
	// catches it), never make a checkpoint look ahead of the log.
	var cp, cursor *store.Checkpoint
	if summary {
		if cp, err = p.checkpoint(ctx, store.ProjectionCodexWorker, workerID); err != nil {
			r.loadFailed = true
			return out, r, err
		}
	}
	if events {
		if cursor, err = p.checkpoint(ctx, store.ProjectionCodexWorker, store.WorkerEventsCursorID(workerID)); err != nil {
			r.loadFailed = true
			return out, r, err
		}
	}
	w, evs, err := p.workers.LoadWorkerLog(ctx, workerID)
	if err != nil {
		r.loadFailed = true
		return out, r, fmt.Errorf("load worker %s: %w", workerID, err)
	}
	r.latest = w.LatestSeq
	if cp != nil {
		r.cpSeq = cp.LastSeq
	}
	if n := len(evs); n > 0 {
		ctx = p.continueTrace(ctx, evs[n-1].Trace)
	}
	ctx, end := p.span(ctx, telemetry.ProjectionCodexWorkerSummary, w.LatestSeq)
	defer func() { end(err) }()

	if events {
		cur := int64(0)
		if cursor != nil {
			cur = cursor.LastSeq
		}
		r.eventsErr = p.appendWorkerEvents(ctx, &out, w, evs, cur, force)
	}
	if summary {
		sum, gaps := BuildWorkerSummary(w, evs, p.cfg.Version, p.cfg.Now())
		doc, hash, encErr := encodeWorkerSummary(sum)
		if encErr != nil {
			r.summaryErr = encErr
		} else {
			r.summaryErr = p.decideAndWrite(ctx, &out, cp, summaryWrite{
				kind: store.ProjectionCodexWorker, metric: telemetry.ProjectionCodexWorkerSummary,
				topic: store.TopicCodexWorkerSummaries, owner: w.OwnerSub, latest: w.LatestSeq,
				seq: sum.LatestSeq, doc: doc, hash: hash, gaps: gaps,
			}, force)
		}
	}
	return out, r, errors.Join(r.eventsErr, r.summaryErr)
}

// appendWorkerEvents appends the worker's events after the cursor to topic
// runtime.codex_worker_events, in batches, each batch in one transaction
// with the cursor. Exactly once: a batch only commits from the cursor it
// was decided from (another writer makes it fail and this call stops), and
// the store never streams an event whose document exists. A cursor ahead
// of the log is drift (checkpoint_ahead); reprojection (force) replaces it
// by walking the whole log again, which appends only what is missing.
func (p *Projector) appendWorkerEvents(ctx context.Context, out *Outcome, w store.Worker, evs []store.WorkerEvent, cursor int64, force bool) error {
	k := entityKey{laneWorkerEvents, w.WorkerID}
	out.EventsCursor = cursor
	forced := false
	if cursor > w.LatestSeq {
		if !force {
			p.drift(ctx, k, ReasonCheckpointAhead, map[string]any{
				"lane": store.TopicCodexWorkerEvents, "cursor_seq": cursor, "runtime_seq": w.LatestSeq,
			}, fmt.Sprintf("%d|%d", cursor, w.LatestSeq))
			return nil
		}
		cursor, forced = 0, true
	}
	i := 0
	for i < len(evs) && evs[i].Seq <= cursor {
		i++
	}
	pending := evs[i:]
	metric := telemetry.ProjectionCodexWorkerSummary
	for len(pending) > 0 {
		n := min(len(pending), workerEventsBatch)
		batch := pending[:n]
		docs := make([]store.WorkerEventDoc, 0, n)
		for j, e := range batch {
			// Worker logs are gap-free by construction; a hole would be
			// skipped for good, so stop in front of it (the summary reports
			// it as a sequence_gap) and retry later.
			want := cursor + 1
			if j > 0 {
				want = docs[j-1].Seq + 1
			}
			if e.Seq != want && !(forced && j == 0) {
				if j == 0 {
					return fmt.Errorf("worker %s event lane: seq %d missing (next in the log is %d)", w.WorkerID, want, e.Seq)
				}
				batch = batch[:j]
				break
			}
			doc, hash, err := encodeDoc(BuildWorkerEventDocument(e, p.cfg.Version), store.WorkerEventDocKey(e.WorkerID, e.Seq))
			if err != nil {
				return err
			}
			docs = append(docs, store.WorkerEventDoc{Seq: e.Seq, Doc: doc, Hash: hash})
		}
		res, err := p.workers.WriteWorkerEvents(ctx, store.WorkerEventsWriteInput{
			WorkerID: w.WorkerID, OwnerSub: w.OwnerSub, Version: p.cfg.Version,
			ExpectSeq: cursor, Force: forced, Events: docs,
		})
		switch {
		case errors.Is(err, store.ErrConflict):
			// Another projector moved the cursor since we read it.
			out.Superseded = true
			p.m.ProjectionWrite(metric, "skipped")
			return nil
		case err != nil:
			p.m.ProjectionWrite(metric, "error")
			p.m.ProjectionWriteFailure(metric, ClassSinkException)
			return fmt.Errorf("worker %s event lane: %w", w.WorkerID, err)
		}
		p.m.ProjectionWrite(metric, "ok")
		forced = false
		cursor = docs[len(docs)-1].Seq
		out.EventsCursor = cursor
		out.EventsAppended += res.Appended
		if res.LastWatermark > 0 {
			out.EventsWatermark = res.LastWatermark
		}
		if len(batch) < n {
			return fmt.Errorf("worker %s event lane: seq %d missing", w.WorkerID, cursor+1)
		}
		pending = pending[n:]
		p.mu.Lock()
		delete(p.reported, k)
		p.mu.Unlock()
	}
	return nil
}
