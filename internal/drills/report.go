package drills

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

func (d *Driver) writeSummary(started time.Time, results []Result) error {
	totals, passed := Summarize(results)
	s := Summary{
		Harness: Harness, StartedAt: started.UTC().Format(time.RFC3339), FinishedAt: time.Now().UTC().Format(time.RFC3339),
		Short: d.cfg.Short, CI: d.cfg.CI, Binary: d.cfg.Bin, Revision: d.cfg.Revision, Totals: totals, Passed: passed,
		Settings: map[string]any{
			"lease_ttl_ms": d.cfg.LeaseTTL.Milliseconds(), "lease_renew_ms": d.cfg.LeaseRenew.Milliseconds(),
			"janitor_interval_ms": d.cfg.JanitorInterval.Milliseconds(), "postgres": d.cfg.PGURL != "",
			"pg_restart": d.cfg.PGBin != "" && d.cfg.PGData != "",
		},
	}
	for _, r := range results {
		s.Drills = append(s.Drills, SummaryDrill{Name: r.Name, Store: r.Store, Status: r.Status, DurationMS: r.DurationMS, Failures: r.Failures, Reason: r.NotRunReason})
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.cfg.OutDir, "summary.json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write summary.json: %w", err)
	}
	f, err := os.Create(filepath.Join(d.cfg.OutDir, "SUMMARY.md"))
	if err != nil {
		return fmt.Errorf("write SUMMARY.md: %w", err)
	}
	defer f.Close()
	return WriteMarkdown(f, s, results)
}

// WriteMarkdown renders SUMMARY.md: the verdict, one table row per drill,
// then each drill's counts, timings and failures.
func WriteMarkdown(w io.Writer, s Summary, results []Result) error {
	var b strings.Builder
	verdict := "PASSED"
	if !s.Passed {
		verdict = "FAILED"
	}
	fmt.Fprintf(&b, "# Restart/reconnect chaos drills: %s\n\n", verdict)
	fmt.Fprintf(&b, "Harness `%s`, revision %s, %s to %s, short=%v, CI=%v.\n", s.Harness, s.Revision, s.StartedAt, s.FinishedAt, s.Short, s.CI)
	fmt.Fprintf(&b, "Lease TTL %dms, renew %dms, janitor interval %dms.\n\n", s.Settings["lease_ttl_ms"], s.Settings["lease_renew_ms"], s.Settings["janitor_interval_ms"])
	fmt.Fprintf(&b, "**%d passed / %d failed / %d not run.** Not-run drills are not passes.\n\n", s.Totals[StatusPassed], s.Totals[StatusFailed], s.Totals[StatusNotRun])
	b.WriteString("| drill | store | status | duration | runs | events | lost | duplicated | seq gaps | notes |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range results {
		note := ""
		switch r.Status {
		case StatusNotRun:
			note = r.NotRunReason
		case StatusFailed:
			note = joinOr(limitList(r.Failures, 2), "")
		default:
			note = keyFigure(r)
		}
		lost := r.Counts["events_lost"] + r.Counts["stream_events_missed"]
		dup := r.Counts["events_duplicated"] + r.Counts["events_unexpected"] + r.Counts["stream_events_duplicated"] + r.Counts["duplicate_tool_results"]
		if r.Status == StatusNotRun {
			fmt.Fprintf(&b, "| %s | %s | not_run | - | - | - | - | - | - | %s |\n", r.Name, r.Store, mdCell(note))
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %d | %d | %d | %d | %s |\n", r.Name, r.Store, r.Status,
			(time.Duration(r.DurationMS) * time.Millisecond).Round(100*time.Millisecond), r.Counts["runs"], r.Counts["events_total"], lost, dup, r.Counts["seq_gaps"], mdCell(note))
	}
	for _, r := range results {
		if r.Status == StatusNotRun {
			continue
		}
		fmt.Fprintf(&b, "\n## %s (%s): %s\n\n", r.Name, r.Store, r.Status)
		b.WriteString("Counts: " + kv(r.Counts, "") + "\n\n")
		b.WriteString("Timings: " + kv(r.DurationsMS, "ms") + "\n\n")
		if len(r.BudgetsMS) > 0 {
			b.WriteString("Budgets: " + kv(r.BudgetsMS, "ms") + "\n\n")
		}
		for _, n := range r.Notes {
			b.WriteString("- note: " + n + "\n")
		}
		for _, f := range r.Failures {
			b.WriteString("- FAILURE: " + f + "\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// keyFigure is the one timing worth a table cell for a passing drill.
func keyFigure(r Result) string {
	var parts []string
	if v, ok := r.DurationsMS["kill_to_reclaim_max"]; ok {
		parts = append(parts, fmt.Sprintf("reclaim max %dms after the kill (budget %dms)", v, r.BudgetsMS[budgetTTLJanitor]))
	}
	if v, ok := r.DurationsMS["db_start_to_reclaim_max"]; ok {
		parts = append(parts, fmt.Sprintf("reclaim max %dms after the database came back", v))
	}
	if v, ok := r.Counts["stream_reconnects"]; ok {
		parts = append(parts, fmt.Sprintf("%d reconnects", v))
	}
	if v, ok := r.DurationsMS["recovery_to_khala_converged"]; ok {
		parts = append(parts, fmt.Sprintf("Khala converged %dms after it came back (%d upserts rejected during the outage)", v, r.Counts["khala_upserts_rejected_during_outage"]))
	}
	if v, ok := r.DurationsMS["kill_to_subscribers_caught_up"]; ok {
		parts = append(parts, fmt.Sprintf("%d subscribers resumed after the kill, all %d at the head %dms after it", r.Counts["subscribers_resumed"], r.Counts["subscribers"], v))
	}
	if _, ok := r.Counts["stale_cursor_floor"]; ok {
		parts = append(parts, "stale_cursor below retention")
	}
	if v, ok := r.Counts["tokens_rejected"]; ok {
		parts = append(parts, fmt.Sprintf("%d expired/forged token uses refused, live session closed token_expired after %dms", v, r.DurationsMS["session_closed_after_connect"]))
	}
	if v, ok := r.DurationsMS["start_to_readyz_200"]; ok {
		parts = append(parts, fmt.Sprintf("readyz 503 x%d, 200 %dms after start", r.Counts["readyz_503_during_outage"], v))
	}
	return strings.Join(parts, ", ")
}

func kv[V int64](m map[string]V, unit string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d%s", k, m[k], unit)
	}
	return joinOr(parts, "none")
}

func mdCell(s string) string {
	return strings.NewReplacer("|", "\\|", "\n", " ").Replace(s)
}
