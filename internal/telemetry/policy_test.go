package telemetry

import (
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// call is one use of a recording method of Metrics.
type call struct {
	method string
	do     func(m *Metrics)
}

// validCalls uses every recording method with values from the closed sets.
func validCalls() []call {
	return []call{
		{"RunOnce", func(m *Metrics) { m.RunOnce("ok", "completed", 1200*time.Millisecond) }},
		{"Terminal", func(m *Metrics) { m.Terminal("failed", "loop_detected") }},
		{"HTTPRequest", func(m *Metrics) { m.HTTPRequest("POST /internal/v1/runs", "POST", 201, 3*time.Millisecond) }},
		{"StreamSession", func(m *Metrics) { m.StreamSession("client_closed") }},
		{"StreamEmit", func(m *Metrics) { m.StreamEmit("run.delta", "ok") }},
		{"LeaseOp", func(m *Metrics) { m.LeaseOp("renew", "renewed") }},
		{"JanitorCycle", func(m *Metrics) { m.JanitorCycle() }},
		{"JanitorReclaim", func(m *Metrics) { m.JanitorReclaim("resumed") }},
		{"ToolLifecycle", func(m *Metrics) { m.ToolLifecycle("custom.lookup", "run", "started") }},
		{"ToolDuration", func(m *Metrics) { m.ToolDuration("echo", "succeeded", 40*time.Millisecond) }},
		{"BreakerState", func(m *Metrics) { m.BreakerState("acme", BreakerHalfOpen) }},
		{"BreakerTransition", func(m *Metrics) { m.BreakerTransition("acme", BreakerOpen) }},
		{"PolicyDecision", func(m *Metrics) { m.PolicyDecision("denied", "denied_tool_not_allowed") }},
		{"ProjectionLag", func(m *Metrics) { m.ProjectionLag(ProjectionRunSummary, 7) }},
		{"ProjectionWrite", func(m *Metrics) { m.ProjectionWrite(ProjectionCodexWorkerSummary, "skipped") }},
		{"ProjectionWriteFailure", func(m *Metrics) { m.ProjectionWriteFailure(ProjectionRunSummary, "http_5xx") }},
		{"ProjectionDrift", func(m *Metrics) { m.ProjectionDrift(ProjectionRunSummary, "sequence_gap") }},
		{"ProjectionReplay", func(m *Metrics) { m.ProjectionReplay(ScopeAll, "ok", 2*time.Second) }},
		{"TokenMint", func(m *Metrics) { m.TokenMint("error", "signing_error") }},
		{"ParityFailure", func(m *Metrics) { m.ParityFailure(ParityNetwork, "ssrf_block.private", "tools.network") }},
		{"SyncConnectionsAdd", func(m *Metrics) { m.SyncConnectionsAdd(2) }},
		{"SyncAuth", func(m *Metrics) { m.SyncAuth("error", "expired") }},
		{"SyncStaleCursor", func(m *Metrics) { m.SyncStaleCursor() }},
		{"SetDBUp", func(m *Metrics) { m.SetDBUp(true) }},
		{"SetListenerUp", func(m *Metrics) { m.SetListenerUp(true) }},
		{"SetSinkUp", func(m *Metrics) { m.SetSinkUp(false) }},
	}
}

// nonRecording are the methods of Metrics that configure rather than record.
var nonRecording = []string{"AllowTools", "AllowProviders", "AllowRoutes", "AllowedLabelValues"}

func newTestMetrics(t *testing.T) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, BuildInfo{Version: "v1.2.3", Revision: "abc1234", SchemaVersion: "7"})
	m.AllowTools("custom.lookup")
	m.AllowProviders("acme")
	m.AllowRoutes("POST /internal/v1/runs", "GET /internal/v1/runs/{run_id}", "/metrics")
	return m, reg
}

func gather(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := make(map[string]*dto.MetricFamily, len(fams))
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

func labelMap(mt *dto.Metric) map[string]string {
	out := make(map[string]string)
	for _, lp := range mt.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

// find returns the series of family name whose labels include want.
func find(fams map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	f := fams[name]
	if f == nil {
		return nil
	}
next:
	for _, mt := range f.GetMetric() {
		got := labelMap(mt)
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		return mt
	}
	return nil
}

// value reads a counter or gauge value, or a histogram's sample count.
func value(mt *dto.Metric) float64 {
	switch {
	case mt == nil:
		return -1
	case mt.Counter != nil:
		return mt.Counter.GetValue()
	case mt.Gauge != nil:
		return mt.Gauge.GetValue()
	case mt.Histogram != nil:
		return float64(mt.Histogram.GetSampleCount())
	}
	return -1
}

func overflowCount(fams map[string]*dto.MetricFamily, metric, label string) float64 {
	mt := find(fams, MetricLabelOverflow, map[string]string{LabelMetric: metric, LabelLabel: label})
	if mt == nil {
		return 0
	}
	return mt.Counter.GetValue()
}

func totalOverflow(fams map[string]*dto.MetricFamily) float64 {
	var sum float64
	if f := fams[MetricLabelOverflow]; f != nil {
		for _, mt := range f.GetMetric() {
			sum += mt.Counter.GetValue()
		}
	}
	return sum
}

func TestValidCallsCoverEveryRecordingMethod(t *testing.T) {
	typ := reflect.TypeOf(&Metrics{})
	covered := make(map[string]bool)
	for _, c := range validCalls() {
		covered[c.method] = true
	}
	for i := range typ.NumMethod() {
		name := typ.Method(i).Name
		if slices.Contains(nonRecording, name) {
			continue
		}
		if !covered[name] {
			t.Errorf("method %s is not exercised by validCalls", name)
		}
	}
	for name := range covered {
		if _, ok := typ.MethodByName(name); !ok {
			t.Errorf("validCalls names %s, which is not a method of *Metrics", name)
		}
	}
}

func TestLabelPolicyOverFullRegistry(t *testing.T) {
	m, reg := newTestMetrics(t)
	for _, c := range validCalls() {
		c.do(m)
	}
	fams := gather(t, reg)

	if got := totalOverflow(fams); got != 0 {
		t.Errorf("valid values overflowed %v times", got)
	}

	specs := make(map[string]MetricSpec)
	for _, s := range Catalogue() {
		if _, dup := specs[s.Name]; dup {
			t.Errorf("catalogue lists %s twice", s.Name)
		}
		specs[s.Name] = s
	}

	// Every catalogue metric is registered (and has a series after one call
	// of every method), and nothing else is registered.
	for name := range specs {
		if fams[name] == nil {
			t.Errorf("catalogue metric %s not gathered", name)
		}
	}
	for name := range fams {
		if _, ok := specs[name]; !ok {
			t.Errorf("registered metric %s is not in the catalogue", name)
		}
	}

	allowed := m.AllowedLabelValues()
	free := FreeLabelKeys()
	for name, f := range fams {
		spec, ok := specs[name]
		if !ok {
			continue
		}
		wantType := map[MetricType]dto.MetricType{
			TypeCounter: dto.MetricType_COUNTER, TypeGauge: dto.MetricType_GAUGE, TypeHistogram: dto.MetricType_HISTOGRAM,
		}[spec.Type]
		if f.GetType() != wantType {
			t.Errorf("%s: type %v, catalogue says %s", name, f.GetType(), spec.Type)
		}
		if f.GetHelp() != spec.Help || spec.Help == "" {
			t.Errorf("%s: help %q, catalogue %q", name, f.GetHelp(), spec.Help)
		}
		wantKeys := slices.Clone(spec.Labels)
		sort.Strings(wantKeys)
		for _, mt := range f.GetMetric() {
			var keys []string
			for k, v := range labelMap(mt) {
				keys = append(keys, k)
				if slices.Contains(ForbiddenLabelKeys, k) {
					t.Errorf("%s has forbidden label key %s", name, k)
				}
				if slices.Contains(free, k) {
					continue
				}
				set, ok := allowed[k]
				if !ok {
					t.Errorf("%s: label key %s has no closed set", name, k)
					continue
				}
				if v != OtherValue && !slices.Contains(set, v) {
					t.Errorf("%s{%s=%q}: value outside the closed set", name, k, v)
				}
			}
			sort.Strings(keys)
			if !slices.Equal(keys, wantKeys) {
				t.Errorf("%s: series label keys %v, catalogue %v", name, keys, wantKeys)
			}
		}
	}
}

func TestCatalogueConventions(t *testing.T) {
	sets := LabelValues()
	free := FreeLabelKeys()
	for _, s := range Catalogue() {
		if !strings.HasPrefix(s.Name, "openagents_") {
			t.Errorf("%s: not in the openagents_ namespace", s.Name)
		}
		if s.Signal == "" || s.Help == "" {
			t.Errorf("%s: signal %q help %q must be set", s.Name, s.Signal, s.Help)
		}
		isTotal := strings.HasSuffix(s.Name, "_total")
		if (s.Type == TypeCounter) != isTotal {
			t.Errorf("%s: type %s; counters and only counters end _total", s.Name, s.Type)
		}
		if strings.Contains(s.Name, "duration") && (s.Type != TypeHistogram || s.Unit != "seconds") {
			t.Errorf("%s: durations are histograms in seconds", s.Name)
		}
		if strings.Contains(s.Name, "_ms") {
			t.Errorf("%s: base units only (seconds, not ms)", s.Name)
		}
		switch s.Unit {
		case "seconds":
			if !strings.HasSuffix(s.Name, "_seconds") {
				t.Errorf("%s: unit seconds but name does not end _seconds", s.Name)
			}
		case "events":
			if !strings.HasSuffix(s.Name, "_events") {
				t.Errorf("%s: unit events but name does not end _events", s.Name)
			}
		}
		if s.Type == TypeHistogram {
			if len(s.Buckets) == 0 || !slices.IsSorted(s.Buckets) {
				t.Errorf("%s: histogram buckets %v must be set and sorted", s.Name, s.Buckets)
			}
		} else if s.Buckets != nil {
			t.Errorf("%s: buckets on a %s", s.Name, s.Type)
		}
		for _, k := range s.Labels {
			if slices.Contains(ForbiddenLabelKeys, k) {
				t.Errorf("%s: forbidden label key %s", s.Name, k)
			}
			if _, ok := sets[k]; !ok && !slices.Contains(free, k) {
				t.Errorf("%s: label key %s has no closed set", s.Name, k)
			}
		}
	}
	for k, vs := range sets {
		if len(vs) == 0 {
			t.Errorf("label %s: empty closed set", k)
		}
		for _, v := range vs {
			if v == "" || v == OtherValue {
				t.Errorf("label %s: the set may not hold %q", k, v)
			}
		}
	}
}

// TestAlertThresholdsAreBucketBoundaries: an alert comparing a p95 with a
// threshold gives the exact answer only when the threshold is a boundary.
func TestAlertThresholdsAreBucketBoundaries(t *testing.T) {
	for _, tc := range []struct {
		name      string
		threshold float64
	}{
		{ExecutorRunOnceDuration, 5},
		{KhalaProjectionLag, 25},
		{ToolDuration, 5},
	} {
		for _, s := range Catalogue() {
			if s.Name == tc.name && !slices.Contains(s.Buckets, tc.threshold) {
				t.Errorf("%s: buckets %v lack the threshold %v", s.Name, s.Buckets, tc.threshold)
			}
		}
	}
}

func TestUnknownValuesBecomeOtherAndOverflow(t *testing.T) {
	const bad = "run_0f3a9c" // an id, exactly what must never become a label value
	cases := []struct {
		name, metric, label string
		do                  func(m *Metrics)
	}{
		{"run_once result", ExecutorRunOnceDuration, LabelResult, func(m *Metrics) { m.RunOnce(bad, "none", time.Second) }},
		{"run_once reason", ExecutorRunOnceDuration, LabelReasonClass, func(m *Metrics) { m.RunOnce("error", bad, time.Second) }},
		{"terminal status", ExecutorTerminal, LabelStatus, func(m *Metrics) { m.Terminal(bad, "completed") }},
		{"terminal reason", ExecutorTerminal, LabelReasonClass, func(m *Metrics) { m.Terminal("failed", bad) }},
		{"http raw path", HTTPRequests, LabelRoute, func(m *Metrics) { m.HTTPRequest("/internal/v1/runs/"+bad, "GET", 200, 0) }},
		{"http method", HTTPRequests, LabelMethod, func(m *Metrics) { m.HTTPRequest("/metrics", "BREW", 200, 0) }},
		{"http status", HTTPRequests, LabelStatusClass, func(m *Metrics) { m.HTTPRequest("/metrics", "GET", 42, 0) }},
		{"stream session", StreamSessions, LabelOutcome, func(m *Metrics) { m.StreamSession(bad) }},
		{"stream emit type", StreamEmits, LabelEventType, func(m *Metrics) { m.StreamEmit("custom.event", "ok") }},
		{"stream emit outcome", StreamEmits, LabelOutcome, func(m *Metrics) { m.StreamEmit("run.delta", bad) }},
		{"lease action", LeaseOperations, LabelAction, func(m *Metrics) { m.LeaseOp(bad, "ok") }},
		{"lease result", LeaseOperations, LabelResult, func(m *Metrics) { m.LeaseOp("acquire", bad) }},
		{"janitor reclaim", JanitorReclaims, LabelOutcome, func(m *Metrics) { m.JanitorReclaim(bad) }},
		{"tool name", ToolLifecycle, LabelTool, func(m *Metrics) { m.ToolLifecycle("unregistered", "terminal", "failed") }},
		{"tool phase", ToolLifecycle, LabelPhase, func(m *Metrics) { m.ToolLifecycle("echo", bad, "failed") }},
		{"tool result", ToolLifecycle, LabelResult, func(m *Metrics) { m.ToolLifecycle("echo", "terminal", bad) }},
		{"tool duration name", ToolDuration, LabelTool, func(m *Metrics) { m.ToolDuration("unregistered", "failed", 0) }},
		{"tool duration result", ToolDuration, LabelResult, func(m *Metrics) { m.ToolDuration("echo", bad, 0) }},
		{"breaker provider", ProviderBreakerState, LabelProvider, func(m *Metrics) { m.BreakerState(bad, BreakerOpen) }},
		{"breaker state", ProviderBreakerState, LabelState, func(m *Metrics) { m.BreakerState("scripted", bad) }},
		{"breaker transition provider", ProviderBreakerTransitions, LabelProvider, func(m *Metrics) { m.BreakerTransition(bad, BreakerOpen) }},
		{"breaker transition state", ProviderBreakerTransitions, LabelState, func(m *Metrics) { m.BreakerTransition("scripted", bad) }},
		{"policy decision", PolicyDecisions, LabelDecision, func(m *Metrics) { m.PolicyDecision(bad, "allowed") }},
		{"policy reason", PolicyDecisions, LabelReason, func(m *Metrics) { m.PolicyDecision("denied", "policy_denied.explicit_deny") }},
		{"lag projection", KhalaProjectionLag, LabelProjection, func(m *Metrics) { m.ProjectionLag(bad, 3) }},
		{"write projection", KhalaProjectionWrites, LabelProjection, func(m *Metrics) { m.ProjectionWrite(bad, "ok") }},
		{"write result", KhalaProjectionWrites, LabelResult, func(m *Metrics) { m.ProjectionWrite(ProjectionRunSummary, bad) }},
		{"write failure class", KhalaProjectionWriteFailures, LabelReasonClass, func(m *Metrics) { m.ProjectionWriteFailure(ProjectionRunSummary, bad) }},
		{"write failure projection", KhalaProjectionWriteFailures, LabelProjection, func(m *Metrics) { m.ProjectionWriteFailure(bad, "timeout") }},
		{"drift class", KhalaProjectionDriftIncidents, LabelReasonClass, func(m *Metrics) { m.ProjectionDrift(ProjectionRunSummary, bad) }},
		{"drift projection", KhalaProjectionDriftIncidents, LabelProjection, func(m *Metrics) { m.ProjectionDrift(bad, "sequence_gap") }},
		{"replay scope", KhalaProjectionReplays, LabelScope, func(m *Metrics) { m.ProjectionReplay(bad, "ok", 0) }},
		{"replay result", KhalaProjectionReplays, LabelResult, func(m *Metrics) { m.ProjectionReplay(ScopeRun, bad, 0) }},
		{"mint result", KhalaTokenMint, LabelResult, func(m *Metrics) { m.TokenMint(bad, "none") }},
		{"mint class", KhalaTokenMint, LabelFailureClass, func(m *Metrics) { m.TokenMint("error", bad) }},
		{"parity class", ParityFailures, LabelClass, func(m *Metrics) { m.ParityFailure(bad, "loop_detected", "executor") }},
		{"parity reason", ParityFailures, LabelReasonClass, func(m *Metrics) {
			m.ParityFailure(ParityWorkflow, "workflow.step_failed.unsupported_strategy:abc", "workflow")
		}},
		{"parity component", ParityFailures, LabelComponent, func(m *Metrics) { m.ParityFailure(ParityLoop, "loop_detected", bad) }},
		{"sync auth result", SyncAuth, LabelResult, func(m *Metrics) { m.SyncAuth(bad, "authorized") }},
		{"sync auth reason", SyncAuth, LabelReasonClass, func(m *Metrics) { m.SyncAuth("error", bad) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, reg := newTestMetrics(t)
			tc.do(m)
			fams := gather(t, reg)
			if got := overflowCount(fams, tc.metric, tc.label); got != 1 {
				t.Errorf("overflow{metric=%s,label=%s} = %v, want 1", tc.metric, tc.label, got)
			}
			if got := totalOverflow(fams); got != 1 {
				t.Errorf("total overflow = %v, want 1 (only the bad label)", got)
			}
			var recorded float64
			for _, mt := range fams[tc.metric].GetMetric() {
				if labelMap(mt)[tc.label] == OtherValue {
					recorded += value(mt)
				}
			}
			if recorded < 1 {
				t.Fatalf("%s has no recorded series with %s=%q", tc.metric, tc.label, OtherValue)
			}
			for _, f := range fams {
				for _, s := range f.GetMetric() {
					for _, lp := range s.GetLabel() {
						if strings.Contains(lp.GetValue(), "run_0f3a9c") || strings.Contains(lp.GetValue(), "abc") && lp.GetName() == LabelReasonClass {
							t.Errorf("%s{%s=%q}: unknown value leaked into a label", f.GetName(), lp.GetName(), lp.GetValue())
						}
					}
				}
			}
		})
	}
}

func TestExplicitOtherAndEmptyReasonDoNotOverflow(t *testing.T) {
	m, reg := newTestMetrics(t)
	m.ToolLifecycle(OtherValue, "terminal", "failed")
	m.Terminal("succeeded", "")
	m.TokenMint("ok", "")
	fams := gather(t, reg)
	if got := totalOverflow(fams); got != 0 {
		t.Errorf("overflow = %v, want 0", got)
	}
	if v := value(find(fams, ExecutorTerminal, map[string]string{LabelStatus: "succeeded", LabelReasonClass: NoneValue})); v != 1 {
		t.Errorf("terminal{succeeded,none} = %v, want 1", v)
	}
	if v := value(find(fams, KhalaTokenMint, map[string]string{LabelResult: "ok", LabelFailureClass: NoneValue})); v != 1 {
		t.Errorf("token_mint{ok,none} = %v, want 1", v)
	}
}

func TestHTTPRouteAndStatusClass(t *testing.T) {
	m, reg := newTestMetrics(t)
	m.HTTPRequest("GET /internal/v1/runs/{run_id}", "GET", 503, 20*time.Millisecond)
	m.HTTPRequest("/internal/v1/runs/{run_id}", "GET", 200, time.Millisecond)
	m.HTTPRequest("", "GET", 404, time.Millisecond)
	fams := gather(t, reg)
	if got := totalOverflow(fams); got != 0 {
		t.Errorf("overflow = %v, want 0", got)
	}
	for _, tc := range []struct {
		route, class string
		want         float64
	}{
		{"/internal/v1/runs/{run_id}", "5xx", 1},
		{"/internal/v1/runs/{run_id}", "2xx", 1},
		{UnmatchedRoute, "4xx", 1},
	} {
		labels := map[string]string{LabelRoute: tc.route, LabelMethod: "GET", LabelStatusClass: tc.class}
		if v := value(find(fams, HTTPRequests, labels)); v != tc.want {
			t.Errorf("requests%v = %v, want %v", labels, v, tc.want)
		}
		if v := value(find(fams, HTTPRequestDuration, labels)); v != tc.want {
			t.Errorf("duration count%v = %v, want %v", labels, v, tc.want)
		}
	}
}

func TestBreakerStateGauge(t *testing.T) {
	m, reg := newTestMetrics(t)
	m.BreakerState("acme", BreakerOpen)
	m.BreakerState("scripted", BreakerClosed)
	m.BreakerState("acme", BreakerHalfOpen)
	fams := gather(t, reg)
	for _, tc := range []struct {
		provider, state string
		want            float64
	}{
		{"acme", BreakerClosed, 0}, {"acme", BreakerOpen, 0}, {"acme", BreakerHalfOpen, 1},
		{"scripted", BreakerClosed, 1}, {"scripted", BreakerOpen, 0}, {"scripted", BreakerHalfOpen, 0},
	} {
		if v := value(find(fams, ProviderBreakerState, map[string]string{LabelProvider: tc.provider, LabelState: tc.state})); v != tc.want {
			t.Errorf("breaker_state{%s,%s} = %v, want %v", tc.provider, tc.state, v, tc.want)
		}
	}

	// An unknown state is visible as other=1 until a known state replaces it.
	m.BreakerState("acme", "jammed")
	fams = gather(t, reg)
	if v := value(find(fams, ProviderBreakerState, map[string]string{LabelProvider: "acme", LabelState: OtherValue})); v != 1 {
		t.Errorf("breaker_state{acme,other} = %v, want 1", v)
	}
	m.BreakerState("acme", BreakerOpen)
	fams = gather(t, reg)
	if mt := find(fams, ProviderBreakerState, map[string]string{LabelProvider: "acme", LabelState: OtherValue}); mt != nil {
		t.Errorf("breaker_state{acme,other} still present after a known state: %v", value(mt))
	}
	if v := value(find(fams, ProviderBreakerState, map[string]string{LabelProvider: "acme", LabelState: BreakerOpen})); v != 1 {
		t.Errorf("breaker_state{acme,open} = %v, want 1", v)
	}
}

func TestProjectionLagHistogram(t *testing.T) {
	m, reg := newTestMetrics(t)
	for _, lag := range []int64{-3, 0, 24, 25, 26, 300} {
		m.ProjectionLag(ProjectionRunSummary, lag)
	}
	mt := find(gather(t, reg), KhalaProjectionLag, map[string]string{LabelProjection: ProjectionRunSummary})
	if mt == nil {
		t.Fatal("no lag series")
	}
	h := mt.GetHistogram()
	if h.GetSampleCount() != 6 || h.GetSampleSum() != 0+0+24+25+26+300 {
		t.Errorf("count %d sum %v, want 6 and 375 (negative lag observed as 0)", h.GetSampleCount(), h.GetSampleSum())
	}
	cum := make(map[float64]uint64)
	for _, b := range h.GetBucket() {
		cum[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	for bound, want := range map[float64]uint64{0: 2, 20: 2, 25: 4, 30: 5, 250: 5, 1000: 6} {
		if cum[bound] != want {
			t.Errorf("bucket le=%v: %d, want %d", bound, cum[bound], want)
		}
	}
}

func TestPreinitialisedAlertSeries(t *testing.T) {
	m, reg := newTestMetrics(t)
	fams := gather(t, reg)
	for _, tc := range []struct {
		metric string
		labels map[string]string
	}{
		{StreamEmits, map[string]string{LabelEventType: "run.finished", LabelOutcome: "ok"}},
		{LeaseOperations, map[string]string{LabelAction: "acquire", LabelResult: "stolen"}},
		{ToolLifecycle, map[string]string{LabelTool: "custom.lookup", LabelPhase: "terminal", LabelResult: "timeout"}},
		{ToolLifecycle, map[string]string{LabelTool: "echo", LabelPhase: "terminal", LabelResult: "failed"}},
		{ToolLifecycle, map[string]string{LabelTool: OtherValue, LabelPhase: "terminal", LabelResult: "failed"}},
		{PolicyDecisions, map[string]string{LabelDecision: "denied", LabelReason: "budget_exhausted"}},
		{KhalaProjectionDriftIncidents, map[string]string{LabelProjection: ProjectionRunSummary, LabelReasonClass: DriftSummaryHashMismatch}},
		{KhalaProjectionDriftIncidents, map[string]string{LabelProjection: ProjectionCodexWorkerSummary, LabelReasonClass: DriftHashAndLagDrift}},
		{KhalaProjectionReplays, map[string]string{LabelScope: ScopeRun, LabelResult: "error"}},
		{KhalaProjectionWriteFailures, map[string]string{LabelProjection: ProjectionRunSummary, LabelReasonClass: "sink_exception"}},
		{KhalaTokenMint, map[string]string{LabelResult: "error", LabelFailureClass: "upstream_unavailable"}},
		{SyncStaleCursor, nil},
		{MetricLabelOverflow, map[string]string{LabelMetric: ToolLifecycle, LabelLabel: LabelTool}},
		{DBUp, nil},
	} {
		if v := value(find(fams, tc.metric, tc.labels)); v != 0 {
			t.Errorf("%s%v = %v, want an existing series at 0", tc.metric, tc.labels, v)
		}
	}
	if v := value(find(fams, BuildInfoMetric, map[string]string{LabelVersion: "v1.2.3", LabelRevision: "abc1234", LabelSchemaVersion: "7"})); v != 1 {
		t.Errorf("build_info = %v, want 1", v)
	}
	m.ProjectionReplay(ScopeRun, "error", time.Second)
	m.SyncConnectionsAdd(3)
	m.SyncConnectionsAdd(-1)
	m.SetDBUp(true)
	fams = gather(t, reg)
	for _, tc := range []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{KhalaProjectionReplays, map[string]string{LabelScope: ScopeRun, LabelResult: "error"}, 1},
		{KhalaProjectionReplayDuration, map[string]string{LabelScope: ScopeRun, LabelResult: "error"}, 1},
		{SyncConnections, nil, 2},
		{DBUp, nil, 1},
	} {
		if v := value(find(fams, tc.metric, tc.labels)); v != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.metric, tc.labels, v, tc.want)
		}
	}
}

func TestNilMetricsIsSafe(t *testing.T) {
	var m *Metrics
	for _, c := range validCalls() {
		c.do(m) // must not panic
	}
	m.AllowTools("x")
	m.AllowProviders("x")
	m.AllowRoutes("/x")
	if got := m.AllowedLabelValues(); got != nil {
		t.Errorf("nil AllowedLabelValues = %v", got)
	}
}

func TestNewMetricsTwiceOnOneRegistryPanics(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg, BuildInfo{})
	defer func() {
		if recover() == nil {
			t.Error("second NewMetrics on the same registry did not panic")
		}
	}()
	NewMetrics(reg, BuildInfo{})
}

func TestAllowedLabelValuesIsACopy(t *testing.T) {
	m, _ := newTestMetrics(t)
	got := m.AllowedLabelValues()
	if !slices.Contains(got[LabelTool], "custom.lookup") || !slices.Contains(got[LabelRoute], "/internal/v1/runs/{run_id}") ||
		!slices.Contains(got[LabelProvider], "acme") {
		t.Fatalf("registered names missing: tools %v routes %v providers %v", got[LabelTool], got[LabelRoute], got[LabelProvider])
	}
	got[LabelTool][0] = "mutated"
	if slices.Contains(m.AllowedLabelValues()[LabelTool], "mutated") {
		t.Error("AllowedLabelValues exposes internal state")
	}
	a, b := LabelValues(), LabelValues()
	a[LabelStatus][0] = "mutated"
	if b[LabelStatus][0] == "mutated" {
		t.Error("LabelValues shares state between calls")
	}
}

func TestNormalizeRouteAndStatusClass(t *testing.T) {
	for in, want := range map[string]string{
		"":                            UnmatchedRoute,
		"GET /internal/v1/runs/{id}":  "/internal/v1/runs/{id}",
		"/healthz":                    "/healthz",
		"  POST   /x ":                "/x",
		"example.com/":                "example.com/",
		"GET example.com/internal/x/": "example.com/internal/x/",
	} {
		if got := normalizeRoute(in); got != want {
			t.Errorf("normalizeRoute(%q) = %q, want %q", in, got, want)
		}
	}
	for code, want := range map[int]string{100: "1xx", 204: "2xx", 399: "3xx", 410: "4xx", 599: "5xx", 99: "", 600: "", -1: ""} {
		got, ok := statusClass(code)
		if got != want || ok != (want != "") {
			t.Errorf("statusClass(%d) = %q,%v want %q", code, got, ok, want)
		}
	}
}

func TestConcurrentUseCountsEveryCall(t *testing.T) {
	m, reg := newTestMetrics(t)
	const workers, per = 8, 200
	done := make(chan struct{})
	for w := range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range per {
				m.AllowTools("late.tool")
				m.ToolLifecycle("late.tool", "terminal", "failed")
				m.BreakerState("acme", []string{BreakerClosed, BreakerOpen, BreakerHalfOpen}[(w+i)%3])
			}
		}()
	}
	for range workers {
		<-done
	}
	m.BreakerState("acme", BreakerOpen)
	fams := gather(t, reg)
	// Each goroutine allows the tool before using it, so no call may land on other.
	if v := value(find(fams, ToolLifecycle, map[string]string{LabelTool: "late.tool", LabelPhase: "terminal", LabelResult: "failed"})); v != workers*per {
		t.Errorf("tool lifecycle{late.tool} = %v, want %d", v, workers*per)
	}
	if got := totalOverflow(fams); got != 0 {
		t.Errorf("overflow = %v, want 0", got)
	}
	var ones float64
	for _, st := range []string{BreakerClosed, BreakerOpen, BreakerHalfOpen} {
		ones += value(find(fams, ProviderBreakerState, map[string]string{LabelProvider: "acme", LabelState: st}))
	}
	if ones != 1 {
		t.Errorf("breaker state gauges of acme sum to %v, want exactly one state at 1", ones)
	}
}
