package telemetry

import (
	"slices"
	"sort"
	"strings"
)

// Label keys. Every label of every metric is one of these; each has a closed
// value set in LabelValues (or, for LabelTool, LabelProvider and LabelRoute, a
// set the caller registers on the Metrics value).
const (
	LabelResult        = "result"
	LabelReasonClass   = "reason_class"
	LabelStatus        = "status"
	LabelOutcome       = "outcome"
	LabelEventType     = "event_type"
	LabelAction        = "action"
	LabelPhase         = "phase"
	LabelTool          = "tool"
	LabelProvider      = "provider"
	LabelState         = "state"
	LabelDecision      = "decision"
	LabelReason        = "reason"
	LabelProjection    = "projection"
	LabelScope         = "scope"
	LabelFailureClass  = "failure_class"
	LabelClass         = "class"
	LabelComponent     = "component"
	LabelRoute         = "route"
	LabelMethod        = "method"
	LabelStatusClass   = "status_class"
	LabelMetric        = "metric" // of the overflow counter: a catalogue metric name
	LabelLabel         = "label"  // of the overflow counter: a label key
	LabelVersion       = "version"
	LabelRevision      = "revision"
	LabelSchemaVersion = "schema_version"
)

// OtherValue replaces any label value outside its closed set.
const OtherValue = "other"

// NoneValue is what an empty reason_class or failure_class is recorded as:
// "no reason" is a legitimate, bounded value, not an overflow.
const NoneValue = "none"

// UnmatchedRoute is the route label of a request that matched no mux pattern
// (http.Request.Pattern is empty then).
const UnmatchedRoute = "unmatched"

// Breaker states, the values of provider_breaker_state{state}.
const (
	BreakerClosed   = "closed"
	BreakerOpen     = "open"
	BreakerHalfOpen = "half_open"
)

// Projection names and replay scopes.
const (
	ProjectionRunSummary         = "run_summary"
	ProjectionCodexWorkerSummary = "codex_worker_summary"
	ScopeRun                     = "run"
	ScopeCodexWorker             = "codex_worker"
	ScopeAll                     = "all"
)

// Parity failure classes (DESIGN section 9).
const (
	ParityPolicy   = "policy"
	ParityLoop     = "loop"
	ParityNetwork  = "network"
	ParityManifest = "manifest"
	ParityWorkflow = "workflow"
)

// Reason classes that alerts select on.
const (
	DriftSummaryHashMismatch = "summary_hash_mismatch"
	DriftHashAndLagDrift     = "hash_and_lag_drift"
)

// ssrfReasons are the egress guard's block reasons (internal/tools/egress),
// reported as ssrf_block.<why>.
func ssrfReasons() []string {
	return []string{
		"invalid_url", "scheme_not_allowed", "loopback", "private", "link_local", "cgnat",
		"metadata", "unspecified", "multicast", "reserved", "host_not_allowed",
		"too_many_redirects", "dns_failure",
	}
}

// policyReasons are the reasons of policy.decision (DESIGN section 5) and the
// reason_class of parity failures of class policy.
func policyReasons() []string {
	return []string{
		"allowed",
		"budget_exhausted",
		"denied_authorization_missing",
		"denied_authorization_expired",
		"denied_authorization_revoked",
		"denied_invalid_authorization_mode",
		"denied_tool_not_allowed",
		"denied_explicit",
		"denied_spend_limit",
		"denied_idempotency_conflict",
		"denied_reconcile_required",
	}
}

// LabelValues returns the closed value set of every label key, as a fresh map
// the caller may keep or change. "other" is always accepted besides these and
// is not listed. For tool, provider and route the sets here are only the
// built-in defaults; each Metrics value extends them through AllowTools,
// AllowProviders and AllowRoutes (see Metrics.AllowedLabelValues). The keys
// metric and label (of the overflow counter) are derived from Catalogue;
// version, revision and schema_version (of build_info) are the build's own
// values and have no closed set.
func LabelValues() map[string][]string {
	ssrf := ssrfReasons()
	dotted := make([]string, 0, len(ssrf))
	for _, why := range ssrf {
		dotted = append(dotted, "ssrf_block."+why)
	}

	reasonClass := []string{
		NoneValue,
		// executor: terminal reasons and run_once errors
		"completed", "cancel_requested", "canceled", "loop_detected", "execution_failed",
		"executor_recovery_exhausted", "executor_lost", "executor_error", "executor_shutdown",
		"provider_error", "provider_timeout", "provider_rate_limited", "provider_unavailable",
		"provider_circuit_open", "fallback_exhausted", "budget_exhausted", "policy_denied",
		"output_schema_violation", "tool_error", "lease_held", "lease_lost", "run_not_found",
		"run_terminal", "store_error", "invalid_frame", "invalid_script",
		// projection: sink failures
		"khala_error", "http_5xx", "http_4xx", "auth_error", "timeout", "sink_exception",
		"network_error",
		// projection: drift and replay
		"checkpoint_ahead", DriftSummaryHashMismatch, "projection_version_changed", "sequence_gap",
		DriftHashAndLagDrift, "khala_missing", "lag_drift", "unsupported_projection",
		"entity_not_found",
		// sync socket auth (internal/sync/token)
		"authorized", "missing_token", "invalid_token", "expired", "not_yet_valid", "revoked",
		"unknown_kid", "claim_mismatch", "scope_denied",
		// parity: loop detectors, manifest and workflow findings
		"loop_detected.no_progress", "generic_repeat", "ping_pong", "known_poll", "known_poll_no_progress",
		// provider error classes (internal/provider)
		"provider_auth", "provider_5xx", "provider_bad_request",
		// tool error classes (internal/tools)
		"invalid_input", "unknown_tool", "tool_http_3xx", "tool_http_4xx", "tool_http_5xx",
		"tool_http_error", "tool_invalid_output", "tool_output_too_large",
		// manifest rejections
		"invalid_name", "invalid_endpoint", "duplicate",
		"global_circuit_breaker",
		"invalid_schema", "invalid_manifest", "manifest_validation.invalid_schema",
		"receipt_verification_failed", "workflow.output_schema_violation",
		"workflow.receipt_verification_failed",
	}
	reasonClass = append(reasonClass, policyReasons()...)
	reasonClass = append(reasonClass, ssrf...)
	reasonClass = append(reasonClass, dotted...)

	return map[string][]string{
		LabelResult: {
			"ok", "error",
			// lease operations
			"acquired", "renewed", "held", "stolen", "fenced", "released", "lost", "not_found",
			// tool lifecycle
			"started", "emitted", "succeeded", "failed", "timeout", "canceled", "rejected", "denied",
			// projection writes and replays
			"skipped", "dry_run",
		},
		LabelReasonClass: uniq(reasonClass),
		LabelStatus:      {"succeeded", "failed", "canceled"},
		LabelOutcome: {
			// stream sessions
			"finished", "client_closed", "tail_timeout", "server_shutdown", "stale_cursor", "error",
			// stream emits
			"ok", "closed",
			// janitor reclaims
			"resumed", "exhausted",
		},
		LabelEventType: {
			"run.started", "run.delta", "tool.call", "tool.progress", "tool.result",
			"policy.decision", "policy.budget_exhausted", "provider.fallback", "run.loop_detected",
			"run.executor_lost", "run.cancel_requested", "run.frame_consumed", "run.finished",
		},
		LabelAction:   {"acquire", "claim", "renew", "release", "reclaim"},
		LabelPhase:    {"start", "run", "progress", "terminal"},
		LabelTool:     {"echo", "sleep", "http.fetch"},
		LabelProvider: {"scripted", "openai"},
		LabelState:    {BreakerClosed, BreakerOpen, BreakerHalfOpen},
		LabelDecision: {"allowed", "denied"},
		LabelReason:   policyReasons(),
		LabelProjection: {
			ProjectionRunSummary, ProjectionCodexWorkerSummary,
		},
		LabelScope:        {ScopeRun, ScopeCodexWorker, ScopeAll},
		LabelFailureClass: {NoneValue, "authz_denied", "signing_error", "upstream_unavailable", "invalid_request"},
		LabelClass:        {ParityPolicy, ParityLoop, ParityNetwork, ParityManifest, ParityWorkflow},
		LabelComponent: {
			"executor", "spend", "tools", "tools.policy", "tools.network", "tools.manifest",
			"tools.extensions", "receipts", "workflow", "projection", "parity_auditor",
			// the original system's component names, kept so ported emitters stay in the set
			"runs.executor", "ds.predict", "ds.workflows",
		},
		LabelRoute:       {UnmatchedRoute},
		LabelMethod:      {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"},
		LabelStatusClass: {"1xx", "2xx", "3xx", "4xx", "5xx"},
		LabelMetric:      catalogueNames(),
		LabelLabel:       catalogueLabelKeys(),
	}
}

// FreeLabelKeys are label keys without a closed set: build_info's, which
// carry the running binary's own constant values (one series per process).
func FreeLabelKeys() []string {
	return []string{LabelVersion, LabelRevision, LabelSchemaVersion}
}

func uniq(in []string) []string {
	out := slices.Clone(in)
	sort.Strings(out)
	return slices.Compact(out)
}

// normalizeRoute turns a mux pattern into the route label: the method prefix
// of a Go 1.22 pattern ("GET /x/{id}") is dropped because method is a label
// of its own, so "GET /x" and "POST /x" are one route.
func normalizeRoute(pattern string) string {
	p := strings.TrimSpace(pattern)
	if p == "" {
		return UnmatchedRoute
	}
	if i := strings.IndexByte(p, ' '); i > 0 && !strings.Contains(p[:i], "/") {
		p = strings.TrimSpace(p[i+1:])
	}
	return p
}

// statusClass maps an HTTP status to its class label; ok=false outside 100-599.
func statusClass(code int) (string, bool) {
	if code < 100 || code > 599 {
		return "", false
	}
	return string(rune('0'+code/100)) + "xx", true
}

// MetricType is a Prometheus metric type.
type MetricType string

const (
	TypeCounter   MetricType = "counter"
	TypeGauge     MetricType = "gauge"
	TypeHistogram MetricType = "histogram"
)

// MetricSpec describes one exported metric: the source docs/OBSERVABILITY.md
// and the alert and dashboard generators are built from.
type MetricSpec struct {
	Name    string     // Prometheus name (a constant of names.go)
	Type    MetricType //
	Help    string     //
	Unit    string     // "seconds", "events", "connections", "bool", "info" or "" for plain counts
	Labels  []string   // label keys in order
	Signal  string     // the runbook's signal name (the original's dotted telemetry name)
	Buckets []float64  // histograms only
}

// Histogram buckets. Each bucket set has a boundary exactly at the threshold
// its alert compares a quantile with, so the alert's verdict does not depend
// on interpolation inside a bucket.
func runOnceBuckets() []float64 {
	// p95 threshold 5 s (ExecutorLatencyP95High)
	return []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2, 3, 4, 5, 6, 7.5, 10, 15, 20, 30, 60}
}

func httpBuckets() []float64 {
	return []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
}

func toolBuckets() []float64 {
	// default tool timeout 5 s: timeouts land in the 5 bucket's neighbour
	return []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 7.5, 10, 30, 60}
}

func replayBuckets() []float64 {
	return []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}
}

func lagBuckets() []float64 {
	// p95 threshold 25 events (KhalaProjectionLagP95High)
	return []float64{0, 1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 100, 250, 1000}
}

// Catalogue returns every metric NewMetrics registers, in a stable order.
func Catalogue() []MetricSpec {
	return []MetricSpec{
		{Name: ExecutorRunOnceDuration, Type: TypeHistogram, Unit: "seconds",
			Help:   "Duration of one executor run_once pass (lease, frames, agent turns), by result and reason class.",
			Labels: []string{LabelResult, LabelReasonClass}, Signal: "executor.run_once.duration_ms", Buckets: runOnceBuckets()},
		{Name: ExecutorTerminal, Type: TypeCounter,
			Help:   "Runs that reached a terminal status, by status and reason class.",
			Labels: []string{LabelStatus, LabelReasonClass}, Signal: "executor.terminal.count"},

		{Name: HTTPRequests, Type: TypeCounter,
			Help:   "HTTP requests served, by route pattern, method and status class.",
			Labels: []string{LabelRoute, LabelMethod, LabelStatusClass}, Signal: "http.request"},
		{Name: HTTPRequestDuration, Type: TypeHistogram, Unit: "seconds",
			Help:   "HTTP request duration until the handler returned, by route pattern, method and status class.",
			Labels: []string{LabelRoute, LabelMethod, LabelStatusClass}, Signal: "http.request.duration_ms", Buckets: httpBuckets()},

		{Name: StreamSessions, Type: TypeCounter,
			Help:   "SSE stream sessions that ended, by outcome (finished, client_closed, tail_timeout, server_shutdown, ...).",
			Labels: []string{LabelOutcome}, Signal: "stream.session.count"},
		{Name: StreamEmits, Type: TypeCounter,
			Help:   "Events written to SSE streams, by event type and outcome (ok, closed).",
			Labels: []string{LabelEventType, LabelOutcome}, Signal: "stream.emit.count"},

		{Name: LeaseOperations, Type: TypeCounter,
			Help:   "Run lease operations, by action and result (acquired, renewed, held, stolen, ...).",
			Labels: []string{LabelAction, LabelResult}, Signal: "lease.operation.count"},
		{Name: JanitorCycles, Type: TypeCounter,
			Help:   "Janitor scans for expired leases.",
			Labels: nil, Signal: "janitor.cycle.count"},
		{Name: JanitorReclaims, Type: TypeCounter,
			Help:   "Expired leases reclaimed by the janitor, by outcome (resumed, exhausted).",
			Labels: []string{LabelOutcome}, Signal: "janitor.reclaim.count"},

		{Name: ToolLifecycle, Type: TypeCounter,
			Help:   "Tool call lifecycle steps, by tool (registered names, else other), phase and result.",
			Labels: []string{LabelTool, LabelPhase, LabelResult}, Signal: "tool.lifecycle.count"},
		{Name: ToolDuration, Type: TypeHistogram, Unit: "seconds",
			Help:   "Tool call duration from start to terminal result, by tool and result.",
			Labels: []string{LabelTool, LabelResult}, Signal: "tool.lifecycle.duration_ms", Buckets: toolBuckets()},

		{Name: ProviderBreakerState, Type: TypeGauge, Unit: "bool",
			Help:   "Circuit breaker state per provider: 1 for the current state, 0 for the others.",
			Labels: []string{LabelProvider, LabelState}, Signal: "provider.breaker.state"},
		{Name: ProviderBreakerTransitions, Type: TypeCounter,
			Help:   "Circuit breaker transitions per provider, by the state entered.",
			Labels: []string{LabelProvider, LabelState}, Signal: "provider.breaker.transition.count"},

		{Name: PolicyDecisions, Type: TypeCounter,
			Help:   "Spend and tool policy decisions, by decision (allowed, denied) and reason.",
			Labels: []string{LabelDecision, LabelReason}, Signal: "policy.decision.count"},

		{Name: KhalaProjectionLag, Type: TypeHistogram, Unit: "events",
			Help:   "Projection lag when a write is decided: runtime latest seq minus checkpoint seq, in events.",
			Labels: []string{LabelProjection}, Signal: "khala.projection.lag_events", Buckets: lagBuckets()},
		{Name: KhalaProjectionWrites, Type: TypeCounter,
			Help:   "Projection write decisions, by projection and result (ok, skipped, error).",
			Labels: []string{LabelProjection, LabelResult}, Signal: "khala.projection.write.count"},
		{Name: KhalaProjectionWriteFailures, Type: TypeCounter,
			Help:   "Projection writes that failed in the sink, by projection and reason class.",
			Labels: []string{LabelProjection, LabelReasonClass}, Signal: "khala.projection.write_failure.count"},
		{Name: KhalaProjectionDriftIncidents, Type: TypeCounter,
			Help:   "Projection drift incidents from the projector and the parity auditor, by projection and reason class.",
			Labels: []string{LabelProjection, LabelReasonClass}, Signal: "khala.projection.drift.count"},
		{Name: KhalaProjectionReplays, Type: TypeCounter,
			Help:   "Projection replays (reprojection), by scope and result.",
			Labels: []string{LabelScope, LabelResult}, Signal: "khala.projection.replay.count"},
		{Name: KhalaProjectionReplayDuration, Type: TypeHistogram, Unit: "seconds",
			Help:   "Projection replay duration, by scope and result.",
			Labels: []string{LabelScope, LabelResult}, Signal: "khala.projection.replay.duration_ms", Buckets: replayBuckets()},

		{Name: KhalaTokenMint, Type: TypeCounter,
			Help:   "Sync token mint attempts, by result and failure class.",
			Labels: []string{LabelResult, LabelFailureClass}, Signal: "khala.token_mint.count"},

		{Name: ParityFailures, Type: TypeCounter,
			Help:   "Parity failures (policy, loop, network, manifest, workflow), by class, reason class and component.",
			Labels: []string{LabelClass, LabelReasonClass, LabelComponent}, Signal: "parity.failure.count"},

		{Name: SyncConnections, Type: TypeGauge, Unit: "connections",
			Help:   "Open sync WebSocket connections.",
			Labels: nil, Signal: "sync.socket.connection.active"},
		{Name: SyncAuth, Type: TypeCounter,
			Help:   "Sync socket and polling authentications, by result and reason class.",
			Labels: []string{LabelResult, LabelReasonClass}, Signal: "sync.socket.auth.count"},
		{Name: SyncStaleCursor, Type: TypeCounter,
			Help:   "Sync resumes refused because the cursor was below retention (full resync required).",
			Labels: nil, Signal: "sync.replay.stale_cursor.count"},

		{Name: BuildInfoMetric, Type: TypeGauge, Unit: "info",
			Help:   "Build information of the running binary; always 1.",
			Labels: []string{LabelVersion, LabelRevision, LabelSchemaVersion}, Signal: "runtime.build_info"},
		{Name: DBUp, Type: TypeGauge, Unit: "bool",
			Help:   "1 when the last database ping succeeded, else 0.",
			Labels: nil, Signal: "runtime.db.up"},
		{Name: NotifyListenerUp, Type: TypeGauge, Unit: "bool",
			Help:   "1 when the event notification listener (LISTEN/NOTIFY or in-process) is connected, else 0.",
			Labels: nil, Signal: "runtime.notify_listener.up"},
		{Name: KhalaSinkUp, Type: TypeGauge, Unit: "bool",
			Help:   "1 when the projection sink's last write or health check succeeded, else 0.",
			Labels: nil, Signal: "khala.sink.up"},
		{Name: MetricLabelOverflow, Type: TypeCounter,
			Help:   "Label values outside their closed set, recorded as other, by metric and label key.",
			Labels: []string{LabelMetric, LabelLabel}, Signal: "telemetry.label_overflow.count"},
	}
}

// catalogueNames and catalogueLabelKeys are the closed sets of the overflow
// counter's own labels. They read the catalogue's names and labels only.
func catalogueNames() []string {
	specs := Catalogue()
	out := make([]string, 0, len(specs))
	for _, s := range specs {
		out = append(out, s.Name)
	}
	return out
}

func catalogueLabelKeys() []string {
	var out []string
	for _, s := range Catalogue() {
		out = append(out, s.Labels...)
	}
	return uniq(out)
}
