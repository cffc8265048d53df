package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Faults are run-level fault settings of the scripted provider, used by
// tests and the load generator to make the model slow or flaky.
type Faults struct {
	LatencyMS int     `json:"latency_ms"`
	ErrorRate float64 `json:"error_rate"`
}

// Step is one step of a frame script (DESIGN section 5).
type Step struct {
	Say     *string         `json:"say,omitempty"`
	Tool    string          `json:"tool,omitempty"`
	Input   json.RawMessage `json:"input,omitempty"`
	SleepMS int             `json:"sleep_ms,omitempty"`
	Fail    string          `json:"fail,omitempty"`
	Answer  *string         `json:"answer,omitempty"`
}

// Scripted is the deterministic built-in provider. A user message without a
// script is echoed and answered; a script is walked step by step, each model
// call continuing after the tool results already in the conversation.
type Scripted struct {
	Faults Faults
	// Rand decides injected errors; nil uses a per-call source.
	Rand func() float64
}

// Name implements Provider.
func (s *Scripted) Name() string { return "scripted" }

// ParseScript decodes and validates a frame's script.
func ParseScript(raw json.RawMessage) ([]Step, error) {
	var steps []Step
	if err := json.Unmarshal(raw, &steps); err != nil {
		return nil, fmt.Errorf("script: %w", err)
	}
	for i, st := range steps {
		n := 0
		for _, set := range []bool{st.Say != nil, st.Tool != "", st.SleepMS > 0, st.Fail != "", st.Answer != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			return nil, fmt.Errorf("script[%d]: exactly one of say, tool, sleep_ms, fail, answer", i)
		}
		if st.SleepMS < 0 || st.SleepMS > 600_000 {
			return nil, fmt.Errorf("script[%d].sleep_ms: 0..600000", i)
		}
	}
	return steps, nil
}

// Complete implements Provider.
func (s *Scripted) Complete(ctx context.Context, req Request) (Response, error) {
	if s.Faults.LatencyMS > 0 {
		if err := sleep(ctx, time.Duration(s.Faults.LatencyMS)*time.Millisecond); err != nil {
			return Response{}, err
		}
	}
	if s.Faults.ErrorRate > 0 {
		r := s.Rand
		if r == nil {
			r = rand.Float64
		}
		if r() < s.Faults.ErrorRate {
			return Response{}, &Error{Class: "provider_error", Err: errors.New("injected fault")}
		}
	}
	// The turn's input is the last user message; tool results after it tell
	// how far the script has advanced.
	userIdx := -1
	for i := len(req.Messages) - 1; i >= 0; i-- {
		if req.Messages[i].Role == "user" {
			userIdx = i
			break
		}
	}
	if userIdx < 0 {
		return Response{}, &Error{Class: "provider_error", Err: errors.New("no user message")}
	}
	user := req.Messages[userIdx]
	if len(user.Script) == 0 {
		return Response{Answer: user.Content}, nil
	}
	steps, err := ParseScript(user.Script)
	if err != nil {
		return Response{}, &Error{Class: "provider_error", Err: err}
	}
	toolCallsSoFar := 0
	for _, m := range req.Messages[userIdx+1:] {
		if m.Role == "assistant" {
			toolCallsSoFar += len(m.ToolCalls)
		}
	}
	var resp Response
	seenTools := 0
	for i, st := range steps {
		if st.Tool != "" {
			seenTools++
			if seenTools <= toolCallsSoFar {
				resp = Response{} // steps before an answered tool call were said in an earlier call
				continue
			}
			resp.ToolCalls = []ToolCall{{ID: fmt.Sprintf("call_%d", i), Name: st.Tool, Input: defaultInput(st.Input)}}
			return resp, nil
		}
		if seenTools < toolCallsSoFar {
			continue
		}
		switch {
		case st.Say != nil:
			resp.Deltas = append(resp.Deltas, *st.Say)
		case st.SleepMS > 0:
			if err := sleep(ctx, time.Duration(st.SleepMS)*time.Millisecond); err != nil {
				return Response{}, err
			}
		case st.Fail != "":
			return Response{}, &Error{Class: st.Fail, Err: fmt.Errorf("scripted failure at step %d", i)}
		case st.Answer != nil:
			resp.Answer = *st.Answer
			return resp, nil
		}
	}
	return resp, nil // script ran out: the turn ends with what was said
}

func defaultInput(in json.RawMessage) json.RawMessage {
	if len(in) == 0 {
		return json.RawMessage("{}")
	}
	return in
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
