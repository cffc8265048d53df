// Package telemetry owns the metric catalogue (names, label keys, closed
// label value sets), the label policy, tracing and logging set-up.
package telemetry

// Metric names: the contract the alert rules and dashboard are built from.
const (
	ExecutorRunOnceDuration = "openagents_runtime_executor_run_once_duration_seconds"
	ExecutorTerminal        = "openagents_runtime_executor_terminal_total"

	HTTPRequests        = "openagents_runtime_http_requests_total"
	HTTPRequestDuration = "openagents_runtime_http_request_duration_seconds"

	StreamSessions = "openagents_runtime_stream_sessions_total"
	StreamEmits    = "openagents_runtime_stream_emits_total"

	LeaseOperations = "openagents_runtime_lease_operations_total"
	JanitorCycles   = "openagents_runtime_janitor_cycles_total"
	JanitorReclaims = "openagents_runtime_janitor_reclaims_total"

	ToolLifecycle = "openagents_runtime_tool_lifecycle_total"
	ToolDuration  = "openagents_runtime_tool_duration_seconds"

	ProviderBreakerState       = "openagents_runtime_provider_breaker_state"
	ProviderBreakerTransitions = "openagents_runtime_provider_breaker_transitions_total"

	PolicyDecisions = "openagents_runtime_policy_decisions_total"

	KhalaProjectionLag            = "openagents_runtime_khala_projection_lag_events"
	KhalaProjectionWrites         = "openagents_runtime_khala_projection_writes_total"
	KhalaProjectionWriteFailures  = "openagents_runtime_khala_projection_write_failures_total"
	KhalaProjectionDriftIncidents = "openagents_runtime_khala_projection_drift_incidents_total"
	KhalaProjectionReplays        = "openagents_runtime_khala_projection_replays_total"
	KhalaProjectionReplayDuration = "openagents_runtime_khala_projection_replay_duration_seconds"

	KhalaTokenMint = "openagents_khala_token_mint_total"

	ParityFailures = "openagents_runtime_parity_failures_total"

	SyncConnections = "openagents_runtime_sync_connections"
	SyncAuth        = "openagents_runtime_sync_auth_total"
	SyncStaleCursor = "openagents_runtime_sync_stale_cursor_total"

	// BuildInfoMetric is named so because BuildInfo is the type NewMetrics takes.
	BuildInfoMetric     = "openagents_runtime_build_info"
	DBUp                = "openagents_runtime_db_up"
	NotifyListenerUp    = "openagents_runtime_notify_listener_up"
	KhalaSinkUp         = "openagents_runtime_khala_sink_up"
	MetricLabelOverflow = "openagents_runtime_metric_label_overflow_total"
)

// ForbiddenLabelKeys may never be metric label keys: ids belong in logs and traces.
var ForbiddenLabelKeys = []string{
	"run_id", "thread_id", "frame_id", "tool_call_id", "authorization_id", "lease_owner", "worker_id",
	"document_id", "entity_id", "traceparent", "tracestate", "x_request_id", "request_id", "trace_id",
	"span_id", "seq", "cursor", "user_id", "guest_scope", "sub",
}
