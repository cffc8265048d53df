package ops

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/oaruntime/oaruntime/internal/telemetry"
)

const (
	alertingDoc      = "docs/OPERATIONS_ALERTING.md"
	observabilityDoc = "docs/OBSERVABILITY.md"
)

func readDoc(t *testing.T, rel string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// section returns the text under the heading "### name" up to the next
// heading of level 2 or 3.
func section(md, name string) string {
	start := strings.Index(md, "\n### "+name+"\n")
	if start < 0 {
		return ""
	}
	rest := md[start+len(name)+6:]
	end := len(rest)
	for _, h := range []string{"\n## ", "\n### "} {
		if i := strings.Index(rest, h); i >= 0 && i < end {
			end = i
		}
	}
	return rest[:end]
}

// Every alert's runbook annotation lands on a heading, and the PromQL quoted
// under it is the rule's.
func TestEveryAlertHasItsRunbookHeading(t *testing.T) {
	md := readDoc(t, alertingDoc)
	anchors := MarkdownAnchors(md)
	for _, a := range Alerts(Options{}) {
		if !anchors[a.RunbookAnchor] {
			t.Errorf("%s: no heading with anchor #%s in %s", a.Name, a.RunbookAnchor, alertingDoc)
			continue
		}
		body := section(md, a.Name)
		if !strings.Contains(body, a.Expr) {
			t.Errorf("%s: its section does not quote the rule's expression %q", a.Name, a.Expr)
		}
		if !strings.Contains(body, "Severity: "+a.Severity) {
			t.Errorf("%s: its section does not state severity %s", a.Name, a.Severity)
		}
		if !strings.Contains(body, "Actions:") && !strings.Contains(body, "1. ") {
			t.Errorf("%s: its section has no actions", a.Name)
		}
	}
}

var (
	localLink    = regexp.MustCompile(`\]\(#([^)]+)\)`)
	alertingLink = regexp.MustCompile(`\]\(OPERATIONS_ALERTING\.md#([^)]+)\)`)
)

func TestDocsLinksCommandsAndMetrics(t *testing.T) {
	for _, rel := range []string{alertingDoc, observabilityDoc} {
		t.Run(rel, func(t *testing.T) {
			md := readDoc(t, rel)
			anchors := MarkdownAnchors(md)
			for _, m := range localLink.FindAllStringSubmatch(md, -1) {
				if !anchors[m[1]] {
					t.Errorf("link to #%s, which is no heading", m[1])
				}
			}
			alerting := MarkdownAnchors(readDoc(t, alertingDoc))
			for _, m := range alertingLink.FindAllStringSubmatch(md, -1) {
				if !alerting[m[1]] {
					t.Errorf("link to %s#%s, which is no heading there", alertingDoc, m[1])
				}
			}
			for _, c := range UnknownCommands(md) {
				t.Errorf("names %q, which is not among ops.KnownCommands()", c)
			}
			for _, m := range UnknownMetrics(md) {
				t.Errorf("names metric %s, which is not in the telemetry catalogue", m)
			}
		})
	}
}

// promqlBlocks returns the ```promql fenced blocks of a document.
func promqlBlocks(md string) []string {
	var out []string
	var cur strings.Builder
	in := false
	for _, line := range strings.Split(md, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case !in && trimmed == "```promql":
			in = true
			cur.Reset()
		case in && trimmed == "```":
			in = false
			out = append(out, strings.TrimSpace(cur.String()))
		case in:
			cur.WriteString(trimmed + " ")
		}
	}
	return out
}

func TestDocsPromQLUsesCatalogue(t *testing.T) {
	for _, rel := range []string{alertingDoc, observabilityDoc} {
		blocks := promqlBlocks(readDoc(t, rel))
		if rel == alertingDoc && len(blocks) < 2*len(Alerts(Options{})) {
			t.Errorf("%s: only %d PromQL blocks", rel, len(blocks))
		}
		for _, b := range blocks {
			for _, p := range LintExpr(b) {
				t.Errorf("%s: %q: %s", rel, b, p)
			}
		}
	}
}

func TestDocCheckersCatchProblems(t *testing.T) {
	md := "# T\n\n## A b\n\nRun `oaruntime khala rebuild --all` and `oaruntime nope`, then\n" +
		"```sh\noaruntime serve\noaruntime ops check\noaruntime ops frob\n```\n" +
		"and read openagents_runtime_made_up_total and openagents_runtime.parity.failure.count and " +
		"openagents_runtime_executor_run_once_duration_seconds_bucket.\n## A b\n"
	got := strings.Join(UnknownCommands(md), ",")
	if got != "oaruntime khala rebuild,oaruntime nope,oaruntime ops frob" {
		t.Errorf("UnknownCommands = %q", got)
	}
	if got := strings.Join(UnknownMetrics(md), ","); got != "openagents_runtime_made_up_total" {
		t.Errorf("UnknownMetrics = %q", got)
	}
	anchors := MarkdownAnchors(md)
	if !anchors["a-b"] || !anchors["a-b-1"] || !anchors["t"] {
		t.Errorf("anchors %v", anchors)
	}
	for heading, want := range map[string]string{
		"OpenAgentsRuntimeHttp5xxRateHigh":       "openagentsruntimehttp5xxratehigh",
		"Restart/reconnect chaos rehearsal gate": "restartreconnect-chaos-rehearsal-gate",
		"Khala projection SLO budgets":           "khala-projection-slo-budgets",
		"Spend/policy denial anomalies":          "spendpolicy-denial-anomalies",
		"`run.finished` ratio (15m)":             "runfinished-ratio-15m",
	} {
		if got := GitHubAnchor(heading); got != want {
			t.Errorf("GitHubAnchor(%q) = %q, want %q", heading, got, want)
		}
	}
}

// The catalogue page lists every exported metric with all its label keys.
func TestObservabilityListsTheCatalogue(t *testing.T) {
	md := readDoc(t, observabilityDoc)
	rows := map[string]string{}
	for _, line := range strings.Split(md, "\n") {
		if !strings.HasPrefix(line, "| ") {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) > 3 {
			rows[strings.Trim(strings.TrimSpace(cells[2]), "`")] = line
		}
	}
	for _, s := range telemetry.Catalogue() {
		row, ok := rows[s.Name]
		if !ok {
			t.Errorf("%s: no row in the catalogue table of %s", s.Name, observabilityDoc)
			continue
		}
		for _, l := range s.Labels {
			if !strings.Contains(row, "`"+l+"`") {
				t.Errorf("%s: row does not list label %s", s.Name, l)
			}
		}
	}
}
