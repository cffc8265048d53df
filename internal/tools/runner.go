// Package tools runs tool calls for the agent loop: built-in tools, manifest
// tools, timeouts and result classification.
package tools

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Result statuses (closed set, also the tool_lifecycle result label).
const (
	Succeeded = "succeeded"
	Failed    = "failed"
	Timeout   = "timeout"
	Canceled  = "canceled"
)

// DefaultTimeout bounds a tool call that has no timeout of its own.
const DefaultTimeout = 5 * time.Second

// Result is the outcome of one tool call.
type Result struct {
	Status     string          `json:"status"`
	Output     json.RawMessage `json:"output,omitempty"`
	ErrorClass string          `json:"error_class,omitempty"`
	Error      string          `json:"error,omitempty"`
}

// Tool is one callable tool.
type Tool interface {
	Name() string
	Timeout() time.Duration // 0 = DefaultTimeout
	Call(ctx context.Context, input json.RawMessage) (json.RawMessage, error)
}

// Registry holds the tools known to this node.
type Registry struct{ tools map[string]Tool }

// NewRegistry returns a registry with the given tools.
func NewRegistry(ts ...Tool) *Registry {
	r := &Registry{tools: map[string]Tool{}}
	for _, t := range ts {
		r.tools[t.Name()] = t
	}
	return r
}

// Names lists the registered tool names.
func (r *Registry) Names() []string {
	out := make([]string, 0, len(r.tools))
	for n := range r.tools {
		out = append(out, n)
	}
	return out
}

// Lookup returns the named tool.
func (r *Registry) Lookup(name string) (Tool, bool) { t, ok := r.tools[name]; return t, ok }

// ClassError is a tool failure with a reason class (e.g. ssrf_block.private).
type ClassError struct {
	Class string
	Err   error
}

func (e *ClassError) Error() string { return e.Class + ": " + e.Err.Error() }
func (e *ClassError) Unwrap() error { return e.Err }

// Run calls the named tool with its timeout. runCtx cancellation (the run was
// canceled) yields Canceled; the tool's own deadline yields Timeout.
func (r *Registry) Run(runCtx context.Context, name string, input json.RawMessage) Result {
	t, ok := r.tools[name]
	if !ok {
		return Result{Status: Failed, ErrorClass: "unknown_tool", Error: fmt.Sprintf("tool %q is not registered", name)}
	}
	d := t.Timeout()
	if d <= 0 {
		d = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(runCtx, d)
	defer cancel()
	out, err := t.Call(ctx, input)
	switch {
	case err == nil:
		if len(out) == 0 {
			out = json.RawMessage("null")
		}
		return Result{Status: Succeeded, Output: out}
	case runCtx.Err() != nil:
		return Result{Status: Canceled, ErrorClass: "canceled", Error: "run canceled"}
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		return Result{Status: Timeout, ErrorClass: "timeout", Error: fmt.Sprintf("tool exceeded %s", d)}
	default:
		class := "tool_error"
		var ce *ClassError
		if errors.As(err, &ce) {
			class = ce.Class
		}
		return Result{Status: Failed, ErrorClass: class, Error: err.Error()}
	}
}

// Echo returns its input.
type Echo struct{}

func (Echo) Name() string           { return "echo" }
func (Echo) Timeout() time.Duration { return 0 }
func (Echo) Call(_ context.Context, in json.RawMessage) (json.RawMessage, error) {
	if len(in) == 0 {
		return json.RawMessage("{}"), nil
	}
	return in, nil
}

// Sleep waits input.ms milliseconds (bounded by its timeout), then returns.
// With input.fail set it fails after the wait: the load generator uses it to
// produce tool failures on purpose.
type Sleep struct{ Max time.Duration }

func (Sleep) Name() string { return "sleep" }
func (s Sleep) Timeout() time.Duration {
	if s.Max > 0 {
		return s.Max
	}
	return 0
}
func (Sleep) Call(ctx context.Context, in json.RawMessage) (json.RawMessage, error) {
	var p struct {
		MS   int    `json:"ms"`
		Fail string `json:"fail"`
	}
	if len(in) > 0 {
		if err := json.Unmarshal(in, &p); err != nil {
			return nil, &ClassError{Class: "invalid_input", Err: err}
		}
	}
	if p.MS < 0 || p.MS > 600_000 {
		return nil, &ClassError{Class: "invalid_input", Err: errors.New("ms: 0..600000")}
	}
	t := time.NewTimer(time.Duration(p.MS) * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
	}
	if p.Fail != "" {
		return nil, &ClassError{Class: "tool_error", Err: errors.New(p.Fail)}
	}
	return json.Marshal(map[string]int{"slept_ms": p.MS})
}
