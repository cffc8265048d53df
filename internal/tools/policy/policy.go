// Package policy is a Go port of the OpenClaw tool policy (src/agents/tool-policy.ts and
// tool-policy-pipeline.ts at commit 8e1f2563, the commit the parity fixture was captured from):
// tool-name normalisation and aliases, core tool groups, plugin groups, plugin-only allowlist
// stripping, the seven-layer pipeline, and glob allow/deny matching where deny wins.
//
// Policy.Decide is the runtime entry point the agent loop uses for a single tool call.
package policy

import (
	"regexp"
	"slices"
	"strings"
)

// Reasons returned by Policy.Decide. The denial reasons are part of the closed set of
// policy.decision reasons in DESIGN.md section 5.
const (
	ReasonAllowed         = "allowed"
	ReasonToolNotAllowed  = "denied_tool_not_allowed"
	ReasonDeniedExplicit  = "denied_explicit"
	groupPlugins          = "group:plugins"
	applyPatchTool        = "apply_patch"
	execTool              = "exec"
	unknownEntriesStrip   = "Ignoring allowlist so core tools remain available. Use tools.alsoAllow for additive plugin tool enablement."
	unknownEntriesNoStrip = "These entries won't match any tool unless the plugin is enabled."
)

// Policy is one allow/deny layer ("ToolPolicyLike" upstream). A nil or empty Allow allows
// every tool that Deny does not match. Entries may be tool names, aliases, group:* names,
// plugin ids (after plugin expansion) or globs with '*'.
type Policy struct {
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
}

// Tool is the minimum the pipeline needs to know about a tool: its name and, for plugin
// tools, the plugin that provides it (empty for core tools).
type Tool struct {
	Name     string `json:"name"`
	PluginID string `json:"plugin_id,omitempty"`
}

// PluginGroups maps plugin ids to the (normalised) names of the tools they provide.
type PluginGroups struct {
	All      []string            `json:"all"`
	ByPlugin map[string][]string `json:"byPlugin"`
}

// AllowlistResolution is the result of StripPluginOnlyAllowlist.
type AllowlistResolution struct {
	Policy            *Policy  `json:"policy"`
	UnknownAllowlist  []string `json:"unknownAllowlist"`
	StrippedAllowlist bool     `json:"strippedAllowlist"`
}

// toolAlias returns the canonical name for an alias. A switch instead of a package-level map
// keeps the table immutable.
func toolAlias(name string) (string, bool) {
	switch name {
	case "bash":
		return "exec", true
	case "apply-patch":
		return "apply_patch", true
	}
	return "", false
}

// ToolGroup returns a fresh copy of the members of a core group:* name, in upstream order.
func ToolGroup(name string) ([]string, bool) {
	switch name {
	case "group:memory":
		return []string{"memory_search", "memory_get"}, true
	case "group:web":
		return []string{"web_search", "web_fetch"}, true
	case "group:fs":
		return []string{"read", "write", "edit", "apply_patch"}, true
	case "group:runtime":
		return []string{"exec", "process"}, true
	case "group:sessions":
		return []string{"sessions_list", "sessions_history", "sessions_send", "sessions_spawn", "subagents", "session_status"}, true
	case "group:ui":
		return []string{"browser", "canvas"}, true
	case "group:automation":
		return []string{"cron", "gateway"}, true
	case "group:messaging":
		return []string{"message"}, true
	case "group:nodes":
		return []string{"nodes"}, true
	case "group:openclaw":
		return []string{
			"browser", "canvas", "nodes", "cron", "message", "gateway", "agents_list",
			"sessions_list", "sessions_history", "sessions_send", "sessions_spawn", "subagents",
			"session_status", "memory_search", "memory_get", "web_search", "web_fetch", "image",
		}, true
	}
	return nil, false
}

// NormalizeToolName trims, lowercases and resolves aliases (bash -> exec, apply-patch -> apply_patch).
func NormalizeToolName(name string) string {
	n := strings.ToLower(strings.TrimSpace(name))
	if alias, ok := toolAlias(n); ok {
		return alias
	}
	return n
}

// NormalizeToolList normalises every entry and drops the ones that become empty.
func NormalizeToolList(list []string) []string {
	out := make([]string, 0, len(list))
	for _, v := range list {
		if n := NormalizeToolName(v); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// ExpandToolGroups normalises a list and replaces core group:* names by their members,
// de-duplicated in first-seen order. Unknown group names are kept verbatim.
func ExpandToolGroups(list []string) []string {
	var out []string
	for _, v := range NormalizeToolList(list) {
		if members, ok := ToolGroup(v); ok {
			out = append(out, members...)
			continue
		}
		out = append(out, v)
	}
	return dedupe(out)
}

// BuildPluginToolGroups groups plugin tools by lowercased plugin id; core tools are skipped.
func BuildPluginToolGroups(tools []Tool) PluginGroups {
	g := PluginGroups{All: []string{}, ByPlugin: map[string][]string{}}
	for _, t := range tools {
		pid := normalizePluginID(t.PluginID)
		if pid == "" {
			continue
		}
		name := NormalizeToolName(t.Name)
		g.All = append(g.All, name)
		g.ByPlugin[pid] = append(g.ByPlugin[pid], name)
	}
	return g
}

// normalizeGroups makes caller-supplied groups safe to look up (lowercased plugin ids,
// normalised tool names).
func normalizeGroups(g PluginGroups) PluginGroups {
	out := PluginGroups{All: dedupe(NormalizeToolList(g.All)), ByPlugin: make(map[string][]string, len(g.ByPlugin))}
	for pid, names := range g.ByPlugin {
		out.ByPlugin[normalizePluginID(pid)] = NormalizeToolList(names)
	}
	return out
}

func normalizePluginID(id string) string { return strings.ToLower(strings.TrimSpace(id)) }

// ExpandPluginGroups replaces group:plugins and plugin ids by the plugin tool names. A nil
// or empty list is returned unchanged (an empty allowlist means "allow all" and must stay so).
func ExpandPluginGroups(list []string, groups PluginGroups) []string {
	if len(list) == 0 {
		return list
	}
	groups = normalizeGroups(groups)
	var out []string
	for _, entry := range list {
		n := NormalizeToolName(entry)
		if n == groupPlugins {
			if len(groups.All) > 0 {
				out = append(out, groups.All...)
			} else {
				out = append(out, n)
			}
			continue
		}
		if tools := groups.ByPlugin[n]; len(tools) > 0 {
			out = append(out, tools...)
			continue
		}
		out = append(out, n)
	}
	return dedupe(out)
}

// ExpandPolicyWithPluginGroups applies ExpandPluginGroups to both lists of a policy.
func ExpandPolicyWithPluginGroups(p *Policy, groups PluginGroups) *Policy {
	if p == nil {
		return nil
	}
	return &Policy{Allow: ExpandPluginGroups(p.Allow, groups), Deny: ExpandPluginGroups(p.Deny, groups)}
}

// StripPluginOnlyAllowlist drops an allowlist that names no core tool, so that enabling a
// plugin cannot silently disable every core tool. Entries that are neither core nor plugin
// are reported in UnknownAllowlist.
func StripPluginOnlyAllowlist(p *Policy, groups PluginGroups, coreTools map[string]bool) AllowlistResolution {
	if p == nil || len(p.Allow) == 0 {
		return AllowlistResolution{Policy: p, UnknownAllowlist: []string{}}
	}
	normalized := NormalizeToolList(p.Allow)
	if len(normalized) == 0 {
		return AllowlistResolution{Policy: p, UnknownAllowlist: []string{}}
	}
	groups = normalizeGroups(groups)
	pluginTools := make(map[string]bool, len(groups.All))
	for _, t := range groups.All {
		pluginTools[t] = true
	}
	unknown := []string{}
	hasCore := false
	for _, entry := range normalized {
		if entry == "*" {
			hasCore = true
			continue
		}
		_, isPluginID := groups.ByPlugin[entry]
		isPlugin := entry == groupPlugins || isPluginID || pluginTools[entry]
		isCore := slices.ContainsFunc(ExpandToolGroups([]string{entry}), func(t string) bool { return coreTools[t] })
		if isCore {
			hasCore = true
		}
		if !isCore && !isPlugin {
			unknown = append(unknown, entry)
		}
	}
	res := AllowlistResolution{Policy: p, UnknownAllowlist: dedupe(unknown), StrippedAllowlist: !hasCore}
	if res.UnknownAllowlist == nil {
		res.UnknownAllowlist = []string{}
	}
	if res.StrippedAllowlist {
		res.Policy = &Policy{Deny: p.Deny}
	}
	return res
}

// PipelineStep is one layer of the pipeline. A nil Policy is skipped.
type PipelineStep struct {
	Policy                   *Policy `json:"policy,omitempty"`
	Label                    string  `json:"label"`
	StripPluginOnlyAllowlist bool    `json:"stripPluginOnlyAllowlist"`
}

// PipelineParams are the inputs of BuildDefaultPipelineSteps; JSON names follow upstream.
type PipelineParams struct {
	Profile               string  `json:"profile,omitempty"`
	ProviderProfile       string  `json:"providerProfile,omitempty"`
	AgentID               string  `json:"agentId,omitempty"`
	ProfilePolicy         *Policy `json:"profilePolicy,omitempty"`
	ProviderProfilePolicy *Policy `json:"providerProfilePolicy,omitempty"`
	GlobalPolicy          *Policy `json:"globalPolicy,omitempty"`
	GlobalProviderPolicy  *Policy `json:"globalProviderPolicy,omitempty"`
	AgentPolicy           *Policy `json:"agentPolicy,omitempty"`
	AgentProviderPolicy   *Policy `json:"agentProviderPolicy,omitempty"`
	GroupPolicy           *Policy `json:"groupPolicy,omitempty"`
}

// BuildDefaultPipelineSteps returns the seven layers in evaluation order: profile, provider
// profile, global, global provider, agent, agent provider, group.
func BuildDefaultPipelineSteps(p PipelineParams) []PipelineStep {
	agentID := strings.TrimSpace(p.AgentID)
	profile := strings.TrimSpace(p.Profile)
	providerProfile := strings.TrimSpace(p.ProviderProfile)
	labelOr := func(value, with, without string) string {
		if value != "" {
			return with
		}
		return without
	}
	return []PipelineStep{
		{Policy: p.ProfilePolicy, Label: labelOr(profile, "tools.profile ("+profile+")", "tools.profile"), StripPluginOnlyAllowlist: true},
		{Policy: p.ProviderProfilePolicy, Label: labelOr(providerProfile, "tools.byProvider.profile ("+providerProfile+")", "tools.byProvider.profile"), StripPluginOnlyAllowlist: true},
		{Policy: p.GlobalPolicy, Label: "tools.allow", StripPluginOnlyAllowlist: true},
		{Policy: p.GlobalProviderPolicy, Label: "tools.byProvider.allow", StripPluginOnlyAllowlist: true},
		{Policy: p.AgentPolicy, Label: labelOr(agentID, "agents."+agentID+".tools.allow", "agent tools.allow"), StripPluginOnlyAllowlist: true},
		{Policy: p.AgentProviderPolicy, Label: labelOr(agentID, "agents."+agentID+".tools.byProvider.allow", "agent tools.byProvider.allow"), StripPluginOnlyAllowlist: true},
		{Policy: p.GroupPolicy, Label: "group tools.allow", StripPluginOnlyAllowlist: true},
	}
}

// ApplyPipeline filters tools through every step in order. warn (may be nil) receives the
// upstream warning text for allowlists with unknown entries.
func ApplyPipeline(tools []Tool, steps []PipelineStep, warn func(string)) []Tool {
	core := map[string]bool{}
	for _, t := range tools {
		if normalizePluginID(t.PluginID) == "" {
			if n := NormalizeToolName(t.Name); n != "" {
				core[n] = true
			}
		}
	}
	groups := BuildPluginToolGroups(tools)
	filtered := tools
	for _, step := range steps {
		if step.Policy == nil {
			continue
		}
		p := step.Policy
		if step.StripPluginOnlyAllowlist {
			res := StripPluginOnlyAllowlist(p, groups, core)
			if len(res.UnknownAllowlist) > 0 && warn != nil {
				suffix := unknownEntriesNoStrip
				if res.StrippedAllowlist {
					suffix = unknownEntriesStrip
				}
				warn("tools: " + step.Label + " allowlist contains unknown entries (" + strings.Join(res.UnknownAllowlist, ", ") + "). " + suffix)
			}
			p = res.Policy
		}
		if expanded := ExpandPolicyWithPluginGroups(p, groups); expanded != nil {
			filtered = FilterTools(filtered, *expanded)
		}
	}
	return filtered
}

// FilterTools keeps the tools that p allows.
func FilterTools(tools []Tool, p Policy) []Tool {
	m := p.compile()
	out := make([]Tool, 0, len(tools))
	for _, t := range tools {
		if ok, _ := m.decide(NormalizeToolName(t.Name)); ok {
			out = append(out, t)
		}
	}
	return out
}

// Decide reports whether a single tool call is allowed. Deny wins over allow; an empty
// allowlist allows everything not denied; allowing exec also allows apply_patch (upstream
// treats apply_patch as part of exec).
func (p Policy) Decide(tool string) (allowed bool, reason string) {
	return p.compile().decide(NormalizeToolName(tool))
}

type pattern struct {
	all   bool
	exact string
	re    *regexp.Regexp
}

func (pt pattern) match(name string) bool {
	switch {
	case pt.all:
		return true
	case pt.re != nil:
		return pt.re.MatchString(name)
	default:
		return pt.exact == name
	}
}

type matcher struct{ allow, deny []pattern }

func (p Policy) compile() matcher {
	return matcher{allow: compilePatterns(ExpandToolGroups(p.Allow)), deny: compilePatterns(ExpandToolGroups(p.Deny))}
}

func compilePatterns(list []string) []pattern {
	out := make([]pattern, 0, len(list))
	for _, raw := range list {
		n := NormalizeToolName(raw)
		switch {
		case n == "":
			continue
		case n == "*":
			out = append(out, pattern{all: true})
		case strings.Contains(n, "*"):
			// QuoteMeta then re-open the stars: only '*' is a wildcard, everything else is literal.
			expr := "^" + strings.ReplaceAll(regexp.QuoteMeta(n), `\*`, ".*") + "$"
			out = append(out, pattern{re: regexp.MustCompile(expr)})
		default:
			out = append(out, pattern{exact: n})
		}
	}
	return out
}

func matchesAny(name string, ps []pattern) bool {
	return slices.ContainsFunc(ps, func(pt pattern) bool { return pt.match(name) })
}

func (m matcher) decide(name string) (bool, string) {
	if matchesAny(name, m.deny) {
		return false, ReasonDeniedExplicit
	}
	if len(m.allow) == 0 || matchesAny(name, m.allow) {
		return true, ReasonAllowed
	}
	if name == applyPatchTool && matchesAny(execTool, m.allow) {
		return true, ReasonAllowed
	}
	return false, ReasonToolNotAllowed
}

func dedupe(list []string) []string {
	if list == nil {
		return nil
	}
	seen := make(map[string]bool, len(list))
	out := make([]string, 0, len(list))
	for _, v := range list {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}
