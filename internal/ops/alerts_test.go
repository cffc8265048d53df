package ops

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// The runbook's alert matrix (docs/OPERATIONS_ALERTING.md, seed runbook):
// names, thresholds, windows and `for` exactly as written there.
func TestAlertMatrixMatchesRunbook(t *testing.T) {
	m := time.Minute
	tests := []struct {
		name      string
		severity  string
		cmp       Comparison
		threshold float64
		window    time.Duration
		forDur    time.Duration
		fragments []string // must appear in the expression
	}{
		{"OpenAgentsRuntimeExecutorLatencyP95High", SeverityWarning, Above, 5, 10 * m, 10 * m,
			[]string{"histogram_quantile(0.95, sum by (le) (rate(" + telemetry.ExecutorRunOnceDuration + "_bucket[10m])))"}},
		{"OpenAgentsRuntimeHttp5xxRateHigh", SeverityWarning, Above, 0.02, 10 * m, 10 * m,
			[]string{`status_class="5xx"}[10m]`, telemetry.HTTPRequests, " > 0)"}},
		{"OpenAgentsRuntimeStreamDoneRatioLow", SeverityWarning, Below, 0.95, 15 * m, 15 * m,
			[]string{`event_type="run.finished"`, telemetry.StreamSessions + "[15m]", "or vector(0)", " > 0)"}},
		{"OpenAgentsRuntimeLeaseStealRateHigh", SeverityWarning, Above, 0.05, 10 * m, 10 * m,
			[]string{`rate(` + telemetry.LeaseOperations + `{action="acquire",result="stolen"}[10m])`}},
		{"OpenAgentsRuntimeToolFailureSpike", SeverityWarning, Above, 0.2, 10 * m, 10 * m,
			[]string{`{phase="terminal",result=~"failed|timeout"}[10m]`}},
		{"OpenAgentsRuntimeCircuitBreakerOpen", SeverityCritical, Above, 0, 0, 5 * m,
			[]string{`max by (provider) (` + telemetry.ProviderBreakerState + `{state="open"})`}},
		{"OpenAgentsRuntimePolicyDenialAnomaly", SeverityWarning, Above, 0.05, 10 * m, 10 * m,
			[]string{`{decision!="allowed"}[10m]`, " > 0)"}},
		{"OpenAgentsRuntimeKhalaProjectionLagP95High", SeverityWarning, Above, 25, 10 * m, 10 * m,
			[]string{"histogram_quantile(0.95, sum by (le) (rate(" + telemetry.KhalaProjectionLag + "_bucket[10m])))"}},
		{"OpenAgentsRuntimeKhalaProjectionWriteFailureRatioHigh", SeverityCritical, Above, 0.01, 10 * m, 10 * m,
			[]string{telemetry.KhalaProjectionWriteFailures + "[10m]", `{result=~"ok|error"}[10m]`, " > 0)"}},
		{"OpenAgentsRuntimeKhalaProjectionDriftIncidentsHigh", SeverityWarning, Above, 3, 10 * m, 0,
			[]string{"sum by (job, instance)", "increase(" + telemetry.KhalaProjectionDriftIncidents + "[10m])", "offset 10m"}},
		{"OpenAgentsRuntimeKhalaProjectionHashMismatchDetected", SeverityCritical, Above, 0, 10 * m, 0,
			[]string{`reason_class=~"summary_hash_mismatch|hash_and_lag_drift"}[10m]`}},
		{"OpenAgentsRuntimeKhalaProjectionReplayFailures", SeverityCritical, Above, 0, 15 * m, 0,
			[]string{telemetry.KhalaProjectionReplays + `{result="error"}[15m]`}},
		{"OpenAgentsKhalaTokenMintFailureRatioHigh", SeverityWarning, Above, 0.01, 15 * m, 15 * m,
			[]string{telemetry.KhalaTokenMint + `{result!="ok"}[15m]`, " > 0)"}},
		{"OpenAgentsRuntimeParityFailureSpike", SeverityWarning, Above, 0.05, 10 * m, 10 * m,
			[]string{"sum by (class) (rate(" + telemetry.ParityFailures + "[10m]))"}},
	}
	alerts := Alerts(Options{})
	if len(alerts) != len(tests) {
		t.Fatalf("got %d alerts, the runbook has %d", len(alerts), len(tests))
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := alerts[i]
			if a.Name != tt.name {
				t.Fatalf("alert %d is %s, want %s (runbook order)", i, a.Name, tt.name)
			}
			if a.Severity != tt.severity || a.Comparison != tt.cmp || a.Threshold != tt.threshold ||
				a.Window != tt.window || a.For != tt.forDur {
				t.Errorf("got severity %s, %s %v, window %v, for %v; want %s, %s %v, window %v, for %v",
					a.Severity, a.Comparison, a.Threshold, a.Window, a.For,
					tt.severity, tt.cmp, tt.threshold, tt.window, tt.forDur)
			}
			suffix := " " + string(tt.cmp) + " " + formatThreshold(tt.threshold)
			if !strings.HasSuffix(a.Expr, suffix) || a.Expr != a.PanelExpr+suffix {
				t.Errorf("expr %q is not the panel signal followed by %q", a.Expr, suffix)
			}
			for _, f := range tt.fragments {
				if !strings.Contains(a.Expr, f) {
					t.Errorf("expr %q lacks %q", a.Expr, f)
				}
			}
			// The original's defects: clamped denominators and
			// quantile_over_time instead of a per-request quantile.
			for _, bad := range []string{"clamp_min", "quantile_over_time", "[5m]"} {
				if strings.Contains(a.Expr, bad) {
					t.Errorf("expr %q uses %s", a.Expr, bad)
				}
			}
		})
	}
}

func TestAlertsCarryLabelsAndRunbook(t *testing.T) {
	seen := map[string]bool{}
	for _, a := range Alerts(Options{}) {
		if seen[a.Name] {
			t.Errorf("duplicate alert %s", a.Name)
		}
		seen[a.Name] = true
		if a.Severity != SeverityWarning && a.Severity != SeverityCritical {
			t.Errorf("%s: severity %q", a.Name, a.Severity)
		}
		if a.Summary == "" || a.Description == "" || a.Unit == "" || a.PanelTitle == "" || a.Condition == "" {
			t.Errorf("%s: empty summary, description, unit, panel title or condition", a.Name)
		}
		if want := DefaultRunbookBaseURL + "#" + strings.ToLower(a.Name); a.RunbookURL != want {
			t.Errorf("%s: runbook %q, want %q", a.Name, a.RunbookURL, want)
		}
		for _, g := range a.GroupBy {
			if !strings.Contains(a.PanelExpr, g) {
				t.Errorf("%s: groups by %s but the expression does not keep it", a.Name, g)
			}
		}
	}
}

func TestAlertExprsUseCatalogueNamesAndLabels(t *testing.T) {
	for _, a := range Alerts(Options{}) {
		for _, p := range LintExpr(a.Expr) {
			t.Errorf("%s: %s", a.Name, p)
		}
	}
}

var matcherRe = regexp.MustCompile(`([a-z_]+)(=~|!~|!=|=)"([^"]*)"`)

// Every label value an alert selects on is one the emitters can produce, so
// an alert cannot wait for a value that is never recorded (the original's
// hash_and_lag_drift).
func TestAlertLabelValuesAreEmitted(t *testing.T) {
	values := telemetry.LabelValues()
	for _, a := range Alerts(Options{}) {
		for _, m := range matcherRe.FindAllStringSubmatch(a.Expr, -1) {
			key, op, val := m[1], m[2], m[3]
			if key == "route" {
				continue // routes are registered by the HTTP layer, not a closed set here
			}
			set, ok := values[key]
			if !ok {
				t.Errorf("%s: label %s has no value set", a.Name, key)
				continue
			}
			candidates := []string{val}
			if op == "=~" || op == "!~" {
				candidates = strings.Split(val, "|")
			}
			for _, c := range candidates {
				found := false
				for _, v := range set {
					found = found || v == c
				}
				if !found {
					t.Errorf("%s: %s%s%q: value %q is not in telemetry.LabelValues()[%q]", a.Name, key, op, val, c, key)
				}
			}
		}
	}
}

func TestHistogramBucketsHaveThresholdBoundaries(t *testing.T) {
	buckets := map[string][]float64{}
	for _, s := range telemetry.Catalogue() {
		buckets[s.Name] = s.Buckets
	}
	for _, a := range Alerts(Options{}) {
		if !strings.HasPrefix(a.PanelExpr, "histogram_quantile(") {
			continue
		}
		names := MetricNames(a.PanelExpr)
		if len(names) != 1 {
			t.Fatalf("%s: quantile over %v", a.Name, names)
		}
		found := false
		for _, b := range buckets[names[0]] {
			found = found || b == a.Threshold
		}
		if !found {
			t.Errorf("%s: %s has no bucket boundary at the threshold %v, so the verdict depends on interpolation (buckets %v)",
				a.Name, names[0], a.Threshold, buckets[names[0]])
		}
	}
}

func TestTimeDivisorScalesWindowsAndFor(t *testing.T) {
	prod := Alerts(Options{})
	fast := Alerts(Options{TimeDivisor: 60})
	longWindow := regexp.MustCompile(`\[\d+m\]|offset \d+m`)
	for i := range prod {
		p, f := prod[i], fast[i]
		if f.Window != p.Window/60 || f.For != p.For/60 {
			t.Errorf("%s: scaled window %v for %v, want %v and %v", p.Name, f.Window, f.For, p.Window/60, p.For/60)
		}
		if longWindow.MatchString(f.Expr) {
			t.Errorf("%s: scaled expr still has minute windows: %s", p.Name, f.Expr)
		}
		if f.Threshold != p.Threshold || f.Name != p.Name {
			t.Errorf("%s: scaling changed the threshold or name", p.Name)
		}
	}
	if got := (Options{TimeDivisor: 1000}).scale(5 * time.Minute); got != time.Second {
		t.Errorf("scale floors at 1s, got %v", got)
	}
	if got := (Options{TimeDivisor: 60}).scale(0); got != 0 {
		t.Errorf("for 0 must stay 0, got %v", got)
	}
}

func TestPromDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{10 * time.Minute, "10m"}, {15 * time.Second, "15s"}, {2 * time.Hour, "2h"},
		{90 * time.Second, "90s"}, {1500 * time.Millisecond, "1500ms"}, {0, "0s"},
	}
	for _, tt := range tests {
		if got := promDuration(tt.d); got != tt.want {
			t.Errorf("promDuration(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestAlertCasesCoverEveryAlertThreeWays(t *testing.T) {
	kinds := map[string]map[CaseKind]bool{}
	for _, c := range AlertCases() {
		if kinds[c.Alert] == nil {
			kinds[c.Alert] = map[CaseKind]bool{}
		}
		kinds[c.Alert][c.Kind] = true
		firing := false
		for _, e := range c.Evals {
			firing = firing || len(e.Fires) > 0
		}
		if (c.Kind == CaseFires) != firing {
			t.Errorf("%s case %q: kind %s but firing expectations %v", c.Alert, c.Name, c.Kind, firing)
		}
	}
	for _, a := range Alerts(Options{}) {
		for _, k := range []CaseKind{CaseFires, CaseUnder, CaseZero} {
			if !kinds[a.Name][k] {
				t.Errorf("%s has no promtool case %q", a.Name, k)
			}
		}
	}
}

func TestLintExprFindsProblems(t *testing.T) {
	tests := []struct {
		expr string
		want string
	}{
		{`sum(rate(openagents_runtime_nope_total[5m]))`, "not in the telemetry catalogue"},
		{`sum by (run_id) (rate(` + telemetry.ExecutorTerminal + `[5m]))`, "forbidden"},
		{telemetry.ExecutorTerminal + `{trace_id="x"}`, "forbidden"},
		{telemetry.ExecutorTerminal + `{colour="x"}`, "not a catalogue label key"},
		{`up{job="x"}`, "not a runtime metric"},
	}
	for _, tt := range tests {
		got := strings.Join(LintExpr(tt.expr), "; ")
		if !strings.Contains(got, tt.want) {
			t.Errorf("LintExpr(%q) = %q, want a problem containing %q", tt.expr, got, tt.want)
		}
	}
	if got := LintExpr(`sum by (le, instance) (rate(` + telemetry.HTTPRequestDuration + `_bucket{route="/x",status_class="5xx"}[5m]))`); len(got) != 0 {
		t.Errorf("clean expression reported %v", got)
	}
}
