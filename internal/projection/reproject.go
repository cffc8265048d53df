package projection

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// Scope selects what Reproject rebuilds: all runs and workers, one run or
// one codex worker.
type Scope struct {
	All      bool   `json:"all,omitempty"`
	RunID    string `json:"run_id,omitempty"`
	WorkerID string `json:"worker_id,omitempty"`
	DryRun   bool   `json:"dry_run,omitempty"`
}

// EntityResult is the reprojection of one entity.
type EntityResult struct {
	Scope    string        `json:"scope"`
	EntityID string        `json:"entity_id"`
	Result   string        `json:"result"` // ok, error, dry_run
	Changed  bool          `json:"changed"`
	Seq      int64         `json:"seq"`
	Hash     string        `json:"summary_hash,omitempty"`
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration_ns"`
}

// Report summarizes a reprojection.
type Report struct {
	Total     int            `json:"total"`
	Succeeded int            `json:"succeeded"`
	Failed    int            `json:"failed"`
	Changed   int            `json:"changed"` // entities whose checkpoint differed from the rebuild
	DryRun    bool           `json:"dry_run"`
	Duration  time.Duration  `json:"duration_ns"`
	Entities  []EntityResult `json:"entities,omitempty"` // at most maxReportedEntities, failures first kept
}

const maxReportedEntities = 1000

// ErrEmptyScope is returned when a Scope names nothing (or more than one
// thing) to rebuild.
var ErrEmptyScope = errors.New("projection: reproject needs exactly one of all, run_id or worker_id")

// target is one entity to reproject.
type target struct{ kind, id string }

// Reproject rebuilds the selected entities. For each one it writes the
// document, a stream row and the checkpoint in the one transaction that
// replaces the checkpoint (never deleting it first), records a replay row
// (ok or error) and, in the serving process, counts it. The result is
// convergent: afterwards every stored hash equals the rebuild's. progress,
// when not nil, is called after each entity. The error is non-nil only when
// the entities could not be listed; per-entity failures are in the report.
func (p *Projector) Reproject(ctx context.Context, sc Scope, progress func(done, total int)) (Report, error) {
	start := time.Now()
	rep := Report{DryRun: sc.DryRun}
	n := 0
	for _, set := range []bool{sc.All, sc.RunID != "", sc.WorkerID != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return rep, ErrEmptyScope
	}
	var ids []target
	switch {
	case sc.RunID != "":
		// An unknown id is an operator typo, not a replay failure: no row.
		if _, _, err := p.st.LoadRunLog(ctx, sc.RunID); errors.Is(err, store.ErrNotFound) {
			return rep, fmt.Errorf("reproject: run %s: %w", sc.RunID, store.ErrNotFound)
		}
		ids = []target{{store.ProjectionRun, sc.RunID}}
	case sc.WorkerID != "":
		if p.workers == nil {
			return rep, fmt.Errorf("reproject: worker %s: %w", sc.WorkerID, ErrNoWorkers)
		}
		if _, _, err := p.workers.LoadWorkerLog(ctx, sc.WorkerID); errors.Is(err, store.ErrNotFound) {
			return rep, fmt.Errorf("reproject: worker %s: %w", sc.WorkerID, store.ErrNotFound)
		}
		ids = []target{{store.ProjectionCodexWorker, sc.WorkerID}}
	default: // all: every run, then every worker (as the original)
		var err error
		if ids, err = listAll(ctx, store.ProjectionRun, p.st.ListRunIDs, ids); err != nil {
			return rep, err
		}
		if p.workers != nil {
			if ids, err = listAll(ctx, store.ProjectionCodexWorker, p.workers.ListWorkerIDs, ids); err != nil {
				return rep, err
			}
		}
	}
	rep.Total = len(ids)
	for i, tg := range ids {
		if ctx.Err() != nil {
			return rep, fmt.Errorf("reproject: %w", ctx.Err())
		}
		r := p.reprojectOne(ctx, tg, sc.DryRun)
		switch r.Result {
		case store.ReplayError:
			rep.Failed++
		default:
			rep.Succeeded++
		}
		if r.Changed {
			rep.Changed++
		}
		if len(rep.Entities) < maxReportedEntities || r.Result == store.ReplayError {
			rep.Entities = append(rep.Entities, r)
		}
		if progress != nil {
			progress(i+1, len(ids))
		}
	}
	rep.Duration = time.Since(start)
	return rep, nil
}

// listAll appends every id a pager lists to ids.
func listAll(ctx context.Context, kind string, list func(ctx context.Context, after string, limit int) ([]string, error), ids []target) ([]target, error) {
	after := ""
	for {
		page, err := list(ctx, after, 1000)
		if err != nil {
			return ids, fmt.Errorf("reproject: list %s ids: %w", kind, err)
		}
		if len(page) == 0 {
			return ids, nil
		}
		for _, id := range page {
			ids = append(ids, target{kind, id})
		}
		after = page[len(page)-1]
	}
}

func (p *Projector) reprojectOne(ctx context.Context, tg target, dryRun bool) EntityResult {
	t0 := time.Now()
	id := tg.id
	r := EntityResult{Scope: tg.kind, EntityID: id}
	var before *store.Checkpoint
	if c, err := p.st.GetCheckpoint(ctx, tg.kind, id); err == nil {
		before = &c
	}
	// A worker's event cursor is repaired too (one ahead of the log is
	// replaced), so it counts towards "changed".
	cursor := int64(-1)
	if tg.kind == store.ProjectionCodexWorker {
		cursor = 0
		if c, err := p.st.GetCheckpoint(ctx, tg.kind, store.WorkerEventsCursorID(id)); err == nil {
			cursor = c.LastSeq
		}
	}
	var err error
	p.mu.Lock()
	fault := p.replayFault
	p.mu.Unlock()
	switch {
	case fault:
		err = errors.New("injected replay fault")
	case dryRun:
		r.Seq, r.Hash, err = p.rebuildHash(ctx, tg.kind, id, nil)
	default:
		var out Outcome
		// Superseded means another projector wrote between our read and
		// our write: rebuild from the new state (a few times at most; if
		// writers keep winning, the entity is current anyway).
		for range 5 {
			if tg.kind == store.ProjectionCodexWorker {
				out, _, err = p.projectWorker(ctx, id, true, true, true)
			} else {
				out, err = p.project(ctx, id, true)
			}
			if err != nil || !out.Superseded {
				break
			}
		}
		r.Seq, r.Hash = out.Seq, out.Hash
		if err == nil {
			p.mu.Lock()
			for _, k := range []entityKey{{tg.kind, id}, {laneWorkerEvents, id}} {
				if k.kind == laneWorkerEvents && tg.kind != store.ProjectionCodexWorker {
					continue
				}
				delete(p.backoff, k)
				delete(p.parked, k)
				delete(p.reported, k)
			}
			p.mu.Unlock()
		}
	}
	r.Duration = time.Since(t0)
	if err == nil {
		r.Changed = before == nil || before.LastSeq != r.Seq || before.SummaryHash != r.Hash || before.ProjectionVersion != p.cfg.Version ||
			(cursor >= 0 && cursor != r.Seq)
	}
	if dryRun { // a dry run writes nothing, replay rows included
		r.Result = "dry_run"
		if err != nil {
			r.Result, r.Error = store.ReplayError, err.Error()
		}
		return r
	}
	r.Result = store.ReplayOK
	if err != nil {
		r.Result, r.Error = store.ReplayError, err.Error()
		p.log.ErrorContext(ctx, "khala reproject failed", "scope", r.Scope, "entity_id", id, "err", err)
	}
	if _, rerr := p.st.RecordReplay(ctx, store.ReplayResult{
		Scope: r.Scope, EntityID: id, Result: r.Result, Error: r.Error, Duration: r.Duration,
		Origin: p.cfg.Origin, Counted: p.cfg.Serving,
	}); rerr != nil {
		p.log.ErrorContext(ctx, "khala reproject: record replay failed", "err", rerr)
	}
	if p.cfg.Serving {
		p.m.ProjectionReplay(r.Scope, r.Result, r.Duration)
	}
	return r
}

// rebuildHash rebuilds an entity's summary from its log and returns its seq
// and summary_hash. prevDoc, when given, is the stored document: a run whose
// latest event retention pruned takes that event's fields from it (nil
// reads the stored document when needed).
func (p *Projector) rebuildHash(ctx context.Context, kind, id string, prevDoc json.RawMessage) (int64, string, error) {
	if kind == store.ProjectionCodexWorker {
		if p.workers == nil {
			return 0, "", ErrNoWorkers
		}
		w, evs, err := p.workers.LoadWorkerLog(ctx, id)
		if err != nil {
			return 0, "", err
		}
		sum, _ := BuildWorkerSummary(w, evs, p.cfg.Version, p.cfg.Now())
		_, h, err := encodeWorkerSummary(sum)
		return sum.LatestSeq, h, err
	}
	run, events, err := p.st.LoadRunLog(ctx, id)
	if err != nil {
		return 0, "", err
	}
	var prev *RunSummary
	if n := len(events); run.LatestSeq > 0 && (n == 0 || events[n-1].Seq != run.LatestSeq) {
		if prevDoc == nil {
			prev = p.previousSummary(ctx, id)
		} else {
			var s RunSummary
			if json.Unmarshal(prevDoc, &s) == nil {
				prev = &s
			}
		}
	}
	sum, _ := BuildRunSummary(run, events, p.cfg.Version, prev, p.cfg.Now())
	_, h, err := encodeSummary(sum)
	return sum.LatestSeq, h, err
}
