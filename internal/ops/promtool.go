package ops

import (
	"fmt"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// PromtoolTestPath is the promtool unit test file of the committed rule file.
const PromtoolTestPath = PromtoolTestDir + "/runtime-alert-rules.test.yml"

// CaseKind says what an alert test case demonstrates. Every alert has at
// least one case of each kind (a test checks).
type CaseKind string

const (
	CaseFires CaseKind = "fires"
	CaseUnder CaseKind = "just under the threshold"
	CaseZero  CaseKind = "zero traffic"
)

// AlertCase is one promtool test group for one alert: input series at a 1m
// scrape interval and the alerts expected firing at given times.
type AlertCase struct {
	Alert  string
	Kind   CaseKind
	Name   string
	Series []Series
	Evals  []Eval
}

// Series is a promtool input series: either Values in expanding notation
// ("_x13 1x15") or, for a counter, an increment per sample.
type Series struct {
	Selector string
	Values   string
	// PerSample and Samples describe a counter growing from 0. Kept apart
	// from Values so a time-scaled run can scale the increment and keep every
	// rate (per second) the same.
	PerSample float64
	Samples   int
}

func (s Series) values(divisor int) string {
	if s.Values != "" {
		return s.Values
	}
	inc := s.PerSample
	if divisor > 1 {
		inc /= float64(divisor)
	}
	return fmt.Sprintf("0+%sx%d", strconv.FormatFloat(inc, 'g', -1, 64), s.Samples)
}

// Eval expects exactly the listed alert instances firing at At.
type Eval struct {
	At    time.Duration
	Fires []Firing
}

// Firing is one expected alert instance: its grouping labels and $value as
// the description template renders it.
type Firing struct {
	Labels map[string]string
	Value  string
}

const (
	job  = `job="oaruntime"`
	inst = `instance="10.0.0.1:4100"`
)

// counter is a counter growing by perMinute per 1m sample, for steps samples.
func counter(sel string, perMinute float64, steps int) Series {
	return Series{Selector: sel, PerSample: perMinute, Samples: steps}
}

func fires(at time.Duration, value string, labels ...string) Eval {
	f := Firing{Value: value, Labels: map[string]string{}}
	for i := 0; i+1 < len(labels); i += 2 {
		f.Labels[labels[i]] = labels[i+1]
	}
	return Eval{At: at, Fires: []Firing{f}}
}

func quiet(at time.Duration) Eval { return Eval{At: at} }

func lbl(metric string, pairs ...string) string {
	return selector(metric, append(pairs, job, inst)...)
}

// AlertCases are the promtool tests of the alert rules. Values are worked out
// by hand in the comments, so a rule that computes something else fails.
func AlertCases() []AlertCase {
	m := time.Minute
	runOnce := telemetry.ExecutorRunOnceDuration + "_bucket"
	lag := telemetry.KhalaProjectionLag + "_bucket"
	bucket := func(metric, le string, perMinute float64, extra ...string) Series {
		return counter(lbl(metric, append([]string{`le="` + le + `"`}, extra...)...), perMinute, 30)
	}
	api := func(class string, perMinute float64) Series {
		return counter(lbl(telemetry.HTTPRequests, `route="/internal/v1/runs"`, `method="POST"`, `status_class="`+class+`"`), perMinute, 30)
	}
	sessions := func(outcome string, perMinute float64) Series {
		return counter(lbl(telemetry.StreamSessions, `outcome="`+outcome+`"`), perMinute, 40)
	}
	finished := func(perMinute float64) Series {
		return counter(lbl(telemetry.StreamEmits, `event_type="run.finished"`, `outcome="ok"`), perMinute, 40)
	}
	lease := func(action, result string, perMinute float64) Series {
		return counter(lbl(telemetry.LeaseOperations, `action="`+action+`"`, `result="`+result+`"`), perMinute, 30)
	}
	tool := func(name, phase, result string, perMinute float64) Series {
		return counter(lbl(telemetry.ToolLifecycle, `tool="`+name+`"`, `phase="`+phase+`"`, `result="`+result+`"`), perMinute, 30)
	}
	breaker := func(provider, state, values string) Series {
		return Series{Selector: lbl(telemetry.ProviderBreakerState, `provider="`+provider+`"`, `state="`+state+`"`), Values: values}
	}
	policy := func(decision, reason string, perMinute float64) Series {
		return counter(lbl(telemetry.PolicyDecisions, `decision="`+decision+`"`, `reason="`+reason+`"`), perMinute, 30)
	}
	writes := func(result string, perMinute float64) Series {
		return counter(lbl(telemetry.KhalaProjectionWrites, `projection="run_summary"`, `result="`+result+`"`), perMinute, 30)
	}
	writeFailures := func(perMinute float64) Series {
		return counter(lbl(telemetry.KhalaProjectionWriteFailures, `projection="run_summary"`, `reason_class="khala_error"`), perMinute, 30)
	}
	drift := func(reason, instance, values string) Series {
		return Series{Selector: selector(telemetry.KhalaProjectionDriftIncidents, `projection="run_summary"`, `reason_class="`+reason+`"`, job, `instance="`+instance+`"`), Values: values}
	}
	replay := func(result, values string) Series {
		return Series{Selector: lbl(telemetry.KhalaProjectionReplays, `scope="run"`, `result="`+result+`"`), Values: values}
	}
	mint := func(result, class string, perMinute float64) Series {
		return counter(lbl(telemetry.KhalaTokenMint, `result="`+result+`"`, `failure_class="`+class+`"`), perMinute, 40)
	}
	parity := func(class, reason, component string, perMinute float64) Series {
		return counter(lbl(telemetry.ParityFailures, `class="`+class+`"`, `reason_class="`+reason+`"`, `component="`+component+`"`), perMinute, 30)
	}
	shardA, shardB := "10.0.0.1:4100", "10.0.0.2:4100"
	// A rate over a counter born at 0 grows through its first window (there
	// is no earlier sample to extrapolate from), so absolute-rate alerts
	// become true about one window in and fire one `for` later: 22m, not 12m.

	return []AlertCase{
		// 1. Executor p95. All requests in (5, 10]: p95 = 5 + 5*0.95 = 9.75 s.
		{Alert: "OpenAgentsRuntimeExecutorLatencyP95High", Kind: CaseFires, Name: "every run_once between 5 s and 10 s",
			Series: []Series{bucket(runOnce, "2.5", 0), bucket(runOnce, "5", 0), bucket(runOnce, "10", 60), bucket(runOnce, "+Inf", 60)},
			Evals:  []Eval{quiet(5 * m), fires(12*m, "9.75s")}},
		// 96% within 5 s: p95 = 2.5 + 2.5*0.95/0.96 = 4.97 s.
		{Alert: "OpenAgentsRuntimeExecutorLatencyP95High", Kind: CaseUnder, Name: "p95 4.97 s",
			Series: []Series{bucket(runOnce, "2.5", 0), bucket(runOnce, "5", 96), bucket(runOnce, "10", 100), bucket(runOnce, "+Inf", 100)},
			Evals:  []Eval{quiet(25 * m)}},
		{Alert: "OpenAgentsRuntimeExecutorLatencyP95High", Kind: CaseZero, Name: "no run_once calls",
			Series: []Series{bucket(runOnce, "5", 0), bucket(runOnce, "+Inf", 0)},
			Evals:  []Eval{quiet(25 * m)}},

		// 2. HTTP 5xx ratio 3/100.
		{Alert: "OpenAgentsRuntimeHttp5xxRateHigh", Kind: CaseFires, Name: "3% of API requests answer 5xx",
			Series: []Series{api("2xx", 97), api("5xx", 3)},
			Evals:  []Eval{quiet(5 * m), fires(12*m, "3%")}},
		// 1.9% of API requests; the /readyz 503s of a probe are not API
		// traffic (counted, the ratio would be 51.9/150 = 35%).
		{Alert: "OpenAgentsRuntimeHttp5xxRateHigh", Kind: CaseUnder, Name: "1.9% of API requests, plus failing readiness probes",
			Series: []Series{api("2xx", 98.1), api("5xx", 1.9),
				counter(lbl(telemetry.HTTPRequests, `route="/readyz"`, `method="GET"`, `status_class="5xx"`), 50, 30)},
			Evals: []Eval{quiet(25 * m)}},
		{Alert: "OpenAgentsRuntimeHttp5xxRateHigh", Kind: CaseZero, Name: "no requests",
			Series: []Series{api("2xx", 0), api("5xx", 0)},
			Evals:  []Eval{quiet(25 * m)}},

		// 3. Stream completion 90/100 sessions.
		{Alert: "OpenAgentsRuntimeStreamDoneRatioLow", Kind: CaseFires, Name: "90% of sessions deliver run.finished",
			Series: []Series{sessions("finished", 90), sessions("client_closed", 10), finished(90),
				counter(lbl(telemetry.StreamEmits, `event_type="run.delta"`, `outcome="ok"`), 900, 40)},
			Evals: []Eval{quiet(14 * m), fires(20*m, "90%")}},
		{Alert: "OpenAgentsRuntimeStreamDoneRatioLow", Kind: CaseFires, Name: "sessions end but run.finished is never emitted",
			Series: []Series{sessions("tail_timeout", 10)},
			Evals:  []Eval{fires(20*m, "0%")}},
		{Alert: "OpenAgentsRuntimeStreamDoneRatioLow", Kind: CaseUnder, Name: "95.5% of sessions deliver run.finished",
			Series: []Series{sessions("finished", 95.5), sessions("client_closed", 4.5), finished(95.5)},
			Evals:  []Eval{quiet(30 * m)}},
		{Alert: "OpenAgentsRuntimeStreamDoneRatioLow", Kind: CaseZero, Name: "no sessions",
			Series: []Series{sessions("finished", 0), finished(0)},
			Evals:  []Eval{quiet(30 * m)}},

		// 4. Lease steals 3.6/min = 0.06/s.
		{Alert: "OpenAgentsRuntimeLeaseStealRateHigh", Kind: CaseFires, Name: "0.06 steals/s",
			Series: []Series{lease("acquire", "stolen", 3.6), lease("renew", "renewed", 600)},
			Evals:  []Eval{quiet(12 * m), fires(22*m, "0.060")}},
		{Alert: "OpenAgentsRuntimeLeaseStealRateHigh", Kind: CaseUnder, Name: "0.048 steals/s",
			Series: []Series{lease("acquire", "stolen", 2.9), lease("acquire", "acquired", 600)},
			Evals:  []Eval{quiet(25 * m)}},
		{Alert: "OpenAgentsRuntimeLeaseStealRateHigh", Kind: CaseZero, Name: "no lease operations",
			Series: []Series{lease("acquire", "stolen", 0)},
			Evals:  []Eval{quiet(25 * m)}},

		// 5. Tool failures (9 failed + 6 timeout)/min = 0.25/s.
		{Alert: "OpenAgentsRuntimeToolFailureSpike", Kind: CaseFires, Name: "0.25 failed|timeout/s",
			Series: []Series{tool("echo", "terminal", "failed", 9), tool("http.fetch", "terminal", "timeout", 6),
				tool("echo", "terminal", "succeeded", 600), tool("echo", "run", "started", 600)},
			Evals: []Eval{quiet(12 * m), fires(22*m, "0.250")}},
		// (6 + 5.4)/60 = 0.19/s; canceled is not a failure.
		{Alert: "OpenAgentsRuntimeToolFailureSpike", Kind: CaseUnder, Name: "0.19 failed|timeout/s",
			Series: []Series{tool("echo", "terminal", "failed", 6), tool("http.fetch", "terminal", "timeout", 5.4),
				tool("sleep", "terminal", "canceled", 60)},
			Evals: []Eval{quiet(25 * m)}},
		{Alert: "OpenAgentsRuntimeToolFailureSpike", Kind: CaseZero, Name: "no tool calls",
			Series: []Series{tool("echo", "terminal", "failed", 0)},
			Evals:  []Eval{quiet(25 * m)}},

		// 6. Breaker open for 5m (one alert per provider).
		{Alert: "OpenAgentsRuntimeCircuitBreakerOpen", Kind: CaseFires, Name: "openai breaker open 10 minutes",
			Series: []Series{breaker("openai", "open", "1x10"), breaker("openai", "closed", "0x10"), breaker("scripted", "open", "0x10")},
			Evals:  []Eval{quiet(3 * m), fires(6*m, "1", "provider", "openai")}},
		{Alert: "OpenAgentsRuntimeCircuitBreakerOpen", Kind: CaseUnder, Name: "open 4 minutes, then closed",
			Series: []Series{breaker("openai", "open", "1 1 1 1 0 0 0 0 0 0 0")},
			Evals:  []Eval{quiet(3 * m), quiet(8 * m)}},
		{Alert: "OpenAgentsRuntimeCircuitBreakerOpen", Kind: CaseZero, Name: "all breakers closed",
			Series: []Series{breaker("openai", "open", "0x10"), breaker("openai", "closed", "1x10")},
			Evals:  []Eval{quiet(8 * m)}},

		// 7. Policy: 6 denied of 100.
		{Alert: "OpenAgentsRuntimePolicyDenialAnomaly", Kind: CaseFires, Name: "6% denied",
			Series: []Series{policy("denied", "budget_exhausted", 6), policy("allowed", "allowed", 94)},
			Evals:  []Eval{quiet(5 * m), fires(12*m, "6%")}},
		{Alert: "OpenAgentsRuntimePolicyDenialAnomaly", Kind: CaseUnder, Name: "4.9% denied",
			Series: []Series{policy("denied", "denied_tool_not_allowed", 4.9), policy("allowed", "allowed", 95.1)},
			Evals:  []Eval{quiet(25 * m)}},
		{Alert: "OpenAgentsRuntimePolicyDenialAnomaly", Kind: CaseZero, Name: "no decisions",
			Series: []Series{policy("denied", "budget_exhausted", 0), policy("allowed", "allowed", 0)},
			Evals:  []Eval{quiet(25 * m)}},

		// 8. Lag: every write decided with lag in (25, 50]: p95 = 25 + 25*0.95 = 48.75.
		{Alert: "OpenAgentsRuntimeKhalaProjectionLagP95High", Kind: CaseFires, Name: "lag between 25 and 50 events",
			Series: []Series{bucket(lag, "10", 0, `projection="run_summary"`), bucket(lag, "25", 0, `projection="run_summary"`),
				bucket(lag, "50", 60, `projection="run_summary"`), bucket(lag, "+Inf", 60, `projection="run_summary"`)},
			Evals: []Eval{quiet(5 * m), fires(12*m, "48.75")}},
		// 96% within 25: p95 = 10 + 15*0.95/0.96 = 24.84.
		{Alert: "OpenAgentsRuntimeKhalaProjectionLagP95High", Kind: CaseUnder, Name: "p95 24.84 events",
			Series: []Series{bucket(lag, "10", 0, `projection="run_summary"`), bucket(lag, "25", 96, `projection="run_summary"`),
				bucket(lag, "50", 100, `projection="run_summary"`), bucket(lag, "+Inf", 100, `projection="run_summary"`)},
			Evals: []Eval{quiet(25 * m)}},
		{Alert: "OpenAgentsRuntimeKhalaProjectionLagP95High", Kind: CaseZero, Name: "no projection writes",
			Series: []Series{bucket(lag, "25", 0, `projection="run_summary"`), bucket(lag, "+Inf", 0, `projection="run_summary"`)},
			Evals:  []Eval{quiet(25 * m)}},

		// 9. Write failures 2 of 100 attempts; 500 skips are not attempts
		// (counted, the ratio would be 0.3%).
		{Alert: "OpenAgentsRuntimeKhalaProjectionWriteFailureRatioHigh", Kind: CaseFires, Name: "2% of attempted writes fail",
			Series: []Series{writes("ok", 98), writes("error", 2), writes("skipped", 500), writeFailures(2)},
			Evals:  []Eval{quiet(5 * m), fires(12*m, "2%")}},
		{Alert: "OpenAgentsRuntimeKhalaProjectionWriteFailureRatioHigh", Kind: CaseUnder, Name: "0.9% of attempted writes fail",
			Series: []Series{writes("ok", 99.1), writes("error", 0.9), writeFailures(0.9)},
			Evals:  []Eval{quiet(25 * m)}},
		{Alert: "OpenAgentsRuntimeKhalaProjectionWriteFailureRatioHigh", Kind: CaseZero, Name: "no writes",
			Series: []Series{writes("ok", 0), writeFailures(0)},
			Evals:  []Eval{quiet(25 * m)}},

		// 10. Drift: 4 incidents at 13-16m on one shard; 10 minutes later
		// they have left the window.
		{Alert: "OpenAgentsRuntimeKhalaProjectionDriftIncidentsHigh", Kind: CaseFires, Name: "4 incidents in 10m on one shard",
			Series: []Series{drift("checkpoint_ahead", shardA, "0x12 1 2 3 4x10")},
			Evals:  []Eval{quiet(15 * m), fires(17*m, "4", "job", "oaruntime", "instance", shardA), quiet(27 * m)}},
		// A parity audit that finds 4 incidents in one pass, in a series
		// born at 4 (increase() alone would see 0).
		{Alert: "OpenAgentsRuntimeKhalaProjectionDriftIncidentsHigh", Kind: CaseFires, Name: "first incidents after start",
			Series: []Series{drift("khala_missing", shardA, "_x13 4x5")},
			Evals:  []Eval{fires(14*m, "4", "job", "oaruntime", "instance", shardA)}},
		// 3 is within budget; so are 3 on one shard and 2 on another (5 in
		// total: the budget is per shard).
		{Alert: "OpenAgentsRuntimeKhalaProjectionDriftIncidentsHigh", Kind: CaseUnder, Name: "3 on one shard, 2 on another",
			Series: []Series{drift("checkpoint_ahead", shardA, "0x12 1 2 3x10"),
				drift("projection_version_changed", shardB, "0x12 1 2x10")},
			// At 16m30s the last sample is 30s old and increase() extrapolates
			// 3 to 3.17: round() keeps exactly-at-budget quiet.
			Evals: []Eval{quiet(16 * m), quiet(16*m + 30*time.Second), quiet(18 * m)}},
		{Alert: "OpenAgentsRuntimeKhalaProjectionDriftIncidentsHigh", Kind: CaseZero, Name: "no drift",
			Series: []Series{drift("checkpoint_ahead", shardA, "0x30"), drift("checkpoint_ahead", shardB, "0x30")},
			Evals:  []Eval{quiet(20 * m)}},

		// 11. Hash mismatch: the first incident of a series born at 1.
		// Shard B's older series, quiet, must not mask shard A's new one.
		{Alert: "OpenAgentsRuntimeKhalaProjectionHashMismatchDetected", Kind: CaseFires, Name: "first summary_hash_mismatch after start",
			Series: []Series{drift("summary_hash_mismatch", shardA, "_x13 1x15"), drift("summary_hash_mismatch", shardB, "2x30")},
			Evals:  []Eval{fires(15*m, "1"), fires(22*m, "1"), quiet(24 * m)}},
		{Alert: "OpenAgentsRuntimeKhalaProjectionHashMismatchDetected", Kind: CaseFires, Name: "one hash_and_lag_drift from the parity auditor",
			Series: []Series{drift("hash_and_lag_drift", shardA, "0x12 1x15")},
			Evals:  []Eval{quiet(12 * m), fires(14*m, "1"), quiet(25 * m)}},
		// Other drift reasons are not hash mismatches (this is the smallest
		// step above zero: the threshold is "any").
		{Alert: "OpenAgentsRuntimeKhalaProjectionHashMismatchDetected", Kind: CaseUnder, Name: "drift of other reasons only",
			Series: []Series{drift("projection_version_changed", shardA, "0x12 1 2 3x10"), drift("checkpoint_ahead", shardA, "_x13 2x5")},
			Evals:  []Eval{quiet(14 * m), quiet(16 * m)}},
		{Alert: "OpenAgentsRuntimeKhalaProjectionHashMismatchDetected", Kind: CaseZero, Name: "no drift",
			Series: []Series{drift("summary_hash_mismatch", shardA, "0x30")},
			Evals:  []Eval{quiet(20 * m)}},

		// 12. Replay failures within 15m.
		{Alert: "OpenAgentsRuntimeKhalaProjectionReplayFailures", Kind: CaseFires, Name: "first replay error after start",
			Series: []Series{replay("error", "_x5 1x30")},
			Evals:  []Eval{fires(7*m, "1"), fires(19*m, "1"), quiet(21 * m)}},
		{Alert: "OpenAgentsRuntimeKhalaProjectionReplayFailures", Kind: CaseFires, Name: "a replay error on a running series",
			Series: []Series{replay("error", "0x20 1x30"), replay("ok", "0+1x50")},
			Evals:  []Eval{quiet(20 * m), fires(22*m, "1"), quiet(37 * m)}},
		{Alert: "OpenAgentsRuntimeKhalaProjectionReplayFailures", Kind: CaseUnder, Name: "replays succeed",
			Series: []Series{replay("ok", "0+1x30"), replay("error", "0x30")},
			Evals:  []Eval{quiet(20 * m)}},
		{Alert: "OpenAgentsRuntimeKhalaProjectionReplayFailures", Kind: CaseZero, Name: "no replays",
			Series: nil,
			Evals:  []Eval{quiet(20 * m)}},

		// 13. Token mint failures 2 of 100.
		{Alert: "OpenAgentsKhalaTokenMintFailureRatioHigh", Kind: CaseFires, Name: "2% of mints fail",
			Series: []Series{mint("ok", "none", 98), mint("error", "signing_error", 2)},
			Evals:  []Eval{quiet(14 * m), fires(20*m, "2%")}},
		{Alert: "OpenAgentsKhalaTokenMintFailureRatioHigh", Kind: CaseUnder, Name: "0.9% of mints fail",
			Series: []Series{mint("ok", "none", 99.1), mint("error", "authz_denied", 0.9)},
			Evals:  []Eval{quiet(30 * m)}},
		{Alert: "OpenAgentsKhalaTokenMintFailureRatioHigh", Kind: CaseZero, Name: "no mints",
			Series: []Series{mint("ok", "none", 0), mint("error", "signing_error", 0)},
			Evals:  []Eval{quiet(30 * m)}},

		// 14. Parity: loop at 4/min = 0.067/s; policy at 0.033/s stays quiet.
		{Alert: "OpenAgentsRuntimeParityFailureSpike", Kind: CaseFires, Name: "loop failures 0.067/s",
			Series: []Series{parity("loop", "loop_detected.no_progress", "executor", 4), parity("policy", "budget_exhausted", "spend", 2)},
			Evals:  []Eval{quiet(12 * m), fires(22*m, "0.067", "class", "loop")}},
		{Alert: "OpenAgentsRuntimeParityFailureSpike", Kind: CaseUnder, Name: "network blocks 0.048/s",
			Series: []Series{parity("network", "ssrf_block.private_address", "tools.network", 2.9)},
			Evals:  []Eval{quiet(25 * m)}},
		{Alert: "OpenAgentsRuntimeParityFailureSpike", Kind: CaseZero, Name: "no parity failures",
			Series: []Series{parity("workflow", "output_schema_violation", "workflow", 0)},
			Evals:  []Eval{quiet(25 * m)}},
	}
}

type promtoolFile struct {
	RuleFiles          []string        `yaml:"rule_files"`
	EvaluationInterval string          `yaml:"evaluation_interval"`
	Tests              []promtoolGroup `yaml:"tests"`
}

type promtoolGroup struct {
	Name        string          `yaml:"name"`
	Interval    string          `yaml:"interval"`
	InputSeries []promtoolInput `yaml:"input_series"`
	AlertTests  []promtoolAlert `yaml:"alert_rule_test"`
}

type promtoolInput struct {
	Series string `yaml:"series"`
	Values string `yaml:"values"`
}

type promtoolAlert struct {
	EvalTime  string             `yaml:"eval_time"`
	AlertName string             `yaml:"alertname"`
	ExpAlerts []promtoolExpAlert `yaml:"exp_alerts"`
}

type promtoolExpAlert struct {
	ExpLabels      map[string]string `yaml:"exp_labels"`
	ExpAnnotations map[string]string `yaml:"exp_annotations"`
}

// PromtoolTests renders the promtool unit test file of the committed rule
// file (RuleFilePath, referenced relative to the test file).
func PromtoolTests() ([]byte, error) {
	return PromtoolTestsFor(Options{}, "../runtime-alert-rules.rules.yml")
}

// PromtoolTestsFor renders the same cases for rules generated with o, read
// from ruleFile. With a TimeDivisor, samples come every 1m/divisor, eval
// times shrink by the divisor and counter increments too (so rates per
// second, ratios, quantiles and counts are unchanged): the scaled rules must
// pass the very cases the production rules pass.
func PromtoolTestsFor(o Options, ruleFile string) ([]byte, error) {
	div := max(o.TimeDivisor, 1)
	byName := map[string]Alert{}
	for _, a := range Alerts(o) {
		byName[a.Name] = a
	}
	// Rules evaluate every 30s against 1m samples, so some evaluations fall
	// between samples, where increase() extrapolates (see the drift cases).
	step := time.Minute / time.Duration(div)
	f := promtoolFile{RuleFiles: []string{ruleFile}, EvaluationInterval: promDuration(step / 2)}
	for _, c := range AlertCases() {
		a, ok := byName[c.Alert]
		if !ok {
			return nil, fmt.Errorf("promtool case %q: no alert %s", c.Name, c.Alert)
		}
		g := promtoolGroup{Name: c.Alert + ": " + string(c.Kind) + ": " + c.Name, Interval: promDuration(step), InputSeries: []promtoolInput{}}
		for _, s := range c.Series {
			g.InputSeries = append(g.InputSeries, promtoolInput{Series: s.Selector, Values: s.values(div)})
		}
		for _, e := range c.Evals {
			t := promtoolAlert{EvalTime: promDuration(e.At / time.Duration(div)), AlertName: a.Name, ExpAlerts: []promtoolExpAlert{}}
			for _, fi := range e.Fires {
				exp, err := expectedAlert(a, fi)
				if err != nil {
					return nil, fmt.Errorf("promtool case %q: %w", c.Name, err)
				}
				t.ExpAlerts = append(t.ExpAlerts, exp)
			}
			g.AlertTests = append(g.AlertTests, t)
		}
		f.Tests = append(f.Tests, g)
	}
	return marshalYAML(f)
}

// expectedAlert renders the labels and annotations Prometheus will attach,
// with the template's value formatters replaced by the hand-computed value:
// a formatter the rule file misuses still fails in promtool.
func expectedAlert(a Alert, fi Firing) (promtoolExpAlert, error) {
	labels := map[string]string{"severity": a.Severity, "service": Service}
	for k, v := range fi.Labels {
		labels[k] = v
	}
	render := func(text string) (string, error) {
		fixed := func(any) string { return fi.Value }
		funcs := template.FuncMap{
			"humanize": fixed, "humanizePercentage": fixed, "humanizeDuration": fixed,
			"printf": func(string, any) string { return fi.Value },
		}
		// Prometheus defines $value and $labels before the annotation text.
		src := `{{ $value := 0 }}{{ $labels := .Labels }}` + text
		t, err := template.New(a.Name).Funcs(funcs).Parse(src)
		if err != nil {
			return "", fmt.Errorf("parse annotation of %s: %w", a.Name, err)
		}
		var b strings.Builder
		if err := t.Execute(&b, struct{ Labels map[string]string }{labels}); err != nil {
			return "", fmt.Errorf("render annotation of %s: %w", a.Name, err)
		}
		return b.String(), nil
	}
	summary, err := render(a.Summary)
	if err != nil {
		return promtoolExpAlert{}, err
	}
	desc, err := render(a.Description)
	if err != nil {
		return promtoolExpAlert{}, err
	}
	return promtoolExpAlert{
		ExpLabels: labels,
		ExpAnnotations: map[string]string{
			"summary": summary, "description": desc,
			"runbook": a.RunbookURL, "runbook_url": a.RunbookURL,
		},
	}, nil
}
