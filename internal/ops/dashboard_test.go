package ops

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func committedDashboard(t *testing.T) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot(t), filepath.FromSlash(DashboardPath)))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestCommittedDashboardLint(t *testing.T) {
	problems, err := LintDashboard(committedDashboard(t), Alerts(Options{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

func TestDashboardRowsAndExtraPanels(t *testing.T) {
	var d struct {
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(committedDashboard(t), &d); err != nil {
		t.Fatal(err)
	}
	rows := map[string]bool{}
	exprs := ""
	for _, p := range d.Panels {
		if p.Type == "row" {
			rows[p.Title] = true
		}
		for _, q := range p.Targets {
			exprs += q.Expr + "\n"
		}
	}
	for _, a := range Areas() {
		if !rows[string(a)] {
			t.Errorf("no row %q", a)
		}
	}
	for _, want := range []string{"khala_projection_writes_total", "janitor_reclaims_total", "khala_sink_up", "notify_listener_up"} {
		if !strings.Contains(exprs, want) {
			t.Errorf("no panel queries %s", want)
		}
	}
}

// The lint must catch what it claims to: mutate a good dashboard and expect
// the problem.
func TestLintDashboardFindsProblems(t *testing.T) {
	good := committedDashboard(t)
	alerts := Alerts(Options{})
	tests := []struct {
		name   string
		mutate func(map[string]any)
		want   string
	}{
		{"hard-coded panel datasource", func(d map[string]any) {
			p := firstPanel(d)
			p["datasource"] = map[string]any{"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
		}, "datasource is not the templated"},
		{"hard-coded query datasource", func(d map[string]any) {
			q := firstPanel(d)["targets"].([]any)[0].(map[string]any)
			q["datasource"] = map[string]any{"type": "prometheus", "uid": "abc"}
		}, "hard-coded datasource uid"},
		{"no unit", func(d map[string]any) {
			delete(firstPanel(d)["fieldConfig"].(map[string]any)["defaults"].(map[string]any), "unit")
		}, "no unit"},
		{"threshold not drawn", func(d map[string]any) {
			firstPanel(d)["fieldConfig"].(map[string]any)["defaults"].(map[string]any)["custom"] = map[string]any{}
		}, "does not draw the threshold"},
		{"unknown metric", func(d map[string]any) {
			q := firstPanel(d)["targets"].([]any)[0].(map[string]any)
			q["expr"] = "rate(openagents_runtime_made_up_total[5m])"
		}, "not in the telemetry catalogue"},
		{"no datasource variable", func(d map[string]any) {
			d["templating"] = map[string]any{"list": []any{}}
		}, "no templated Prometheus datasource"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d map[string]any
			if err := json.Unmarshal(good, &d); err != nil {
				t.Fatal(err)
			}
			tt.mutate(d)
			raw, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			problems, err := LintDashboard(raw, alerts)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(strings.Join(problems, "\n"), tt.want) {
				t.Fatalf("problems %v, want one containing %q", problems, tt.want)
			}
		})
	}
}

// firstPanel is the first non-row panel: the executor latency alert's.
func firstPanel(d map[string]any) map[string]any {
	for _, p := range d["panels"].([]any) {
		pm := p.(map[string]any)
		if pm["type"] != "row" {
			return pm
		}
	}
	return nil
}
