package executor_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/oaruntime/oaruntime/internal/breaker"
	"github.com/oaruntime/oaruntime/internal/executor"
	"github.com/oaruntime/oaruntime/internal/provider"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

const pointSchema = `{"type":"object","required":["n"],"properties":{"n":{"type":"integer","minimum":0},"tag":{"type":"string"}},"additionalProperties":false}`

func TestCompileOutputSchema(t *testing.T) {
	tests := []struct {
		name, schema string
		wantNil      bool
		wantErr      string
	}{
		{name: "absent", schema: "", wantNil: true},
		{name: "null", schema: "null", wantNil: true},
		{name: "object schema", schema: pointSchema},
		{name: "internal ref", schema: `{"$defs":{"n":{"type":"integer"}},"properties":{"n":{"$ref":"#/$defs/n"}}}`},
		{name: "external http ref", schema: `{"$ref":"http://169.254.169.254/latest/meta-data"}`, wantErr: "not allowed"},
		{name: "external file ref", schema: `{"$ref":"file:///etc/passwd"}`, wantErr: "not allowed"},
		{name: "not a schema", schema: `{"type":12}`, wantErr: "output_schema"},
		{name: "not JSON", schema: `{"type":`, wantErr: "not JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := executor.CompileOutputSchema(json.RawMessage(tc.schema))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (s == nil) != tc.wantNil {
				t.Fatalf("schema nil = %v, want %v", s == nil, tc.wantNil)
			}
		})
	}
}

func TestValidateOutput(t *testing.T) {
	s, err := executor.CompileOutputSchema(json.RawMessage(pointSchema))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, answer string
		want         []string // substrings, one per expected message
	}{
		{name: "valid", answer: `{"n":3,"tag":"x"}`},
		{name: "valid with spaces", answer: " {\"n\": 0}\n"},
		{name: "not JSON", answer: "the answer is 3", want: []string{"not JSON"}},
		{name: "empty", answer: "", want: []string{"not JSON"}},
		{name: "wrong type", answer: `{"n":"3"}`, want: []string{"/n"}},
		{name: "below minimum", answer: `{"n":-1}`, want: []string{"/n"}},
		{name: "missing required", answer: `{"tag":"x"}`, want: []string{"n"}},
		{name: "extra property", answer: `{"n":1,"z":1}`, want: []string{"z"}},
		{name: "array instead of object", answer: `[1]`, want: []string{"object"}},
		{name: "big integer kept exact", answer: `{"n":12345678901234567890}`},
		{name: "float is not an integer", answer: `{"n":1.5}`, want: []string{"/n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := executor.ValidateOutput(s, tc.answer)
			if len(got) != len(tc.want) {
				t.Fatalf("violations %q, want %d", got, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Fatalf("violation %q does not mention %q", got[i], w)
				}
			}
		})
	}
}

func TestValidateOutputCapsMessages(t *testing.T) {
	props := map[string]any{}
	var req []string
	for _, k := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		props[k] = map[string]any{"type": "integer"}
		req = append(req, k)
	}
	raw, _ := json.Marshal(map[string]any{"type": "object", "properties": props, "required": req})
	s, err := executor.CompileOutputSchema(raw)
	if err != nil {
		t.Fatal(err)
	}
	got := executor.ValidateOutput(s, `{"a":"x","b":"x","c":"x","d":"x","e":"x","f":"x","g":"x","h":"x"}`)
	if len(got) != 5 {
		t.Fatalf("%d violations, want at most 5: %q", len(got), got)
	}
}

func TestFinalAnswer(t *testing.T) {
	if got := executor.FinalAnswer(provider.Response{Deltas: []string{"a"}, Answer: `{"n":1}`}); got != `{"n":1}` {
		t.Fatalf("answer wins: %q", got)
	}
	if got := executor.FinalAnswer(provider.Response{Deltas: []string{`{"n":`, `1}`}}); got != `{"n":1}` {
		t.Fatalf("said text without answer: %q", got)
	}
}

// The final answer of a run with output_schema is validated: a match
// succeeds and says so on run.finished; a mismatch fails the run with
// output_schema_violation, keeps the answer in the log and counts a
// workflow parity failure.
func TestStructuredOutputRun(t *testing.T) {
	tests := []struct {
		name, answer string
		keepOpen     bool
		wantStatus   string
		wantReason   string
	}{
		{name: "valid", answer: `{"n":7}`, wantStatus: store.StatusSucceeded, wantReason: "completed"},
		{name: "invalid", answer: `{"n":"seven"}`, wantStatus: store.StatusFailed, wantReason: executor.ReasonOutputSchemaViolation},
		{name: "prose", answer: `seven`, wantStatus: store.StatusFailed, wantReason: executor.ReasonOutputSchemaViolation},
		{name: "invalid keep_open", answer: `{}`, keepOpen: true, wantStatus: store.StatusFailed, wantReason: executor.ReasonOutputSchemaViolation},
	}
	h := newHarness(t, breaker.Config{})
	parity := func() float64 {
		return h.counter(t, telemetry.ParityFailures, map[string]string{"class": "workflow", "reason_class": "output_schema_violation", "component": "workflow"})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := parity()
			id := "run_schema_" + strings.ReplaceAll(tc.name, " ", "_")
			in := store.CreateRunInput{RunID: id, OutputSchema: json.RawMessage(pointSchema)}
			if tc.keepOpen {
				in.Metadata = json.RawMessage(`{"keep_open":true}`)
			}
			newRun(t, h.st, in)
			script := []map[string]any{{"tool": "echo", "input": map[string]any{"q": 1}}, {"answer": tc.answer}}
			sendFrame(t, h.st, id, "f1", "user_message", map[string]any{"text": "go", "script": script})
			res := h.runOnce(t, id)
			if res.Status != tc.wantStatus || res.ReasonClass != tc.wantReason {
				t.Fatalf("result %s/%s, want %s/%s", res.Status, res.ReasonClass, tc.wantStatus, tc.wantReason)
			}
			run, err := h.st.GetRun(t.Context(), id)
			if err != nil || run.Status != tc.wantStatus || run.TerminalReasonClass != tc.wantReason {
				t.Fatalf("run %+v %v", run, err)
			}
			evs := allEvents(t, h.st, id)
			checkLog(t, id, evs)
			// The answer is in the log either way.
			var final map[string]any
			for _, d := range eventsOf(evs, "run.delta") {
				if d["final"] == true {
					final = d
				}
			}
			if final == nil || final["delta"] != tc.answer {
				t.Fatalf("final delta %v, want %q", final, tc.answer)
			}
			fin := finishedPayload(t, h.st, id)
			os, _ := fin["output_schema"].(map[string]any)
			valid := tc.wantStatus == store.StatusSucceeded
			if os == nil || os["valid"] != valid {
				t.Fatalf("run.finished output_schema %v, want valid=%v", fin["output_schema"], valid)
			}
			if !valid {
				errs, _ := os["errors"].([]any)
				if len(errs) == 0 || !strings.HasPrefix(run.TerminalReason, "final answer does not match output_schema") {
					t.Fatalf("violation not explained: %v / %q", os, run.TerminalReason)
				}
			}
			wantParity := 0.0
			if !valid {
				wantParity = 1
			}
			if got := parity() - before; got != wantParity {
				t.Fatalf("workflow parity failures +%v, want +%v", got, wantParity)
			}
		})
	}
}

// With keep_open a valid answer leaves the run running (the frame is done)
// and the next turn is validated again.
func TestStructuredOutputKeepOpen(t *testing.T) {
	h := newHarness(t, breaker.Config{})
	newRun(t, h.st, store.CreateRunInput{RunID: "run_schema_open", OutputSchema: json.RawMessage(pointSchema), Metadata: json.RawMessage(`{"keep_open":true}`)})
	sendFrame(t, h.st, "run_schema_open", "f1", "user_message", map[string]any{"text": "go", "script": []map[string]any{{"answer": `{"n":1}`}}})
	if res := h.runOnce(t, "run_schema_open"); res.Status != store.StatusRunning || res.ProcessedFrames != 1 {
		t.Fatalf("first turn %+v", res)
	}
	sendFrame(t, h.st, "run_schema_open", "f2", "user_message", map[string]any{"text": "again", "script": []map[string]any{{"answer": `{"n":-4}`}}})
	res := h.runOnce(t, "run_schema_open")
	if res.Status != store.StatusFailed || res.ReasonClass != executor.ReasonOutputSchemaViolation {
		t.Fatalf("second turn %+v", res)
	}
	if fin := finishedPayload(t, h.st, "run_schema_open"); fin["frame_id"] != "f2" {
		t.Fatalf("run.finished %v", fin)
	}
}

// A run without output_schema is not validated: prose answers succeed and
// run.finished carries no output_schema field.
func TestNoOutputSchemaNoValidation(t *testing.T) {
	h := newHarness(t, breaker.Config{})
	newRun(t, h.st, store.CreateRunInput{RunID: "run_free"})
	sendFrame(t, h.st, "run_free", "f1", "user_message", map[string]any{"text": "just prose"})
	if res := h.runOnce(t, "run_free"); res.Status != store.StatusSucceeded {
		t.Fatalf("result %+v", res)
	}
	if fin := finishedPayload(t, h.st, "run_free"); fin["output_schema"] != nil {
		t.Fatalf("run.finished %v", fin)
	}
}

// A stored schema that cannot be compiled (runs written straight to the
// store skip the API's check) fails the turn before any model call.
func TestUnusableOutputSchemaFailsBeforeModelCall(t *testing.T) {
	h := newHarness(t, breaker.Config{})
	newRun(t, h.st, store.CreateRunInput{RunID: "run_badschema", OutputSchema: json.RawMessage(`{"$ref":"https://example.com/s.json"}`)})
	sendFrame(t, h.st, "run_badschema", "f1", "user_message", map[string]any{"text": "x"})
	res := h.runOnce(t, "run_badschema")
	if res.Status != store.StatusFailed || res.ReasonClass != executor.ReasonOutputSchemaViolation {
		t.Fatalf("result %+v", res)
	}
	if n := h.calls.get("scripted"); n != 0 {
		t.Fatalf("%d model calls, want none", n)
	}
	if fin := finishedPayload(t, h.st, "run_badschema"); !strings.Contains(fin["reason"].(string), "not allowed") {
		t.Fatalf("reason %v", fin["reason"])
	}
}

func TestParseStepKey(t *testing.T) {
	tests := []struct {
		key, frame string
		call       int
		step       string
		ok         bool
	}{
		{executor.StepKey("f1", 3, "t0:call"), "f1", 3, "t0:call", true},
		{executor.StepKey("a:m1:b", 12, "fallback"), "a:m1:b", 12, "fallback", true},
		{"f:f1:m2:d0", "f1", 2, "d0", true},
		{"f:f1:m2:d0", "f2", 0, "", false},
		{"f:f1:consumed", "f1", 0, "", false},
		{"f:f1:mx:a", "f1", 0, "", false},
		{"f:f1:m0:a", "f1", 0, "", false},
		{"f:f1:m3:", "f1", 0, "", false},
		{"f:f1:m3", "f1", 0, "", false},
		{"run.finished", "f1", 0, "", false},
	}
	for _, tc := range tests {
		call, step, ok := executor.ParseStepKey(tc.key, tc.frame)
		if call != tc.call || step != tc.step || ok != tc.ok {
			t.Errorf("ParseStepKey(%q, %q) = %d %q %v, want %d %q %v", tc.key, tc.frame, call, step, ok, tc.call, tc.step, tc.ok)
		}
	}
}
