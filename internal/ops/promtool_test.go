package ops

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// promtool finds the real Prometheus rule checker. Without it the test is
// skipped loudly on a workstation and fails in CI (env CI non-empty), so CI
// can never pass without having run it.
func promtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("promtool not on PATH and CI is set: install Prometheus's promtool (Debian: apt-get install prometheus)")
		}
		t.Skip("SKIPPING: promtool not on PATH; the alert rules and dashboard queries are NOT checked against Prometheus (install prometheus/promtool)")
	}
	return path
}

func runPromtool(t *testing.T, bin, dir string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
}

func TestPromtoolChecksCommittedRules(t *testing.T) {
	bin := promtool(t)
	root := repoRoot(t)
	runPromtool(t, bin, root, "check", "rules", filepath.FromSlash(RuleFilePath))
}

// Every alert's firing, just-under and zero-traffic cases, against the
// committed rule file.
func TestPromtoolUnitTestsOfCommittedRules(t *testing.T) {
	bin := promtool(t)
	root := repoRoot(t)
	runPromtool(t, bin, root, "test", "rules", filepath.FromSlash(PromtoolTestPath))
}

// The same rules with windows divided by 60 (10m becomes 10s) pass the same
// cases with samples every second: what a drill against a live Prometheus
// relies on.
func TestPromtoolScaledRulesPassTheSameCases(t *testing.T) {
	bin := promtool(t)
	dir := t.TempDir()
	o := Options{TimeDivisor: 60}
	rules, err := RuleFile(o)
	if err != nil {
		t.Fatal(err)
	}
	tests, err := PromtoolTestsFor(o, "rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules.yml"), rules, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules.test.yml"), tests, 0o644); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, bin, dir, "check", "rules", "rules.yml")
	runPromtool(t, bin, dir, "test", "rules", "rules.test.yml")
}

// Every dashboard query goes through Prometheus's own parser, as a recording
// rule.
func TestPromtoolParsesDashboardQueries(t *testing.T) {
	bin := promtool(t)
	queries, err := DashboardQueries(committedDashboard(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(queries) < len(Alerts(Options{})) {
		t.Fatalf("only %d queries", len(queries))
	}
	file, err := PanelQueryRuleFile(queries)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "panels.yml"), file, 0o644); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, bin, dir, "check", "rules", "panels.yml")

	// And the parser does reject a broken query, so the check above means something.
	broken, err := PanelQueryRuleFile([]PanelQuery{{PanelID: 1, Expr: "sum(rate(openagents_runtime_executor_terminal_total[5m])"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "broken.yml"), broken, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "check", "rules", filepath.Join(dir, "broken.yml")).CombinedOutput(); err == nil {
		t.Fatalf("promtool accepted an unbalanced query:\n%s", out)
	}
}

// The PromQL the runbook tells operators to run parses too.
func TestPromtoolParsesDocsPromQL(t *testing.T) {
	bin := promtool(t)
	var queries []PanelQuery
	for _, rel := range []string{alertingDoc, observabilityDoc} {
		for i, b := range promqlBlocks(readDoc(t, rel)) {
			queries = append(queries, PanelQuery{PanelID: i, Title: rel, Expr: b})
		}
	}
	file, err := PanelQueryRuleFile(queries)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "docs.yml"), file, 0o644); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, bin, dir, "check", "rules", "docs.yml")
}
