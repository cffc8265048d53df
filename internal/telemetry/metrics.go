package telemetry

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BuildInfo is what openagents_runtime_build_info reports.
type BuildInfo struct{ Version, Revision, SchemaVersion string }

// Metrics records every metric of the catalogue on one registry. All methods
// are safe on a nil *Metrics (they do nothing), so packages under test can
// pass nil, and safe for concurrent use.
//
// Every label value goes through the label policy: a value outside its closed
// set is recorded as "other" and counted in
// openagents_runtime_metric_label_overflow_total{metric,label}.
type Metrics struct {
	mu   sync.RWMutex
	sets map[string]map[string]struct{} // closed sets; tool, provider and route grow through Allow*

	breakerMu sync.Mutex // keeps the 0/1 state gauges of one provider consistent

	runOnce         *prometheus.HistogramVec
	terminal        *prometheus.CounterVec
	httpRequests    *prometheus.CounterVec
	httpDuration    *prometheus.HistogramVec
	streamSessions  *prometheus.CounterVec
	streamEmits     *prometheus.CounterVec
	leaseOps        *prometheus.CounterVec
	janitorCycles   prometheus.Counter
	janitorReclaims *prometheus.CounterVec
	toolLifecycle   *prometheus.CounterVec
	toolDuration    *prometheus.HistogramVec
	breakerState    *prometheus.GaugeVec
	breakerTrans    *prometheus.CounterVec
	policy          *prometheus.CounterVec
	projLag         *prometheus.HistogramVec
	projWrites      *prometheus.CounterVec
	projFailures    *prometheus.CounterVec
	projDrift       *prometheus.CounterVec
	projReplays     *prometheus.CounterVec
	projReplayDur   *prometheus.HistogramVec
	tokenMint       *prometheus.CounterVec
	parity          *prometheus.CounterVec
	syncConns       prometheus.Gauge
	syncAuth        *prometheus.CounterVec
	syncStale       prometheus.Counter
	buildInfo       *prometheus.GaugeVec
	dbUp            prometheus.Gauge
	listenerUp      prometheus.Gauge
	sinkUp          prometheus.Gauge
	overflow        *prometheus.CounterVec
}

// NewMetrics builds every metric of Catalogue and registers it on reg (never
// the process-wide default registry; a nil reg registers nothing, for tests).
// It panics when a metric is already registered on reg, which is a wiring
// bug: one Metrics per registry.
func NewMetrics(reg prometheus.Registerer, b BuildInfo) *Metrics {
	m := &Metrics{sets: make(map[string]map[string]struct{})}
	for key, values := range LabelValues() {
		set := make(map[string]struct{}, len(values))
		for _, v := range values {
			set[v] = struct{}{}
		}
		m.sets[key] = set
	}

	specs := make(map[string]MetricSpec)
	for _, s := range Catalogue() {
		specs[s.Name] = s
	}
	var collectors []prometheus.Collector
	counterVec := func(name string) *prometheus.CounterVec {
		s := specs[name]
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: s.Name, Help: s.Help}, s.Labels)
		collectors = append(collectors, c)
		return c
	}
	counter := func(name string) prometheus.Counter {
		s := specs[name]
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: s.Name, Help: s.Help})
		collectors = append(collectors, c)
		return c
	}
	gaugeVec := func(name string) *prometheus.GaugeVec {
		s := specs[name]
		g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: s.Name, Help: s.Help}, s.Labels)
		collectors = append(collectors, g)
		return g
	}
	gauge := func(name string) prometheus.Gauge {
		s := specs[name]
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: s.Name, Help: s.Help})
		collectors = append(collectors, g)
		return g
	}
	histogramVec := func(name string) *prometheus.HistogramVec {
		s := specs[name]
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: s.Name, Help: s.Help, Buckets: s.Buckets}, s.Labels)
		collectors = append(collectors, h)
		return h
	}

	m.runOnce = histogramVec(ExecutorRunOnceDuration)
	m.terminal = counterVec(ExecutorTerminal)
	m.httpRequests = counterVec(HTTPRequests)
	m.httpDuration = histogramVec(HTTPRequestDuration)
	m.streamSessions = counterVec(StreamSessions)
	m.streamEmits = counterVec(StreamEmits)
	m.leaseOps = counterVec(LeaseOperations)
	m.janitorCycles = counter(JanitorCycles)
	m.janitorReclaims = counterVec(JanitorReclaims)
	m.toolLifecycle = counterVec(ToolLifecycle)
	m.toolDuration = histogramVec(ToolDuration)
	m.breakerState = gaugeVec(ProviderBreakerState)
	m.breakerTrans = counterVec(ProviderBreakerTransitions)
	m.policy = counterVec(PolicyDecisions)
	m.projLag = histogramVec(KhalaProjectionLag)
	m.projWrites = counterVec(KhalaProjectionWrites)
	m.projFailures = counterVec(KhalaProjectionWriteFailures)
	m.projDrift = counterVec(KhalaProjectionDriftIncidents)
	m.projReplays = counterVec(KhalaProjectionReplays)
	m.projReplayDur = histogramVec(KhalaProjectionReplayDuration)
	m.tokenMint = counterVec(KhalaTokenMint)
	m.parity = counterVec(ParityFailures)
	m.syncConns = gauge(SyncConnections)
	m.syncAuth = counterVec(SyncAuth)
	m.syncStale = counter(SyncStaleCursor)
	m.buildInfo = gaugeVec(BuildInfoMetric)
	m.dbUp = gauge(DBUp)
	m.listenerUp = gauge(NotifyListenerUp)
	m.sinkUp = gauge(KhalaSinkUp)
	m.overflow = counterVec(MetricLabelOverflow)

	if len(collectors) != len(specs) {
		panic(fmt.Sprintf("telemetry: built %d collectors for %d catalogue entries", len(collectors), len(specs)))
	}

	m.buildInfo.WithLabelValues(b.Version, b.Revision, b.SchemaVersion).Set(1)
	m.preinitialise()

	if reg != nil {
		reg.MustRegister(collectors...)
	}
	return m
}

// preinitialise creates at zero the series that alerts select on. A counter
// series that first appears already at 1 is invisible to rate() and
// increase() (there is no earlier sample), so without this the first replay
// error, hash mismatch or lease steal after a restart would never alert, and
// a "done ratio" with no run.finished emit would have no numerator at all.
func (m *Metrics) preinitialise() {
	for _, s := range Catalogue() {
		if s.Name == MetricLabelOverflow {
			continue
		}
		for _, k := range s.Labels {
			if !slices.Contains(FreeLabelKeys(), k) {
				m.overflow.WithLabelValues(s.Name, k)
			}
		}
	}
	for _, o := range []string{"finished", "client_closed", "tail_timeout", "server_shutdown"} {
		m.streamSessions.WithLabelValues(o)
	}
	m.streamEmits.WithLabelValues("run.finished", "ok")

	for _, r := range []string{"acquired", "renewed", "held", "stolen"} {
		m.leaseOps.WithLabelValues("acquire", r)
	}
	for _, o := range []string{"resumed", "exhausted"} {
		m.janitorReclaims.WithLabelValues(o)
	}

	m.terminal.WithLabelValues("succeeded", "completed")
	m.terminal.WithLabelValues("canceled", "cancel_requested")
	for _, rc := range []string{"execution_failed", "loop_detected", "executor_recovery_exhausted"} {
		m.terminal.WithLabelValues("failed", rc)
	}

	m.preinitialiseTools(append(m.sortedSet(LabelTool), OtherValue)...)

	for _, r := range policyReasons() {
		d := "denied"
		if r == "allowed" {
			d = "allowed"
		}
		m.policy.WithLabelValues(d, r)
	}

	for _, p := range []string{ProjectionRunSummary, ProjectionCodexWorkerSummary} {
		m.projLag.WithLabelValues(p)
		for _, r := range []string{"ok", "skipped", "error"} {
			m.projWrites.WithLabelValues(p, r)
		}
		for _, rc := range []string{"khala_error", "http_5xx", "auth_error", "timeout", "sink_exception"} {
			m.projFailures.WithLabelValues(p, rc)
		}
		for _, rc := range []string{"checkpoint_ahead", DriftSummaryHashMismatch, "projection_version_changed",
			"sequence_gap", DriftHashAndLagDrift, "khala_missing"} {
			m.projDrift.WithLabelValues(p, rc)
		}
	}
	for _, s := range []string{ScopeRun, ScopeCodexWorker, ScopeAll} {
		for _, r := range []string{"ok", "error"} {
			m.projReplays.WithLabelValues(s, r)
		}
	}

	m.tokenMint.WithLabelValues("ok", NoneValue)
	for _, fc := range []string{"authz_denied", "signing_error", "upstream_unavailable"} {
		m.tokenMint.WithLabelValues("error", fc)
	}

	m.syncAuth.WithLabelValues("ok", "authorized")
	for _, rc := range []string{"missing_token", "invalid_token", "expired", "claim_mismatch"} {
		m.syncAuth.WithLabelValues("error", rc)
	}
}

// preinitialiseTools creates the terminal lifecycle series of the tool
// failure alert for each tool.
func (m *Metrics) preinitialiseTools(tools ...string) {
	for _, t := range tools {
		for _, r := range []string{"succeeded", "failed", "timeout", "canceled"} {
			m.toolLifecycle.WithLabelValues(t, "terminal", r)
		}
	}
}

func (m *Metrics) allow(key string, values []string) []string {
	var added []string
	m.mu.Lock()
	defer m.mu.Unlock()
	set := m.sets[key]
	for _, v := range values {
		if key == LabelRoute {
			v = normalizeRoute(v)
		}
		if v == "" {
			continue
		}
		if _, ok := set[v]; !ok {
			set[v] = struct{}{}
			added = append(added, v)
		}
	}
	return added
}

// AllowTools adds tool names (built-in and manifest tools) to the tool label's
// set; any other tool is recorded as "other". echo, sleep and http.fetch are
// allowed from the start.
func (m *Metrics) AllowTools(names ...string) {
	if m == nil {
		return
	}
	m.preinitialiseTools(m.allow(LabelTool, names)...)
}

// AllowProviders adds model and tool provider names to the provider label's
// set; scripted and openai are allowed from the start.
func (m *Metrics) AllowProviders(names ...string) {
	if m == nil {
		return
	}
	m.allow(LabelProvider, names)
}

// AllowRoutes adds mux patterns to the route label's set. A method prefix
// ("GET /x/{id}") is dropped, both here and in HTTPRequest, so the value of
// http.Request.Pattern can be passed as it is.
func (m *Metrics) AllowRoutes(patterns ...string) {
	if m == nil {
		return
	}
	m.allow(LabelRoute, patterns)
}

// AllowedLabelValues returns the current closed set of every label key,
// including the tools, providers and routes allowed so far, sorted.
func (m *Metrics) AllowedLabelValues() map[string][]string {
	if m == nil {
		return nil
	}
	out := make(map[string][]string)
	m.mu.RLock()
	keys := make([]string, 0, len(m.sets))
	for k := range m.sets {
		keys = append(keys, k)
	}
	m.mu.RUnlock()
	for _, k := range keys {
		out[k] = m.sortedSet(k)
	}
	return out
}

func (m *Metrics) sortedSet(key string) []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]string, 0, len(m.sets[key]))
	for v := range m.sets[key] {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

// value applies the label policy to one value of label key on metric.
func (m *Metrics) value(metric, key, v string) string {
	switch key {
	case LabelRoute:
		v = normalizeRoute(v)
	case LabelReasonClass, LabelFailureClass:
		if v == "" {
			v = NoneValue
		}
	}
	if v == OtherValue {
		return v
	}
	m.mu.RLock()
	_, ok := m.sets[key][v]
	m.mu.RUnlock()
	if ok {
		return v
	}
	m.overflow.WithLabelValues(metric, key).Inc()
	return OtherValue
}

func seconds(d time.Duration) float64 {
	if d < 0 {
		return 0
	}
	return d.Seconds()
}

func boolGauge(up bool) float64 {
	if up {
		return 1
	}
	return 0
}

// RunOnce records one executor run_once pass: result ok or error, the
// terminal reason class or none, or the error class (lease_held, ...).
func (m *Metrics) RunOnce(result, reasonClass string, d time.Duration) {
	if m == nil {
		return
	}
	m.runOnce.WithLabelValues(
		m.value(ExecutorRunOnceDuration, LabelResult, result),
		m.value(ExecutorRunOnceDuration, LabelReasonClass, reasonClass),
	).Observe(seconds(d))
}

// Terminal records a run reaching a terminal status.
func (m *Metrics) Terminal(status, reasonClass string) {
	if m == nil {
		return
	}
	m.terminal.WithLabelValues(
		m.value(ExecutorTerminal, LabelStatus, status),
		m.value(ExecutorTerminal, LabelReasonClass, reasonClass),
	).Inc()
}

// HTTPRequest records one served request. route is the mux pattern
// (http.Request.Pattern; "" for an unmatched request), never the raw path.
func (m *Metrics) HTTPRequest(route, method string, status int, d time.Duration) {
	if m == nil {
		return
	}
	r := m.value(HTTPRequests, LabelRoute, route)
	meth := m.value(HTTPRequests, LabelMethod, method)
	sc, ok := statusClass(status)
	if !ok {
		m.overflow.WithLabelValues(HTTPRequests, LabelStatusClass).Inc()
		sc = OtherValue
	}
	m.httpRequests.WithLabelValues(r, meth, sc).Inc()
	m.httpDuration.WithLabelValues(r, meth, sc).Observe(seconds(d))
}

// StreamSession records an SSE session that ended with outcome.
func (m *Metrics) StreamSession(outcome string) {
	if m == nil {
		return
	}
	m.streamSessions.WithLabelValues(m.value(StreamSessions, LabelOutcome, outcome)).Inc()
}

// StreamEmit records one event written (ok) or not (closed) to an SSE stream.
func (m *Metrics) StreamEmit(eventType, outcome string) {
	if m == nil {
		return
	}
	m.streamEmits.WithLabelValues(
		m.value(StreamEmits, LabelEventType, eventType),
		m.value(StreamEmits, LabelOutcome, outcome),
	).Inc()
}

// LeaseOp records one lease operation (acquire, claim, renew, release,
// reclaim) and its result (acquired, renewed, held, stolen, fenced, ...).
func (m *Metrics) LeaseOp(action, result string) {
	if m == nil {
		return
	}
	m.leaseOps.WithLabelValues(
		m.value(LeaseOperations, LabelAction, action),
		m.value(LeaseOperations, LabelResult, result),
	).Inc()
}

// JanitorCycle records one janitor scan.
func (m *Metrics) JanitorCycle() {
	if m == nil {
		return
	}
	m.janitorCycles.Inc()
}

// JanitorReclaim records one reclaimed lease: resumed or exhausted.
func (m *Metrics) JanitorReclaim(outcome string) {
	if m == nil {
		return
	}
	m.janitorReclaims.WithLabelValues(m.value(JanitorReclaims, LabelOutcome, outcome)).Inc()
}

// ToolLifecycle records a tool call step: phase start or run (ok, started,
// rejected, denied, failed before execution), progress (emitted) or terminal
// (succeeded, failed, timeout, canceled). The failure alert counts only
// phase terminal.
func (m *Metrics) ToolLifecycle(tool, phase, result string) {
	if m == nil {
		return
	}
	m.toolLifecycle.WithLabelValues(
		m.value(ToolLifecycle, LabelTool, tool),
		m.value(ToolLifecycle, LabelPhase, phase),
		m.value(ToolLifecycle, LabelResult, result),
	).Inc()
}

// ToolDuration records a tool call's duration with its terminal result.
func (m *Metrics) ToolDuration(tool, result string, d time.Duration) {
	if m == nil {
		return
	}
	m.toolDuration.WithLabelValues(
		m.value(ToolDuration, LabelTool, tool),
		m.value(ToolDuration, LabelResult, result),
	).Observe(seconds(d))
}

// BreakerState sets provider's state gauge: 1 for state, 0 for the others.
func (m *Metrics) BreakerState(provider, state string) {
	if m == nil {
		return
	}
	p := m.value(ProviderBreakerState, LabelProvider, provider)
	s := m.value(ProviderBreakerState, LabelState, state)
	m.breakerMu.Lock()
	defer m.breakerMu.Unlock()
	for _, known := range []string{BreakerClosed, BreakerOpen, BreakerHalfOpen} {
		v := 0.0
		if known == s {
			v = 1
		}
		m.breakerState.WithLabelValues(p, known).Set(v)
	}
	if s == OtherValue {
		m.breakerState.WithLabelValues(p, OtherValue).Set(1)
	} else {
		m.breakerState.DeleteLabelValues(p, OtherValue)
	}
}

// BreakerTransition records provider's breaker entering state.
func (m *Metrics) BreakerTransition(provider, state string) {
	if m == nil {
		return
	}
	m.breakerTrans.WithLabelValues(
		m.value(ProviderBreakerTransitions, LabelProvider, provider),
		m.value(ProviderBreakerTransitions, LabelState, state),
	).Inc()
}

// PolicyDecision records a spend or tool policy decision (allowed or denied)
// with its reason (allowed, budget_exhausted, denied_*).
func (m *Metrics) PolicyDecision(decision, reason string) {
	if m == nil {
		return
	}
	m.policy.WithLabelValues(
		m.value(PolicyDecisions, LabelDecision, decision),
		m.value(PolicyDecisions, LabelReason, reason),
	).Inc()
}

// ProjectionLag observes the lag, in events, when a projection write is
// decided. A negative lag (checkpoint ahead) is observed as 0.
func (m *Metrics) ProjectionLag(projection string, lagEvents int64) {
	if m == nil {
		return
	}
	if lagEvents < 0 {
		lagEvents = 0
	}
	m.projLag.WithLabelValues(m.value(KhalaProjectionLag, LabelProjection, projection)).Observe(float64(lagEvents))
}

// ProjectionWrite records a projection write decision: ok, skipped or error.
func (m *Metrics) ProjectionWrite(projection, result string) {
	if m == nil {
		return
	}
	m.projWrites.WithLabelValues(
		m.value(KhalaProjectionWrites, LabelProjection, projection),
		m.value(KhalaProjectionWrites, LabelResult, result),
	).Inc()
}

// ProjectionWriteFailure records a sink failure with its class.
func (m *Metrics) ProjectionWriteFailure(projection, reasonClass string) {
	if m == nil {
		return
	}
	m.projFailures.WithLabelValues(
		m.value(KhalaProjectionWriteFailures, LabelProjection, projection),
		m.value(KhalaProjectionWriteFailures, LabelReasonClass, reasonClass),
	).Inc()
}

// ProjectionDrift records a drift incident (projector or parity auditor).
func (m *Metrics) ProjectionDrift(projection, reasonClass string) {
	if m == nil {
		return
	}
	m.projDrift.WithLabelValues(
		m.value(KhalaProjectionDriftIncidents, LabelProjection, projection),
		m.value(KhalaProjectionDriftIncidents, LabelReasonClass, reasonClass),
	).Inc()
}

// ProjectionReplay records one replay with its scope (run, codex_worker,
// all), result (ok, error, skipped, dry_run) and duration.
func (m *Metrics) ProjectionReplay(scope, result string, d time.Duration) {
	if m == nil {
		return
	}
	s := m.value(KhalaProjectionReplays, LabelScope, scope)
	r := m.value(KhalaProjectionReplays, LabelResult, result)
	m.projReplays.WithLabelValues(s, r).Inc()
	m.projReplayDur.WithLabelValues(s, r).Observe(seconds(d))
}

// TokenMint records a sync token mint: ok with failure class none, or error
// with authz_denied, signing_error, upstream_unavailable or invalid_request.
func (m *Metrics) TokenMint(result, failureClass string) {
	if m == nil {
		return
	}
	m.tokenMint.WithLabelValues(
		m.value(KhalaTokenMint, LabelResult, result),
		m.value(KhalaTokenMint, LabelFailureClass, failureClass),
	).Inc()
}

// ParityFailure records a parity failure of class policy, loop, network,
// manifest or workflow.
func (m *Metrics) ParityFailure(class, reasonClass, component string) {
	if m == nil {
		return
	}
	m.parity.WithLabelValues(
		m.value(ParityFailures, LabelClass, class),
		m.value(ParityFailures, LabelReasonClass, reasonClass),
		m.value(ParityFailures, LabelComponent, component),
	).Inc()
}

// SyncConnectionsAdd moves the open sync connection gauge by delta (+1 on
// open, -1 on close).
func (m *Metrics) SyncConnectionsAdd(delta float64) {
	if m == nil {
		return
	}
	m.syncConns.Add(delta)
}

// SyncAuth records a sync authentication: ok/authorized or error with its
// reason class (missing_token, invalid_token, expired_token, ...).
func (m *Metrics) SyncAuth(result, reasonClass string) {
	if m == nil {
		return
	}
	m.syncAuth.WithLabelValues(
		m.value(SyncAuth, LabelResult, result),
		m.value(SyncAuth, LabelReasonClass, reasonClass),
	).Inc()
}

// SyncStaleCursor records a resume refused below retention.
func (m *Metrics) SyncStaleCursor() {
	if m == nil {
		return
	}
	m.syncStale.Inc()
}

// SetDBUp records the outcome of the last database ping.
func (m *Metrics) SetDBUp(up bool) {
	if m == nil {
		return
	}
	m.dbUp.Set(boolGauge(up))
}

// SetListenerUp records whether the notification listener is connected.
func (m *Metrics) SetListenerUp(up bool) {
	if m == nil {
		return
	}
	m.listenerUp.Set(boolGauge(up))
}

// SetSinkUp records whether the projection sink is healthy.
func (m *Metrics) SetSinkUp(up bool) {
	if m == nil {
		return
	}
	m.sinkUp.Set(boolGauge(up))
}
