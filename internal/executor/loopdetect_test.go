package executor

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/tools"
)

// call builds a finished call record; out is the tool output JSON.
func call(name, input, out string) ToolCallRecord {
	return NewToolCallRecord(name, json.RawMessage(input), tools.Result{Status: tools.Succeeded, Output: json.RawMessage(out)})
}

func repeat(n int, r ToolCallRecord) []ToolCallRecord {
	out := make([]ToolCallRecord, n)
	for i := range out {
		out[i] = r
	}
	return out
}

// varied returns n calls with distinct inputs, alternating two tool names.
func varied(n int) []ToolCallRecord {
	out := make([]ToolCallRecord, n)
	for i := range out {
		name := "echo"
		if i%3 == 0 {
			name = "sleep"
		}
		out[i] = call(name, fmt.Sprintf(`{"i":%d}`, i), `{}`)
	}
	return out
}

func alternate(n int, a, b ToolCallRecord) []ToolCallRecord {
	out := make([]ToolCallRecord, n)
	for i := range out {
		if i%2 == 0 {
			out[i] = a
		} else {
			out[i] = b
		}
	}
	return out
}

func concat(parts ...[]ToolCallRecord) []ToolCallRecord {
	var out []ToolCallRecord
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// pollN returns n http.fetch polls of the same URL; out(i) is the i-th result.
func pollN(n int, out func(i int) string) []ToolCallRecord {
	recs := make([]ToolCallRecord, n)
	for i := range recs {
		recs[i] = call("http.fetch", `{"url":"https://status.example/job/1"}`, out(i))
	}
	return recs
}

func TestDetectLoop(t *testing.T) {
	echoA := call("echo", `{"a":1}`, `{"a":1}`)
	echoB := call("echo", `{"b":2}`, `{"b":2}`)
	same := func(int) string { return `{"status":200,"body":"pending"}` }
	changing := func(i int) string { return fmt.Sprintf(`{"status":200,"body":"%d%%"}`, i) }
	procPoll := call("process", `{"action":"poll","session":"s1"}`, `{"status":"running"}`)
	procKill := call("process", `{"action":"kill","session":"s1"}`, `{"status":"running"}`)

	cases := []struct {
		name  string
		calls []ToolCallRecord
		cfg   LoopConfig
		want  string // detector, "" = no hit
		level string
		count int
	}{
		{name: "empty", calls: nil},
		{name: "single call", calls: []ToolCallRecord{echoA}},
		{name: "varied calls below global", calls: varied(29)},
		{name: "nine repeats is below warning", calls: repeat(9, echoA)},

		{name: "generic repeat at warning", calls: repeat(10, echoA), want: DetectorGenericRepeat, level: LoopWarning, count: 10},
		{name: "generic repeat after varied prefix", calls: concat(varied(5), repeat(12, echoA)), want: DetectorGenericRepeat, level: LoopWarning, count: 12},
		{name: "generic repeat at critical", calls: repeat(20, echoA), want: DetectorGenericRepeat, level: LoopCritical, count: 20},
		{name: "generic repeat ignores output for non-poll tools", calls: func() []ToolCallRecord {
			r := make([]ToolCallRecord, 10)
			for i := range r {
				r[i] = call("echo", `{"a":1}`, fmt.Sprintf(`{"n":%d}`, i))
			}
			return r
		}(), want: DetectorGenericRepeat, level: LoopWarning, count: 10},
		{name: "input key order does not matter", calls: func() []ToolCallRecord {
			r := make([]ToolCallRecord, 10)
			for i := range r {
				if i%2 == 0 {
					r[i] = call("echo", `{"a":1,"b":2}`, `{}`)
				} else {
					r[i] = call("echo", `{ "b":2, "a":1 }`, `{}`)
				}
			}
			return r
		}(), want: DetectorGenericRepeat, count: 10, level: LoopWarning},
		{name: "repeat broken by another call", calls: concat(repeat(9, echoA), []ToolCallRecord{echoB}, repeat(9, echoA))},

		{name: "ping pong at warning", calls: alternate(10, echoA, echoB), want: DetectorPingPong, level: LoopWarning, count: 10},
		{name: "ping pong odd length", calls: concat([]ToolCallRecord{call("sleep", `{}`, `{}`)}, alternate(11, echoA, echoB)), want: DetectorPingPong, level: LoopWarning, count: 11},
		{name: "ping pong critical", calls: alternate(21, echoA, echoB), want: DetectorPingPong, level: LoopCritical, count: 21},
		{name: "ping pong below warning", calls: alternate(9, echoA, echoB)},
		{name: "three-way rotation is not ping pong", calls: func() []ToolCallRecord {
			c := call("sleep", `{"ms":1}`, `{}`)
			var r []ToolCallRecord
			for range 8 {
				r = append(r, echoA, echoB, c)
			}
			return r[:24]
		}()},

		{name: "known poll without progress", calls: pollN(10, same), want: DetectorKnownPoll, level: LoopWarning, count: 10},
		{name: "known poll critical", calls: pollN(25, same), want: DetectorKnownPoll, level: LoopCritical, count: 25},
		{name: "poll making progress is no loop", calls: pollN(25, changing)},
		{name: "poll progress then stall", calls: concat(pollN(5, changing), pollN(10, same)), want: DetectorKnownPoll, level: LoopWarning, count: 10},
		{name: "poll action of process", calls: repeat(10, procPoll), want: DetectorKnownPoll, level: LoopWarning, count: 10},
		{name: "non-poll action of process is a generic repeat", calls: repeat(10, procKill), want: DetectorGenericRepeat, level: LoopWarning, count: 10},
		{name: "poll tools can be disabled", calls: pollN(10, same), cfg: LoopConfig{PollTools: map[string][]string{}}, want: DetectorGenericRepeat, level: LoopWarning, count: 10},

		{name: "global ceiling on varied calls", calls: varied(30), want: DetectorGlobal, level: LoopCritical, count: 30},
		{name: "global counts only the window", calls: varied(50), want: DetectorGlobal, level: LoopCritical, count: 31},
		{name: "global below ceiling with small window", calls: varied(50), cfg: LoopConfig{Window: 10, Global: 12}},

		// Precedence: the first detector that hits wins.
		{name: "global wins over generic repeat", calls: repeat(30, echoA), want: DetectorGlobal, level: LoopCritical, count: 30},
		{name: "known poll wins over generic repeat", calls: pollN(12, same), want: DetectorKnownPoll, level: LoopWarning, count: 12},
		{name: "global wins over ping pong", calls: alternate(30, echoA, echoB), want: DetectorGlobal, level: LoopCritical, count: 30},
		{name: "global wins over known poll", calls: pollN(30, same), want: DetectorGlobal, level: LoopCritical, count: 30},
		// ping_pong needs the last two calls to differ, known_poll and
		// generic_repeat need them equal: those pairs can never both hit.

		// Configuration and normalisation.
		{name: "custom warning", calls: repeat(3, echoA), cfg: LoopConfig{Warning: 3}, want: DetectorGenericRepeat, level: LoopWarning, count: 3},
		{name: "critical raised above warning", calls: repeat(5, echoA), cfg: LoopConfig{Warning: 5, Critical: 2}, want: DetectorGenericRepeat, level: LoopWarning, count: 5},
		{name: "critical reached after normalisation", calls: repeat(6, echoA), cfg: LoopConfig{Warning: 5, Critical: 2}, want: DetectorGenericRepeat, level: LoopCritical, count: 6},
		{name: "global raised above critical", calls: varied(22), cfg: LoopConfig{Critical: 25, Global: 5}},
		{name: "raised global still fires", calls: varied(26), cfg: LoopConfig{Critical: 25, Global: 5}, want: DetectorGlobal, level: LoopCritical, count: 26},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := DetectLoop(tc.calls, tc.cfg)
			if tc.want == "" {
				if ok {
					t.Fatalf("unexpected detection %+v", got)
				}
				return
			}
			if !ok {
				t.Fatalf("no detection, want %s", tc.want)
			}
			if got.Detector != tc.want || got.Level != tc.level || got.Count != tc.count {
				t.Fatalf("got %s/%s/%d, want %s/%s/%d (%s)", got.Detector, got.Level, got.Count, tc.want, tc.level, tc.count, got.Message)
			}
			if got.Message == "" {
				t.Fatal("empty message")
			}
		})
	}
}

func TestLoopConfigNormalize(t *testing.T) {
	cases := []struct {
		in   LoopConfig
		want [4]int // window, warning, critical, global
	}{
		{LoopConfig{}, [4]int{30, 10, 20, 30}},
		{LoopConfig{Warning: 25}, [4]int{30, 25, 26, 30}},
		{LoopConfig{Warning: 25, Critical: 10, Global: 5}, [4]int{30, 25, 26, 27}},
		{LoopConfig{Window: 5, Warning: 2, Critical: 3, Global: 4}, [4]int{5, 2, 3, 4}},
		{LoopConfig{Warning: -1, Critical: -1, Global: -1, Window: -1}, [4]int{30, 10, 20, 30}},
	}
	for _, tc := range cases {
		c := tc.in.Normalize()
		got := [4]int{c.Window, c.Warning, c.Critical, c.Global}
		if got != tc.want {
			t.Errorf("Normalize(%+v) = %v, want %v", tc.in, got, tc.want)
		}
		if c.Critical < c.Warning+1 || c.Global < c.Critical+1 {
			t.Errorf("Normalize(%+v) broke the ordering: %+v", tc.in, c)
		}
	}
	if _, ok := (LoopConfig{}).Normalize().PollTools["http.fetch"]; !ok {
		t.Fatal("http.fetch is not a default poll tool")
	}
}

// Records rebuilt from stored events (sanitized canonical payloads) must equal
// the records built live, or a crash in the middle of a streak would reset it.
func TestLoopRecordsFromEventsMatchLive(t *testing.T) {
	input := json.RawMessage(`{"url":"https://x.example/a","api_key":"sk-abcdefghijklmnopqrstuvwxyz","b":[1,2.50]}`)
	res := tools.Result{Status: tools.Succeeded, Output: json.RawMessage(`{"token":"t0ps3cr3t-value","n":1}`)}
	live := NewToolCallRecord("http.fetch", input, res)
	failed := NewToolCallRecord("echo", json.RawMessage(`{}`), tools.Result{Status: tools.Failed, ErrorClass: "ssrf_block.loopback"})

	ev := func(typ string, payload map[string]any) store.Event {
		raw, err := json.Marshal(payload)
		if err != nil {
			t.Fatal(err)
		}
		return store.Event{EventType: typ, Payload: raw}
	}
	var inDoc, outDoc any
	_ = json.Unmarshal(input, &inDoc)
	_ = json.Unmarshal(res.Output, &outDoc)
	evs := []store.Event{
		ev("run.started", map[string]any{}),
		ev("tool.call", map[string]any{"tool_call_id": "f1.c1", "tool_name": "http.fetch", "input": inDoc}),
		ev("tool.call", map[string]any{"tool_call_id": "f1.c2", "tool_name": "echo", "input": map[string]any{}}),
		ev("tool.result", map[string]any{"tool_call_id": "f1.c1", "status": "succeeded", "output": outDoc}),
		ev("tool.result", map[string]any{"tool_call_id": "f1.c2", "status": "failed", "error_class": "ssrf_block.loopback", "error": "blocked"}),
		ev("tool.result", map[string]any{"tool_call_id": "f1.c2", "status": "canceled"}), // duplicate: ignored
		ev("tool.call", map[string]any{"tool_call_id": "f1.c3", "tool_name": "sleep", "input": map[string]any{"ms": 1}}),
	}
	got := LoopRecordsFromEvents(evs)
	if len(got) != 3 {
		t.Fatalf("got %d records, want 3: %+v", len(got), got)
	}
	if got[0] != live {
		t.Errorf("rebuilt %+v\nlive    %+v", got[0], live)
	}
	if got[1] != failed {
		t.Errorf("rebuilt %+v\nlive    %+v", got[1], failed)
	}
	if got[2].Name != "sleep" || got[2].Status != "" {
		t.Errorf("pending call: %+v", got[2])
	}
	// Sanitizing must not hide a difference that is not a secret.
	other := NewToolCallRecord("http.fetch", json.RawMessage(`{"url":"https://x.example/b"}`), res)
	if other.InputHash == live.InputHash {
		t.Error("different URLs hash the same")
	}
}
