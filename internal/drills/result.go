// Package drills runs the restart/reconnect chaos drills: real `oaruntime
// serve` processes are killed with SIGKILL (or their PostgreSQL is restarted)
// while runs and streams are in flight, and the run logs, the hash chains and
// what SSE clients received are checked afterwards for lost or duplicated
// events. scripts/run-restart-reconnect-chaos-drills.sh builds the binary and
// internal/drills/drillcmd and runs them; docs/RESTART_RECONNECT_CHAOS.md
// describes each drill and its pass criteria.
package drills

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Harness names the artifact format (summary.json, results.jsonl).
const Harness = "oa.runtime_restart_reconnect_chaos.v1"

// Drill statuses.
const (
	StatusPassed = "passed"
	StatusFailed = "failed"
	StatusNotRun = "not_run"
)

// Result is one line of results.jsonl: one drill on one store.
type Result struct {
	Harness    string `json:"harness"`
	Name       string `json:"name"`
	Store      string `json:"store"` // sqlite, postgres, or "-" for a drill that never started
	Status     string `json:"status"`
	Passed     bool   `json:"passed"`
	StartedAt  string `json:"started_at"`
	DurationMS int64  `json:"duration_ms"`
	// Counts are what the drill measured (runs, events, lost, duplicated...).
	Counts map[string]int64 `json:"counts"`
	// DurationsMS are the timings the drill measured, in milliseconds.
	DurationsMS map[string]int64 `json:"durations_ms"`
	// Budgets are the targets the timings are reported against.
	BudgetsMS map[string]int64 `json:"budgets_ms,omitempty"`
	Failures  []string         `json:"failures"`
	Notes     []string         `json:"notes,omitempty"`
	// NotRunReason says why a drill did not run (Status not_run).
	NotRunReason string `json:"not_run_reason,omitempty"`
}

// rec accumulates one drill's result.
type rec struct {
	r     Result
	start time.Time
}

func newRec(name, store string) *rec {
	now := time.Now()
	return &rec{start: now, r: Result{
		Harness: Harness, Name: name, Store: store, StartedAt: now.UTC().Format(time.RFC3339),
		Counts: map[string]int64{}, DurationsMS: map[string]int64{}, Failures: []string{},
	}}
}

// failf records a failure reason; the drill fails when it has any.
func (r *rec) failf(format string, a ...any) {
	r.r.Failures = append(r.r.Failures, fmt.Sprintf(format, a...))
}

func (r *rec) notef(format string, a ...any) {
	r.r.Notes = append(r.r.Notes, fmt.Sprintf(format, a...))
}

func (r *rec) count(k string, v int64)       { r.r.Counts[k] = v }
func (r *rec) add(k string, v int64)         { r.r.Counts[k] += v }
func (r *rec) dur(k string, d time.Duration) { r.r.DurationsMS[k] = d.Milliseconds() }
func (r *rec) budget(k string, d time.Duration) {
	if r.r.BudgetsMS == nil {
		r.r.BudgetsMS = map[string]int64{}
	}
	r.r.BudgetsMS[k] = d.Milliseconds()
}

// done closes the result: passed when no failure was recorded.
func (r *rec) done() Result {
	r.r.DurationMS = time.Since(r.start).Milliseconds()
	r.r.Passed = len(r.r.Failures) == 0
	if r.r.Passed {
		r.r.Status = StatusPassed
	} else {
		r.r.Status = StatusFailed
	}
	return r.r
}

// notRun is a drill that could not run here. required turns it into a
// failure (CI must run every drill whose prerequisites it provides).
func notRun(name, store, reason string, required bool) Result {
	r := newRec(name, store)
	if required {
		r.failf("required drill could not run: %s", reason)
		return r.done()
	}
	res := r.r
	res.Status = StatusNotRun
	res.NotRunReason = reason
	return res
}

// Summary is summary.json.
type Summary struct {
	Harness    string         `json:"harness"`
	StartedAt  string         `json:"started_at"`
	FinishedAt string         `json:"finished_at"`
	Short      bool           `json:"short"`
	CI         bool           `json:"ci"`
	Binary     string         `json:"binary"`
	Revision   string         `json:"revision,omitempty"`
	Settings   map[string]any `json:"settings"`
	Totals     map[string]int `json:"totals"`
	Passed     bool           `json:"passed"`
	Drills     []SummaryDrill `json:"drills"`
}

// SummaryDrill is one drill's line in summary.json.
type SummaryDrill struct {
	Name       string   `json:"name"`
	Store      string   `json:"store"`
	Status     string   `json:"status"`
	DurationMS int64    `json:"duration_ms"`
	Failures   []string `json:"failures,omitempty"`
	Reason     string   `json:"not_run_reason,omitempty"`
}

// Summarize totals results. Passed is true when nothing failed (not_run
// drills are listed, never counted as passed).
func Summarize(results []Result) (totals map[string]int, passed bool) {
	totals = map[string]int{StatusPassed: 0, StatusFailed: 0, StatusNotRun: 0}
	for _, r := range results {
		totals[r.Status]++
	}
	return totals, totals[StatusFailed] == 0
}

// percentiles returns min, p50, p95 and max of ds (zeros when empty).
func percentiles(ds []time.Duration) (lo, p50, p95, hi time.Duration) {
	if len(ds) == 0 {
		return
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(q float64) time.Duration {
		i := int(q*float64(len(s)-1) + 0.5)
		return s[i]
	}
	return s[0], at(0.5), at(0.95), s[len(s)-1]
}

// limitList keeps failure lists readable: at most n entries plus a count.
func limitList(xs []string, n int) []string {
	if len(xs) <= n {
		return xs
	}
	out := append([]string(nil), xs[:n]...)
	return append(out, fmt.Sprintf("... and %d more", len(xs)-n))
}

func joinOr(xs []string, empty string) string {
	if len(xs) == 0 {
		return empty
	}
	return strings.Join(xs, "; ")
}
