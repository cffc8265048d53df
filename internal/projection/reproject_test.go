package projection

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// converge checks that every run's checkpoint is at its latest seq and that
// checkpoint, document and rebuilt summary hash alike.
func assertConverged(t *testing.T, st testStore, p *Projector, runIDs ...string) {
	t.Helper()
	ctx := context.Background()
	for _, id := range runIDs {
		run, events, err := st.LoadRunLog(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		cp, ok := checkpoint(t, st, id)
		if !ok || cp.LastSeq != run.LatestSeq {
			t.Fatalf("%s: checkpoint %+v, latest seq %d", id, cp, run.LatestSeq)
		}
		doc, err := st.GetDocument(ctx, store.TopicRunSummaries, RunDocKey(id))
		if err != nil {
			t.Fatalf("%s: document: %v", id, err)
		}
		dh, _ := SummaryHash(doc.Payload)
		sum, _ := BuildRunSummary(run, events, p.Version(), nil, p.cfg.Now())
		_, rh, _ := encodeSummary(sum)
		if cp.SummaryHash != dh || dh != rh || doc.SummaryHash != rh || doc.SourceSeq != cp.LastSeq {
			t.Fatalf("%s: hashes cp %s doc %s (stored %s) rebuilt %s", id, cp.SummaryHash, dh, doc.SummaryHash, rh)
		}
	}
}

func TestReprojectConverges(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		m, reg := newMetrics(t)
		p := New(st, nil, nil, m, Config{Serving: true})
		ids := []string{"r1", "r2", "r3", "r4"}
		for _, id := range ids {
			mkRun(t, st, id, "run.started", "run.delta")
			if _, err := p.ProjectRun(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		appendEv(t, st, "r4", "run.finished") // r4 lags behind its log
		zero := strings.Repeat("0", 64)
		exec(t, `UPDATE khala_projection_checkpoints SET last_seq = 999, summary_hash = '`+zero+`' WHERE entity_id = 'r1'`)
		exec(t, `UPDATE khala_documents SET payload = '{"bogus":true}' WHERE doc_key = 'runtime/run_summary:r2'`)
		exec(t, `DELETE FROM khala_projection_checkpoints WHERE entity_id = 'r3'`)
		exec(t, `DELETE FROM khala_documents WHERE doc_key = 'runtime/run_summary:r3'`)

		dry, err := p.Reproject(ctx, Scope{All: true, DryRun: true}, nil)
		if err != nil || dry.Total != 4 || dry.Changed != 3 || dry.Failed != 0 {
			t.Fatalf("dry run = %+v, %v", dry, err)
		}
		if cp, _ := checkpoint(t, st, "r1"); cp.LastSeq != 999 {
			t.Fatal("dry run wrote a checkpoint")
		}
		if rs, _ := st.ListReplays(ctx, 0, 100); len(rs) != 0 {
			t.Fatalf("dry run recorded %d replay rows", len(rs))
		}

		var calls []int
		rep, err := p.Reproject(ctx, Scope{All: true}, func(done, total int) {
			if total != 4 {
				t.Errorf("progress total %d", total)
			}
			calls = append(calls, done)
		})
		if err != nil || rep.Total != 4 || rep.Succeeded != 4 || rep.Failed != 0 {
			t.Fatalf("reproject = %+v, %v", rep, err)
		}
		if len(calls) != 4 || calls[3] != 4 {
			t.Fatalf("progress calls %v", calls)
		}
		assertConverged(t, st, p, ids...)
		if ar, err := p.Audit(ctx, 100); err != nil || ar.Status != "ok" || ar.Sampled != 4 {
			t.Fatalf("audit after reproject = %+v, %v", ar, err)
		}
		rs, _ := st.ListReplays(ctx, 0, 100)
		if len(rs) != 4 {
			t.Fatalf("replay rows = %d", len(rs))
		}
		for _, r := range rs {
			if r.Result != store.ReplayOK || r.Scope != store.ProjectionRun || !r.Counted {
				t.Fatalf("replay row %+v", r)
			}
		}
		if got := metricValue(t, reg, telemetry.KhalaProjectionReplays, map[string]string{"result": "ok", "scope": "run"}); got != 4 {
			t.Fatalf("replay ok metric = %v", got)
		}
		// Reprojecting again is a no-op for the data and still converged.
		if rep, err := p.Reproject(ctx, Scope{RunID: "r2"}, nil); err != nil || rep.Succeeded != 1 || rep.Changed != 0 {
			t.Fatalf("second reproject = %+v, %v", rep, err)
		}
		assertConverged(t, st, p, ids...)

		if _, err := p.Reproject(ctx, Scope{RunID: "nope"}, nil); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown run: %v", err)
		}
		if _, err := p.Reproject(ctx, Scope{}, nil); !errors.Is(err, ErrEmptyScope) {
			t.Fatalf("empty scope: %v", err)
		}
		if _, err := p.Reproject(ctx, Scope{All: true, RunID: "r1"}, nil); !errors.Is(err, ErrEmptyScope) {
			t.Fatalf("both scopes: %v", err)
		}
	})
}

func TestReplayFailureRecorded(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		m, reg := newMetrics(t)
		p := New(st, nil, nil, m, Config{Serving: true})
		mkRun(t, st, "r1", "run.started")
		if _, err := p.ProjectRun(ctx, "r1"); err != nil {
			t.Fatal(err)
		}
		before, _ := checkpoint(t, st, "r1")
		p.SetReplayFault(true)
		rep, err := p.Reproject(ctx, Scope{RunID: "r1"}, nil)
		if err != nil || rep.Failed != 1 || rep.Succeeded != 0 || len(rep.Entities) != 1 || rep.Entities[0].Error == "" {
			t.Fatalf("faulted reproject = %+v, %v", rep, err)
		}
		if after, ok := checkpoint(t, st, "r1"); !ok || after != before {
			t.Fatalf("a failed replay changed or removed the checkpoint: %+v -> %+v", before, after)
		}
		rs, _ := st.ListReplays(ctx, 0, 10)
		if len(rs) != 1 || rs[0].Result != store.ReplayError || !strings.Contains(rs[0].Error, "injected") {
			t.Fatalf("replay rows = %+v", rs)
		}
		if got := metricValue(t, reg, telemetry.KhalaProjectionReplays, map[string]string{"result": "error"}); got != 1 {
			t.Fatalf("replay error metric = %v", got)
		}
		// A sink failure during reprojection is a replay failure too.
		p.SetReplayFault(false)
		p.SetFault(1)
		if rep, _ := p.Reproject(ctx, Scope{All: true}, nil); rep.Failed != 1 {
			t.Fatalf("reproject through failing sink = %+v", rep)
		}
	})
}

func TestVerifyFindsMismatchAndMissing(t *testing.T) {
	forEachDriver(t, func(t *testing.T, st testStore, exec func(*testing.T, string)) {
		ctx := context.Background()
		m, reg := newMetrics(t)
		p := New(st, nil, nil, m, Config{Serving: true})
		for _, id := range []string{"ok1", "mism", "gone", "both", "lagonly"} {
			mkRun(t, st, id, "run.started", "run.delta")
			if _, err := p.ProjectRun(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		if rep, err := p.Audit(ctx, 0); err != nil || rep.Status != "ok" || rep.Sampled != 5 {
			t.Fatalf("clean audit = %+v, %v", rep, err)
		}
		exec(t, `UPDATE khala_documents SET payload = '{"run_id":"mism","status":"tampered"}' WHERE doc_key = 'runtime/run_summary:mism'`)
		exec(t, `DELETE FROM khala_documents WHERE doc_key = 'runtime/run_summary:gone'`)
		exec(t, `UPDATE khala_documents SET payload = '{"run_id":"both"}' WHERE doc_key = 'runtime/run_summary:both'`)
		appendEv(t, st, "both", "run.delta") // and the checkpoint lags the log
		exec(t, `UPDATE khala_documents SET runtime_source_seq = 1 WHERE doc_key = 'runtime/run_summary:lagonly'`)
		appendEv(t, st, "ok1", "run.delta") // plain projector lag is not drift

		rep, err := p.Audit(ctx, 100)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, f := range rep.Findings {
			got[f.EntityID] = f.ReasonClass
		}
		want := map[string]string{"mism": ReasonSummaryHashMismatch, "gone": ReasonKhalaMissing, "both": ReasonHashAndLagDrift, "lagonly": ReasonLagDrift}
		if len(got) != len(want) {
			t.Fatalf("findings = %+v", rep.Findings)
		}
		for id, r := range want {
			if got[id] != r {
				t.Errorf("%s: finding %q, want %q", id, got[id], r)
			}
		}
		if rep.Status != "mismatch" || rep.Mismatches != 4 || rep.Missing != 1 || rep.HashMismatches != 2 || rep.LagDrift != 2 || rep.Sampled != 5 {
			t.Fatalf("report = %+v", rep)
		}
		for r, n := range map[string]float64{ReasonSummaryHashMismatch: 1, ReasonKhalaMissing: 1, ReasonHashAndLagDrift: 1, ReasonLagDrift: 1} {
			if v := metricValue(t, reg, telemetry.KhalaProjectionDriftIncidents, map[string]string{"reason_class": r}); v != n {
				t.Errorf("%s drift metric = %v, want %v", r, v, n)
			}
			if rows := driftRows(t, st, r); len(rows) != int(n) {
				t.Errorf("%s drift rows = %d", r, len(rows))
			}
		}
		// Reprojection repairs all of it.
		if rep, err := p.Reproject(ctx, Scope{All: true}, nil); err != nil || rep.Failed != 0 {
			t.Fatalf("reproject = %+v, %v", rep, err)
		}
		if rep, err := p.Audit(ctx, 100); err != nil || rep.Status != "ok" {
			t.Fatalf("audit after repair = %+v, %v", rep, err)
		}
	})
}
