package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/spend"
	"github.com/oaruntime/oaruntime/internal/store"
)

// The request bodies and their validation, kept apart from the handlers so
// that the fuzz target drives exactly what the handlers run.

// createRunRequest is the body of POST /internal/v1/runs.
type createRunRequest struct {
	RunID         string          `json:"run_id"`
	ThreadID      string          `json:"thread_id"`
	Provider      json.RawMessage `json:"provider"`
	Tools         json.RawMessage `json:"tools"`
	Authorization json.RawMessage `json:"authorization"`
	OutputSchema  json.RawMessage `json:"output_schema"`
	Metadata      json.RawMessage `json:"metadata"`
	// Input is the run's first input frame (the body of POST .../frames),
	// stored with a new run in one transaction: one request instead of two.
	Input *frameRequest `json:"input"`
}

// validate checks the body and canonicalizes its documents in place.
func (q *createRunRequest) validate() *APIError {
	if aerr := checkID("run_id", q.RunID, false); aerr != nil {
		return aerr
	}
	if aerr := checkID("thread_id", q.ThreadID, true); aerr != nil {
		return aerr
	}
	var aerr *APIError
	if q.Provider, aerr = canonicalDoc("provider", q.Provider, "object", validateProvider); aerr != nil {
		return aerr
	}
	if q.Tools, aerr = canonicalDoc("tools", q.Tools, "array", validateTools); aerr != nil {
		return aerr
	}
	if q.Authorization, aerr = canonicalDoc("authorization", q.Authorization, "object", validateAuthorization); aerr != nil {
		return aerr
	}
	if q.OutputSchema, aerr = canonicalDoc("output_schema", q.OutputSchema, "object", validateSchema); aerr != nil {
		return aerr
	}
	if q.Metadata, aerr = canonicalDoc("metadata", q.Metadata, "object", nil); aerr != nil {
		return aerr
	}
	if q.Input != nil {
		if aerr := q.Input.validate(); aerr != nil {
			aerr.Message = "input." + aerr.Message // the field's path in this body
			return aerr
		}
		if q.Input.ThreadID != "" && q.Input.ThreadID != q.ThreadID {
			return invalid("input.thread_id", "is not the run's thread")
		}
	}
	return nil
}

// canonicalDoc checks an optional document's kind, runs check on it and
// returns its canonical form (nil when absent or null).
func canonicalDoc(field string, raw json.RawMessage, kind string, check func(string, json.RawMessage) *APIError) (json.RawMessage, *APIError) {
	if !present(raw) {
		return nil, nil
	}
	if k := rawKind(raw); k != kind {
		return nil, invalid(field, "must be an %s, got %s", kind, k)
	}
	if check != nil {
		if aerr := check(field, raw); aerr != nil {
			return nil, aerr
		}
	}
	c, err := runs.CanonicalizeRaw(raw)
	if err != nil {
		return nil, invalid(field, "%v", err)
	}
	return c, nil
}

// providerSpec mirrors the executor's provider document.
type providerSpec struct {
	Name     string `json:"name"`
	Model    string `json:"model"`
	Fallback string `json:"fallback"`
	CostSats *int64 `json:"cost_sats"`
	Faults   *struct {
		LatencyMS *int64   `json:"latency_ms"`
		ErrorRate *float64 `json:"error_rate"`
	} `json:"faults"`
}

func validateProvider(field string, raw json.RawMessage) *APIError {
	var p providerSpec
	if aerr := decodeStrict(raw, &p, field); aerr != nil {
		return aerr
	}
	for name, v := range map[string]string{"name": p.Name, "model": p.Model, "fallback": p.Fallback} {
		if len(v) > MaxIDLen {
			return invalid(field+"."+name, "longer than %d characters", MaxIDLen)
		}
	}
	if p.CostSats != nil && (*p.CostSats < 0 || *p.CostSats > store.MaxSpendAmount) {
		return invalid(field+".cost_sats", "must be between 0 and %d", store.MaxSpendAmount)
	}
	if f := p.Faults; f != nil {
		if f.LatencyMS != nil && (*f.LatencyMS < 0 || *f.LatencyMS > 600_000) {
			return invalid(field+".faults.latency_ms", "must be between 0 and 600000")
		}
		if f.ErrorRate != nil && (*f.ErrorRate < 0 || *f.ErrorRate > 1 || math.IsNaN(*f.ErrorRate)) {
			return invalid(field+".faults.error_rate", "must be between 0.0 and 1.0")
		}
	}
	return nil
}

// validateTools accepts tool names or tool objects.
func validateTools(field string, raw json.RawMessage) *APIError {
	var items []json.RawMessage
	if aerr := decodeStrict(raw, &items, field); aerr != nil {
		return aerr
	}
	for i, it := range items {
		name := fmt.Sprintf("%s[%d]", field, i)
		switch rawKind(it) {
		case "string":
			var s string
			_ = json.Unmarshal(it, &s)
			if s == "" || len(s) > MaxIDLen {
				return invalid(name, "tool name must be 1-%d characters", MaxIDLen)
			}
		case "object":
		default:
			return invalid(name, "must be a tool name or a tool object, got %s", rawKind(it))
		}
	}
	return nil
}

// validateAuthorization checks the fields the spend checks rely on and lets
// others through.
func validateAuthorization(field string, raw json.RawMessage) *APIError {
	var m map[string]json.RawMessage
	if aerr := decodeStrict(raw, &m, field); aerr != nil {
		return aerr
	}
	for _, k := range []string{"authorization_id", "mode"} {
		if v, ok := m[k]; ok && present(v) {
			var s string
			if json.Unmarshal(v, &s) != nil {
				return invalid(field+"."+k, "must be a string")
			}
			if aerr := checkID(field+"."+k, s, false); aerr != nil {
				return aerr
			}
		}
	}
	if v, ok := m["max_total_sats"]; ok && present(v) {
		var n int64
		if json.Unmarshal(v, &n) != nil || n < 0 {
			return invalid(field+".max_total_sats", "must be a non-negative integer")
		}
	}
	// The executor's spend guard reads the document with the same parser:
	// whatever passes here is enforceable (closed mode set, required
	// max_total_sats for delegated_budget, RFC 3339 expires_at).
	if _, _, err := spend.ParseAuthorization(raw); err != nil {
		var fe *spend.FieldError
		if errors.As(err, &fe) {
			return invalid(fe.Field, "%s", fe.Msg)
		}
		return invalid(field, "%v", err)
	}
	return nil
}

// denyLoader refuses every external reference of an output schema: loading
// file:// or http:// resources on a caller's behalf is a read or SSRF hole.
type denyLoader struct{}

func (denyLoader) Load(url string) (any, error) {
	return nil, fmt.Errorf("external reference %q not allowed", url)
}

func validateSchema(field string, raw json.RawMessage) *APIError {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return invalid(field, "%v", err)
	}
	c := jsonschema.NewCompiler()
	c.UseLoader(denyLoader{})
	const loc = "mem:///output_schema.json"
	if err := c.AddResource(loc, doc); err != nil {
		return invalid(field, "invalid JSON Schema: %v", err)
	}
	if _, err := c.Compile(loc); err != nil {
		msg := err.Error()
		if len(msg) > 500 {
			msg = msg[:500] + "..."
		}
		return invalid(field, "invalid JSON Schema: %s", msg)
	}
	return nil
}

// Frame types accepted by POST .../frames.
var frameTypes = map[string]bool{
	"user_message": true, "cancel": true, "finish": true, "complete": true, "fail": true, "error": true,
}

// frameRequest is the body of POST .../frames.
type frameRequest struct {
	FrameID    string          `json:"frame_id"`
	Type       string          `json:"type"`
	Payload    json.RawMessage `json:"payload"`
	ThreadID   string          `json:"thread_id"`   // optional; must be the run's
	OccurredAt string          `json:"occurred_at"` // optional RFC 3339; informational
}

func (q *frameRequest) validate() *APIError {
	if aerr := checkID("frame_id", q.FrameID, true); aerr != nil {
		return aerr
	}
	if q.Type == "" {
		return invalid("type", "required")
	}
	if !frameTypes[q.Type] {
		return invalid("type", "must be one of user_message, cancel, finish, complete, fail, error")
	}
	if aerr := checkID("thread_id", q.ThreadID, false); aerr != nil {
		return aerr
	}
	if q.OccurredAt != "" {
		if _, err := time.Parse(time.RFC3339Nano, q.OccurredAt); err != nil {
			return invalid("occurred_at", "must be an RFC 3339 timestamp")
		}
	}
	if !present(q.Payload) {
		q.Payload = json.RawMessage("{}")
	}
	if aerr := wantObject("payload", q.Payload); aerr != nil {
		return aerr
	}
	var p map[string]json.RawMessage
	if aerr := decodeStrict(q.Payload, &p, "payload"); aerr != nil {
		return aerr
	}
	if q.Type == "user_message" {
		if aerr := validateUserMessage(p); aerr != nil {
			return aerr
		}
	}
	for _, k := range []string{"reason", "reason_class"} {
		if v, ok := p[k]; ok && present(v) {
			var s string
			if json.Unmarshal(v, &s) != nil {
				return invalid("payload."+k, "must be a string")
			}
			if aerr := checkText("payload."+k, s, MaxReasonLen); aerr != nil {
				return aerr
			}
		}
	}
	c, err := runs.CanonicalizeRaw(q.Payload)
	if err != nil {
		return invalid("payload", "%v", err)
	}
	q.Payload = c
	return nil
}

// scriptStep mirrors the scripted provider's step (DESIGN section 5).
type scriptStep struct {
	Say     *string         `json:"say"`
	Tool    *string         `json:"tool"`
	Input   json.RawMessage `json:"input"`
	SleepMS *int64          `json:"sleep_ms"`
	Fail    *string         `json:"fail"`
	Answer  *string         `json:"answer"`
}

func validateUserMessage(p map[string]json.RawMessage) *APIError {
	text, hasText := p["text"]
	script, hasScript := p["script"]
	hasText = hasText && present(text)
	hasScript = hasScript && present(script)
	if !hasText && !hasScript {
		return invalid("payload.text", "required for user_message (or payload.script)")
	}
	if hasText {
		var s string
		if json.Unmarshal(text, &s) != nil {
			return invalid("payload.text", "must be a string, got %s", rawKind(text))
		}
		if aerr := checkText("payload.text", s, DefaultMaxBodyBytes); aerr != nil {
			return aerr
		}
	}
	if !hasScript {
		return nil
	}
	var steps []json.RawMessage
	if aerr := decodeStrict(script, &steps, "payload.script"); aerr != nil {
		return aerr
	}
	for i, raw := range steps {
		name := fmt.Sprintf("payload.script[%d]", i)
		if aerr := wantObject(name, raw); aerr != nil {
			return aerr
		}
		var st scriptStep
		if aerr := decodeStrict(raw, &st, name); aerr != nil {
			return aerr
		}
		n := 0
		for _, set := range []bool{st.Say != nil, st.Tool != nil, st.SleepMS != nil, st.Fail != nil, st.Answer != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			return invalid(name, "must have exactly one of say, tool, sleep_ms, fail, answer")
		}
		if st.Tool != nil && (*st.Tool == "" || len(*st.Tool) > MaxIDLen) {
			return invalid(name+".tool", "must be 1-%d characters", MaxIDLen)
		}
		if present(st.Input) && st.Tool == nil {
			return invalid(name+".input", "only allowed with tool")
		}
		if st.SleepMS != nil && (*st.SleepMS < 0 || *st.SleepMS > 600_000) {
			return invalid(name+".sleep_ms", "must be between 0 and 600000")
		}
		if st.Fail != nil && (*st.Fail == "" || len(*st.Fail) > MaxTypeLen) {
			return invalid(name+".fail", "must be an error class of 1-%d characters", MaxTypeLen)
		}
	}
	return nil
}

// eventRequest is the body of POST .../events.
type eventRequest struct {
	EventType           string          `json:"event_type"`
	Payload             json.RawMessage `json:"payload"`
	IdempotencyKey      string          `json:"idempotency_key"`
	ExpectedPreviousSeq *int64          `json:"expected_previous_seq"`
}

// validate checks the body and replaces the payload by its sanitized
// canonical form, which is what gets hashed and stored.
func (q *eventRequest) validate() *APIError {
	q.EventType = strings.TrimSpace(q.EventType)
	if aerr := checkType("event_type", q.EventType); aerr != nil {
		return aerr
	}
	q.IdempotencyKey = strings.TrimSpace(q.IdempotencyKey)
	if aerr := checkKey("idempotency_key", q.IdempotencyKey); aerr != nil {
		return aerr
	}
	if q.ExpectedPreviousSeq != nil && *q.ExpectedPreviousSeq < 0 {
		return invalid("expected_previous_seq", "must be a non-negative integer")
	}
	if !present(q.Payload) {
		q.Payload = json.RawMessage("{}")
	}
	if aerr := wantObject("payload", q.Payload); aerr != nil {
		return aerr
	}
	if q.EventType == "run.finished" {
		if aerr := checkFinished(q.Payload); aerr != nil {
			return aerr
		}
	}
	clean, err := runs.SanitizeJSON(q.Payload)
	if err != nil {
		return invalid("payload", "%v", err)
	}
	q.Payload = clean
	return nil
}

// checkFinished checks the run.finished fields that the store copies into
// the run row's text columns.
func checkFinished(payload json.RawMessage) *APIError {
	var p map[string]json.RawMessage
	if aerr := decodeStrict(payload, &p, "payload"); aerr != nil {
		return aerr
	}
	for _, k := range []string{"status", "reason_class", "reason"} {
		v, ok := p[k]
		if !ok || !present(v) {
			continue
		}
		var s string
		if json.Unmarshal(v, &s) != nil {
			return invalid("payload."+k, "must be a string, got %s", rawKind(v))
		}
		if aerr := checkText("payload."+k, s, MaxReasonLen); aerr != nil {
			return aerr
		}
	}
	return nil
}

// checkKey validates an idempotency key: up to MaxIDLen visible ASCII
// characters (the executor's keys contain ":").
func checkKey(field, v string) *APIError {
	if len(v) > MaxIDLen {
		return invalid(field, "longer than %d characters", MaxIDLen)
	}
	if !validRequestID(v) && v != "" {
		return invalid(field, "may contain only visible ASCII characters")
	}
	return nil
}

// cancelRequest is the (optional) body of POST .../cancel.
type cancelRequest struct {
	Reason string `json:"reason"`
}

func (q *cancelRequest) validate() *APIError {
	q.Reason = strings.TrimSpace(q.Reason)
	return checkText("reason", q.Reason, MaxReasonLen)
}
