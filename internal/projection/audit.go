package projection

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/oaruntime/oaruntime/internal/store"
)

// Finding is one parity audit mismatch.
type Finding struct {
	Projection     string `json:"projection"`
	EntityID       string `json:"entity_id"`
	DocKey         string `json:"document_id"`
	ReasonClass    string `json:"reason_class"`
	CheckpointSeq  int64  `json:"checkpoint_seq"`
	DocumentSeq    int64  `json:"document_seq"`
	RuntimeSeq     int64  `json:"runtime_seq"`
	CheckpointHash string `json:"checkpoint_hash"`
	DocumentHash   string `json:"document_hash,omitempty"`
	RecomputedHash string `json:"recomputed_hash,omitempty"`
}

// AuditReport summarizes one parity audit.
type AuditReport struct {
	Sampled        int       `json:"sampled"`
	Mismatches     int       `json:"mismatches"`
	Missing        int       `json:"missing_documents"`
	HashMismatches int       `json:"hash_mismatches"`
	LagDrift       int       `json:"lag_drift"`
	Status         string    `json:"status"` // ok, mismatch, empty
	Findings       []Finding `json:"findings,omitempty"`
}

// DefaultAuditSample is the original parity auditor's sample size.
const DefaultAuditSample = 200

// Audit is the parity auditor: for the sample most recently updated run
// summary checkpoints, and as many codex worker summary checkpoints, it
// recomputes the summary from the log and compares hashes with the stored
// document and checkpoint. Every finding is a drift incident
// (khala_missing, summary_hash_mismatch, hash_and_lag_drift, lag_drift) on
// the same metric as the projector's, with the finding's projection.
//
// Hash mismatch: the document's hash (recomputed from its payload, and as
// stored) differs from the checkpoint's, or, when the checkpoint is at the
// entity's latest seq and version, the summary rebuilt from the log differs.
// Lag: the document's seq differs from the checkpoint's, or the checkpoint
// differs from the entity's latest seq. Lag alone with the checkpoint
// behind the log is the projector catching up, not drift.
func (p *Projector) Audit(ctx context.Context, sample int) (AuditReport, error) {
	if sample <= 0 {
		sample = DefaultAuditSample
	}
	rep := AuditReport{Status: "empty"}
	cps, err := p.st.ListCheckpoints(ctx, store.ProjectionRun, sample)
	if err != nil {
		return rep, fmt.Errorf("audit: %w", err)
	}
	if p.workers != nil {
		// Event cursors share the projection name with the summaries and
		// move with them: twice the sample still holds about sample
		// summaries.
		wcps, err := p.st.ListCheckpoints(ctx, store.ProjectionCodexWorker, 2*sample)
		if err != nil {
			return rep, fmt.Errorf("audit: %w", err)
		}
		n := 0
		for _, cp := range wcps {
			if n < sample && !strings.HasPrefix(cp.EntityID, store.WorkerEventsCursorPrefix) {
				cps = append(cps, cp)
				n++
			}
		}
	}
	for _, cp := range cps {
		f, found, err := p.auditOne(ctx, cp)
		if err != nil {
			if ctx.Err() != nil {
				return rep, fmt.Errorf("audit: %w", ctx.Err())
			}
			p.log.WarnContext(ctx, "khala parity audit: entity skipped", "projection", cp.Projection, "entity_id", cp.EntityID, "err", err)
			continue
		}
		rep.Sampled++
		if !found {
			continue
		}
		rep.Mismatches++
		switch f.ReasonClass {
		case ReasonKhalaMissing:
			rep.Missing++
		case ReasonSummaryHashMismatch, ReasonHashAndLagDrift:
			rep.HashMismatches++
		}
		if f.ReasonClass == ReasonHashAndLagDrift || f.ReasonClass == ReasonLagDrift {
			rep.LagDrift++
		}
		rep.Findings = append(rep.Findings, f)
		p.recordDrift(ctx, cp.Projection, f.EntityID, f.ReasonClass, f)
	}
	switch {
	case rep.Mismatches > 0:
		rep.Status = "mismatch"
	case rep.Sampled > 0:
		rep.Status = "ok"
	}
	return rep, nil
}

// latestSeq is an entity's latest seq in the runtime log.
func (p *Projector) latestSeq(ctx context.Context, kind, id string) (int64, error) {
	if kind == store.ProjectionCodexWorker {
		if p.workers == nil {
			return 0, ErrNoWorkers
		}
		w, _, err := p.workers.LoadWorkerLog(ctx, id)
		return w.LatestSeq, err
	}
	run, _, err := p.st.LoadRunLog(ctx, id)
	return run.LatestSeq, err
}

func (p *Projector) auditOne(ctx context.Context, cp store.Checkpoint) (Finding, bool, error) {
	f := Finding{
		Projection: cp.Projection, EntityID: cp.EntityID, DocKey: cp.DocKey,
		CheckpointSeq: cp.LastSeq, CheckpointHash: cp.SummaryHash,
	}
	topic := store.TopicRunSummaries
	if cp.Projection == store.ProjectionCodexWorker {
		topic = store.TopicCodexWorkerSummaries
		if f.DocKey == "" {
			f.DocKey = WorkerDocKey(cp.EntityID)
		}
	} else if f.DocKey == "" {
		f.DocKey = RunDocKey(cp.EntityID)
	}
	latest, err := p.latestSeq(ctx, cp.Projection, cp.EntityID)
	if err != nil {
		return f, false, err
	}
	f.RuntimeSeq = latest
	doc, err := p.st.GetDocument(ctx, topic, f.DocKey)
	if errors.Is(err, store.ErrNotFound) {
		f.ReasonClass = ReasonKhalaMissing
		return f, true, nil
	}
	if err != nil {
		return f, false, err
	}
	f.DocumentSeq = doc.SourceSeq
	docHash, herr := SummaryHash(doc.Payload)
	f.DocumentHash = docHash
	hashMismatch := herr != nil || docHash != cp.SummaryHash || doc.SummaryHash != cp.SummaryHash
	if latest == cp.LastSeq && cp.ProjectionVersion == p.cfg.Version {
		// The log is read again here: an append since the first read makes
		// the rebuild newer than the checkpoint, which is lag, not a
		// mismatch.
		seq, h, err := p.rebuildHash(ctx, cp.Projection, cp.EntityID, doc.Payload)
		if err != nil {
			return f, false, err
		}
		if seq == cp.LastSeq {
			f.RecomputedHash = h
			hashMismatch = hashMismatch || h != cp.SummaryHash
		}
	}
	lagging := doc.SourceSeq != cp.LastSeq || cp.LastSeq != latest
	switch {
	case hashMismatch && lagging:
		f.ReasonClass = ReasonHashAndLagDrift
	case hashMismatch:
		f.ReasonClass = ReasonSummaryHashMismatch
	case doc.SourceSeq != cp.LastSeq || cp.LastSeq > latest:
		f.ReasonClass = ReasonLagDrift
	default:
		return f, false, nil
	}
	// The checkpoint, the document and the log were read one after the
	// other; a projector write in between looks like drift. Checkpoint and
	// document are written in one transaction, so an unchanged checkpoint
	// (updated_at included) after the document read means they were read
	// from the same write.
	again, err := p.st.GetCheckpoint(ctx, cp.Projection, cp.EntityID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return f, false, err
	}
	if err != nil || !again.UpdatedAt.Equal(cp.UpdatedAt) || again.LastSeq != cp.LastSeq || again.SummaryHash != cp.SummaryHash {
		return f, false, nil
	}
	return f, true, nil
}
