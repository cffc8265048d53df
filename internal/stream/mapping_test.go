package stream

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"

	"github.com/oaruntime/oaruntime/internal/store"
)

type fixtureCase struct {
	Name  string `json:"name"`
	Input struct {
		RunID     string          `json:"run_id"`
		Seq       int64           `json:"seq"`
		EventType string          `json:"event_type"`
		Payload   json.RawMessage `json:"payload"`
	} `json:"input"`
	Expected []struct {
		Event string          `json:"event"`
		ID    string          `json:"id"`
		Data  json.RawMessage `json:"data"`
	} `json:"expected"`
}

const fixtureName = "sse_event_mapping_cases.json"

// loadFixture reads the committed copy of the shared fixture, and checks it
// still equals the shared original when that folder is present.
func loadFixture(t *testing.T) []fixtureCase {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", fixtureName))
	if err != nil {
		t.Fatalf("read fixture: %v", err)
	}
	_, self, _, _ := runtime.Caller(0)
	shared := filepath.Join(filepath.Dir(self), "..", "..", "..", "shared", "fixtures", fixtureName)
	if orig, err := os.ReadFile(shared); err == nil && !bytes.Equal(orig, raw) {
		t.Fatalf("testdata/%s differs from %s: copy it again", fixtureName, shared)
	}
	var cases []fixtureCase
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatalf("parse fixture: %v", err)
	}
	if len(cases) == 0 {
		t.Fatal("fixture has no cases")
	}
	return cases
}

// sameJSON compares a data line with the fixture's expected data: a JSON
// string (like "[DONE]") is compared with the raw line, anything else
// structurally.
func sameJSON(t *testing.T, gotData string, want json.RawMessage) bool {
	t.Helper()
	var w any
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("fixture data %s: %v", want, err)
	}
	if s, ok := w.(string); ok {
		return gotData == s
	}
	var g any
	if err := json.Unmarshal([]byte(gotData), &g); err != nil {
		return false
	}
	return reflect.DeepEqual(g, w)
}

func TestMapEventFixture(t *testing.T) {
	for _, tc := range loadFixture(t) {
		t.Run(tc.Name, func(t *testing.T) {
			msgs, err := MapEvent(store.Event{
				RunID: tc.Input.RunID, Seq: tc.Input.Seq, EventType: tc.Input.EventType, Payload: tc.Input.Payload,
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) != len(tc.Expected) {
				t.Fatalf("got %d messages %+v, want %d", len(msgs), msgs, len(tc.Expected))
			}
			for i, want := range tc.Expected {
				got := msgs[i]
				if got.ID != want.ID || got.Event != want.Event {
					t.Errorf("message %d: id/event = %q/%q, want %q/%q", i, got.ID, got.Event, want.ID, want.Event)
				}
				if !sameJSON(t, got.Data, want.Data) {
					t.Errorf("message %d: data = %s, want %s", i, got.Data, want.Data)
				}
			}
		})
	}
}

// TestFixtureOverSocket streams the fixture's events, as one run, through a
// real server and compares every message on the wire, then the clean end.
func TestFixtureOverSocket(t *testing.T) {
	cases := loadFixture(t)
	h := newHarness(t, Config{}, true, true)
	runID := cases[0].Input.RunID
	h.st.createRun(runID)
	for i, tc := range cases {
		ev := h.st.appendEvent(tc.Input.RunID, tc.Input.EventType, string(tc.Input.Payload))
		if ev.Seq != tc.Input.Seq {
			t.Fatalf("case %d: stored seq %d, fixture seq %d", i, ev.Seq, tc.Input.Seq)
		}
	}
	resp := get(t, context.Background(), h.url(runID, ""), nil)
	if resp.status != 200 || resp.err != nil {
		t.Fatalf("status %d err %v body %s", resp.status, resp.err, resp.body)
	}
	for k, want := range map[string]string{
		"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
	} {
		if got := resp.header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	i := 0
	for _, tc := range cases {
		for _, want := range tc.Expected {
			if i >= len(resp.events) {
				t.Fatalf("stream ended after %d messages; missing %s %s", i, tc.Name, want.Data)
			}
			got := resp.events[i]
			if got.ID != want.ID || got.Event != want.Event || !sameJSON(t, got.Data, want.Data) {
				t.Errorf("%s: got %+v, want id %s event %s data %s", tc.Name, got, want.ID, want.Event, want.Data)
			}
			i++
		}
	}
	if i != len(resp.events) {
		t.Errorf("%d extra messages after [DONE]: %+v", len(resp.events)-i, resp.events[i:])
	}
	if s := h.session(); s.Outcome != OutcomeFinished {
		t.Errorf("outcome %q, want finished", s.Outcome)
	}
}

func TestMapEventOtherCases(t *testing.T) {
	tests := []struct {
		name      string
		eventType string
		payload   string
		want      string
	}{
		{"text.delta uses delta", "text.delta", `{"delta":"a"}`, `{"type":"text-delta","runId":"r","delta":"a"}`},
		{"delta falls back to text", "run.delta", `{"text":"t"}`, `{"type":"text-delta","runId":"r","delta":"t"}`},
		{"null delta falls back to text", "run.delta", `{"delta":null,"text":"t"}`, `{"type":"text-delta","runId":"r","delta":"t"}`},
		{"no text gives empty", "run.delta", `{"n":1}`, `{"type":"text-delta","runId":"r","delta":""}`},
		{"tool.result", "tool.result", `{"status":"succeeded"}`, `{"type":"tool-result","runId":"r","toolResult":{"status":"succeeded"}}`},
		{"other type", "policy.decision", `{"decision":"denied"}`, `{"type":"event","runId":"r","eventType":"policy.decision","payload":{"decision":"denied"}}`},
		{"empty payload is {}", "run.started", ``, `{"type":"start","runId":"r","meta":{}}`},
		{"null payload is {}", "run.finished", `null`, `{"type":"finish","runId":"r","meta":{}}`},
		{"no html escaping", "run.delta", `{"delta":"<b>&</b>"}`, `{"type":"text-delta","runId":"r","delta":"<b>&</b>"}`},
		{"newline stays escaped", "run.delta", `{"delta":"a\nb"}`, `{"type":"text-delta","runId":"r","delta":"a\nb"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			msgs, err := MapEvent(store.Event{RunID: "r", Seq: 9, EventType: tc.eventType, Payload: json.RawMessage(tc.payload)})
			if err != nil {
				t.Fatal(err)
			}
			if msgs[0].Data != tc.want {
				t.Errorf("data = %s, want %s", msgs[0].Data, tc.want)
			}
			if msgs[0].ID != "9" || msgs[0].Event != "message" {
				t.Errorf("id/event = %q/%q", msgs[0].ID, msgs[0].Event)
			}
			wantN := 1
			if tc.eventType == "run.finished" {
				wantN = 2
			}
			if len(msgs) != wantN {
				t.Errorf("got %d messages, want %d", len(msgs), wantN)
			}
		})
	}
}

func TestAppendWire(t *testing.T) {
	got := string(appendWire(nil, Message{ID: "4", Event: "message", Data: "[DONE]"}))
	if want := "id: 4\nevent: message\ndata: [DONE]\n\n"; got != want {
		t.Fatalf("wire = %q, want %q", got, want)
	}
}
