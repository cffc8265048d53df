package workers

import (
	"encoding/json"
	"strings"

	"github.com/oaruntime/oaruntime/internal/httpapi"
	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
)

// Input limits beyond httpapi's (ids MaxIDLen, types MaxTypeLen, reasons
// MaxReasonLen). Documents are measured canonical, after sanitizing.
const (
	MaxRefLen        = 1000      // workspace_ref, codex_home_ref
	MaxMetadataBytes = 64 << 10  // metadata
	MaxPayloadBytes  = 512 << 10 // an event payload
)

// The request bodies and their validation, apart from the handlers so that
// tests drive exactly what the handlers run.

// createRequest is the body of POST /internal/v1/workers.
type createRequest struct {
	WorkerID     string          `json:"worker_id"`
	WorkspaceRef string          `json:"workspace_ref"`
	CodexHomeRef string          `json:"codex_home_ref"`
	Adapter      string          `json:"adapter"`
	Metadata     json.RawMessage `json:"metadata"`
}

// validate checks the body and canonicalizes metadata in place.
func (q *createRequest) validate() *httpapi.APIError {
	if aerr := httpapi.CheckID("worker_id", q.WorkerID, false); aerr != nil {
		return aerr
	}
	if aerr := httpapi.CheckText("workspace_ref", q.WorkspaceRef, MaxRefLen); aerr != nil {
		return aerr
	}
	if aerr := httpapi.CheckText("codex_home_ref", q.CodexHomeRef, MaxRefLen); aerr != nil {
		return aerr
	}
	if aerr := httpapi.CheckID("adapter", q.Adapter, false); aerr != nil {
		return aerr
	}
	if !httpapi.Present(q.Metadata) {
		q.Metadata = nil
		return nil
	}
	if aerr := httpapi.WantObject("metadata", q.Metadata); aerr != nil {
		return aerr
	}
	c, err := runs.CanonicalizeRaw(q.Metadata)
	if err != nil {
		return httpapi.Invalid("metadata", "%v", err)
	}
	if len(c) > MaxMetadataBytes {
		return httpapi.Invalid("metadata", "larger than %d bytes", MaxMetadataBytes)
	}
	q.Metadata = c
	return nil
}

// eventRequest is the body of POST .../events.
type eventRequest struct {
	EventType      string          `json:"event_type"`
	Payload        json.RawMessage `json:"payload"`
	IdempotencyKey string          `json:"idempotency_key"`
}

// lifecycle reports whether the store copies payload.reason of an event of
// type t into the worker row.
func lifecycle(t string) bool {
	return t == store.WorkerEventStopping || t == store.WorkerEventStopped || t == store.WorkerEventFailed
}

// validate checks the body and replaces the payload by its sanitized
// canonical form, which is what gets stored and compared on a key replay.
func (q *eventRequest) validate() *httpapi.APIError {
	q.EventType = strings.TrimSpace(q.EventType)
	if aerr := httpapi.CheckType("event_type", q.EventType); aerr != nil {
		return aerr
	}
	if !strings.HasPrefix(q.EventType, store.WorkerEventPrefix) || q.EventType == store.WorkerEventPrefix {
		return httpapi.Invalid("event_type", "must start with %q followed by a name", store.WorkerEventPrefix)
	}
	if q.EventType == store.WorkerEventStarted {
		return httpapi.Invalid("event_type", "%s is written by POST /internal/v1/workers only", store.WorkerEventStarted)
	}
	q.IdempotencyKey = strings.TrimSpace(q.IdempotencyKey)
	if aerr := httpapi.CheckKey("idempotency_key", q.IdempotencyKey); aerr != nil {
		return aerr
	}
	if !httpapi.Present(q.Payload) {
		q.Payload = json.RawMessage("{}")
	}
	if aerr := httpapi.WantObject("payload", q.Payload); aerr != nil {
		return aerr
	}
	if lifecycle(q.EventType) {
		var p map[string]json.RawMessage
		if err := json.Unmarshal(q.Payload, &p); err != nil {
			return httpapi.Invalid("payload", "%v", err)
		}
		if v, ok := p["reason"]; ok && httpapi.Present(v) {
			var s string
			if json.Unmarshal(v, &s) != nil {
				return httpapi.Invalid("payload.reason", "must be a string")
			}
			if aerr := httpapi.CheckText("payload.reason", s, httpapi.MaxReasonLen); aerr != nil {
				return aerr
			}
		}
	}
	clean, err := runs.SanitizeJSON(q.Payload)
	if err != nil {
		return httpapi.Invalid("payload", "%v", err)
	}
	if len(clean) > MaxPayloadBytes {
		return httpapi.Invalid("payload", "larger than %d bytes", MaxPayloadBytes)
	}
	q.Payload = clean
	return nil
}

// heartbeatRequest is the (optional, empty) body of POST .../heartbeat; it
// is decoded strictly so that a misspelt field is an error, not ignored.
type heartbeatRequest struct{}

// stopRequest is the (optional) body of POST .../stop.
type stopRequest struct {
	Reason string `json:"reason"`
}

func (q *stopRequest) validate() *httpapi.APIError {
	q.Reason = strings.TrimSpace(q.Reason)
	return httpapi.CheckText("reason", q.Reason, httpapi.MaxReasonLen)
}
