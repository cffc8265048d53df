package httpapi

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
)

// decodeAndValidate runs the same decoding and validation as the handler
// of kind (0 create run, 1 frame, 2 event, 3 cancel).
func decodeAndValidate(kind uint8, body []byte) (any, *APIError) {
	r := httptest.NewRequest("POST", "/", bytes.NewReader(body))
	switch kind % 4 {
	case 0:
		var q createRunRequest
		if aerr := DecodeJSON(r, &q, false); aerr != nil {
			return nil, aerr
		}
		return &q, q.validate()
	case 1:
		var q frameRequest
		if aerr := DecodeJSON(r, &q, false); aerr != nil {
			return nil, aerr
		}
		return &q, q.validate()
	case 2:
		var q eventRequest
		if aerr := DecodeJSON(r, &q, false); aerr != nil {
			return nil, aerr
		}
		return &q, q.validate()
	default:
		var q cancelRequest
		if aerr := DecodeJSON(r, &q, true); aerr != nil {
			return nil, aerr
		}
		return &q, q.validate()
	}
}

// FuzzDecodeRequests: no body panics a decoder; every rejection is a 4xx
// naming a field ("<field>: ..."); every accepted body yields ids within the
// limits and canonical JSON documents.
func FuzzDecodeRequests(f *testing.F) {
	seeds := []struct {
		kind uint8
		body string
	}{
		{0, `{"thread_id":"t","run_id":"r","provider":{"name":"scripted","faults":{"error_rate":0.1}},"tools":["echo"],"metadata":{"a":1}}`},
		{0, `{"thread_id":"t","output_schema":{"type":"object","properties":{"a":{"$ref":"#/$defs/x"}},"$defs":{"x":{"type":"string"}}}}`},
		{1, `{"frame_id":"f","type":"user_message","payload":{"script":[{"say":"a"},{"tool":"echo","input":{}},{"answer":"b"}]}}`},
		{1, `{"frame_id":"f","type":"fail","payload":{"reason":"x","reason_class":"y"}}`},
		{2, `{"event_type":"run.finished","payload":{"status":"failed","reason":"r"},"expected_previous_seq":3,"idempotency_key":"k:1"}`},
		{2, `{"event_type":"run.delta","payload":{"text":"Bearer abcdefgh12345678 2026-02-19"}}`},
		{3, ``},
		{3, `{"reason":"stop"}`},
	}
	for _, s := range seeds {
		f.Add(s.kind, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		q, aerr := decodeAndValidate(kind, body)
		if aerr != nil {
			if aerr.Status < 400 || aerr.Status > 499 {
				t.Fatalf("status %d for %q", aerr.Status, body)
			}
			if aerr.Code == "" || !strings.Contains(aerr.Message, ": ") {
				t.Fatalf("message %q names no field", aerr.Message)
			}
			return
		}
		canonical := func(name string, raw json.RawMessage) {
			if raw == nil {
				return
			}
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Fatalf("%s not valid JSON after validation: %s", name, raw)
			}
		}
		switch q := q.(type) {
		case *createRunRequest:
			if q.ThreadID == "" || len(q.ThreadID) > MaxIDLen || len(q.RunID) > MaxIDLen {
				t.Fatalf("ids accepted: %q %q", q.RunID, q.ThreadID)
			}
			canonical("provider", q.Provider)
			canonical("metadata", q.Metadata)
		case *frameRequest:
			if !frameTypes[q.Type] || q.FrameID == "" || len(q.FrameID) > MaxIDLen {
				t.Fatalf("frame accepted: %+v", q)
			}
			canonical("payload", q.Payload)
		case *eventRequest:
			if q.EventType == "" || len(q.EventType) > MaxTypeLen || len(q.IdempotencyKey) > MaxIDLen {
				t.Fatalf("event accepted: %+v", q)
			}
			canonical("payload", q.Payload)
		}
	})
}
