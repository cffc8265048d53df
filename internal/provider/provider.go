// Package provider defines the model-provider contract of the agent loop and
// the built-in deterministic `scripted` provider.
package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// Message is one entry of the conversation sent to a model.
type Message struct {
	Role       string     `json:"role"` // user, assistant, tool
	Content    string     `json:"content,omitempty"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
	// Script carries a scripted frame's steps; other providers ignore it.
	Script json.RawMessage `json:"script,omitempty"`
}

// ToolCall is a model's request to run a tool.
type ToolCall struct {
	ID    string          `json:"id"`
	Name  string          `json:"name"`
	Input json.RawMessage `json:"input"`
}

// ToolSpec describes a tool offered to the model.
type ToolSpec struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	InputSchema json.RawMessage `json:"input_schema,omitempty"`
}

// Request is one model call.
type Request struct {
	Messages []Message
	Tools    []ToolSpec
}

// Response is a model's answer: text deltas, then either tool calls (the turn
// continues) or none (the turn ends with Answer).
type Response struct {
	Deltas    []string
	ToolCalls []ToolCall
	Answer    string
}

// Provider is a model provider.
type Provider interface {
	Name() string
	Complete(ctx context.Context, req Request) (Response, error)
}

// Error is a classified provider failure; Class is a closed-set reason_class.
type Error struct {
	Class string
	Err   error
}

func (e *Error) Error() string { return fmt.Sprintf("provider %s: %v", e.Class, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// Class returns the reason class of err: the provider error class, or
// "provider_error" for unclassified failures.
func Class(err error) string {
	var pe *Error
	if errors.As(err, &pe) && pe.Class != "" {
		return pe.Class
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return "provider_error"
}
