package stream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/oaruntime/oaruntime/internal/store"
)

// DoneData is the data of the chunk that follows run.finished.
const DoneData = "[DONE]"

// Message is one SSE message as written on the wire: `id: <ID>`,
// `event: <Event>`, `data: <Data>`. Data never contains a newline.
type Message struct {
	ID    string
	Event string
	Data  string
}

// The data documents, with fields in the order of the original mapper (the
// order is cosmetic: clients parse JSON).
type (
	metaData struct {
		Type  string          `json:"type"`
		RunID string          `json:"runId"`
		Meta  json.RawMessage `json:"meta"`
	}
	deltaData struct {
		Type  string `json:"type"`
		RunID string `json:"runId"`
		Delta string `json:"delta"`
	}
	toolCallData struct {
		Type     string          `json:"type"`
		RunID    string          `json:"runId"`
		ToolCall json.RawMessage `json:"toolCall"`
	}
	toolResultData struct {
		Type       string          `json:"type"`
		RunID      string          `json:"runId"`
		ToolResult json.RawMessage `json:"toolResult"`
	}
	otherData struct {
		Type      string          `json:"type"`
		RunID     string          `json:"runId"`
		EventType string          `json:"eventType"`
		Payload   json.RawMessage `json:"payload"`
	}
)

// MapEvent maps one run event to its SSE messages, following
// fixtures/sse_event_mapping_cases.json (the mapping of the original
// runtime's Laravel event mapper):
//
//	run.started            {type:"start", runId, meta: payload}
//	run.delta, text.delta  {type:"text-delta", runId, delta: payload.delta, else payload.text, else ""}
//	tool.call              {type:"tool-call", runId, toolCall: payload}
//	tool.result            {type:"tool-result", runId, toolResult: payload}
//	run.finished           {type:"finish", runId, meta: payload}, then data [DONE] with the same id
//	anything else          {type:"event", runId, eventType, payload}
//
// An empty or null payload is mapped as {}. The error is only possible for a
// payload that is not valid JSON, which the store never holds.
func MapEvent(ev store.Event) ([]Message, error) {
	payload := ev.Payload
	if t := bytes.TrimSpace(payload); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		payload = json.RawMessage("{}")
	}
	var doc any
	switch ev.EventType {
	case "run.started":
		doc = metaData{"start", ev.RunID, payload}
	case "run.delta", "text.delta":
		doc = deltaData{"text-delta", ev.RunID, deltaText(payload)}
	case "tool.call":
		doc = toolCallData{"tool-call", ev.RunID, payload}
	case "tool.result":
		doc = toolResultData{"tool-result", ev.RunID, payload}
	case "run.finished":
		doc = metaData{"finish", ev.RunID, payload}
	default:
		doc = otherData{"event", ev.RunID, ev.EventType, payload}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// Payloads are stored as canonical JSON without HTML escaping; keep them
	// byte-identical on the wire.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("map event %s seq %d: %w", ev.EventType, ev.Seq, err)
	}
	id := strconv.FormatInt(ev.Seq, 10)
	msgs := []Message{{ID: id, Event: "message", Data: string(bytes.TrimRight(buf.Bytes(), "\n"))}}
	if ev.EventType == "run.finished" {
		msgs = append(msgs, Message{ID: id, Event: "message", Data: DoneData})
	}
	return msgs, nil
}

// deltaText picks the text of a delta event: payload.delta when it is a
// string, else payload.text when it is a string, else "" (null counts as
// absent, as in the original's `delta || text || ""`).
func deltaText(payload json.RawMessage) string {
	var p struct {
		Delta json.RawMessage `json:"delta"`
		Text  json.RawMessage `json:"text"`
	}
	if json.Unmarshal(payload, &p) != nil {
		return ""
	}
	for _, raw := range []json.RawMessage{p.Delta, p.Text} {
		var s string
		if len(raw) > 0 && string(raw) != "null" && json.Unmarshal(raw, &s) == nil {
			return s
		}
	}
	return ""
}

// appendWire appends m in SSE wire form: `id: …\nevent: …\ndata: …\n\n`.
func appendWire(b []byte, m Message) []byte {
	b = append(b, "id: "...)
	b = append(b, m.ID...)
	b = append(b, "\nevent: "...)
	b = append(b, m.Event...)
	b = append(b, "\ndata: "...)
	b = append(b, m.Data...)
	return append(b, "\n\n"...)
}
