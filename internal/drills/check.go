package drills

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"time"

	"github.com/oaruntime/oaruntime/internal/client"
	"github.com/oaruntime/oaruntime/internal/provider"
	"github.com/oaruntime/oaruntime/internal/runs"
)

// drillSub is the principal the drills act as.
const drillSub = "user:chaos-drill"

// apiEvent is an event as GET .../events returns it.
type apiEvent struct {
	Seq            int64           `json:"seq"`
	EventType      string          `json:"event_type"`
	Payload        json.RawMessage `json:"payload"`
	PrevHash       string          `json:"prev_hash"`
	EventHash      string          `json:"event_hash"`
	IdempotencyKey string          `json:"idempotency_key"`
	CreatedAt      time.Time       `json:"created_at"`
}

// listEvents pages through a run's whole log.
func listEvents(ctx context.Context, c *client.Client, runID string) ([]apiEvent, error) {
	var all []apiEvent
	var after int64
	for {
		var out struct {
			Events     []apiEvent `json:"events"`
			NextCursor *int64     `json:"next_cursor"`
		}
		path := fmt.Sprintf("/internal/v1/runs/%s/events?after_seq=%d&limit=1000", url.PathEscape(runID), after)
		if _, err := c.Do(ctx, http.MethodGet, path, nil, &out); err != nil {
			return all, fmt.Errorf("list events of %s after %d: %w", runID, after, err)
		}
		all = append(all, out.Events...)
		if len(out.Events) == 0 || out.NextCursor == nil {
			return all, nil
		}
		after = *out.NextCursor
	}
}

// verifyAnswer is GET .../verify.
type verifyAnswer struct {
	OK         bool   `json:"ok"`
	EventCount int64  `json:"event_count"`
	HeadHash   string `json:"head_hash"`
	BrokenSeq  int64  `json:"broken_seq"`
	Reason     string `json:"reason"`
	LatestSeq  int64  `json:"latest_seq"`
}

func verifyRun(ctx context.Context, c *client.Client, runID string) (verifyAnswer, error) {
	var v verifyAnswer
	_, err := c.Do(ctx, http.MethodGet, "/internal/v1/runs/"+url.PathEscape(runID)+"/verify", nil, &v)
	return v, err
}

// plannedRun is a run the drill created and what it must end as.
type plannedRun struct {
	RunID, FrameID string
	Steps          []provider.Step
	WantStatus     string
}

// createRun creates a run and sends its user_message frame.
func createRun(ctx context.Context, c *client.Client, p *plannedRun) error {
	if _, err := c.CreateRun(ctx, map[string]any{"run_id": p.RunID, "thread_id": "thread_" + p.RunID}); err != nil {
		return fmt.Errorf("create run %s: %w", p.RunID, err)
	}
	payload := map[string]any{"text": "chaos drill " + p.RunID, "script": p.Steps}
	if _, err := c.SendFrame(ctx, p.RunID, p.FrameID, "user_message", payload); err != nil {
		return fmt.Errorf("send frame to %s: %w", p.RunID, err)
	}
	return nil
}

// waitTerminal polls every run until all are terminal or ctx ends; it
// tolerates errors (the server may be down for a while).
func waitTerminal(ctx context.Context, c func() *client.Client, plans []*plannedRun) (map[string]client.Run, error) {
	done := map[string]client.Run{}
	for {
		for _, p := range plans {
			if _, ok := done[p.RunID]; ok {
				continue
			}
			r, err := c().GetRun(ctx, p.RunID)
			if err == nil && isTerminal(r.Status) {
				done[p.RunID] = r
			}
		}
		if len(done) == len(plans) {
			return done, nil
		}
		select {
		case <-ctx.Done():
			var open []string
			for _, p := range plans {
				if _, ok := done[p.RunID]; !ok {
					open = append(open, p.RunID)
				}
			}
			return done, fmt.Errorf("%d of %d runs not terminal: %v", len(open), len(plans), limitList(open, 5))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func isTerminal(s string) bool { return s == "succeeded" || s == "failed" || s == "canceled" }

// logicalKey names an event by what it means, so that a repeated step is
// recognisable as a duplicate: tool calls and results by tool_call_id,
// deltas by text. run.executor_lost returns "" (recovery bookkeeping, not a
// step of the run).
func logicalKey(ev apiEvent) string {
	var p struct {
		ToolCallID string `json:"tool_call_id"`
		Status     string `json:"status"`
		Delta      string `json:"delta"`
		Final      bool   `json:"final"`
	}
	_ = json.Unmarshal(ev.Payload, &p)
	switch ev.EventType {
	case "run.executor_lost":
		return ""
	case "run.started":
		return "run.started"
	case "run.finished":
		return "run.finished:" + p.Status
	case "tool.call":
		return "tool.call:" + p.ToolCallID
	case "tool.result":
		return "tool.result:" + p.ToolCallID + ":" + p.Status
	case "run.delta":
		if p.Final {
			return "run.delta:" + p.Delta + ":final"
		}
		return "run.delta:" + p.Delta
	default:
		return "other:" + ev.EventType
	}
}

// logicalDiff compares the logical events a run has with those it should
// have: lost = expected and missing, duplicated = expected but present more
// than once, unexpected = present and never expected.
type logicalDiff struct {
	Lost, Duplicated, Unexpected int
	InOrder                      bool
	Missing, Extra               []string
}

func compareLogical(want, got []string) logicalDiff {
	wc, gc := map[string]int{}, map[string]int{}
	for _, k := range want {
		wc[k]++
	}
	for _, k := range got {
		gc[k]++
	}
	var d logicalDiff
	keys := map[string]bool{}
	for k := range wc {
		keys[k] = true
	}
	for k := range gc {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	for _, k := range sorted {
		w, g := wc[k], gc[k]
		switch {
		case g < w:
			d.Lost += w - g
			d.Missing = append(d.Missing, k)
		case g > w && w == 0:
			d.Unexpected += g
			d.Extra = append(d.Extra, k)
		case g > w:
			d.Duplicated += g - w
			d.Extra = append(d.Extra, k)
		}
	}
	d.InOrder = slices.Equal(want, got)
	return d
}

// runCheck is what checkRun found for one run.
type runCheck struct {
	RunID                    string
	Status                   string
	LatestSeq                int64
	Events                   []apiEvent
	Lost, Duplicated         int
	Unexpected, SeqGaps      int
	ExecutorLost             int
	ToolCalls, DupToolResult int
	Problems                 []string
}

// checkSequence checks that events are seq 1..n without gap or repeat and
// that the run row counts the same n.
func checkSequence(evs []apiEvent, latestSeq int64) (gaps int, problems []string) {
	for i, ev := range evs {
		if want := int64(i + 1); ev.Seq != want {
			gaps++
			if len(problems) < 3 {
				problems = append(problems, fmt.Sprintf("event %d has seq %d, want %d", i, ev.Seq, want))
			}
		}
	}
	if int64(len(evs)) != latestSeq {
		problems = append(problems, fmt.Sprintf("log lists %d events, run latest_seq is %d", len(evs), latestSeq))
		if int64(len(evs)) < latestSeq {
			gaps += int(latestSeq) - len(evs)
		}
	}
	return gaps, problems
}

// checkRun fetches a run's log and checks it: terminal status, gap-free seq,
// hash chain (recomputed here and by GET .../verify), the logical steps
// against the script (none lost, none duplicated), one tool.result per
// tool_call_id, run.finished last.
func checkRun(ctx context.Context, c *client.Client, p *plannedRun) runCheck {
	rc := runCheck{RunID: p.RunID}
	bad := func(format string, a ...any) {
		rc.Problems = append(rc.Problems, p.RunID+": "+fmt.Sprintf(format, a...))
	}
	run, err := c.GetRun(ctx, p.RunID)
	if err != nil {
		bad("get run: %v", err)
		return rc
	}
	rc.Status, rc.LatestSeq = run.Status, run.LatestSeq
	if run.Status != p.WantStatus {
		bad("status %q (%s: %s), want %q", run.Status, run.TerminalReasonClass, run.TerminalReason, p.WantStatus)
	}
	evs, err := listEvents(ctx, c, p.RunID)
	if err != nil {
		bad("%v", err)
		return rc
	}
	rc.Events = evs
	gaps, probs := checkSequence(evs, run.LatestSeq)
	rc.SeqGaps = gaps
	for _, pr := range probs {
		bad("%s", pr)
	}
	chain := make([]runs.ChainEvent, len(evs))
	for i, ev := range evs {
		chain[i] = runs.ChainEvent{Seq: ev.Seq, EventType: ev.EventType, Payload: ev.Payload, PrevHash: ev.PrevHash, EventHash: ev.EventHash}
	}
	if res := runs.VerifyChain(p.RunID, chain, ""); !res.OK {
		bad("hash chain recomputed from the listed events is broken at seq %d: %s", res.BrokenSeq, res.Reason)
	}
	v, err := verifyRun(ctx, c, p.RunID)
	switch {
	case err != nil:
		bad("verify: %v", err)
	case !v.OK:
		bad("GET verify: broken at seq %d: %s", v.BrokenSeq, v.Reason)
	case v.EventCount != int64(len(evs)) || (len(evs) > 0 && v.HeadHash != evs[len(evs)-1].EventHash):
		bad("GET verify counts %d events head %s; the log lists %d", v.EventCount, v.HeadHash, len(evs))
	}
	var got []string
	results := map[string]int{}
	finished := 0
	for i, ev := range evs {
		k := logicalKey(ev)
		switch ev.EventType {
		case "run.executor_lost":
			rc.ExecutorLost++
		case "tool.call":
			rc.ToolCalls++
		case "tool.result":
			var tp struct {
				ToolCallID string `json:"tool_call_id"`
			}
			_ = json.Unmarshal(ev.Payload, &tp)
			results[tp.ToolCallID]++
		case "run.finished":
			finished++
			if i != len(evs)-1 {
				bad("run.finished at seq %d is not the last event (%d events)", ev.Seq, len(evs))
			}
		}
		if k != "" {
			got = append(got, k)
		}
	}
	for id, n := range results {
		if n > 1 {
			rc.DupToolResult += n - 1
			bad("%d tool.result events for tool_call_id %s", n, id)
		}
	}
	if finished != 1 {
		bad("%d run.finished events", finished)
	}
	d := compareLogical(expectedLog(p.FrameID, p.Steps), got)
	rc.Lost, rc.Duplicated, rc.Unexpected = d.Lost, d.Duplicated, d.Unexpected
	if d.Lost > 0 {
		bad("%d expected events lost: %v", d.Lost, limitList(d.Missing, 4))
	}
	if d.Duplicated+d.Unexpected > 0 {
		bad("%d duplicated and %d unexpected events: %v", d.Duplicated, d.Unexpected, limitList(d.Extra, 4))
	}
	if d.Lost+d.Duplicated+d.Unexpected == 0 && !d.InOrder {
		bad("events are complete but out of order")
	}
	return rc
}

// checkAll checks every run and folds the findings into r.
func checkAll(ctx context.Context, r *rec, c *client.Client, plans []*plannedRun) []runCheck {
	out := make([]runCheck, 0, len(plans))
	var problems []string
	for _, p := range plans {
		rc := checkRun(ctx, c, p)
		out = append(out, rc)
		r.add("runs_checked", 1)
		if rc.Status == p.WantStatus {
			r.add("runs_expected_status", 1)
		}
		r.add("events_total", int64(len(rc.Events)))
		r.add("events_lost", int64(rc.Lost))
		r.add("events_duplicated", int64(rc.Duplicated))
		r.add("events_unexpected", int64(rc.Unexpected))
		r.add("seq_gaps", int64(rc.SeqGaps))
		r.add("executor_lost_events", int64(rc.ExecutorLost))
		r.add("tool_calls", int64(rc.ToolCalls))
		r.add("duplicate_tool_results", int64(rc.DupToolResult))
		if rc.ExecutorLost > 0 {
			r.add("runs_recovered", 1)
		}
		problems = append(problems, rc.Problems...)
	}
	for _, pr := range limitList(problems, 20) {
		r.failf("%s", pr)
	}
	return out
}

// inFlight counts runs with a tool call that has no result yet.
func inFlight(ctx context.Context, c *client.Client, plans []*plannedRun) int {
	return len(inFlightRuns(ctx, c, plans))
}

// inFlightRuns lists the runs with a tool call that has no result yet.
func inFlightRuns(ctx context.Context, c *client.Client, plans []*plannedRun) map[string]bool {
	n := map[string]bool{}
	for _, p := range plans {
		evs, err := listEvents(ctx, c, p.RunID)
		if err != nil {
			continue
		}
		calls, results := 0, 0
		for _, ev := range evs {
			switch ev.EventType {
			case "tool.call":
				calls++
			case "tool.result":
				results++
			}
		}
		if calls > results {
			n[p.RunID] = true
		}
	}
	return n
}

// waitInFlight waits until at least want runs have a tool in flight (or the
// timeout passes) and returns the last count.
func waitInFlight(ctx context.Context, c *client.Client, plans []*plannedRun, want int, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		n := inFlight(ctx, c, plans)
		if n >= want || time.Now().After(deadline) || ctx.Err() != nil {
			return n
		}
		time.Sleep(150 * time.Millisecond)
	}
}
