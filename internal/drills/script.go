package drills

import (
	"encoding/json"
	"fmt"

	"github.com/oaruntime/oaruntime/internal/provider"
)

func strp(s string) *string { return &s }

func rawJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("drills: marshal %T: %v", v, err)) // only called with maps of plain values
	}
	return b
}

// toolScript keeps a run's tools in flight for a while: a delta, a sleep
// tool of firstMS, an echo tool, a delta, a sleep tool of secondMS, then the
// answer. With modelSleepMS > 0 the first model call itself waits, so a
// kill may also land inside a model call.
func toolScript(tag string, modelSleepMS, firstMS, secondMS int) []provider.Step {
	var s []provider.Step
	if modelSleepMS > 0 {
		s = append(s, provider.Step{SleepMS: modelSleepMS})
	}
	return append(s,
		provider.Step{Say: strp(tag + " start")},
		provider.Step{Tool: "sleep", Input: rawJSON(map[string]any{"ms": firstMS})},
		provider.Step{Tool: "echo", Input: rawJSON(map[string]any{"tag": tag})},
		provider.Step{Say: strp(tag + " mid")},
		provider.Step{Tool: "sleep", Input: rawJSON(map[string]any{"ms": secondMS})},
		provider.Step{Answer: strp(tag + " done")},
	)
}

// streamScript produces a steady flow of events: parts deltas each followed
// by a sleep tool of about stepMS, then the answer.
func streamScript(tag string, parts, stepMS int) []provider.Step {
	var s []provider.Step
	for j := range parts {
		s = append(s,
			provider.Step{Say: strp(fmt.Sprintf("%s part %d", tag, j))},
			// A different input each time: the same call repeated ten times
			// in a row is what the loop detector fails a run for.
			provider.Step{Tool: "sleep", Input: rawJSON(map[string]any{"ms": stepMS + j})},
		)
	}
	return append(s, provider.Step{Answer: strp(tag + " done")})
}

// expectedLog is the logical event sequence a run produces for one
// user_message frame carrying steps, when everything succeeds: the scripted
// provider emits the deltas said before a tool call together with that call
// (DESIGN section 5), each tool call gets exactly one result, and the answer
// is a final delta followed by run.finished. run.executor_lost events are not
// part of it (they depend on when the drill kills the node).
func expectedLog(frameID string, steps []provider.Step) []string {
	out := []string{"run.started"}
	var pending []string
	flush := func() {
		for _, d := range pending {
			out = append(out, "run.delta:"+d)
		}
		pending = nil
	}
	for i, st := range steps {
		switch {
		case st.Say != nil:
			pending = append(pending, *st.Say)
		case st.Tool != "":
			flush()
			id := fmt.Sprintf("%s.call_%d", frameID, i)
			out = append(out, "tool.call:"+id, "tool.result:"+id+":succeeded")
		case st.Answer != nil:
			flush()
			return append(out, "run.delta:"+*st.Answer+":final", "run.finished:succeeded")
		}
	}
	if len(pending) > 0 { // the script ran out after deltas: no final delta
		flush()
		return append(out, "run.finished:succeeded")
	}
	return append(out, "run.delta::final", "run.finished:succeeded")
}
