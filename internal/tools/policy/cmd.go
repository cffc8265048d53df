package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"reflect"
)

// ParityCase is one case of the OpenClaw tool-policy parity fixture.
type ParityCase struct {
	ID       string          `json:"id"`
	Op       string          `json:"operation"`
	Input    json.RawMessage `json:"input"`
	Expected json.RawMessage `json:"expected_openclaw"`
}

// ParityFile is the fixture file layout (fixtures/openclaw_tool_policy_parity_cases.json).
type ParityFile struct {
	Meta  json.RawMessage `json:"meta"`
	Cases []ParityCase    `json:"cases"`
}

// CaseResult is the outcome of evaluating one parity case.
type CaseResult struct {
	ID       string
	Op       string
	Expected json.RawMessage
	Ours     json.RawMessage
	Match    bool
	Err      error // evaluation error (bad input, unknown operation); counts as drift
}

// fixtureTool accepts both spellings of the plugin id the capture script accepts.
type fixtureTool struct {
	Name       string `json:"name"`
	PluginID   string `json:"plugin_id"`
	PluginIDJS string `json:"pluginId"`
}

func (t fixtureTool) tool() Tool {
	pid := t.PluginID
	if pid == "" {
		pid = t.PluginIDJS
	}
	return Tool{Name: t.Name, PluginID: pid}
}

func toTools(in []fixtureTool) []Tool {
	out := make([]Tool, len(in))
	for i, t := range in {
		out[i] = t.tool()
	}
	return out
}

type fixtureGroups struct {
	All        []string            `json:"all"`
	ByPlugin   map[string][]string `json:"by_plugin"`
	ByPluginJS map[string][]string `json:"byPlugin"`
}

func (g fixtureGroups) groups() PluginGroups {
	bp := g.ByPlugin
	if bp == nil {
		bp = g.ByPluginJS
	}
	return PluginGroups{All: g.All, ByPlugin: bp}
}

// EvalCase runs one fixture case through this package and returns our output as JSON.
func EvalCase(c ParityCase) (json.RawMessage, error) {
	var out any
	switch c.Op {
	case "normalize_tool_name":
		var in struct {
			Name string `json:"name"`
		}
		if err := strictDecode(c.Input, &in); err != nil {
			return nil, err
		}
		out = NormalizeToolName(in.Name)
	case "expand_tool_groups":
		var in struct {
			List []string `json:"list"`
		}
		if err := strictDecode(c.Input, &in); err != nil {
			return nil, err
		}
		out = nonNil(ExpandToolGroups(in.List))
	case "build_plugin_tool_groups":
		var in struct {
			Tools []fixtureTool `json:"tools"`
		}
		if err := strictDecode(c.Input, &in); err != nil {
			return nil, err
		}
		out = BuildPluginToolGroups(toTools(in.Tools))
	case "expand_policy_with_plugin_groups":
		var in struct {
			Policy *Policy       `json:"policy"`
			Groups fixtureGroups `json:"groups"`
		}
		if err := strictDecode(c.Input, &in); err != nil {
			return nil, err
		}
		if in.Policy == nil {
			in.Policy = &Policy{}
		}
		out = ExpandPolicyWithPluginGroups(in.Policy, in.Groups.groups())
	case "strip_plugin_only_allowlist":
		var in struct {
			Policy    *Policy       `json:"policy"`
			Groups    fixtureGroups `json:"groups"`
			CoreTools []string      `json:"core_tools"`
		}
		if err := strictDecode(c.Input, &in); err != nil {
			return nil, err
		}
		if in.Policy == nil {
			in.Policy = &Policy{}
		}
		core := make(map[string]bool, len(in.CoreTools))
		for _, t := range in.CoreTools {
			core[t] = true
		}
		out = StripPluginOnlyAllowlist(in.Policy, in.Groups.groups(), core)
	case "build_default_tool_policy_pipeline_steps":
		var in PipelineParams
		if err := strictDecode(c.Input, &in); err != nil {
			return nil, err
		}
		out = BuildDefaultPipelineSteps(in)
	case "apply_tool_policy_pipeline":
		var in struct {
			Tools []fixtureTool  `json:"tools"`
			Steps []PipelineStep `json:"steps"`
		}
		if err := strictDecode(c.Input, &in); err != nil {
			return nil, err
		}
		warnings := []string{}
		kept := ApplyPipeline(toTools(in.Tools), in.Steps, func(m string) { warnings = append(warnings, m) })
		names := make([]string, len(kept))
		for i, t := range kept {
			names[i] = t.Name
		}
		out = struct {
			Tools    []string `json:"tools"`
			Warnings []string `json:"warnings"`
		}{names, warnings}
	default:
		return nil, fmt.Errorf("unsupported operation %q", c.Op)
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("encode result: %w", err)
	}
	return b, nil
}

// strictDecode rejects unknown input fields: a field we silently ignored would make a
// passing case prove less than it seems to.
func strictDecode(raw json.RawMessage, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode input: %w", err)
	}
	return nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// jsonEqual compares two JSON documents semantically (key order and spacing ignored).
func jsonEqual(a, b json.RawMessage) bool {
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

// RunParity evaluates every case of a parity file.
func RunParity(ctx context.Context, f ParityFile) ([]CaseResult, error) {
	results := make([]CaseResult, 0, len(f.Cases))
	for _, c := range f.Cases {
		if err := ctx.Err(); err != nil {
			return results, err
		}
		ours, err := EvalCase(c)
		results = append(results, CaseResult{
			ID: c.ID, Op: c.Op, Expected: c.Expected, Ours: ours,
			Match: err == nil && jsonEqual(c.Expected, ours), Err: err,
		})
	}
	return results, nil
}

// PolicyCheck loads the parity fixture at casesFile, evaluates every case and writes a drift
// report to stdout. drift is the number of cases whose output differs from the recorded
// OpenClaw output (or could not be evaluated); err is set only when the file cannot be used.
func PolicyCheck(ctx context.Context, casesFile string, stdout io.Writer) (drift int, err error) {
	raw, err := os.ReadFile(casesFile)
	if err != nil {
		return 0, fmt.Errorf("read cases file: %w", err)
	}
	var f ParityFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return 0, fmt.Errorf("parse cases file %s: %w", casesFile, err)
	}
	if len(f.Cases) == 0 {
		return 0, fmt.Errorf("cases file %s: no cases", casesFile)
	}
	results, err := RunParity(ctx, f)
	if err != nil {
		return 0, err
	}
	for _, r := range results {
		status := "match"
		if !r.Match {
			status = "DRIFT"
			drift++
		}
		ours := string(compact(r.Ours))
		if r.Err != nil {
			ours = "error: " + r.Err.Error()
		}
		if _, err := fmt.Fprintf(stdout, "%s  %s  %s\n  expected: %s\n  ours:     %s\n",
			status, r.ID, r.Op, compact(r.Expected), ours); err != nil {
			return drift, fmt.Errorf("write report: %w", err)
		}
	}
	if _, err := fmt.Fprintf(stdout, "policy-check: %d cases, %d match, %d drift\n",
		len(results), len(results)-drift, drift); err != nil {
		return drift, fmt.Errorf("write report: %w", err)
	}
	return drift, nil
}

func compact(raw json.RawMessage) []byte {
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		return raw
	}
	return buf.Bytes()
}
