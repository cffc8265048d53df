package ops

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"unicode"

	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// targetLabels are added by Prometheus to every scraped series, le by
// histograms, and __name__ is the metric name itself; queries may use them
// besides the catalogue's label keys.
func targetLabels() []string { return []string{"job", "instance", "le", "__name__"} }

var (
	metricToken   = regexp.MustCompile(`\bopenagents_[a-z0-9_]+\b`)
	selectorStart = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{`)
	matcherKey    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"`)
	groupingList  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	stringLit     = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
)

// knownMetrics is the catalogue of exported metric names.
func knownMetrics() map[string]bool {
	out := map[string]bool{}
	for _, s := range telemetry.Catalogue() {
		out[s.Name] = true
	}
	return out
}

// baseMetric strips the series suffixes of a histogram.
func baseMetric(name string) string {
	for _, suf := range []string{"_bucket", "_count", "_sum"} {
		if strings.HasSuffix(name, suf) {
			return strings.TrimSuffix(name, suf)
		}
	}
	return name
}

// MetricNames returns the openagents_* metric names an expression or text
// mentions, with histogram suffixes stripped, sorted and unique.
func MetricNames(text string) []string {
	var out []string
	for _, m := range metricToken.FindAllString(text, -1) {
		out = append(out, baseMetric(m))
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// LintExpr reports metric names outside the catalogue, selectors of other
// metrics, label keys outside the catalogue and target labels, and forbidden
// (id) label keys in one PromQL expression.
func LintExpr(expr string) []string {
	var problems []string
	known := knownMetrics()
	for _, m := range MetricNames(expr) {
		if !known[m] {
			problems = append(problems, fmt.Sprintf("metric %s is not in the telemetry catalogue", m))
		}
	}
	// Label values may contain anything; strip them before looking for names.
	bare := stringLit.ReplaceAllString(expr, `""`)
	for _, m := range selectorStart.FindAllStringSubmatch(bare, -1) {
		name := m[1]
		if name == "by" || name == "without" {
			continue
		}
		if !strings.HasPrefix(name, "openagents_") {
			problems = append(problems, fmt.Sprintf("selector of %s, which is not a runtime metric", name))
		}
	}
	allowed := map[string]bool{}
	for k := range telemetry.LabelValues() {
		allowed[k] = true
	}
	for _, k := range telemetry.FreeLabelKeys() {
		allowed[k] = true
	}
	for _, k := range targetLabels() {
		allowed[k] = true
	}
	forbidden := map[string]bool{}
	for _, k := range telemetry.ForbiddenLabelKeys {
		forbidden[k] = true
	}
	var keys []string
	for _, m := range matcherKey.FindAllStringSubmatch(expr, -1) {
		keys = append(keys, m[1])
	}
	for _, m := range groupingList.FindAllStringSubmatch(bare, -1) {
		for _, k := range strings.Split(m[1], ",") {
			if k = strings.TrimSpace(k); k != "" {
				keys = append(keys, k)
			}
		}
	}
	sort.Strings(keys)
	for _, k := range slices.Compact(keys) {
		switch {
		case forbidden[k]:
			problems = append(problems, fmt.Sprintf("label %s is forbidden (ids belong in logs and traces)", k))
		case !allowed[k]:
			problems = append(problems, fmt.Sprintf("label %s is not a catalogue label key", k))
		}
	}
	return problems
}

// dashboardDoc is the part of a Grafana dashboard JSON the lint reads. It
// reads the committed JSON, not the SDK's types, so it checks what Grafana
// will load.
type dashboardDoc struct {
	Templating struct {
		List []struct {
			Type  string `json:"type"`
			Name  string `json:"name"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []dashboardPanel `json:"panels"`
}

type datasourceDoc struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type dashboardPanel struct {
	ID          int            `json:"id"`
	Type        string         `json:"type"`
	Title       string         `json:"title"`
	Datasource  *datasourceDoc `json:"datasource"`
	Targets     []panelTarget  `json:"targets"`
	Panels      []dashboardPanel
	FieldConfig struct {
		Defaults struct {
			Unit       string `json:"unit"`
			Thresholds *struct {
				Steps []struct {
					Value *float64 `json:"value"`
					Color string   `json:"color"`
				} `json:"steps"`
			} `json:"thresholds"`
			Custom struct {
				ThresholdsStyle *struct {
					Mode string `json:"mode"`
				} `json:"thresholdsStyle"`
			} `json:"custom"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
}

type panelTarget struct {
	Expr       string         `json:"expr"`
	RefID      string         `json:"refId"`
	Datasource *datasourceDoc `json:"datasource"`
}

// PanelQuery is one query of the dashboard, for the lint and for promtool.
type PanelQuery struct {
	PanelID int
	Title   string
	Expr    string
}

func parseDashboard(raw []byte) (dashboardDoc, error) {
	var d dashboardDoc
	if err := json.Unmarshal(raw, &d); err != nil {
		return d, fmt.Errorf("parse dashboard json: %w", err)
	}
	return d, nil
}

func flattenPanels(ps []dashboardPanel) []dashboardPanel {
	var out []dashboardPanel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, flattenPanels(p.Panels)...)
	}
	return out
}

// DashboardQueries lists every panel query of a dashboard JSON.
func DashboardQueries(raw []byte) ([]PanelQuery, error) {
	d, err := parseDashboard(raw)
	if err != nil {
		return nil, err
	}
	var out []PanelQuery
	for _, p := range flattenPanels(d.Panels) {
		for _, t := range p.Targets {
			out = append(out, PanelQuery{PanelID: p.ID, Title: p.Title, Expr: t.Expr})
		}
	}
	return out, nil
}

func templatedUID(uid string) bool {
	return uid == "${"+DatasourceVariable+"}" || uid == "$"+DatasourceVariable
}

// LintDashboard checks a dashboard JSON statically: a templated Prometheus
// datasource and no hard-coded datasource uid, a unit on every panel, unique
// panel ids, queries that name only catalogue metrics and labels, and one
// panel per alert drawing the alert's threshold.
func LintDashboard(raw []byte, alerts []Alert) ([]string, error) {
	d, err := parseDashboard(raw)
	if err != nil {
		return nil, err
	}
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	hasVar := false
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Name == DatasourceVariable && v.Query == "prometheus" {
			hasVar = true
		}
	}
	if !hasVar {
		add("no templated Prometheus datasource variable %q", DatasourceVariable)
	}

	byExpr := map[string]dashboardPanel{}
	ids := map[int]string{}
	for _, p := range flattenPanels(d.Panels) {
		if prev, dup := ids[p.ID]; dup {
			add("panel id %d used by %q and %q", p.ID, prev, p.Title)
		}
		ids[p.ID] = p.Title
		if p.Type == "row" {
			continue
		}
		if p.Type != "timeseries" {
			add("panel %q: type %q (want timeseries)", p.Title, p.Type)
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || !templatedUID(p.Datasource.UID) {
			add("panel %q: datasource is not the templated ${%s}", p.Title, DatasourceVariable)
		}
		if p.FieldConfig.Defaults.Unit == "" {
			add("panel %q: no unit", p.Title)
		}
		if len(p.Targets) == 0 {
			add("panel %q: no query", p.Title)
		}
		for _, t := range p.Targets {
			if t.Datasource != nil && !templatedUID(t.Datasource.UID) {
				add("panel %q query %s: hard-coded datasource uid %q", p.Title, t.RefID, t.Datasource.UID)
			}
			if strings.TrimSpace(t.Expr) == "" {
				add("panel %q query %s: empty expression", p.Title, t.RefID)
				continue
			}
			for _, pr := range LintExpr(t.Expr) {
				add("panel %q: %s", p.Title, pr)
			}
			byExpr[t.Expr] = p
		}
	}

	for _, a := range alerts {
		p, ok := byExpr[a.PanelExpr]
		if !ok {
			add("alert %s: no panel draws its signal", a.Name)
			continue
		}
		if p.FieldConfig.Defaults.Unit != a.Unit {
			add("alert %s: panel unit %q, alert unit %q", a.Name, p.FieldConfig.Defaults.Unit, a.Unit)
		}
		th := p.FieldConfig.Defaults.Thresholds
		drawn := false
		if th != nil {
			for _, s := range th.Steps {
				if s.Value != nil && *s.Value == a.Threshold {
					drawn = true
				}
			}
		}
		style := p.FieldConfig.Defaults.Custom.ThresholdsStyle
		if !drawn || style == nil || style.Mode == "" || style.Mode == "off" {
			add("alert %s: panel %q does not draw the threshold %v", a.Name, p.Title, a.Threshold)
		}
	}
	return problems, nil
}

// PanelQueryRuleFile turns every dashboard query into a recording rule so
// that `promtool check rules` parses them with the real PromQL parser.
// Grafana's $__rate_interval becomes 5m, a valid range.
func PanelQueryRuleFile(queries []PanelQuery) ([]byte, error) {
	rules := make([]map[string]string, 0, len(queries))
	for i, q := range queries {
		rules = append(rules, map[string]string{
			"record": fmt.Sprintf("oaruntime_lint:panel_%d_%d", q.PanelID, i),
			"expr":   strings.ReplaceAll(q.Expr, rateInterval, "5m"),
		})
	}
	return marshalYAML(map[string]any{"groups": []map[string]any{{"name": "dashboard-lint", "rules": rules}}})
}

// GitHubAnchor is the anchor GitHub gives a Markdown heading: lower case,
// punctuation other than - and _ dropped, spaces turned into -.
func GitHubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteRune('-')
		}
	}
	return b.String()
}

// MarkdownAnchors returns the anchors of every ATX heading outside fenced
// code, with GitHub's -1, -2 suffixes for repeated headings.
func MarkdownAnchors(md string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	inFence := false
	for _, line := range strings.Split(md, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "```") {
			inFence = !inFence
			continue
		}
		if inFence || !strings.HasPrefix(trimmed, "#") {
			continue
		}
		text := strings.TrimLeft(trimmed, "#")
		if text == "" || text[0] != ' ' {
			continue
		}
		a := GitHubAnchor(text)
		if n := seen[a]; n > 0 {
			out[fmt.Sprintf("%s-%d", a, n)] = true
		} else {
			out[a] = true
		}
		seen[a]++
	}
	return out
}

var (
	inlineCode = regexp.MustCompile("`([^`\n]+)`")
	commandUse = regexp.MustCompile(`(?:^|[\s(;|&/])oaruntime\s+([a-z][a-z0-9-]*)(?:\s+([a-z][a-z0-9-]*))?`)
)

// codeText returns the inline code spans and fenced blocks of a Markdown
// document: where commands are written.
func codeText(md string) []string {
	var out []string
	inFence := false
	var block strings.Builder
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			if inFence {
				out = append(out, block.String())
				block.Reset()
			}
			inFence = !inFence
			continue
		}
		if inFence {
			block.WriteString(line + "\n")
			continue
		}
		for _, m := range inlineCode.FindAllStringSubmatch(line, -1) {
			out = append(out, m[1])
		}
	}
	return out
}

// UnknownCommands returns the `oaruntime ...` invocations in a Markdown
// document's code that are not KnownCommands.
func UnknownCommands(md string) []string {
	top := map[string]bool{}
	full := map[string]bool{}
	hasSub := map[string]bool{}
	for _, c := range KnownCommands() {
		full[c] = true
		parts := strings.Fields(c)
		top[parts[0]] = true
		if len(parts) > 1 {
			hasSub[parts[0]] = true
		}
	}
	var bad []string
	for _, code := range codeText(md) {
		for _, m := range commandUse.FindAllStringSubmatch(code, -1) {
			cmd := m[1]
			switch {
			case !top[cmd]:
				bad = append(bad, "oaruntime "+cmd)
			case hasSub[cmd] && !full[cmd+" "+m[2]]:
				bad = append(bad, strings.TrimSpace("oaruntime "+cmd+" "+m[2]))
			}
		}
	}
	sort.Strings(bad)
	return slices.Compact(bad)
}

// UnknownMetrics returns the openagents_* names a document mentions that are
// not in the telemetry catalogue. Dotted names (the original system's
// telemetry event names, openagents_runtime.x.y) are not Prometheus names and
// are skipped.
func UnknownMetrics(md string) []string {
	known := knownMetrics()
	var bad []string
	for _, loc := range metricToken.FindAllStringIndex(md, -1) {
		if loc[1] < len(md) && md[loc[1]] == '.' && loc[1]+1 < len(md) && unicode.IsLetter(rune(md[loc[1]+1])) {
			continue
		}
		name := baseMetric(md[loc[0]:loc[1]])
		if !known[name] {
			bad = append(bad, name)
		}
	}
	sort.Strings(bad)
	return slices.Compact(bad)
}
