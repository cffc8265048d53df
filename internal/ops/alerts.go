// Package ops holds the runtime's operations package as Go values: the alert
// rules of the operations runbook (docs/OPERATIONS_ALERTING.md), the Grafana
// dashboard, the generators that write them under deploy/monitoring/, and the
// checks that keep the committed files, the runbook and the metric catalogue
// in agreement.
//
// After changing anything here, regenerate and commit deploy/monitoring/:
//
//	go run ./cmd/oaruntime ops generate --dir .
package ops

//go:generate go run ../../cmd/oaruntime ops generate --dir ../..

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// Area is a dashboard row and a runbook section.
type Area string

const (
	AreaExecutor Area = "Executor"
	AreaHTTP     Area = "HTTP"
	AreaStreams  Area = "Streams"
	AreaLeases   Area = "Leases"
	AreaTools    Area = "Tools"
	AreaBreakers Area = "Breakers"
	AreaPolicy   Area = "Policy"
	AreaKhala    Area = "Khala"
	AreaTokens   Area = "Tokens"
	AreaParity   Area = "Parity"
	AreaHealth   Area = "Health"
)

// Areas lists the dashboard rows in order.
func Areas() []Area {
	return []Area{AreaExecutor, AreaHTTP, AreaStreams, AreaLeases, AreaTools, AreaBreakers,
		AreaPolicy, AreaKhala, AreaTokens, AreaParity, AreaHealth}
}

// Severities.
const (
	SeverityWarning  = "warning"
	SeverityCritical = "critical"
)

// Grafana unit ids used by panels. Every panel sets one.
const (
	UnitSeconds   = "s"
	UnitRatio     = "percentunit"
	UnitPerSecond = "cps"
	UnitReqPerSec = "reqps"
	UnitCount     = "short"
	UnitBool      = "bool_on_off"
)

// Comparison of the signal with the threshold.
type Comparison string

const (
	Above Comparison = ">"
	Below Comparison = "<"
)

// Service is the service label every alert carries.
const Service = "oaruntime"

// DefaultRunbookBaseURL is where the runbook annotation points.
const DefaultRunbookBaseURL = "https://github.com/oaruntime/oaruntime/blob/main/docs/OPERATIONS_ALERTING.md"

// Alert is one alerting rule of the runbook, with what the dashboard needs to
// draw its signal.
type Alert struct {
	Name          string
	Area          Area
	Severity      string
	PanelExpr     string     // the signal: Expr without the comparison
	Comparison    Comparison //
	Threshold     float64    // in the signal's unit (seconds, ratio 0-1, per second, count)
	Expr          string     // PanelExpr Comparison Threshold
	Window        time.Duration
	For           time.Duration
	Unit          string // Grafana unit id of the signal
	Summary       string
	Description   string // alert annotation template ({{ $value }}, {{ $labels.x }})
	RunbookAnchor string // heading anchor in docs/OPERATIONS_ALERTING.md
	RunbookURL    string
	PanelTitle    string
	Legend        string // Grafana legend format
	Condition     string // the threshold as an operator reads it, for docs and panel descriptions
	// GroupBy names the labels the alert keeps (one alert instance per group).
	GroupBy []string
}

// Options shape the generated rules. The zero value is production.
type Options struct {
	// TimeDivisor divides every window, `for` and offset (0 or 1: production).
	// 60 turns 10m into 10s, so tests can run the same rules against a real
	// Prometheus in seconds.
	TimeDivisor int
	// EvaluationInterval sets the rule group's interval; zero leaves it to
	// Prometheus's global evaluation_interval.
	EvaluationInterval time.Duration
	// RunbookBaseURL replaces DefaultRunbookBaseURL.
	RunbookBaseURL string
}

func (o Options) scale(d time.Duration) time.Duration {
	if o.TimeDivisor <= 1 || d == 0 {
		return d
	}
	s := (d / time.Duration(o.TimeDivisor)).Truncate(time.Second)
	if s < time.Second {
		s = time.Second
	}
	return s
}

func (o Options) runbookBase() string {
	if o.RunbookBaseURL != "" {
		return o.RunbookBaseURL
	}
	return DefaultRunbookBaseURL
}

// Label values the alerts select on; each is in telemetry.LabelValues (a test
// checks), so an emitter and its alert cannot silently disagree.
const (
	statusClass5xx   = "5xx"
	eventRunFinished = "run.finished"
	outcomeOK        = "ok"
	actionAcquire    = "acquire"
	resultStolen     = "stolen"
	phaseTerminal    = "terminal"
	resultFailed     = "failed"
	resultTimeout    = "timeout"
	resultOK         = "ok"
	resultError      = "error"
	decisionAllowed  = "allowed"
	routeMetrics     = "/metrics"
	routeHealthz     = "/healthz"
	routeReadyz      = "/readyz"
	targetLabelJob   = "job"
	targetLabelInst  = "instance"
)

// Alerts returns the runbook's alert rules in runbook order.
func Alerts(o Options) []Alert {
	w10 := o.scale(10 * time.Minute)
	w15 := o.scale(15 * time.Minute)
	f5 := o.scale(5 * time.Minute)
	f10 := o.scale(10 * time.Minute)
	f15 := o.scale(15 * time.Minute)
	d10, d15 := promDuration(w10), promDuration(w15)

	// Probes and scrapes are a constant background: they dilute the ratio at
	// low traffic, and /readyz answers 503 by design while a dependency is down
	// (db_up and the readiness probe report that).
	apiRoutes := fmt.Sprintf("route!~%q", strings.Join([]string{routeMetrics, routeHealthz, routeReadyz}, "|"))
	httpAll := selector(telemetry.HTTPRequests, apiRoutes)
	http5xx := selector(telemetry.HTTPRequests, apiRoutes, eq(telemetry.LabelStatusClass, statusClass5xx))

	finished := selector(telemetry.StreamEmits, eq(telemetry.LabelEventType, eventRunFinished), eq(telemetry.LabelOutcome, outcomeOK))
	steals := selector(telemetry.LeaseOperations, eq(telemetry.LabelAction, actionAcquire), eq(telemetry.LabelResult, resultStolen))
	toolFails := selector(telemetry.ToolLifecycle, eq(telemetry.LabelPhase, phaseTerminal), match(telemetry.LabelResult, resultFailed, resultTimeout))
	breakerOpen := selector(telemetry.ProviderBreakerState, eq(telemetry.LabelState, telemetry.BreakerOpen))
	denied := selector(telemetry.PolicyDecisions, neq(telemetry.LabelDecision, decisionAllowed))
	// Write failure ratio = failures / attempted writes. The numerator is the
	// failure counter the runbook names (it carries the reason class), not
	// writes_total{result="error"}: if an emitter ever recorded failures in only
	// one place, this way the alert still fires (overstating a little) rather
	// than never. Attempted writes are results ok and error; skipped
	// (idempotent, checkpoint_ahead) and dry_run decisions write nothing.
	writeAttempts := selector(telemetry.KhalaProjectionWrites, match(telemetry.LabelResult, resultOK, resultError))
	hashDrift := selector(telemetry.KhalaProjectionDriftIncidents, match(telemetry.LabelReasonClass, telemetry.DriftSummaryHashMismatch, telemetry.DriftHashAndLagDrift))
	replayErr := selector(telemetry.KhalaProjectionReplays, eq(telemetry.LabelResult, resultError))
	mintFail := selector(telemetry.KhalaTokenMint, neq(telemetry.LabelResult, resultOK))

	shard := []string{targetLabelJob, targetLabelInst}

	alerts := []Alert{
		{
			Name: "OpenAgentsRuntimeExecutorLatencyP95High", Area: AreaExecutor, Severity: SeverityWarning,
			PanelExpr: p95(telemetry.ExecutorRunOnceDuration, w10), Comparison: Above, Threshold: 5,
			Window: w10, For: f10, Unit: UnitSeconds,
			Summary:     "Executor run_once p95 latency above 5s",
			Description: "p95 of executor run_once duration over " + d10 + " is {{ $value | humanizeDuration }} (threshold 5s).",
			PanelTitle:  "Executor run_once p95 (" + d10 + ")", Legend: "p95",
			Condition: "p95 run_once duration > 5 s (5000 ms) over " + d10 + ", for " + promDuration(f10),
		},
		{
			Name: "OpenAgentsRuntimeHttp5xxRateHigh", Area: AreaHTTP, Severity: SeverityWarning,
			PanelExpr:  ratio(sumRate(http5xx, w10), sumRate(httpAll, w10)),
			Comparison: Above, Threshold: 0.02, Window: w10, For: f10, Unit: UnitRatio,
			Summary:     "HTTP 5xx ratio above 2%",
			Description: "{{ $value | humanizePercentage }} of API requests over " + d10 + " answered 5xx (threshold 2%).",
			PanelTitle:  "HTTP 5xx ratio (" + d10 + ")", Legend: "5xx ratio",
			Condition: "5xx responses / API requests > 2% over " + d10 + ", for " + promDuration(f10),
		},
		{
			Name: "OpenAgentsRuntimeStreamDoneRatioLow", Area: AreaStreams, Severity: SeverityWarning,
			// No run.finished emit at all is a ratio of 0, not an absent
			// series: the worst case must fire.
			PanelExpr:  ratio("("+sumRate(finished, w15)+" or vector(0))", sumRate(telemetry.StreamSessions, w15)),
			Comparison: Below, Threshold: 0.95, Window: w15, For: f15, Unit: UnitRatio,
			Summary:     "Stream run.finished/session ratio below 95%",
			Description: "Only {{ $value | humanizePercentage }} of stream sessions over " + d15 + " delivered run.finished (threshold 95%).",
			PanelTitle:  "Stream completion ratio: run.finished / sessions (" + d15 + ")", Legend: "done ratio",
			Condition: "run.finished emits / ended sessions < 95% over " + d15 + ", for " + promDuration(f15),
		},
		{
			Name: "OpenAgentsRuntimeLeaseStealRateHigh", Area: AreaLeases, Severity: SeverityWarning,
			PanelExpr:  sumRate(steals, w10),
			Comparison: Above, Threshold: 0.05, Window: w10, For: f10, Unit: UnitPerSecond,
			Summary:     "Lease steals above 0.05/s",
			Description: "Expired leases are being stolen at {{ $value | printf \"%.3f\" }}/s over " + d10 + " (threshold 0.05/s).",
			PanelTitle:  "Lease steals/s (" + d10 + ")", Legend: "steals/s",
			Condition: "acquire results `stolen` > 0.05/s over " + d10 + ", for " + promDuration(f10),
		},
		{
			Name: "OpenAgentsRuntimeToolFailureSpike", Area: AreaTools, Severity: SeverityWarning,
			PanelExpr:  sumRate(toolFails, w10),
			Comparison: Above, Threshold: 0.2, Window: w10, For: f10, Unit: UnitPerSecond,
			Summary:     "Tool failures and timeouts above 0.2/s",
			Description: "Tool calls end failed or timeout at {{ $value | printf \"%.3f\" }}/s over " + d10 + " (threshold 0.2/s).",
			PanelTitle:  "Tool terminal failed|timeout/s (" + d10 + ")", Legend: "failures/s",
			Condition: "terminal tool results `failed` or `timeout` > 0.2/s over " + d10 + ", for " + promDuration(f10),
		},
		{
			Name: "OpenAgentsRuntimeCircuitBreakerOpen", Area: AreaBreakers, Severity: SeverityCritical,
			// One alert per provider: the runbook's first action is to find the
			// provider, and two providers flapping in turn are not one breaker
			// open for 5m.
			PanelExpr:  aggregate("max", []string{telemetry.LabelProvider}, breakerOpen),
			Comparison: Above, Threshold: 0, Window: 0, For: f5, Unit: UnitCount,
			GroupBy:     []string{telemetry.LabelProvider},
			Summary:     "Circuit breaker open for provider {{ $labels.provider }}",
			Description: "The circuit breaker of provider {{ $labels.provider }} has been open for " + promDuration(f5) + "; calls fail fast or go to the fallback.",
			PanelTitle:  "Open circuit breakers by provider", Legend: "{{provider}}",
			Condition: "any provider breaker in state `open`, for " + promDuration(f5),
		},
		{
			Name: "OpenAgentsRuntimePolicyDenialAnomaly", Area: AreaPolicy, Severity: SeverityWarning,
			PanelExpr:  ratio(sumRate(denied, w10), sumRate(telemetry.PolicyDecisions, w10)),
			Comparison: Above, Threshold: 0.05, Window: w10, For: f10, Unit: UnitRatio,
			Summary:     "Policy non-allowed decisions above 5%",
			Description: "{{ $value | humanizePercentage }} of spend/policy decisions over " + d10 + " were not allowed (threshold 5%).",
			PanelTitle:  "Policy non-allowed ratio (" + d10 + ")", Legend: "denied ratio",
			Condition: "decisions other than `allowed` / all decisions > 5% over " + d10 + ", for " + promDuration(f10),
		},
		{
			Name: "OpenAgentsRuntimeKhalaProjectionLagP95High", Area: AreaKhala, Severity: SeverityWarning,
			PanelExpr:  p95(telemetry.KhalaProjectionLag, w10),
			Comparison: Above, Threshold: 25, Window: w10, For: f10, Unit: UnitCount,
			Summary:     "Khala projection lag p95 above 25 events",
			Description: "p95 projection lag over " + d10 + " is {{ $value | humanize }} runtime events (budget 25).",
			PanelTitle:  "Khala projection lag p95, events (" + d10 + ")", Legend: "lag p95",
			Condition: "p95 `lag_events` > 25 over " + d10 + ", for " + promDuration(f10),
		},
		{
			Name: "OpenAgentsRuntimeKhalaProjectionWriteFailureRatioHigh", Area: AreaKhala, Severity: SeverityCritical,
			PanelExpr:  ratio(sumRate(telemetry.KhalaProjectionWriteFailures, w10), sumRate(writeAttempts, w10)),
			Comparison: Above, Threshold: 0.01, Window: w10, For: f10, Unit: UnitRatio,
			Summary:     "Khala projection write failure ratio above 1%",
			Description: "{{ $value | humanizePercentage }} of attempted projection writes over " + d10 + " failed (budget 1%).",
			PanelTitle:  "Khala projection write failure ratio (" + d10 + ")", Legend: "failure ratio",
			Condition: "write failures / writes attempted (results `ok` + `error`) > 1% over " + d10 + ", for " + promDuration(f10),
		},
		{
			Name: "OpenAgentsRuntimeKhalaProjectionDriftIncidentsHigh", Area: AreaKhala, Severity: SeverityWarning,
			// Per shard (one serving process: job and instance). round() because
			// increase() extrapolates to the window edges and would turn exactly
			// 3 incidents, within budget, into 3.1.
			PanelExpr:  "round(" + aggregate("sum", shard, countIncrease(telemetry.KhalaProjectionDriftIncidents, w10)) + ")",
			Comparison: Above, Threshold: 3, Window: w10, For: 0, Unit: UnitCount,
			GroupBy:     shard,
			Summary:     "Khala projection drift incidents above 3 per " + d10 + " on {{ $labels.instance }}",
			Description: "{{ $value | humanize }} projection drift incidents in the last " + d10 + " on {{ $labels.instance }} (budget 3 per " + d10 + " per shard).",
			PanelTitle:  "Khala drift incidents per shard (" + d10 + ")", Legend: "{{instance}}",
			Condition: "more than 3 drift incidents in " + d10 + " on one shard (serving instance), fires at once",
		},
		{
			Name: "OpenAgentsRuntimeKhalaProjectionHashMismatchDetected", Area: AreaKhala, Severity: SeverityCritical,
			PanelExpr:  aggregate("sum", nil, countIncrease(hashDrift, w10)),
			Comparison: Above, Threshold: 0, Window: w10, For: 0, Unit: UnitCount,
			Summary:     "Khala projection hash mismatch detected",
			Description: "{{ $value | humanize }} summary_hash_mismatch / hash_and_lag_drift incidents in the last " + d10 + ": replay determinism is broken.",
			PanelTitle:  "Khala hash mismatch incidents (" + d10 + ")", Legend: "hash mismatches",
			Condition: "any `summary_hash_mismatch` or `hash_and_lag_drift` incident in " + d10 + ", fires at once",
		},
		{
			Name: "OpenAgentsRuntimeKhalaProjectionReplayFailures", Area: AreaKhala, Severity: SeverityCritical,
			PanelExpr:  aggregate("sum", nil, countIncrease(replayErr, w15)),
			Comparison: Above, Threshold: 0, Window: w15, For: 0, Unit: UnitCount,
			Summary:     "Khala projection replay failed",
			Description: "{{ $value | humanize }} projection replays failed in the last " + d15 + "; replay failures block promotion.",
			PanelTitle:  "Khala replay failures (" + d15 + ")", Legend: "replay failures",
			Condition: "any replay with result `error` in " + d15 + ", fires at once",
		},
		{
			Name: "OpenAgentsKhalaTokenMintFailureRatioHigh", Area: AreaTokens, Severity: SeverityWarning,
			PanelExpr:  ratio(sumRate(mintFail, w15), sumRate(telemetry.KhalaTokenMint, w15)),
			Comparison: Above, Threshold: 0.01, Window: w15, For: f15, Unit: UnitRatio,
			Summary:     "Khala token mint failure ratio above 1%",
			Description: "{{ $value | humanizePercentage }} of sync token mints over " + d15 + " failed (threshold 1%).",
			PanelTitle:  "Token mint failure ratio (" + d15 + ")", Legend: "failure ratio",
			Condition: "mints with result other than `ok` / all mints > 1% over " + d15 + ", for " + promDuration(f15),
		},
		{
			// Not in the runbook's matrix; the runbook's "parity failure class
			// spikes" section needs an alert to be noticed. 0.05/s is 30 failures
			// in 10 minutes in one class: well above the occasional loop or
			// egress block, low enough to catch a regression lane.
			Name: "OpenAgentsRuntimeParityFailureSpike", Area: AreaParity, Severity: SeverityWarning,
			PanelExpr:  sumRate(telemetry.ParityFailures, w10, telemetry.LabelClass),
			Comparison: Above, Threshold: 0.05, Window: w10, For: f10, Unit: UnitPerSecond,
			GroupBy:     []string{telemetry.LabelClass},
			Summary:     "Parity failures of class {{ $labels.class }} above 0.05/s",
			Description: "Parity failures of class {{ $labels.class }} at {{ $value | printf \"%.3f\" }}/s over " + d10 + " (threshold 0.05/s).",
			PanelTitle:  "Parity failures/s by class (" + d10 + ")", Legend: "{{class}}",
			Condition: "parity failures of one class > 0.05/s over " + d10 + ", for " + promDuration(f10),
		},
	}
	for i := range alerts {
		a := &alerts[i]
		a.Expr = a.PanelExpr + " " + string(a.Comparison) + " " + formatThreshold(a.Threshold)
		a.RunbookAnchor = strings.ToLower(a.Name)
		a.RunbookURL = o.runbookBase() + "#" + a.RunbookAnchor
	}
	return alerts
}

func formatThreshold(v float64) string {
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// KnownCommands are the oaruntime subcommands the runbook may tell an operator
// to run. cmd/oaruntime must implement each; the docs test refuses any other.
func KnownCommands() []string {
	return []string{
		"serve",
		"run",
		"migrate",
		"khala reproject",
		"khala verify",
		"token mint",
		"ops generate",
		"ops check",
		"ops rules",
		"tools policy-check",
		"loadgen",
	}
}
