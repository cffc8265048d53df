package ops

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"

	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// Dashboard identity.
const (
	DashboardUID   = "oaruntime-ops"
	DashboardTitle = "oaruntime: runtime operations"
	// DatasourceVariable is the templated Prometheus datasource every panel
	// and query uses; no datasource uid is hard-coded.
	DatasourceVariable = "datasource"
)

// rateInterval is Grafana's window for breakdown panels (not alert signals:
// those keep the alert's own window so the panel shows what the alert sees).
const rateInterval = "$__rate_interval"

// Panel is one dashboard panel as the generator and the lint see it.
type Panel struct {
	Area        Area
	Title       string
	Description string
	Exprs       []Query
	Unit        string
	Alert       *Alert // the alert whose signal this panel draws, if any
}

// Query is one panel target.
type Query struct {
	Expr   string
	Legend string
}

// Panels returns every panel in dashboard order: per area, the alert signals
// first (threshold drawn), then the breakdowns the runbook's actions ask for.
func Panels() []Panel {
	alerts := Alerts(Options{})
	var out []Panel
	for _, area := range Areas() {
		for i := range alerts {
			a := &alerts[i]
			if a.Area != area {
				continue
			}
			out = append(out, Panel{
				Area:  area,
				Title: a.PanelTitle,
				Description: fmt.Sprintf("The signal of alert %s (%s), which fires on: %s. Runbook: %s",
					a.Name, a.Severity, a.Condition, a.RunbookURL),
				Exprs: []Query{{Expr: a.PanelExpr, Legend: a.Legend}},
				Unit:  a.Unit,
				Alert: a,
			})
		}
		out = append(out, breakdowns(area)...)
	}
	return out
}

func rateBy(metric string, by ...string) string {
	return aggregate("sum", by, "rate("+metric+"["+rateInterval+"])")
}

func quantileBy(histogram string, by ...string) string {
	return "histogram_quantile(0.95, " + aggregate("sum", append([]string{"le"}, by...), "rate("+histogram+"_bucket["+rateInterval+"])") + ")"
}

// breakdowns are the panels an operator needs for the runbook's actions
// (split by reason, tool, provider, outcome), plus throughput and health.
func breakdowns(area Area) []Panel {
	p := func(title, desc, unit string, qs ...Query) Panel {
		return Panel{Area: area, Title: title, Description: desc, Unit: unit, Exprs: qs}
	}
	switch area {
	case AreaExecutor:
		return []Panel{
			p("run_once passes/s by result", "Executor run_once passes per second, by result and reason class.", UnitPerSecond,
				Query{rateBy(telemetry.ExecutorRunOnceDuration+"_count", telemetry.LabelResult, telemetry.LabelReasonClass), "{{result}} {{reason_class}}"}),
			p("Terminal runs/s by status", "Runs reaching a terminal status per second, by status and reason class (loop_detected, executor_recovery_exhausted, ...).", UnitPerSecond,
				Query{rateBy(telemetry.ExecutorTerminal, telemetry.LabelStatus, telemetry.LabelReasonClass), "{{status}} {{reason_class}}"}),
		}
	case AreaHTTP:
		return []Panel{
			p("HTTP requests/s by status class", "All requests including probes and scrapes, by status class.", UnitReqPerSec,
				Query{rateBy(telemetry.HTTPRequests, telemetry.LabelStatusClass), "{{status_class}}"}),
			p("HTTP 5xx/s by route", "Which routes answer 5xx (first runbook action: slice failing endpoints).", UnitReqPerSec,
				Query{aggregate("sum", []string{telemetry.LabelRoute, telemetry.LabelMethod}, "rate("+selector(telemetry.HTTPRequests, eq(telemetry.LabelStatusClass, statusClass5xx))+"["+rateInterval+"])"), "{{method}} {{route}}"}),
			p("HTTP p95 latency by route", "p95 request duration per route pattern.", UnitSeconds,
				Query{quantileBy(telemetry.HTTPRequestDuration, telemetry.LabelRoute), "{{route}}"}),
		}
	case AreaStreams:
		return []Panel{
			p("Stream sessions ended/s by outcome", "finished vs client_closed vs tail_timeout vs server_shutdown.", UnitPerSecond,
				Query{rateBy(telemetry.StreamSessions, telemetry.LabelOutcome), "{{outcome}}"}),
			p("Stream emits/s by event type", "Events written to SSE clients, by event type and outcome.", UnitPerSecond,
				Query{rateBy(telemetry.StreamEmits, telemetry.LabelEventType, telemetry.LabelOutcome), "{{event_type}} {{outcome}}"}),
		}
	case AreaLeases:
		return []Panel{
			p("Lease operations/s by action and result", "acquired, renewed, held, stolen, fenced, released, lost.", UnitPerSecond,
				Query{rateBy(telemetry.LeaseOperations, telemetry.LabelAction, telemetry.LabelResult), "{{action}} {{result}}"}),
			p("Janitor reclaims/s by outcome", "Expired leases reclaimed: resumed, or exhausted (run failed after 3 reclaims without progress).", UnitPerSecond,
				Query{rateBy(telemetry.JanitorReclaims, telemetry.LabelOutcome), "{{outcome}}"}),
			p("Janitor cycles/s", "Janitor scans per second per instance; flat zero means the janitor stopped.", UnitPerSecond,
				Query{rateBy(telemetry.JanitorCycles, targetLabelInst), "{{instance}}"}),
		}
	case AreaTools:
		return []Panel{
			p("Tool terminal results/s by tool", "Split failures by tool (first runbook action).", UnitPerSecond,
				Query{aggregate("sum", []string{telemetry.LabelTool, telemetry.LabelResult}, "rate("+selector(telemetry.ToolLifecycle, eq(telemetry.LabelPhase, phaseTerminal))+"["+rateInterval+"])"), "{{tool}} {{result}}"}),
			p("Tool p95 duration by tool", "Compare with the tool timeout budget (default 5 s).", UnitSeconds,
				Query{quantileBy(telemetry.ToolDuration, telemetry.LabelTool), "{{tool}}"}),
		}
	case AreaBreakers:
		return []Panel{
			p("Breaker transitions/s by provider and state", "Flapping breakers show as repeated open/half_open/closed transitions.", UnitPerSecond,
				Query{rateBy(telemetry.ProviderBreakerTransitions, telemetry.LabelProvider, telemetry.LabelState), "{{provider}} {{state}}"}),
		}
	case AreaPolicy:
		return []Panel{
			p("Policy decisions/s by decision and reason", "Dominant denial reason (budget_exhausted, denied_*).", UnitPerSecond,
				Query{rateBy(telemetry.PolicyDecisions, telemetry.LabelDecision, telemetry.LabelReason), "{{decision}} {{reason}}"}),
		}
	case AreaKhala:
		return []Panel{
			p("Projection writes/s by result", "Projector throughput: ok, skipped, error.", UnitPerSecond,
				Query{rateBy(telemetry.KhalaProjectionWrites, telemetry.LabelProjection, telemetry.LabelResult), "{{projection}} {{result}}"}),
			p("Projection write failures/s by reason class", "khala_error, http_5xx, auth_error, timeout, sink_exception.", UnitPerSecond,
				Query{rateBy(telemetry.KhalaProjectionWriteFailures, telemetry.LabelProjection, telemetry.LabelReasonClass), "{{projection}} {{reason_class}}"}),
			p("Drift incidents/s by reason class", "summary_hash_mismatch, projection_version_changed, checkpoint_ahead, sequence_gap, hash_and_lag_drift, khala_missing.", UnitPerSecond,
				Query{rateBy(telemetry.KhalaProjectionDriftIncidents, telemetry.LabelProjection, telemetry.LabelReasonClass), "{{projection}} {{reason_class}}"}),
			p("Replays/s by scope and result", "Reprojection runs (oaruntime khala reproject), by scope and result.", UnitPerSecond,
				Query{rateBy(telemetry.KhalaProjectionReplays, telemetry.LabelScope, telemetry.LabelResult), "{{scope}} {{result}}"}),
			p("Replay p95 duration", "p95 reprojection duration by scope.", UnitSeconds,
				Query{quantileBy(telemetry.KhalaProjectionReplayDuration, telemetry.LabelScope), "{{scope}}"}),
		}
	case AreaTokens:
		return []Panel{
			p("Token mints/s by result and failure class", "authz_denied, signing_error, upstream_unavailable.", UnitPerSecond,
				Query{rateBy(telemetry.KhalaTokenMint, telemetry.LabelResult, telemetry.LabelFailureClass), "{{result}} {{failure_class}}"}),
		}
	case AreaParity:
		return []Panel{
			p("Parity failures/s by reason class and component", "The dominant regression lane within a class.", UnitPerSecond,
				Query{rateBy(telemetry.ParityFailures, telemetry.LabelClass, telemetry.LabelReasonClass, telemetry.LabelComponent), "{{class}} {{reason_class}} {{component}}"}),
		}
	case AreaHealth:
		return []Panel{
			p("Database up", "1 when the last database ping succeeded, per instance.", UnitBool,
				Query{telemetry.DBUp, "{{instance}}"}),
			p("Notification listener up", "LISTEN/NOTIFY (or in-process) listener connected, per instance.", UnitBool,
				Query{telemetry.NotifyListenerUp, "{{instance}}"}),
			p("Khala sink up", "Projection sink healthy, per instance.", UnitBool,
				Query{telemetry.KhalaSinkUp, "{{instance}}"}),
			p("Sync connections", "Open sync WebSocket connections.", UnitCount,
				Query{aggregate("sum", []string{targetLabelInst}, telemetry.SyncConnections), "{{instance}}"}),
			p("Metric label overflow/s", "Label values outside their closed set (recorded as other), by metric and label.", UnitPerSecond,
				Query{rateBy(telemetry.MetricLabelOverflow, telemetry.LabelMetric, telemetry.LabelLabel), "{{metric}} {{label}}"}),
			p("Running versions", "Instances per version and schema version (build_info).", UnitCount,
				Query{aggregate("count", []string{telemetry.LabelVersion, telemetry.LabelSchemaVersion}, telemetry.BuildInfoMetric), "{{version}} schema {{schema_version}}"}),
		}
	}
	return nil
}

func datasourceRef() common.DataSourceRef {
	typ, uid := "prometheus", "${"+DatasourceVariable+"}"
	return common.DataSourceRef{Type: &typ, Uid: &uid}
}

func thresholdSteps(a *Alert) []dashboard.Threshold {
	ok, bad := "green", "red"
	t := a.Threshold
	if a.Comparison == Below {
		return []dashboard.Threshold{{Value: nil, Color: bad}, {Value: &t, Color: ok}}
	}
	return []dashboard.Threshold{{Value: nil, Color: ok}, {Value: &t, Color: bad}}
}

func panelBuilder(id uint32, p Panel) *timeseries.PanelBuilder {
	b := timeseries.NewPanelBuilder().
		Id(id).
		Title(p.Title).
		Description(p.Description).
		Datasource(datasourceRef()).
		Unit(p.Unit).
		Height(8).
		Span(12).
		LineWidth(1).
		FillOpacity(10).
		Legend(common.NewVizLegendOptionsBuilder().
			DisplayMode(common.LegendDisplayModeList).
			Placement(common.LegendPlacementBottom).
			ShowLegend(true))
	for i, q := range p.Exprs {
		b = b.WithTarget(prometheus.NewDataqueryBuilder().
			Datasource(datasourceRef()).
			Expr(q.Expr).
			LegendFormat(q.Legend).
			RefId(string(rune('A' + i))).
			Range())
	}
	if p.Alert != nil {
		b = b.Thresholds(dashboard.NewThresholdsConfigBuilder().
			Mode(dashboard.ThresholdsModeAbsolute).
			Steps(thresholdSteps(p.Alert))).
			ThresholdsStyle(common.NewGraphThresholdsStyleConfigBuilder().
				Mode(common.GraphThresholdsStyleModeLine)).
			Links([]cog.Builder[dashboard.DashboardLink]{
				dashboard.NewDashboardLinkBuilder("Runbook: " + p.Alert.Name).
					Type(dashboard.DashboardLinkTypeLink).
					Url(p.Alert.RunbookURL).
					TargetBlank(true),
			})
	}
	return b
}

// Dashboard builds the Grafana dashboard model.
func Dashboard() (dashboard.Dashboard, error) {
	b := dashboard.NewDashboardBuilder(DashboardTitle).
		Uid(DashboardUID).
		Description("Generated by `oaruntime ops generate` from internal/ops; do not edit by hand. One panel per alert of docs/OPERATIONS_ALERTING.md with its threshold drawn.").
		Tags([]string{"oaruntime", "runtime", "khala", "generated"}).
		Editable().
		Timezone(common.TimeZoneBrowser).
		Time("now-6h", "now").
		Refresh("30s").
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		WithVariable(dashboard.NewDatasourceVariableBuilder(DatasourceVariable).
			Label("Prometheus").
			Type("prometheus"))

	var id uint32
	current := Area("")
	for _, p := range Panels() {
		if p.Area != current {
			current = p.Area
			id++
			b = b.WithRow(dashboard.NewRowBuilder(string(p.Area)).Id(id))
		}
		id++
		b = b.WithPanel(panelBuilder(id, p))
	}
	d, err := b.Build()
	if err != nil {
		return dashboard.Dashboard{}, fmt.Errorf("build dashboard: %w", err)
	}
	return d, nil
}

// DashboardJSON renders the dashboard as committed.
func DashboardJSON() ([]byte, error) {
	d, err := Dashboard()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // PromQL's > and < stay readable in the committed file
	enc.SetIndent("", "  ")
	if err := enc.Encode(d); err != nil {
		return nil, fmt.Errorf("encode dashboard json: %w", err)
	}
	return buf.Bytes(), nil
}
