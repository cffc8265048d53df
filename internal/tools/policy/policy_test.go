package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// fixturePath finds the shared parity fixture. OA_POLICY_FIXTURE overrides it; otherwise the
// copy under /work/shared is used and, failing that, the testdata copy beside this file.
func fixturePath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("OA_POLICY_FIXTURE"); p != "" {
		return p
	}
	_, self, _, _ := runtime.Caller(0)
	local := filepath.Join(filepath.Dir(self), "testdata", "openclaw_tool_policy_parity_cases.json")
	if _, err := os.Stat(local); err == nil {
		return local
	}
	return "/work/shared/fixtures/openclaw_tool_policy_parity_cases.json"
}

func TestParityFixtureEveryCase(t *testing.T) {
	raw, err := os.ReadFile(fixturePath(t))
	if err != nil {
		t.Fatalf("read fixture: %v", err)
	}
	var f ParityFile
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatalf("parse fixture: %v", err)
	}
	// The fixture documents 9 cases over 7 operations; fail loudly if it shrinks.
	if len(f.Cases) < 9 {
		t.Fatalf("fixture has %d cases, want at least 9", len(f.Cases))
	}
	ops := map[string]bool{}
	for _, c := range f.Cases {
		ops[c.Op] = true
		t.Run(c.ID, func(t *testing.T) {
			ours, err := EvalCase(c)
			if err != nil {
				t.Fatalf("eval %s: %v", c.Op, err)
			}
			if !jsonEqual(c.Expected, ours) {
				t.Fatalf("%s drift\nexpected: %s\nours:     %s", c.Op, compact(c.Expected), ours)
			}
		})
	}
	for _, op := range []string{"normalize_tool_name", "expand_tool_groups", "build_plugin_tool_groups",
		"expand_policy_with_plugin_groups", "strip_plugin_only_allowlist",
		"build_default_tool_policy_pipeline_steps", "apply_tool_policy_pipeline"} {
		if !ops[op] {
			t.Errorf("fixture has no case for operation %s", op)
		}
	}
}

func TestPolicyCheckReport(t *testing.T) {
	var out bytes.Buffer
	drift, err := PolicyCheck(context.Background(), fixturePath(t), &out)
	if err != nil {
		t.Fatalf("PolicyCheck: %v", err)
	}
	if drift != 0 {
		t.Fatalf("drift = %d, report:\n%s", drift, out.String())
	}
	if !strings.Contains(out.String(), "match  normalize-tool-name-alias-apply-patch  normalize_tool_name") {
		t.Errorf("report lacks per-case line:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "policy-check: 9 cases, 9 match, 0 drift") {
		t.Errorf("report lacks summary:\n%s", out.String())
	}
}

func TestPolicyCheckDetectsDrift(t *testing.T) {
	dir := t.TempDir()
	cases := `{"cases":[
	 {"id":"ok","operation":"normalize_tool_name","input":{"name":"Bash"},"expected_openclaw":"exec"},
	 {"id":"bad","operation":"normalize_tool_name","input":{"name":"Bash"},"expected_openclaw":"bash"},
	 {"id":"unknown-op","operation":"frobnicate","input":{},"expected_openclaw":null},
	 {"id":"unknown-field","operation":"normalize_tool_name","input":{"nam":"x"},"expected_openclaw":""}
	]}`
	p := filepath.Join(dir, "cases.json")
	if err := os.WriteFile(p, []byte(cases), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	drift, err := PolicyCheck(context.Background(), p, &out)
	if err != nil {
		t.Fatalf("PolicyCheck: %v", err)
	}
	if drift != 3 {
		t.Fatalf("drift = %d, want 3; report:\n%s", drift, out.String())
	}
	if !strings.Contains(out.String(), "DRIFT  bad  normalize_tool_name") ||
		!strings.Contains(out.String(), `unsupported operation "frobnicate"`) ||
		!strings.Contains(out.String(), "4 cases, 1 match, 3 drift") {
		t.Errorf("unexpected report:\n%s", out.String())
	}
}

func TestPolicyCheckBadFile(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{"garbage.json": "{", "empty.json": `{"cases":[]}`} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := PolicyCheck(context.Background(), p, &bytes.Buffer{}); err == nil {
			t.Errorf("%s: want error", name)
		}
	}
	if _, err := PolicyCheck(context.Background(), filepath.Join(dir, "missing.json"), &bytes.Buffer{}); err == nil {
		t.Error("missing file: want error")
	}
}

func TestDecide(t *testing.T) {
	tests := []struct {
		name    string
		policy  Policy
		tool    string
		allowed bool
		reason  string
	}{
		{"empty policy allows all", Policy{}, "anything", true, ReasonAllowed},
		{"deny exact", Policy{Deny: []string{"gateway"}}, "gateway", false, ReasonDeniedExplicit},
		{"deny is case and space insensitive", Policy{Deny: []string{" Gateway "}}, "GATEWAY", false, ReasonDeniedExplicit},
		{"deny alias", Policy{Deny: []string{"bash"}}, "exec", false, ReasonDeniedExplicit},
		{"tool alias denied", Policy{Deny: []string{"exec"}}, "bash", false, ReasonDeniedExplicit},
		{"deny group", Policy{Deny: []string{"group:fs"}}, "write", false, ReasonDeniedExplicit},
		{"deny wins over allow", Policy{Allow: []string{"*"}, Deny: []string{"http.*"}}, "http.fetch", false, ReasonDeniedExplicit},
		{"deny glob no match", Policy{Deny: []string{"http.*"}}, "httpxfetch", true, ReasonAllowed},
		{"allow exact", Policy{Allow: []string{"echo"}}, "echo", true, ReasonAllowed},
		{"not in allowlist", Policy{Allow: []string{"echo"}}, "sleep", false, ReasonToolNotAllowed},
		{"allow glob", Policy{Allow: []string{"web_*"}}, "web_fetch", true, ReasonAllowed},
		{"glob anchored", Policy{Allow: []string{"web_*"}}, "my_web_fetch", false, ReasonToolNotAllowed},
		{"glob metachars literal", Policy{Allow: []string{"a.b*"}}, "axb", false, ReasonToolNotAllowed},
		{"allow group", Policy{Allow: []string{"group:runtime"}}, "process", true, ReasonAllowed},
		{"exec implies apply_patch", Policy{Allow: []string{"exec"}}, "apply_patch", true, ReasonAllowed},
		{"exec implies apply-patch alias", Policy{Allow: []string{"bash"}}, "apply-patch", true, ReasonAllowed},
		{"apply_patch does not imply exec", Policy{Allow: []string{"apply_patch"}}, "exec", false, ReasonToolNotAllowed},
		{"denied apply_patch stays denied", Policy{Allow: []string{"exec"}, Deny: []string{"apply_patch"}}, "apply_patch", false, ReasonDeniedExplicit},
		{"star allows", Policy{Allow: []string{"*"}}, "whatever", true, ReasonAllowed},
		{"blank entries ignored", Policy{Allow: []string{"  "}}, "echo", true, ReasonAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, reason := tt.policy.Decide(tt.tool)
			if ok != tt.allowed || reason != tt.reason {
				t.Fatalf("Decide(%q) = %v,%q want %v,%q", tt.tool, ok, reason, tt.allowed, tt.reason)
			}
		})
	}
}

func TestExpandToolGroupsUnknownAndDedupe(t *testing.T) {
	got := ExpandToolGroups([]string{"group:runtime", "bash", "group:nope", "", "EXEC"})
	want := []string{"exec", "process", "group:nope"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v want %v", got, want)
	}
}

func TestToolGroupReturnsCopy(t *testing.T) {
	g, _ := ToolGroup("group:fs")
	g[0] = "mutated"
	again, _ := ToolGroup("group:fs")
	if again[0] != "read" {
		t.Fatalf("group table was mutated through a returned slice: %v", again)
	}
}

func TestStripKeepsAllowlistWithStar(t *testing.T) {
	p := &Policy{Allow: []string{"*", "plugin.x"}}
	res := StripPluginOnlyAllowlist(p, PluginGroups{ByPlugin: map[string][]string{"plugin.x": {"x.do"}}}, map[string]bool{})
	if res.StrippedAllowlist || res.Policy != p || len(res.UnknownAllowlist) != 0 {
		t.Fatalf("unexpected %+v", res)
	}
}

func TestApplyPipelineWarningWhenNotStripped(t *testing.T) {
	tools := []Tool{{Name: "read"}, {Name: "exec"}}
	var warnings []string
	kept := ApplyPipeline(tools, []PipelineStep{
		{Policy: &Policy{Allow: []string{"read", "plugin.ghost"}}, Label: "tools.allow", StripPluginOnlyAllowlist: true},
	}, func(m string) { warnings = append(warnings, m) })
	if len(kept) != 1 || kept[0].Name != "read" {
		t.Fatalf("kept %v", kept)
	}
	want := "tools: tools.allow allowlist contains unknown entries (plugin.ghost). These entries won't match any tool unless the plugin is enabled."
	if len(warnings) != 1 || warnings[0] != want {
		t.Fatalf("warnings %q", warnings)
	}
}

func TestDefaultStepsLabelsWithoutIDs(t *testing.T) {
	steps := BuildDefaultPipelineSteps(PipelineParams{Profile: "  "})
	labels := make([]string, len(steps))
	for i, s := range steps {
		labels[i] = s.Label
	}
	want := []string{"tools.profile", "tools.byProvider.profile", "tools.allow", "tools.byProvider.allow",
		"agent tools.allow", "agent tools.byProvider.allow", "group tools.allow"}
	if !slices.Equal(labels, want) {
		t.Fatalf("labels %v", labels)
	}
}
