package ops

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// repoRoot is the module root, two directories above this file.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("runtime.Caller failed")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// The committed files under deploy/monitoring are exactly what the code
// generates; edit internal/ops and run `oaruntime ops generate`.
func TestCommittedFilesAreUpToDate(t *testing.T) {
	drifted, err := Check(repoRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(drifted) > 0 {
		t.Fatalf("out of date (run `oaruntime ops generate` and commit): %v", drifted)
	}
}

func TestGenerateThenCheck(t *testing.T) {
	dir := t.TempDir()
	if drifted, err := Check(dir); err != nil || len(drifted) != 4 {
		t.Fatalf("empty dir: drifted %v, err %v; want all 4 files", drifted, err)
	}
	if err := Generate(dir); err != nil {
		t.Fatal(err)
	}
	if drifted, err := Check(dir); err != nil || len(drifted) != 0 {
		t.Fatalf("after generate: drifted %v, err %v", drifted, err)
	}
	path := filepath.Join(dir, filepath.FromSlash(DashboardPath))
	if err := os.WriteFile(path, []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	drifted, err := Check(dir)
	if err != nil || !slices.Equal(drifted, []string{DashboardPath}) {
		t.Fatalf("after editing the dashboard: drifted %v, err %v", drifted, err)
	}
}

func TestGenerationIsDeterministic(t *testing.T) {
	a, err := GeneratedFiles()
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		b, err := GeneratedFiles()
		if err != nil {
			t.Fatal(err)
		}
		for k := range a {
			if !bytes.Equal(a[k], b[k]) {
				t.Fatalf("%s differs between two generations", k)
			}
		}
	}
}

func TestCommand(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	tests := []struct {
		name     string
		args     []string
		want     int
		inStdout string
		inStderr string
	}{
		{"no subcommand", nil, 2, "", "usage"},
		{"unknown subcommand", []string{"frobnicate"}, 2, "", "unknown subcommand"},
		{"check before generate", []string{"check", "--dir", dir}, 1, "", "out of date: " + RuleFilePath},
		{"generate", []string{"generate", "--dir", dir}, 0, "wrote " + DashboardPath, ""},
		{"check after generate", []string{"check", "--dir", dir}, 0, "up to date", ""},
		{"stray argument", []string{"check", "--dir", dir, "extra"}, 2, "", "unexpected argument"},
		{"bad flag", []string{"generate", "--nope"}, 2, "", "flag provided but not defined"},
		{"scaled rules", []string{"rules", "--time-divisor", "60", "--interval", "1s"}, 0, "[10s]", ""},
		{"operator rules", []string{"rules", "--operator"}, 0, "kind: PrometheusRule", ""},
		{"bad divisor", []string{"rules", "--time-divisor", "0"}, 2, "", "--time-divisor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			got := Command(ctx, tt.args, &out, &errOut)
			if got != tt.want {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", got, tt.want, out.String(), errOut.String())
			}
			if !strings.Contains(out.String(), tt.inStdout) || !strings.Contains(errOut.String(), tt.inStderr) {
				t.Fatalf("stdout %q (want %q) stderr %q (want %q)", out.String(), tt.inStdout, errOut.String(), tt.inStderr)
			}
		})
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if got := Command(canceled, []string{"check"}, &bytes.Buffer{}, &bytes.Buffer{}); got != 1 {
		t.Fatalf("canceled context: exit %d, want 1", got)
	}
}

// The PrometheusRule resource and the plain rule file carry the same groups.
func TestPrometheusRuleMatchesRuleFile(t *testing.T) {
	plain, err := RuleFile(Options{})
	if err != nil {
		t.Fatal(err)
	}
	crd, err := PrometheusRuleFile(Options{})
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Groups []map[string]any `yaml:"groups"`
	}
	var c struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Spec       struct {
			Groups []map[string]any `yaml:"groups"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(plain, &p); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(crd, &c); err != nil {
		t.Fatal(err)
	}
	if c.APIVersion != "monitoring.coreos.com/v1" || c.Kind != "PrometheusRule" {
		t.Fatalf("got %s %s", c.APIVersion, c.Kind)
	}
	if !reflect.DeepEqual(p.Groups, c.Spec.Groups) || len(p.Groups) != 1 {
		t.Fatal("PrometheusRule spec.groups differ from the rule file's groups")
	}
	rules := p.Groups[0]["rules"].([]any)
	if len(rules) != len(Alerts(Options{})) {
		t.Fatalf("%d rules, want %d", len(rules), len(Alerts(Options{})))
	}
	for _, r := range rules {
		rule := r.(map[string]any)
		labels := rule["labels"].(map[string]any)
		ann := rule["annotations"].(map[string]any)
		if labels["service"] != Service || labels["severity"] == nil {
			t.Errorf("%v: labels %v", rule["alert"], labels)
		}
		for _, k := range []string{"summary", "description", "runbook", "runbook_url"} {
			if s, _ := ann[k].(string); s == "" {
				t.Errorf("%v: annotation %s empty", rule["alert"], k)
			}
		}
	}
}

func TestScaledRuleFileHasInterval(t *testing.T) {
	out, err := RuleFile(Options{TimeDivisor: 60, EvaluationInterval: 1e9})
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	for _, want := range []string{"interval: 1s", "for: 10s", "for: 15s", "for: 5s", "[10s]", "[15s]", "offset 10s"} {
		if !strings.Contains(s, want) {
			t.Errorf("scaled rule file lacks %q", want)
		}
	}
}
