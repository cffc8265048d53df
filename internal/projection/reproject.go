package projection

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// Scope selects what Reproject rebuilds.
type Scope struct {
	All    bool   `json:"all,omitempty"`
	RunID  string `json:"run_id,omitempty"`
	DryRun bool   `json:"dry_run,omitempty"`
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

// ErrEmptyScope is returned when a Scope names nothing to rebuild.
var ErrEmptyScope = errors.New("projection: reproject needs all or run_id")

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
	var ids []string
	switch {
	case sc.All && sc.RunID != "":
		return rep, fmt.Errorf("%w, not both", ErrEmptyScope)
	case sc.RunID != "":
		// An unknown id is an operator typo, not a replay failure: no row.
		if _, _, err := p.st.LoadRunLog(ctx, sc.RunID); errors.Is(err, store.ErrNotFound) {
			return rep, fmt.Errorf("reproject: run %s: %w", sc.RunID, store.ErrNotFound)
		}
		ids = []string{sc.RunID}
	case sc.All:
		after := ""
		for {
			page, err := p.st.ListRunIDs(ctx, after, 1000)
			if err != nil {
				return rep, fmt.Errorf("reproject: list runs: %w", err)
			}
			if len(page) == 0 {
				break
			}
			ids = append(ids, page...)
			after = page[len(page)-1]
		}
	default:
		return rep, ErrEmptyScope
	}
	rep.Total = len(ids)
	for i, id := range ids {
		if ctx.Err() != nil {
			return rep, fmt.Errorf("reproject: %w", ctx.Err())
		}
		r := p.reprojectOne(ctx, id, sc.DryRun)
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

func (p *Projector) reprojectOne(ctx context.Context, runID string, dryRun bool) EntityResult {
	t0 := time.Now()
	r := EntityResult{Scope: store.ProjectionRun, EntityID: runID}
	var before *store.Checkpoint
	if c, err := p.st.GetCheckpoint(ctx, store.ProjectionRun, runID); err == nil {
		before = &c
	}
	var err error
	p.mu.Lock()
	fault := p.replayFault
	p.mu.Unlock()
	switch {
	case fault:
		err = errors.New("injected replay fault")
	case dryRun:
		var run store.Run
		var events []store.Event
		run, events, err = p.st.LoadRunLog(ctx, runID)
		if err == nil {
			var prev *RunSummary
			if n := len(events); run.LatestSeq > 0 && (n == 0 || events[n-1].Seq != run.LatestSeq) {
				prev = p.previousSummary(ctx, runID)
			}
			sum, _ := BuildRunSummary(run, events, p.cfg.Version, prev, p.cfg.Now())
			_, r.Hash, err = encodeSummary(sum)
			r.Seq = sum.LatestSeq
		}
	default:
		var out Outcome
		// Superseded means another projector wrote between our read and
		// our write: rebuild from the new state (a few times at most; if
		// writers keep winning, the entity is current anyway).
		for range 5 {
			out, err = p.project(ctx, runID, true)
			if err != nil || !out.Superseded {
				break
			}
		}
		r.Seq, r.Hash = out.Seq, out.Hash
		if err == nil {
			p.mu.Lock()
			delete(p.backoff, runID)
			delete(p.parked, runID)
			delete(p.reported, runID)
			p.mu.Unlock()
		}
	}
	r.Duration = time.Since(t0)
	if err == nil {
		r.Changed = before == nil || before.LastSeq != r.Seq || before.SummaryHash != r.Hash || before.ProjectionVersion != p.cfg.Version
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
		p.log.ErrorContext(ctx, "khala reproject failed", "scope", r.Scope, "entity_id", runID, "err", err)
	}
	if _, rerr := p.st.RecordReplay(ctx, store.ReplayResult{
		Scope: r.Scope, EntityID: runID, Result: r.Result, Error: r.Error, Duration: r.Duration,
		Origin: p.cfg.Origin, Counted: p.cfg.Serving,
	}); rerr != nil {
		p.log.ErrorContext(ctx, "khala reproject: record replay failed", "err", rerr)
	}
	if p.cfg.Serving {
		p.m.ProjectionReplay(r.Scope, r.Result, r.Duration)
	}
	return r
}
