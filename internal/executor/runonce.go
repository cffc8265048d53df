package executor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/oaruntime/oaruntime/internal/breaker"
	"github.com/oaruntime/oaruntime/internal/provider"
	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/spend"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
	"github.com/oaruntime/oaruntime/internal/tools"
	"github.com/oaruntime/oaruntime/internal/tools/policy"
)

// Result of one RunOnce.
type Result struct {
	ProcessedFrames int
	Status          string
	ReasonClass     string // terminal reason class, "none" while the run stays open, or the error class
	Err             error
}

// ProviderSpec is a run's `provider` document.
type ProviderSpec struct {
	Name     string          `json:"name"`
	Model    string          `json:"model,omitempty"`
	Fallback string          `json:"fallback,omitempty"`
	Faults   provider.Faults `json:"faults"`
	// CostSats is the price of one model call (primary or fallback), reserved
	// from the run's spend authorization before the call. 0 = free.
	CostSats int64 `json:"cost_sats,omitempty"`
}

// Primary is the provider a model call goes to first ("scripted" when the
// run names none).
func (s ProviderSpec) Primary() string { return s.primary() }

func (s ProviderSpec) primary() string {
	if s.Name == "" {
		return "scripted"
	}
	return s.Name
}

// ParseProviderSpec decodes run.Provider; empty means scripted.
func ParseProviderSpec(raw json.RawMessage) (ProviderSpec, error) {
	var s ProviderSpec
	if len(raw) == 0 || string(raw) == "null" {
		return s, nil
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return s, fmt.Errorf("provider: %w", err)
	}
	return s, nil
}

// runOptions are the run's metadata switches.
type runOptions struct {
	KeepOpen bool `json:"keep_open"`
	// ToolCosts prices tools for this run, in sats per call
	// ({"tool_costs":{"echo":5}}). It can raise a tool's manifest cost, never
	// lower it: the manifest is the operator's price.
	ToolCosts map[string]int64 `json:"tool_costs,omitempty"`
}

// RunOnce processes the leased run's pending frames until the run is terminal
// or has no more input. Every write carries the lease's fencing token.
func (e *Executor) RunOnce(ctx context.Context, l store.Lease) (res Result) {
	return e.runOnce(ctx, l, nil, nil)
}

// runOnce is RunOnce starting from the run row and next frame the claim
// read (pre nil: read them here).
func (e *Executor) runOnce(ctx context.Context, l store.Lease, pre *store.Run, next *store.Frame) (res Result) {
	start := time.Now()
	r := &runner{e: e, lease: l, fence: l.Fence()}
	// One read of the run and its next frame starts the pass (none when
	// the claim read them); the frame's trace is the parent of run_once:
	// the pass exists because that request sent input, so the pass (and
	// run.started, appended before the frame is processed) belongs to its
	// trace. A read error only loses the parent; run reports it.
	var (
		run    store.Run
		runErr error
	)
	if pre != nil {
		run = *pre
	} else {
		run, runErr = e.d.Store.GetRun(ctx, l.RunID)
		next = nil
		if runErr == nil && !store.Terminal(run.Status) {
			if fr, err := e.d.Store.NextFrame(ctx, l.RunID, run.LastProcessedFrameID); err == nil {
				next = &fr
			}
		}
	}
	if next != nil {
		ctx = telemetry.ContextWithRemote(ctx, next.Trace.TraceParent, next.Trace.TraceState)
		ctx = telemetry.WithRequestID(ctx, next.Trace.RequestID)
	}
	ctx, span := e.d.Tracer.Start(ctx, "run_once")
	span.SetAttributes(attribute.String("run_id", l.RunID))
	defer func() {
		result := "ok"
		if res.Err != nil {
			result = "error"
			span.SetStatus(codes.Error, res.Err.Error())
		}
		if res.ReasonClass == "" {
			res.ReasonClass = "none"
		}
		d := time.Since(start)
		e.d.Metrics.RunOnce(result, res.ReasonClass, d)
		e.d.Logger.InfoContext(ctx, "run_once", "run_id", l.RunID, "result", result, "status", res.Status,
			"reason_class", res.ReasonClass, "processed_frames", res.ProcessedFrames, "duration_ms", float64(d.Microseconds())/1000)
		span.End()
	}()
	if runErr != nil {
		return Result{Err: runErr, ReasonClass: errClass(runErr)}
	}
	return r.run(ctx, run, next)
}

type runner struct {
	e     *Executor
	lease store.Lease
	fence *store.Fence
	run_  store.Run
	// emptyLog: the run had no event before this pass, so no earlier
	// execution left steps to replay and priorEvents need not read the log.
	emptyLog bool

	ownMu  sync.Mutex
	ownSeq map[int64]bool // seqs this pass appended (see watchCancel)

	// startMu serializes appends with start, this pass's run.started while
	// it waits to go with the next append (see deferStart).
	startMu    sync.Mutex
	start      *pending
	startTimer *time.Timer
}

func (r *runner) appended(seq int64) bool {
	r.ownMu.Lock()
	defer r.ownMu.Unlock()
	return r.ownSeq[seq]
}

// run walks the pending frames of run (as read at the start of the pass;
// next is its first pending frame, nil if none was found).
func (r *runner) run(ctx context.Context, run store.Run, next *store.Frame) Result {
	st := r.e.d.Store
	r.run_ = run
	if store.Terminal(run.Status) {
		return Result{Status: run.Status, ReasonClass: run.TerminalReasonClass}
	}
	r.emptyLog = run.LatestSeq == 0
	if run.Status == store.StatusCreated {
		if d := r.e.cfg.StartCoalesce; d > 0 {
			r.deferStart(ctx, d)
			defer r.flushStart(ctx) // a pass that appended nothing still started the run
		} else {
			ev, err := r.append(ctx, "run.started", map[string]any{}, "run.started", 0, store.TraceContext{})
			if err != nil {
				return Result{Err: err, ReasonClass: errClass(err)}
			}
			r.run_.LatestSeq = ev.Seq
		}
		// run.started moves only the status and the head: the run row read
		// above stays current without reading it again.
		r.run_.Status = store.StatusRunning
		run = r.run_
	}
	processed := 0
	for {
		if err := ctx.Err(); err != nil {
			return Result{ProcessedFrames: processed, Err: err, ReasonClass: "executor_error"}
		}
		if processed > 0 {
			// The frame's events changed the run: read it again.
			var err error
			if run, err = st.GetRun(ctx, r.lease.RunID); err != nil {
				return Result{ProcessedFrames: processed, Err: err, ReasonClass: errClass(err)}
			}
			r.run_ = run
			r.emptyLog = false
			next = nil
		}
		if store.Terminal(run.Status) {
			return Result{ProcessedFrames: processed, Status: run.Status, ReasonClass: run.TerminalReasonClass}
		}
		if run.Status == store.StatusCanceling {
			return r.finishCanceled(ctx, 0, "", processed)
		}
		var fr store.Frame
		if next != nil {
			fr = *next
		} else {
			var err error
			fr, err = st.NextFrame(ctx, run.RunID, run.LastProcessedFrameID)
			if errors.Is(err, store.ErrNotFound) {
				return Result{ProcessedFrames: processed, Status: run.Status, ReasonClass: "none"}
			}
			if err != nil {
				return Result{ProcessedFrames: processed, Err: err, ReasonClass: errClass(err)}
			}
		}
		processed++
		res, done := r.frame(ctx, fr)
		if done {
			res.ProcessedFrames = processed
			return res
		}
	}
}

// frame processes one frame; done=true ends RunOnce with res.
func (r *runner) frame(ctx context.Context, fr store.Frame) (Result, bool) {
	ctx = telemetry.ContextWithRemote(ctx, fr.Trace.TraceParent, fr.Trace.TraceState)
	if fr.Trace.RequestID != "" {
		ctx = telemetry.WithRequestID(ctx, fr.Trace.RequestID)
	}
	ctx, span := r.e.d.Tracer.Start(ctx, "frame "+fr.Type)
	defer span.End()
	var p map[string]any
	_ = json.Unmarshal(fr.Payload, &p)
	reason, _ := p["reason"].(string)
	switch fr.Type {
	case "cancel", "cancel_requested":
		if reason == "" {
			reason = "cancel requested"
		}
		if _, err := r.append(ctx, "run.cancel_requested", map[string]any{"frame_id": fr.FrameID, "reason_class": "cancel_requested", "reason": reason, "requested_by": "frame"}, "run.cancel_requested", 0, fr.Trace); err != nil {
			return r.fail(err), true
		}
		return r.finishCanceled(ctx, fr.ID, fr.FrameID, 0), true
	case "finish", "complete", "run_complete":
		if reason == "" {
			reason = "completed"
		}
		return r.finish(ctx, store.StatusSucceeded, "completed", reason, fr, nil), true
	case "fail", "error":
		rc, _ := p["reason_class"].(string)
		if rc == "" {
			rc = "execution_failed"
		}
		if reason == "" {
			reason = "failed by frame"
		}
		return r.finish(ctx, store.StatusFailed, rc, reason, fr, nil), true
	case "user_message":
		return r.turn(ctx, fr, p)
	default:
		if _, err := r.append(ctx, "run.frame_consumed", map[string]any{"frame_id": fr.FrameID, "frame_type": fr.Type}, "f:"+fr.FrameID+":consumed", fr.ID, fr.Trace); err != nil {
			return r.fail(err), true
		}
		return Result{}, false
	}
}

func (r *runner) finish(ctx context.Context, status, reasonClass, reason string, fr store.Frame, extra map[string]any) Result {
	return r.finishAfter(ctx, nil, status, reasonClass, reason, fr, extra)
}

// finishAfter appends before (when set) and run.finished in one
// transaction: the final answer and the end of the run commit together.
func (r *runner) finishAfter(ctx context.Context, before *pending, status, reasonClass, reason string, fr store.Frame, extra map[string]any) Result {
	payload := map[string]any{"status": status, "reason_class": reasonClass, "reason": reason}
	if fr.FrameID != "" {
		payload["frame_id"] = fr.FrameID
	}
	for k, v := range extra {
		payload[k] = v
	}
	ps := []pending{{"run.finished", payload, "run.finished", fr.ID, fr.Trace}}
	if before != nil {
		ps = append([]pending{*before}, ps...)
	}
	evs, err := r.appendAll(ctx, ps...)
	if err != nil {
		return r.fail(err)
	}
	ev := evs[len(evs)-1]
	// Whatever is still reserved belongs to calls that will never settle.
	// A run without a spend authorization never reserved anything.
	if _, present, _ := spend.ParseAuthorization(r.run_.Authorization); present {
		if _, err := r.e.d.Spend.ReleaseRun(ctx, r.lease.RunID); err != nil {
			r.e.d.Logger.Warn("spend: release of a finished run's reservations failed", "run_id", r.lease.RunID, "err", err)
		}
	}
	var got struct {
		Status      string `json:"status"`
		ReasonClass string `json:"reason_class"`
	}
	_ = json.Unmarshal(ev.Payload, &got)
	r.e.d.Metrics.Terminal(got.Status, got.ReasonClass)
	return Result{Status: got.Status, ReasonClass: got.ReasonClass}
}

func (r *runner) finishCanceled(ctx context.Context, frameRowID int64, frameID string, processed int) Result {
	reason := "cancel requested"
	if ev, err := r.e.d.Store.FindEventByType(ctx, r.lease.RunID, "run.cancel_requested"); err == nil {
		var p struct {
			Reason string `json:"reason"`
		}
		if json.Unmarshal(ev.Payload, &p) == nil && p.Reason != "" {
			reason = p.Reason
		}
	}
	res := r.finish(ctx, store.StatusCanceled, "cancel_requested", reason, store.Frame{ID: frameRowID, FrameID: frameID}, nil)
	res.ProcessedFrames = processed
	return res
}

// fail classifies an executor error: a lost lease is not the run's failure.
func (r *runner) fail(err error) Result {
	return Result{Err: err, ReasonClass: errClass(err)}
}

func errClass(err error) string {
	switch {
	case errors.Is(err, store.ErrFenced):
		return "lease_lost"
	case errors.Is(err, store.ErrNotFound):
		return "run_not_found"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	default:
		return "executor_error"
	}
}

// pending is an event the runner is about to append.
type pending struct {
	eventType      string
	payload        map[string]any
	key            string
	processedFrame int64
	trace          store.TraceContext
}

// input builds the store input of p under the lease. Payloads are
// sanitized before hashing; the idempotency key makes a re-execution after
// a crash a replay.
func (r *runner) input(ctx context.Context, p pending) (store.AppendInput, error) {
	raw, err := json.Marshal(p.payload)
	if err != nil {
		return store.AppendInput{}, fmt.Errorf("encode %s payload: %w", p.eventType, err)
	}
	// SanitizeJSON's output is canonical JSON already.
	canon, err := runs.SanitizeJSON(raw)
	if err != nil {
		return store.AppendInput{}, fmt.Errorf("sanitize %s payload: %w", p.eventType, err)
	}
	tc := p.trace
	if tc.TraceParent == "" {
		tc.TraceParent, tc.TraceState = telemetry.Inject(ctx)
	}
	if tc.RequestID == "" {
		tc.RequestID = telemetry.RequestID(ctx)
	}
	return store.AppendInput{
		RunID: r.lease.RunID, EventType: p.eventType, Payload: canon, IdempotencyKey: p.key,
		Fence: r.fence, ProcessedFrameID: p.processedFrame, Trace: tc,
	}, nil
}

// append writes one event under the lease.
func (r *runner) append(ctx context.Context, eventType string, payload map[string]any, key string, processedFrame int64, tc store.TraceContext) (store.Event, error) {
	evs, err := r.appendAll(ctx, pending{eventType, payload, key, processedFrame, tc})
	if err != nil {
		return store.Event{}, err
	}
	return evs[0], nil
}

// deferStart holds this pass's run.started back for at most d: the next
// append of the pass carries it in front of its own events (a provider that
// answers at once costs one commit, not two), and a timer appends it alone
// when nothing comes. Its trace is the pass's, as if appended now.
func (r *runner) deferStart(ctx context.Context, d time.Duration) {
	tc := store.TraceContext{RequestID: telemetry.RequestID(ctx)}
	tc.TraceParent, tc.TraceState = telemetry.Inject(ctx)
	r.start = &pending{"run.started", map[string]any{}, "run.started", 0, tc}
	r.startTimer = time.AfterFunc(d, func() { r.flushStart(ctx) })
}

// flushStart appends the held run.started, if still held. A failure is
// only logged: the pass's next append carries it again, and a pass that
// ends without it leaves the run created for the next one.
func (r *runner) flushStart(ctx context.Context) {
	if _, err := r.appendAll(ctx); err != nil && ctx.Err() == nil {
		r.e.d.Logger.Warn("append run.started failed", "run_id", r.lease.RunID, "error", err)
	}
}

// appendAll writes consecutive events under the lease in one transaction
// (one round trip and one commit on PostgreSQL), all or none; a held
// run.started goes first (see deferStart). It returns the events of ps.
func (r *runner) appendAll(ctx context.Context, ps ...pending) ([]store.Event, error) {
	r.startMu.Lock()
	defer r.startMu.Unlock()
	held := r.start != nil
	if held {
		ps = append([]pending{*r.start}, ps...)
	}
	if len(ps) == 0 {
		return nil, nil
	}
	ins := make([]store.AppendInput, len(ps))
	for i, p := range ps {
		in, err := r.input(ctx, p)
		if err != nil {
			return nil, err
		}
		ins[i] = in
	}
	var evs []store.Event
	if len(ins) == 1 {
		ev, _, err := r.e.d.Store.AppendEvent(ctx, ins[0])
		if err != nil {
			return nil, fmt.Errorf("append %s: %w", ins[0].EventType, err)
		}
		evs = []store.Event{ev}
	} else {
		res, err := r.e.d.Store.AppendEvents(ctx, ins)
		if err != nil {
			return nil, fmt.Errorf("append %d events: %w", len(ins), err)
		}
		for _, x := range res {
			evs = append(evs, x.Event)
		}
	}
	r.ownMu.Lock()
	if r.ownSeq == nil {
		r.ownSeq = map[int64]bool{}
	}
	for _, ev := range evs {
		r.ownSeq[ev.Seq] = true
	}
	r.ownMu.Unlock()
	if held {
		r.start = nil
		r.startTimer.Stop()
		evs = evs[1:]
	}
	return evs, nil
}

// priorEvents reads the run's log once: the events a previous execution
// already appended for this frame, by idempotency key (so that completed
// model and tool calls are not repeated after a crash), and the tool calls of
// earlier frames, for loop detection.
func (r *runner) priorEvents(ctx context.Context, frameID string) (map[string]store.Event, []ToolCallRecord, error) {
	prefix := "f:" + frameID + ":"
	out := map[string]store.Event{}
	if r.emptyLog {
		return out, nil, nil // only this pass's run.started is in the log
	}
	var earlier []store.Event
	var after int64
	for {
		evs, err := r.e.d.Store.ListEvents(ctx, r.lease.RunID, after, 500)
		if err != nil {
			return nil, nil, err
		}
		for _, ev := range evs {
			if strings.HasPrefix(ev.IdempotencyKey, prefix) {
				out[ev.IdempotencyKey] = ev
			} else {
				earlier = append(earlier, ev)
			}
			after = ev.Seq
		}
		if len(evs) < 500 {
			return out, LoopRecordsFromEvents(earlier), nil
		}
	}
}

// turn runs the agent loop for one user_message frame.
func (r *runner) turn(ctx context.Context, fr store.Frame, p map[string]any) (Result, bool) {
	text, _ := p["text"].(string)
	var script json.RawMessage
	if s, ok := p["script"]; ok {
		script, _ = json.Marshal(s)
	}
	spec, err := ParseProviderSpec(r.run_.Provider)
	if err != nil {
		return r.finish(ctx, store.StatusFailed, "provider_unavailable", err.Error(), fr, nil), true
	}
	pol := r.toolPolicy()
	// Loop detection looks at the run's earlier tool calls too; this frame's
	// own calls are re-added as the (replayed) turn walks them.
	prior, history, err := r.priorEvents(ctx, fr.FrameID)
	if err != nil {
		return r.fail(err), true
	}
	// Compiled before any model call: a run whose schema cannot be used
	// fails before it spends anything.
	schema, err := CompileOutputSchema(r.run_.OutputSchema)
	if err != nil {
		return r.outputViolation(ctx, fr, []string{err.Error()}), true
	}
	// A cancel request interrupts model and tool calls in flight.
	turnCtx, stopWatch := r.watchCancel(ctx)
	defer stopWatch()

	// The model is offered the registered tools the run's policy allows.
	var offered []provider.ToolSpec
	for _, ts := range tools.Specs(r.e.d.Tools) {
		if ok, _ := pol.Decide(ts.Name); ok {
			offered = append(offered, provider.ToolSpec{Name: ts.Name, Description: ts.Description, InputSchema: ts.InputSchema})
		}
	}
	msgs := []provider.Message{{Role: "user", Content: text, Script: script}}
	key := func(call int, rest string) string { return StepKey(fr.FrameID, call, rest) }
	for call := 1; call <= r.e.cfg.MaxModelCalls; call++ {
		resp, replayed := replayResponse(prior, key(call, ""))
		if !replayed {
			// Spend check before the call; a denied model call fails the run.
			dec, err := r.e.d.Spend.Authorize(ctx, r.run_, key(call, "spend"), max(spec.CostSats, 0))
			if err != nil {
				return r.fail(err), true
			}
			if !dec.Allowed {
				return r.deniedModel(ctx, fr, dec, key(call, "")), true
			}
			var used string
			resp, used, err = r.modelCall(turnCtx, fr, spec, provider.Request{Messages: msgs, Tools: offered}, key(call, "fallback"))
			if err != nil {
				r.releaseSpend(ctx, dec)
				if cr, canceled := r.canceledDuringTurn(ctx, fr); canceled {
					return cr, true
				}
				if errors.Is(err, store.ErrFenced) || ctx.Err() != nil {
					return r.fail(err), true
				}
				// The failed call leaves no other trace in the log: the
				// receipt reads which call and provider failed from here.
				return r.finish(ctx, store.StatusFailed, provider.Class(err), err.Error(), fr,
					map[string]any{"failed_step": "model_call", "model_call": call, "provider": used}), true
			}
			// Committed before the deltas are appended: a crash in between
			// retries the call under the same key and is charged once.
			if err := r.e.d.Spend.Commit(ctx, dec, dec.AmountSats); err != nil {
				return r.fail(err), true
			}
		}
		// Every event of a model call records the response's shape, so a
		// resumed executor can tell a fully recorded response from one cut
		// short by a crash (text appended, tool calls not yet) and calls the
		// model again instead of taking the text for the final answer.
		shape := map[string]any{"deltas": len(resp.Deltas), "tool_calls": len(resp.ToolCalls)}
		for i, d := range resp.Deltas {
			if _, err := r.append(ctx, "run.delta", map[string]any{"delta": d, "frame_id": fr.FrameID, "model_response": shape}, key(call, fmt.Sprintf("d%d", i)), 0, fr.Trace); err != nil {
				return r.fail(err), true
			}
		}
		if len(resp.ToolCalls) == 0 {
			// Validated before anything is appended, and again identically
			// when a resumed executor replays the answer.
			var violations []string
			if schema != nil {
				violations = ValidateOutput(schema, FinalAnswer(resp))
			}
			// With keep_open the answer event advances the frame cursor;
			// otherwise run.finished does, in the same transaction. A
			// violating answer is recorded but never advances the cursor:
			// the failing run.finished does.
			var cursor int64
			if r.keepOpen() && len(violations) == 0 {
				cursor = fr.ID
			}
			var answer *pending
			if resp.Answer != "" || len(resp.Deltas) == 0 || cursor != 0 {
				answer = &pending{"run.delta", map[string]any{"delta": resp.Answer, "frame_id": fr.FrameID, "final": true, "model_response": shape}, key(call, "a"), cursor, fr.Trace}
			}
			if answer != nil && (len(violations) > 0 || cursor != 0) {
				if _, err := r.appendAll(ctx, *answer); err != nil {
					return r.fail(err), true
				}
			}
			if len(violations) > 0 {
				return r.outputViolation(ctx, fr, violations), true
			}
			if cursor != 0 {
				return Result{}, false
			}
			var extra map[string]any
			if schema != nil {
				extra = map[string]any{"output_schema": map[string]any{"valid": true}}
			}
			// The answer and run.finished commit together.
			return r.finishAfter(ctx, answer, store.StatusSucceeded, "completed", "input answered", fr, extra), true
		}
		assistant := provider.Message{Role: "assistant", ToolCalls: resp.ToolCalls}
		msgs = append(msgs, assistant)
		for j, tc := range resp.ToolCalls {
			callID := fmt.Sprintf("%s.%s", fr.FrameID, tc.ID)
			res, err := r.toolCall(turnCtx, ctx, fr, tc, callID, prior, key(call, fmt.Sprintf("t%d", j)), pol, shape)
			if err != nil {
				return r.fail(err), true
			}
			if res.Status == tools.Canceled {
				if cr, canceled := r.canceledDuringTurn(ctx, fr); canceled {
					return cr, true
				}
			}
			history = append(history, NewToolCallRecord(tc.Name, tc.Input, res))
			if det, hit := DetectLoop(history, r.e.cfg.Loop); hit {
				if _, err := r.append(ctx, "run.loop_detected", map[string]any{"frame_id": fr.FrameID, "tool_call_id": callID,
					"detector": det.Detector, "level": det.Level, "count": det.Count, "message": det.Message,
					"reason_code": LoopReasonCode}, key(call, fmt.Sprintf("t%d", j))+":loop", 0, fr.Trace); err != nil {
					return r.fail(err), true
				}
				r.e.d.Metrics.ParityFailure("loop", det.Detector, "runs.executor")
				return r.finish(ctx, store.StatusFailed, "loop_detected", det.Message, fr,
					map[string]any{"reason_code": LoopReasonCode, "detector": det.Detector}), true
			}
			content, _ := json.Marshal(res)
			msgs = append(msgs, provider.Message{Role: "tool", ToolCallID: tc.ID, Content: string(content)})
		}
	}
	return r.finish(ctx, store.StatusFailed, "loop_detected", fmt.Sprintf("more than %d model calls in one turn", r.e.cfg.MaxModelCalls), fr, nil), true
}

// StepKey is the idempotency key of a step of model call `call` (1-based)
// of the turn of frameID: "f:<frame_id>:m<call>:<step>". Steps: d<i> (the
// i-th delta), a (the answer), t<j>:call / t<j>:result / t<j>:policy /
// t<j>:budget_exhausted / t<j>:loop (the j-th tool call it requested),
// fallback (provider.fallback), policy / budget_exhausted (a spend denial
// of the call itself). Spend reservations use the step "spend" (and
// t<j>:spend) as their call key.
func StepKey(frameID string, call int, step string) string {
	return fmt.Sprintf("f:%s:m%d:%s", frameID, call, step)
}

// ParseStepKey reads a key written by StepKey for frameID (the event's
// payload frame_id, which may itself contain ':'); ok=false for any other
// key.
func ParseStepKey(key, frameID string) (call int, step string, ok bool) {
	rest, found := strings.CutPrefix(key, "f:"+frameID+":m")
	if !found {
		return 0, "", false
	}
	num, step, found := strings.Cut(rest, ":")
	if !found || num == "" || len(num) > 9 {
		return 0, "", false
	}
	for _, c := range num {
		if c < '0' || c > '9' {
			return 0, "", false
		}
		call = call*10 + int(c-'0')
	}
	if call == 0 || step == "" {
		return 0, "", false
	}
	return call, step, true
}

func (r *runner) keepOpen() bool {
	var o runOptions
	_ = json.Unmarshal(r.run_.Metadata, &o)
	return o.KeepOpen
}

// replayResponse rebuilds model call k's response from the events a previous
// execution appended; ok=false when the call left no trace.
func replayResponse(prior map[string]store.Event, prefix string) (provider.Response, bool) {
	var resp provider.Response
	found := false
	for i := 0; ; i++ {
		ev, ok := prior[fmt.Sprintf("%sd%d", prefix, i)]
		if !ok {
			break
		}
		found = true
		var p struct {
			Delta string `json:"delta"`
		}
		_ = json.Unmarshal(ev.Payload, &p)
		resp.Deltas = append(resp.Deltas, p.Delta)
	}
	for j := 0; ; j++ {
		ev, ok := prior[fmt.Sprintf("%st%d:call", prefix, j)]
		if !ok {
			break
		}
		found = true
		var p struct {
			ToolCallID string          `json:"tool_call_id"`
			ModelID    string          `json:"model_call_id"`
			ToolName   string          `json:"tool_name"`
			Input      json.RawMessage `json:"input"`
		}
		_ = json.Unmarshal(ev.Payload, &p)
		resp.ToolCalls = append(resp.ToolCalls, provider.ToolCall{ID: p.ModelID, Name: p.ToolName, Input: p.Input})
	}
	var shape *responseShape
	if ev, ok := prior[prefix+"a"]; ok {
		found = true
		var p struct {
			Delta string         `json:"delta"`
			Shape *responseShape `json:"model_response"`
		}
		_ = json.Unmarshal(ev.Payload, &p)
		resp.Answer = p.Delta
		shape = p.Shape
	}
	if !found {
		return resp, false
	}
	for k, ev := range prior {
		if shape != nil || !strings.HasPrefix(k, prefix) {
			continue
		}
		var p struct {
			Shape *responseShape `json:"model_response"`
		}
		if json.Unmarshal(ev.Payload, &p) == nil && p.Shape != nil {
			shape = p.Shape
		}
	}
	// A response cut short by a crash is not a response: the caller asks
	// the model again, and the events already appended replay by key.
	if shape != nil && (len(resp.Deltas) != shape.Deltas || len(resp.ToolCalls) != shape.ToolCalls) {
		return provider.Response{}, false
	}
	return resp, true
}

// responseShape is the size of a model response, recorded on its events.
type responseShape struct {
	Deltas    int `json:"deltas"`
	ToolCalls int `json:"tool_calls"`
}

// modelCall calls the run's provider through its circuit breaker, falling
// back (and recording provider.fallback) while the primary's breaker is open.
func (r *runner) modelCall(ctx context.Context, fr store.Frame, spec ProviderSpec, req provider.Request, fallbackKey string) (provider.Response, string, error) {
	var resp provider.Response
	used, fellBack, reason, err := r.e.d.Breakers.Call(ctx, spec.primary(), spec.Fallback, func(ctx context.Context, name string) error {
		p, err := r.e.d.Providers(r.run_, name)
		if err != nil {
			return err
		}
		ctx, span := r.e.d.Tracer.Start(ctx, "model.call")
		span.SetAttributes(attribute.String("provider", name))
		defer span.End()
		resp, err = p.Complete(ctx, req)
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		return err
	})
	if fellBack {
		if _, aerr := r.append(ctx, "provider.fallback", map[string]any{"from": spec.primary(), "to": used, "reason": reason, "frame_id": fr.FrameID}, fallbackKey, 0, fr.Trace); aerr != nil {
			return resp, used, aerr
		}
	}
	if errors.Is(err, breaker.ErrCircuitOpen) {
		return resp, used, &provider.Error{Class: breaker.ReasonCircuitOpen, Err: err}
	}
	return resp, used, err
}

// toolPolicy reads the run's `tools` list: tool names (globs and groups
// allowed) the run may call, plus objects {"allow":[...],"deny":[...]}; an
// empty list allows every registered tool. Deny wins.
func (r *runner) toolPolicy() policy.Policy {
	var p policy.Policy
	var items []json.RawMessage
	if len(r.run_.Tools) == 0 || json.Unmarshal(r.run_.Tools, &items) != nil {
		return p // validated when the run was created
	}
	for _, it := range items {
		var name string
		if json.Unmarshal(it, &name) == nil {
			p.Allow = append(p.Allow, name)
			continue
		}
		var obj policy.Policy
		if json.Unmarshal(it, &obj) == nil {
			p.Allow = append(p.Allow, obj.Allow...)
			p.Deny = append(p.Deny, obj.Deny...)
		}
	}
	return p
}

// toolCall appends tool.call, runs the tool (unless a previous execution
// already recorded its result) and appends exactly one tool.result.
func (r *runner) toolCall(turnCtx, ctx context.Context, fr store.Frame, tc provider.ToolCall, callID string, prior map[string]store.Event, key string, pol policy.Policy, shape map[string]any) (tools.Result, error) {
	if ev, ok := prior[key+":result"]; ok {
		var res tools.Result
		_ = json.Unmarshal(ev.Payload, &res)
		return res, nil
	}
	input := tc.Input
	if len(input) == 0 {
		input = json.RawMessage("{}")
	}
	var inputDoc any
	_ = json.Unmarshal(input, &inputDoc)
	if _, err := r.append(ctx, "tool.call", map[string]any{"tool_call_id": callID, "model_call_id": tc.ID, "tool_name": tc.Name, "input": inputDoc, "frame_id": fr.FrameID, "model_response": shape}, key+":call", 0, fr.Trace); err != nil {
		return tools.Result{}, err
	}
	if allowed, reason := pol.Decide(tc.Name); !allowed {
		return r.deniedTool(ctx, fr, tc, callID, key, reason)
	}
	r.e.d.Metrics.PolicyDecision("allowed", "allowed")
	cost := r.toolCost(tc.Name)
	dec, err := r.e.d.Spend.Authorize(ctx, r.run_, key+":spend", cost)
	if err != nil {
		return tools.Result{}, err
	}
	if !dec.Allowed {
		return r.spendDeniedTool(ctx, fr, tc, callID, key, dec)
	}
	var (
		res tools.Result
		d   time.Duration
		ran bool
	)
	runTool := func(ctx context.Context) tools.Result {
		ran = true
		r.e.d.Metrics.ToolLifecycle(tc.Name, "start", "ok")
		tctx, span := r.e.d.Tracer.Start(ctx, "tool.call")
		span.SetAttributes(attribute.String("tool", tc.Name), attribute.String("tool_call_id", callID))
		start := time.Now()
		res := r.e.d.Tools.Run(tctx, tc.Name, input)
		d = time.Since(start)
		if res.Status != tools.Succeeded {
			span.SetStatus(codes.Error, res.ErrorClass)
		}
		span.End()
		return res
	}
	prov := r.toolProvider(tc.Name)
	if prov == "" {
		res = runTool(turnCtx)
	} else {
		// One breaker per tool provider, in the registry of the model
		// providers. No fallback: a tool has no equivalent elsewhere.
		err := r.e.d.Breakers.Do(turnCtx, prov, func(ctx context.Context) error {
			res = runTool(ctx)
			return toolBreakerOutcome(res)
		})
		if !ran {
			if errors.Is(err, breaker.ErrCircuitOpen) {
				res = tools.Result{Status: tools.Failed, ErrorClass: breaker.ReasonCircuitOpen, Error: fmt.Sprintf("tool %s: %v", tc.Name, err)}
				r.e.d.Metrics.ToolLifecycle(tc.Name, "run", "rejected")
			} else {
				res = tools.Result{Status: tools.Canceled, ErrorClass: "canceled", Error: "run canceled"}
				r.e.d.Metrics.ToolLifecycle(tc.Name, "run", tools.Canceled)
			}
		}
	}
	// Settled with ctx, not turnCtx: a canceled call still returns its sats.
	if res.Status == tools.Succeeded {
		if err := r.e.d.Spend.Commit(ctx, dec, cost); err != nil {
			return res, err
		}
	} else {
		r.releaseSpend(ctx, dec)
	}
	if ran {
		r.e.d.Metrics.ToolDuration(tc.Name, res.Status, d)
		r.e.d.Metrics.ToolLifecycle(tc.Name, "terminal", res.Status)
	}
	if strings.HasPrefix(res.ErrorClass, "ssrf_block.") {
		r.e.d.Metrics.ParityFailure("network", res.ErrorClass, "tools.network")
	}
	payload := map[string]any{"tool_call_id": callID, "tool_name": tc.Name, "status": res.Status, "frame_id": fr.FrameID, "duration_ms": d.Milliseconds()}
	if prov != "" {
		payload["provider"] = prov
	}
	if cost > 0 {
		payload["cost_sats"] = cost
		if res.Status != tools.Succeeded {
			payload["cost_sats"] = 0 // released: a failed call is not charged
		}
	}
	if res.Output != nil {
		var out any
		_ = json.Unmarshal(res.Output, &out)
		payload["output"] = out
	}
	if res.ErrorClass != "" {
		payload["error_class"] = res.ErrorClass
		payload["error"] = res.Error
	}
	if _, err := r.append(ctx, "tool.result", payload, key+":result", 0, fr.Trace); err != nil {
		return res, err
	}
	return res, nil
}

// ReasonOutputSchemaViolation is the reason_class of a run whose final
// answer does not match its output_schema.
const ReasonOutputSchemaViolation = "output_schema_violation"

// maxViolations bounds the schema errors recorded on run.finished.
const maxViolations = 5

// outputSchemaLoader refuses every external $ref: resolving file:// or
// http(s):// references on a run's behalf would be a read or SSRF hole
// (the API refuses them at create time; runs written straight to the store
// get the same rule here).
type outputSchemaLoader struct{}

func (outputSchemaLoader) Load(u string) (any, error) {
	return nil, fmt.Errorf("external $ref %q is not allowed", u)
}

// CompileOutputSchema compiles a run's output_schema (JSON Schema, draft
// 2020-12 unless $schema says otherwise, no external references). nil
// schema and nil error when the run has none.
func CompileOutputSchema(raw json.RawMessage) (*jsonschema.Schema, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || string(t) == "null" {
		return nil, nil
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(t))
	if err != nil {
		return nil, fmt.Errorf("output_schema: not JSON: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.UseLoader(outputSchemaLoader{})
	c.DefaultDraft(jsonschema.Draft2020)
	const loc = "mem:///output_schema.json"
	if err := c.AddResource(loc, doc); err != nil {
		return nil, fmt.Errorf("output_schema: %w", err)
	}
	s, err := c.Compile(loc)
	if err != nil {
		// One line: the compiler's message spans several.
		msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), loc, "output_schema")), " ")
		return nil, fmt.Errorf("output_schema: does not compile: %s", capText(msg, 300))
	}
	return s, nil
}

// FinalAnswer is the text of a turn's last model response that the
// output_schema applies to: its answer, or what it said when it gave none.
func FinalAnswer(resp provider.Response) string {
	if resp.Answer != "" {
		return resp.Answer
	}
	return strings.Join(resp.Deltas, "")
}

// ValidateOutput checks answer (JSON text) against s. It returns nothing for
// a valid answer, else at most maxViolations one-line messages naming where
// the answer fails ("at '/n': ...").
func ValidateOutput(s *jsonschema.Schema, answer string) []string {
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(answer))
	if err != nil {
		return []string{capText("final answer is not JSON: "+err.Error(), 300)}
	}
	err = s.Validate(doc)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return []string{capText(err.Error(), 300)}
	}
	var out []string
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(out) >= maxViolations {
			return
		}
		if len(e.Causes) == 0 {
			// The leaf alone: the wrapped error repeats the schema location.
			leaf := &jsonschema.ValidationError{InstanceLocation: e.InstanceLocation, ErrorKind: e.ErrorKind}
			out = append(out, capText(leaf.Error(), 300))
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(ve)
	if len(out) == 0 {
		out = []string{capText(ve.Error(), 300)}
	}
	return out
}

func capText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// outputViolation fails the run for a final answer that does not match the
// run's output_schema (or a schema that cannot be used): a workflow parity
// failure, and run.finished carries the errors.
func (r *runner) outputViolation(ctx context.Context, fr store.Frame, violations []string) Result {
	r.e.d.Metrics.ParityFailure(telemetry.ParityWorkflow, ReasonOutputSchemaViolation, "workflow")
	return r.finish(ctx, store.StatusFailed, ReasonOutputSchemaViolation, "final answer does not match output_schema: "+violations[0], fr,
		map[string]any{"output_schema": map[string]any{"valid": false, "errors": violations}})
}

// watchCancel returns a context canceled when the run moves to canceling.
func (r *runner) watchCancel(ctx context.Context) (context.Context, func()) {
	turnCtx, cancel := context.WithCancel(ctx)
	if r.e.d.Hub == nil {
		return turnCtx, cancel
	}
	// Only another writer's event can move the run to canceling: the
	// runner's own appends and frame notices do not wake the watcher, or
	// every delta would cost a read of the run.
	wake, unsub := r.e.d.Hub.SubscribeFiltered(r.lease.RunID, func(n store.Notice) bool {
		return n.Kind == store.NoticeEvent && !r.appended(n.Seq)
	})
	go func() {
		for {
			select {
			case <-turnCtx.Done():
				return
			case <-wake:
				// Not turnCtx: the end of the turn must not abort the read
				// mid-flight, which would cost the pool its connection.
				qctx, qcancel := context.WithTimeout(context.WithoutCancel(turnCtx), 10*time.Second)
				run, err := r.e.d.Store.GetRun(qctx, r.lease.RunID)
				qcancel()
				if err == nil && (run.Status == store.StatusCanceling || store.Terminal(run.Status)) {
					cancel()
					return
				}
			}
		}
	}()
	return turnCtx, func() { unsub(); cancel() }
}

// canceledDuringTurn finishes the run as canceled when a cancel request
// interrupted the turn.
func (r *runner) canceledDuringTurn(ctx context.Context, fr store.Frame) (Result, bool) {
	if ctx.Err() != nil {
		return Result{}, false
	}
	run, err := r.e.d.Store.GetRun(ctx, r.lease.RunID)
	if err != nil || run.Status != store.StatusCanceling {
		return Result{}, false
	}
	return r.finishCanceled(ctx, 0, "", 0), true
}

// deniedTool records a policy denial: policy.decision, then a failed
// tool.result the model sees, without running the tool.
func (r *runner) deniedTool(ctx context.Context, fr store.Frame, tc provider.ToolCall, callID, key, reason string) (tools.Result, error) {
	r.e.d.Metrics.PolicyDecision("denied", reason)
	r.e.d.Metrics.ParityFailure("policy", reason, "tools.policy")
	if _, err := r.append(ctx, "policy.decision", map[string]any{"decision": "denied", "reason": reason, "tool_name": tc.Name, "tool_call_id": callID, "frame_id": fr.FrameID}, key+":policy", 0, fr.Trace); err != nil {
		return tools.Result{}, err
	}
	// The tool never ran: a denial is a policy signal, not a tool failure.
	res := tools.Result{Status: tools.Failed, ErrorClass: reason, Error: "tool " + tc.Name + " denied by policy"}
	_, err := r.append(ctx, "tool.result", map[string]any{"tool_call_id": callID, "tool_name": tc.Name, "status": res.Status, "error_class": reason, "error": res.Error, "frame_id": fr.FrameID}, key+":result", 0, fr.Trace)
	return res, err
}

// toolProvider is the breaker key of a tool: its Provider() (manifest
// tools), "" for tools that call no provider (built-ins).
func (r *runner) toolProvider(name string) string {
	if t, ok := r.e.d.Tools.Lookup(name); ok {
		if p, ok := t.(interface{ Provider() string }); ok {
			return p.Provider()
		}
	}
	return ""
}

// errToolProvider marks a tool result that says the provider is unhealthy.
var errToolProvider = errors.New("tool provider failure")

// toolBreakerOutcome is what a tool result tells the provider's breaker.
// Only the provider's own failures count: a timeout, a 5xx, a connection
// error or an unreadable answer. Bad input from the model, a 4xx or an
// egress block says nothing about the provider's health and counts as a
// success (the provider answered, or was never asked); a canceled run is
// excluded from the counts altogether.
func toolBreakerOutcome(res tools.Result) error {
	switch {
	case res.Status == tools.Canceled:
		return context.Canceled
	case res.Status == tools.Timeout:
		return fmt.Errorf("%w: timeout", errToolProvider)
	case res.Status == tools.Failed:
		switch res.ErrorClass {
		case "tool_http_5xx", "tool_http_error", "tool_invalid_output":
			return fmt.Errorf("%w: %s", errToolProvider, res.ErrorClass)
		}
	}
	return nil
}

// toolCost is a tool's price per call: the larger of its manifest cost
// (built-in tools cost 0) and the run's metadata tool_costs entry.
func (r *runner) toolCost(name string) int64 {
	var cost int64
	if t, ok := r.e.d.Tools.Lookup(name); ok {
		if priced, ok := t.(interface{ Cost() int64 }); ok {
			cost = priced.Cost()
		}
	}
	var o runOptions
	_ = json.Unmarshal(r.run_.Metadata, &o)
	return max(cost, o.ToolCosts[name])
}

// releaseSpend returns a failed call's reservation. A failure here only
// delays the return until the run finishes (Spend.ReleaseRun in finish).
func (r *runner) releaseSpend(ctx context.Context, dec spend.Decision) {
	if err := r.e.d.Spend.Release(ctx, dec); err != nil {
		r.e.d.Logger.Warn("spend: release failed", "run_id", r.lease.RunID, "call_key", dec.CallKey, "err", err)
	}
}

// appendSpendDenial appends policy.decision and, for budget,
// policy.budget_exhausted; the Guard already counted the denial.
func (r *runner) appendSpendDenial(ctx context.Context, fr store.Frame, dec spend.Decision, keyPrefix string, extra map[string]any) error {
	payload := dec.Payload()
	payload["frame_id"] = fr.FrameID
	for k, v := range extra {
		payload[k] = v
	}
	if _, err := r.append(ctx, "policy.decision", payload, keyPrefix+"policy", 0, fr.Trace); err != nil {
		return err
	}
	if dec.BudgetExhausted() {
		if _, err := r.append(ctx, "policy.budget_exhausted", payload, keyPrefix+"budget_exhausted", 0, fr.Trace); err != nil {
			return err
		}
	}
	return nil
}

// deniedModel records a spend denial of a model call and fails the run with
// the reason as its reason_class.
func (r *runner) deniedModel(ctx context.Context, fr store.Frame, dec spend.Decision, keyPrefix string) Result {
	if err := r.appendSpendDenial(ctx, fr, dec, keyPrefix, map[string]any{"call": "model"}); err != nil {
		return r.fail(err)
	}
	return r.finish(ctx, store.StatusFailed, dec.Reason, "model call denied by spend policy: "+dec.Detail, fr, nil)
}

// spendDeniedTool records a spend denial of a tool call and returns a failed
// tool.result (error_class = the reason) to the model without running the
// tool. Like deniedTool, the tool never ran: no tool lifecycle metric.
func (r *runner) spendDeniedTool(ctx context.Context, fr store.Frame, tc provider.ToolCall, callID, key string, dec spend.Decision) (tools.Result, error) {
	if err := r.appendSpendDenial(ctx, fr, dec, key+":", map[string]any{"call": "tool", "tool_name": tc.Name, "tool_call_id": callID}); err != nil {
		return tools.Result{}, err
	}
	res := tools.Result{Status: tools.Failed, ErrorClass: dec.Reason, Error: "tool " + tc.Name + " denied by spend policy: " + dec.Detail}
	_, err := r.append(ctx, "tool.result", map[string]any{"tool_call_id": callID, "tool_name": tc.Name, "status": res.Status, "error_class": res.ErrorClass, "error": res.Error, "frame_id": fr.FrameID}, key+":result", 0, fr.Trace)
	return res, err
}
