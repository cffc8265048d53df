package executor

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/tools"
)

// Loop detectors, in order of precedence (the first hit wins). The names are
// the original runtime's and are also the reason_class of loop parity
// failures.
const (
	DetectorGlobal        = "global_circuit_breaker"
	DetectorKnownPoll     = "known_poll_no_progress"
	DetectorPingPong      = "ping_pong"
	DetectorGenericRepeat = "generic_repeat"
)

// Loop detection levels. Both fail the run; the level only records whether the
// count also reached the critical threshold.
const (
	LoopWarning  = "warning"
	LoopCritical = "critical"
)

// LoopReasonCode is run.loop_detected's reason_code, kept from the original.
const LoopReasonCode = "loop_detected.no_progress"

// LoopConfig tunes loop detection. Zero fields take the defaults of the
// original runtime (window 30, warning 10, critical 20, global 30).
type LoopConfig struct {
	// Window is how many calls before the current one are looked at; the
	// current call is always included, so a window holds up to Window+1 calls.
	Window   int
	Warning  int
	Critical int
	// Global is the tool-call ceiling within the window. It cannot be turned
	// off: it is the last line of defence when the other detectors are fooled
	// by inputs that vary without making progress.
	Global int
	// PollTools names the tools whose repeated identical result means "still
	// waiting": tool name -> input actions that are polls (nil or empty: every
	// call of the tool is a poll). nil takes DefaultPollTools; an empty
	// non-nil map disables the known-poll detector.
	PollTools map[string][]string
}

// DefaultPollTools are the tools known to be polled: the original's
// command_status and process (actions poll and log), and http.fetch, the
// built-in way a model would poll a status URL. For a poll tool a changed
// result is progress, so only an unchanged result counts as a repeat.
func DefaultPollTools() map[string][]string {
	return map[string][]string{
		"command_status": nil,
		"process":        {"poll", "log"},
		"http.fetch":     nil,
	}
}

// Normalize fills defaults and enforces critical >= warning+1 and
// global >= critical+1, as the original did.
func (c LoopConfig) Normalize() LoopConfig {
	if c.Window <= 0 {
		c.Window = 30
	}
	if c.Warning <= 0 {
		c.Warning = 10
	}
	if c.Critical <= 0 {
		c.Critical = 20
	}
	if c.Global <= 0 {
		c.Global = 30
	}
	c.Critical = max(c.Critical, c.Warning+1)
	c.Global = max(c.Global, c.Critical+1)
	if c.PollTools == nil {
		c.PollTools = DefaultPollTools()
	}
	return c
}

// ToolCallRecord is what loop detection knows about one tool call of the run.
// Hashes are of the sanitized canonical JSON, which is exactly what the
// tool.call and tool.result events store, so records rebuilt from events after
// a crash equal the ones built live.
type ToolCallRecord struct {
	Name       string
	InputHash  string
	Action     string // input.action when it is a string (poll detection)
	Status     string // tool result status; "" while the call has no result
	OutputHash string // hash of the output, or of the error class when there is none
}

// NewToolCallRecord builds the record of a finished tool call.
func NewToolCallRecord(name string, input json.RawMessage, res tools.Result) ToolCallRecord {
	rec := ToolCallRecord{Name: name, Status: res.Status}
	rec.InputHash, rec.Action = inputHash(input)
	rec.OutputHash = outputHash(res.Output, res.ErrorClass)
	return rec
}

func inputHash(input json.RawMessage) (hash, action string) {
	doc, ok := hashable(input)
	if !ok {
		// Not JSON: hash the bytes so identical garbage still counts as a repeat.
		return runs.SHA256Hex(input), ""
	}
	if m, isObj := doc.(map[string]any); isObj {
		action, _ = m["action"].(string)
	}
	return hashDoc(doc, input), action
}

func outputHash(output json.RawMessage, errorClass string) string {
	if len(output) == 0 || string(output) == "null" {
		return runs.SHA256Hex([]byte("error_class:" + errorClass))
	}
	doc, ok := hashable(output)
	if !ok {
		return runs.SHA256Hex(output)
	}
	return hashDoc(doc, output)
}

// hashable decodes a document the way the event path does (numbers as
// float64, then sanitized), so that "2.50" and "2.5", or a secret and its
// redaction marker, hash the same live and when rebuilt from stored events.
func hashable(raw json.RawMessage) (any, bool) {
	if len(raw) == 0 {
		return map[string]any{}, true
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, false
	}
	return runs.Sanitize(doc), true
}

func hashDoc(doc any, raw json.RawMessage) string {
	canon, err := runs.Canonical(doc)
	if err != nil {
		return runs.SHA256Hex(raw)
	}
	return runs.SHA256Hex(canon)
}

// LoopRecordsFromEvents rebuilds the run's tool-call records from its events
// (in seq order): one record per tool.call, completed by the tool.result with
// the same tool_call_id. Other events are ignored.
func LoopRecordsFromEvents(evs []store.Event) []ToolCallRecord {
	var out []ToolCallRecord
	idx := map[string]int{}
	for _, ev := range evs {
		switch ev.EventType {
		case "tool.call":
			var p struct {
				ToolCallID string          `json:"tool_call_id"`
				ToolName   string          `json:"tool_name"`
				Input      json.RawMessage `json:"input"`
			}
			if json.Unmarshal(ev.Payload, &p) != nil {
				continue
			}
			if _, seen := idx[p.ToolCallID]; seen && p.ToolCallID != "" {
				continue
			}
			rec := ToolCallRecord{Name: p.ToolName}
			rec.InputHash, rec.Action = inputHash(p.Input)
			idx[p.ToolCallID] = len(out)
			out = append(out, rec)
		case "tool.result":
			var p struct {
				ToolCallID string          `json:"tool_call_id"`
				Status     string          `json:"status"`
				Output     json.RawMessage `json:"output"`
				ErrorClass string          `json:"error_class"`
			}
			if json.Unmarshal(ev.Payload, &p) != nil {
				continue
			}
			i, ok := idx[p.ToolCallID]
			if !ok || out[i].Status != "" {
				continue // first result wins, like the live path
			}
			out[i].Status = p.Status
			out[i].OutputHash = outputHash(p.Output, p.ErrorClass)
		}
	}
	return out
}

// Detection is a loop detector's hit.
type Detection struct {
	Detector string `json:"detector"`
	Level    string `json:"level"`
	Count    int    `json:"count"`
	Message  string `json:"message"`
}

// DetectLoop runs the four detectors over the run's tool calls so far (oldest
// first, the current call last) and returns the first hit. Any count at or
// above the warning threshold is a hit, which fails the run.
func DetectLoop(calls []ToolCallRecord, cfg LoopConfig) (Detection, bool) {
	if len(calls) == 0 {
		return Detection{}, false
	}
	cfg = cfg.Normalize()
	window := calls[max(0, len(calls)-(cfg.Window+1)):]
	cur := window[len(window)-1]

	// Every record is a tool call, so the global count is the window's size.
	if n := len(window); n >= cfg.Global {
		return Detection{
			Detector: DetectorGlobal, Level: LoopCritical, Count: n,
			Message: fmt.Sprintf("%d tool calls within the last %d calls reached the ceiling of %d", n, cfg.Window+1, cfg.Global),
		}, true
	}
	if isPoll(cur, cfg.PollTools) {
		n := trailingStreak(window, pollSignature)
		if n >= cfg.Warning {
			return hit(DetectorKnownPoll, n, cfg, fmt.Sprintf("tool %s polled %d times in a row with no change in its result", cur.Name, n)), true
		}
	}
	if n := pingPongCount(window, func(r ToolCallRecord) string { return repeatSignature(r, cfg.PollTools) }); n >= cfg.Warning {
		return hit(DetectorPingPong, n, cfg, fmt.Sprintf("%d tool calls alternating between two identical calls (last: %s)", n, cur.Name)), true
	}
	if n := trailingStreak(window, func(r ToolCallRecord) string { return repeatSignature(r, cfg.PollTools) }); n >= cfg.Warning {
		return hit(DetectorGenericRepeat, n, cfg, fmt.Sprintf("tool %s called %d times in a row with the same input", cur.Name, n)), true
	}
	return Detection{}, false
}

func hit(detector string, n int, cfg LoopConfig, msg string) Detection {
	level := LoopWarning
	if n >= cfg.Critical {
		level = LoopCritical
	}
	return Detection{Detector: detector, Level: level, Count: n, Message: msg}
}

func isPoll(r ToolCallRecord, pollTools map[string][]string) bool {
	actions, ok := pollTools[r.Name]
	if !ok {
		return false
	}
	return len(actions) == 0 || slices.Contains(actions, r.Action)
}

// pollSignature identifies a poll and what it observed: the same poll seeing
// the same result again is no progress.
func pollSignature(r ToolCallRecord) string {
	return r.Name + "\x00" + r.InputHash + "\x00" + r.Status + "\x00" + r.OutputHash
}

// repeatSignature identifies a call by tool and input. For a poll tool the
// result is part of it: a poll whose result changes is making progress and is
// not a repeat (the known-poll detector owns the unchanged case).
func repeatSignature(r ToolCallRecord, pollTools map[string][]string) string {
	if isPoll(r, pollTools) {
		return "poll\x00" + pollSignature(r)
	}
	return r.Name + "\x00" + r.InputHash
}

// trailingStreak counts the calls at the end of window whose signature equals
// the last call's.
func trailingStreak(window []ToolCallRecord, sig func(ToolCallRecord) string) int {
	last := sig(window[len(window)-1])
	n := 0
	for i := len(window) - 1; i >= 0 && sig(window[i]) == last; i-- {
		n++
	}
	return n
}

// pingPongCount counts the trailing calls that alternate between two distinct
// signatures A and B (…A B A B). A single repeated signature is not ping-pong.
func pingPongCount(window []ToolCallRecord, sig func(ToolCallRecord) string) int {
	if len(window) < 2 {
		return 0
	}
	a, b := sig(window[len(window)-1]), sig(window[len(window)-2])
	if a == b {
		return 0
	}
	n := 2
	for i := len(window) - 3; i >= 0; i-- {
		want := a
		if (len(window)-1-i)%2 == 1 {
			want = b
		}
		if sig(window[i]) != want {
			break
		}
		n++
	}
	return n
}
