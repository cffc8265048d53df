// Package receipts builds a run's receipt from its event log: the model
// calls and the provider each used (with the fallback taken while a breaker
// was open), the tool calls with status, duration and cost, the policy
// decisions, the budget before and after, loop detection, the structured
// output check, the terminal status, and the hash chain verified end to end.
// The receipt carries receipt_hash, the sha256 of its own canonical JSON
// without generated_at and receipt_hash, so that a copy can be checked
// without the runtime.
//
// Everything comes from the log and the spend store, never from executor
// memory: a receipt of a run that crashed and resumed on another node is
// the same as if it had run on one. The original computed its receipts'
// hashes with Erlang's term_to_binary, which no other language reproduces;
// this one is canonical JSON (runs.Canonical), as the rest of the runtime.
package receipts

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/oaruntime/oaruntime/internal/executor"
	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/spend"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// Version is the receipt format.
const Version = "oaruntime.receipt.v1"

// Parity failure of a receipt whose hash chain does not verify.
const (
	ReasonVerificationFailed = "receipt_verification_failed"
	Component                = "receipts"
)

// Model call statuses.
const (
	CallSucceeded   = "succeeded"
	CallFailed      = "failed"
	CallDenied      = "denied"      // refused by the spend policy, never sent
	CallInProgress  = "in_progress" // started, no outcome recorded yet (the run is still going)
	CallInterrupted = "interrupted" // no outcome, and the run ended (canceled during the call)
)

// ToolPending is the status of a tool call without a result yet.
const ToolPending = "pending"

// Receipt is a run's receipt.
type Receipt struct {
	ReceiptVersion string `json:"receipt_version"`
	// ReceiptID names this receipt of this state of the log:
	// "rcpt_" + 24 hex of sha256(run_id|head_hash).
	ReceiptID string `json:"receipt_id"`
	RunID     string `json:"run_id"`
	ThreadID  string `json:"thread_id"`

	Status      string     `json:"status"`
	ReasonClass string     `json:"reason_class,omitempty"`
	Reason      string     `json:"reason,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	TerminalAt  *time.Time `json:"terminal_at,omitempty"`

	Provider        ProviderInfo     `json:"provider"`
	ModelCalls      []ModelCall      `json:"model_calls"`
	Fallbacks       []Fallback       `json:"fallbacks"`
	ToolCalls       []ToolCall       `json:"tool_calls"`
	PolicyDecisions []PolicyDecision `json:"policy_decisions"`
	// Budget is the run's spend authorization before its first priced call
	// and now; null when the run has none.
	Budget *spend.Budget `json:"budget"`
	// Spend totals the run's reservations (what was really charged).
	Spend         *SpendTotals  `json:"spend,omitempty"`
	LoopDetection LoopDetection `json:"loop_detection"`
	OutputSchema  OutputCheck   `json:"output_schema"`
	// ExecutorLost counts the times the janitor took the run from a dead
	// executor (run.executor_lost events); the run resumed each time.
	ExecutorLost int `json:"executor_lost"`

	EventCount        int    `json:"event_count"`
	LatestSeq         int64  `json:"latest_seq"`
	RetentionFloorSeq int64  `json:"retention_floor_seq"`
	HeadHash          string `json:"head_hash"`
	// Verification is the hash chain recomputed over every kept event.
	Verification runs.VerifyResult `json:"verification"`

	ReceiptHash string    `json:"receipt_hash"`
	GeneratedAt time.Time `json:"generated_at"`
}

// ProviderInfo is the run's provider configuration.
type ProviderInfo struct {
	Name     string `json:"name"`
	Model    string `json:"model,omitempty"`
	Fallback string `json:"fallback,omitempty"`
	CostSats int64  `json:"cost_sats,omitempty"`
}

// Fallback is one model call diverted from an open breaker's provider.
type Fallback struct {
	From      string `json:"from"`
	To        string `json:"to"`
	Reason    string `json:"reason"`
	FrameID   string `json:"frame_id,omitempty"`
	ModelCall int    `json:"model_call,omitempty"`
	Seq       int64  `json:"seq,omitempty"`
}

// ModelCall is one model call of an agent turn.
type ModelCall struct {
	FrameID  string    `json:"frame_id"`
	Call     int       `json:"call"` // 1-based within the frame's turn
	Provider string    `json:"provider"`
	Fallback *Fallback `json:"fallback,omitempty"`
	Status   string    `json:"status"`
	// ReasonClass explains a failed or denied call.
	ReasonClass string `json:"reason_class,omitempty"`
	Deltas      int    `json:"deltas"`
	ToolCalls   int    `json:"tool_calls"`
	Answered    bool   `json:"answered"`
	CostSats    int64  `json:"cost_sats"`
	FirstSeq    int64  `json:"first_seq"`
}

// ToolCall is one tool call.
type ToolCall struct {
	ToolCallID string `json:"tool_call_id"`
	ToolName   string `json:"tool_name"`
	FrameID    string `json:"frame_id,omitempty"`
	ModelCall  int    `json:"model_call,omitempty"`
	Provider   string `json:"provider,omitempty"`
	Status     string `json:"status"`
	ErrorClass string `json:"error_class,omitempty"`
	DurationMS int64  `json:"duration_ms"`
	CostSats   int64  `json:"cost_sats"`
	CallSeq    int64  `json:"call_seq"`
	ResultSeq  int64  `json:"result_seq,omitempty"`
}

// PolicyDecision is one recorded policy decision (the log records
// denials; allowed priced calls show as charged reservations).
type PolicyDecision struct {
	Seq             int64  `json:"seq"`
	Decision        string `json:"decision"`
	Reason          string `json:"reason"`
	Policy          string `json:"policy"` // spend or tools
	Call            string `json:"call"`   // model or tool
	ToolName        string `json:"tool_name,omitempty"`
	ToolCallID      string `json:"tool_call_id,omitempty"`
	FrameID         string `json:"frame_id,omitempty"`
	AmountSats      int64  `json:"amount_sats,omitempty"`
	AuthorizationID string `json:"authorization_id,omitempty"`
	BudgetExhausted bool   `json:"budget_exhausted,omitempty"`
}

// SpendTotals sums the run's reservations.
type SpendTotals struct {
	ChargedSats      int64 `json:"charged_sats"`
	ModelSats        int64 `json:"model_sats"`
	ToolSats         int64 `json:"tool_sats"`
	ReservedSats     int64 `json:"reserved_sats"` // still held (a call in flight)
	Reservations     int   `json:"reservations"`
	OpenReservations int   `json:"open_reservations"`
}

// LoopDetection is the run's loop detector finding, if any.
type LoopDetection struct {
	Detected   bool   `json:"detected"`
	Detector   string `json:"detector,omitempty"`
	Level      string `json:"level,omitempty"`
	Count      int    `json:"count,omitempty"`
	Message    string `json:"message,omitempty"`
	ToolCallID string `json:"tool_call_id,omitempty"`
	Seq        int64  `json:"seq,omitempty"`
}

// OutputCheck is the structured output result: Present when the run has an
// output_schema; Valid once a final answer was checked.
type OutputCheck struct {
	Present bool     `json:"present"`
	Valid   *bool    `json:"valid,omitempty"`
	Errors  []string `json:"errors,omitempty"`
}

// Hash is the receipt_hash of r: the lowercase hex sha256 of the canonical
// JSON of r without receipt_hash and generated_at.
func Hash(r Receipt) (string, error) {
	raw, err := json.Marshal(r)
	if err != nil {
		return "", fmt.Errorf("receipt hash: %w", err)
	}
	return HashJSON(raw)
}

// HashJSON is Hash over a receipt as JSON (as served), so that a client can
// check a receipt it stored without this package's types.
func HashJSON(raw []byte) (string, error) {
	// Numbers stay as written: a float64 round trip would change large ones.
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return "", fmt.Errorf("receipt hash: %w", err)
	}
	if m == nil {
		return "", errors.New("receipt hash: not a JSON object")
	}
	delete(m, "receipt_hash")
	delete(m, "generated_at")
	c, err := runs.Canonical(m)
	if err != nil {
		return "", fmt.Errorf("receipt hash: %w", err)
	}
	return runs.SHA256Hex(c), nil
}

// Events is what Build reads of the store.
type Events interface {
	ListEvents(ctx context.Context, runID string, afterSeq int64, limit int) ([]store.Event, error)
}

// reservationLister is the optional spend view of the store (both drivers).
type reservationLister interface {
	ListReservations(ctx context.Context, runID string) ([]store.Reservation, error)
}

// Builder builds receipts.
type Builder struct {
	st    Events
	guard *spend.Guard
	m     *telemetry.Metrics
	now   func() time.Time
}

// Option configures a Builder.
type Option func(*Builder)

// WithClock replaces time.Now for generated_at (tests).
func WithClock(now func() time.Time) Option { return func(b *Builder) { b.now = now } }

// WithSpend replaces the spend guard the budget is read through.
func WithSpend(g *spend.Guard) Option { return func(b *Builder) { b.guard = g } }

// NewBuilder returns a Builder over st. The budget is read through a guard
// over st when st is a spend store (both drivers are) unless WithSpend
// gives one. m (may be nil) counts failed verifications.
func NewBuilder(st Events, m *telemetry.Metrics, opts ...Option) *Builder {
	b := &Builder{st: st, m: m, now: time.Now}
	if ss, ok := st.(spend.Store); ok {
		// No metrics: reading a budget decides nothing.
		b.guard = spend.NewGuard(ss, nil)
	}
	for _, o := range opts {
		o(b)
	}
	return b
}

// pageSize of the event walk.
const pageSize = 1000

type callKey struct {
	frame string
	call  int
}

// Build reads run's log and spend state and returns its receipt. A chain
// that does not verify is not an error: the receipt says so (and it counts
// as a workflow parity failure); errors are the store's.
func (b *Builder) Build(ctx context.Context, run store.Run) (Receipt, error) {
	spec, _ := executor.ParseProviderSpec(run.Provider) // validated when the run was created
	rc := Receipt{
		ReceiptVersion: Version, RunID: run.RunID, ThreadID: run.ThreadID,
		Status: run.Status, ReasonClass: run.TerminalReasonClass, Reason: run.TerminalReason,
		CreatedAt: run.CreatedAt.UTC(), TerminalAt: utcPtr(run.TerminalAt),
		Provider:          ProviderInfo{Name: spec.Primary(), Model: spec.Model, Fallback: spec.Fallback, CostSats: spec.CostSats},
		ModelCalls:        []ModelCall{},
		Fallbacks:         []Fallback{},
		ToolCalls:         []ToolCall{},
		PolicyDecisions:   []PolicyDecision{},
		LatestSeq:         run.LatestSeq,
		RetentionFloorSeq: run.RetentionFloorSeq,
		OutputSchema:      OutputCheck{Present: len(run.OutputSchema) > 0 && string(run.OutputSchema) != "null"},
	}
	w := walker{rc: &rc, primary: spec.Primary(), calls: map[callKey]*ModelCall{}, tools: map[string]int{}}

	var chain *runs.Chain
	after := run.RetentionFloorSeq
	lastSeq := after
	intact := true
	for {
		evs, err := b.st.ListEvents(ctx, run.RunID, after, pageSize)
		if err != nil {
			return Receipt{}, fmt.Errorf("receipt of %s: list events: %w", run.RunID, err)
		}
		if chain == nil {
			// After retention the first kept event's prev_hash is the anchor:
			// nothing older exists to check it against.
			floor := ""
			if run.RetentionFloorSeq > 0 && len(evs) > 0 {
				floor = evs[0].PrevHash
			}
			chain = runs.NewChain(run.RunID, floor)
		}
		for _, ev := range evs {
			if intact {
				intact = chain.Add(runs.ChainEvent{Seq: ev.Seq, EventType: ev.EventType, Payload: ev.Payload, PrevHash: ev.PrevHash, EventHash: ev.EventHash})
				if intact {
					lastSeq = ev.Seq
				}
			}
			w.add(ev)
		}
		if len(evs) < pageSize {
			break
		}
		after = evs[len(evs)-1].Seq
	}
	ver := chain.Result()
	if ver.OK && lastSeq < run.LatestSeq {
		ver = runs.VerifyResult{OK: false, EventCount: ver.EventCount, HeadHash: ver.HeadHash, BrokenSeq: lastSeq + 1,
			Reason: fmt.Sprintf("%s: events missing up to latest_seq %d", runs.BrokenSeqGap, run.LatestSeq)}
	}
	rc.Verification = ver
	rc.EventCount = w.count
	rc.HeadHash = w.head
	w.finish(store.Terminal(run.Status))

	if b.guard != nil {
		bud, ok, err := b.guard.BudgetForRun(ctx, run)
		if err != nil {
			return Receipt{}, fmt.Errorf("receipt of %s: %w", run.RunID, err)
		}
		if ok {
			rc.Budget = &bud
		}
	}
	if rl, ok := b.st.(reservationLister); ok {
		rows, err := rl.ListReservations(ctx, run.RunID)
		if err != nil {
			return Receipt{}, fmt.Errorf("receipt of %s: list reservations: %w", run.RunID, err)
		}
		rc.Spend = w.applyReservations(rows)
	}

	rc.ReceiptID = "rcpt_" + runs.SHA256Hex([]byte(run.RunID + "|" + rc.HeadHash))[:24]
	h, err := Hash(rc)
	if err != nil {
		return Receipt{}, err
	}
	rc.ReceiptHash = h
	rc.GeneratedAt = b.now().UTC()
	if !ver.OK {
		b.m.ParityFailure(telemetry.ParityWorkflow, ReasonVerificationFailed, Component)
	}
	return rc, nil
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// walker folds events into the receipt.
type walker struct {
	rc       *Receipt
	primary  string
	count    int
	head     string
	calls    map[callKey]*ModelCall
	order    []callKey
	tools    map[string]int // tool_call_id -> index in rc.ToolCalls
	finished map[string]any // run.finished payload
}

// stepPayload is the union of the fields the receipt reads.
type stepPayload struct {
	FrameID     string   `json:"frame_id"`
	ToolCallID  string   `json:"tool_call_id"`
	ToolName    string   `json:"tool_name"`
	Provider    string   `json:"provider"`
	Status      string   `json:"status"`
	ErrorClass  string   `json:"error_class"`
	DurationMS  int64    `json:"duration_ms"`
	CostSats    int64    `json:"cost_sats"`
	From        string   `json:"from"`
	To          string   `json:"to"`
	Reason      string   `json:"reason"`
	Decision    string   `json:"decision"`
	Policy      string   `json:"policy"`
	Call        string   `json:"call"`
	AmountSats  int64    `json:"amount_sats"`
	AuthID      string   `json:"authorization_id"`
	Detector    string   `json:"detector"`
	Level       string   `json:"level"`
	Count       int      `json:"count"`
	Message     string   `json:"message"`
	ReasonClass string   `json:"reason_class"`
	FailedStep  string   `json:"failed_step"`
	ModelCall   int      `json:"model_call"`
	Final       bool     `json:"final"`
	Output      *outputP `json:"output_schema"`
}

type outputP struct {
	Valid  *bool    `json:"valid"`
	Errors []string `json:"errors"`
}

func (w *walker) call(frame string, n int, seq int64) *ModelCall {
	k := callKey{frame, n}
	if c, ok := w.calls[k]; ok {
		return c
	}
	c := &ModelCall{FrameID: frame, Call: n, Provider: w.primary, Status: CallInProgress, FirstSeq: seq}
	w.calls[k] = c
	w.order = append(w.order, k)
	return c
}

func (w *walker) add(ev store.Event) {
	w.count++
	w.head = ev.EventHash
	var p stepPayload
	_ = json.Unmarshal(ev.Payload, &p) // the log holds valid JSON; unknown shapes leave zero values
	var mc *ModelCall
	var step string
	if p.FrameID != "" {
		if n, s, ok := executor.ParseStepKey(ev.IdempotencyKey, p.FrameID); ok {
			mc, step = w.call(p.FrameID, n, ev.Seq), s
		}
	}
	switch ev.EventType {
	case "run.delta":
		if mc != nil {
			if step == "a" {
				mc.Answered = true
			} else {
				mc.Deltas++
			}
			mc.Status = CallSucceeded
		}
	case "provider.fallback":
		fb := Fallback{From: p.From, To: p.To, Reason: p.Reason, FrameID: p.FrameID, Seq: ev.Seq}
		if mc != nil {
			fb.ModelCall = mc.Call
			mc.Provider = p.To
			f := fb
			mc.Fallback = &f
		}
		w.rc.Fallbacks = append(w.rc.Fallbacks, fb)
	case "tool.call":
		tc := ToolCall{ToolCallID: p.ToolCallID, ToolName: p.ToolName, FrameID: p.FrameID, Status: ToolPending, CallSeq: ev.Seq}
		if mc != nil {
			tc.ModelCall = mc.Call
			mc.ToolCalls++
			mc.Status = CallSucceeded
		}
		w.tools[p.ToolCallID] = len(w.rc.ToolCalls)
		w.rc.ToolCalls = append(w.rc.ToolCalls, tc)
	case "tool.result":
		i, ok := w.tools[p.ToolCallID]
		if !ok {
			// A result without its call (a hand-written event): keep it visible.
			i = len(w.rc.ToolCalls)
			w.tools[p.ToolCallID] = i
			w.rc.ToolCalls = append(w.rc.ToolCalls, ToolCall{ToolCallID: p.ToolCallID, ToolName: p.ToolName, FrameID: p.FrameID})
		}
		tc := &w.rc.ToolCalls[i]
		tc.Status, tc.ErrorClass, tc.DurationMS, tc.CostSats, tc.Provider, tc.ResultSeq =
			p.Status, p.ErrorClass, p.DurationMS, p.CostSats, p.Provider, ev.Seq
	case "policy.decision":
		pd := PolicyDecision{Seq: ev.Seq, Decision: p.Decision, Reason: p.Reason, Policy: p.Policy, Call: p.Call,
			ToolName: p.ToolName, ToolCallID: p.ToolCallID, FrameID: p.FrameID, AmountSats: p.AmountSats, AuthorizationID: p.AuthID}
		if pd.Policy == "" {
			pd.Policy = "tools" // the tool allow/deny policy writes no policy field
		}
		if pd.Call == "" && pd.ToolName != "" {
			pd.Call = "tool"
		}
		if mc != nil && step == "policy" {
			// The spend denial of the model call itself: it never ran.
			mc.Status, mc.ReasonClass = CallDenied, p.Reason
		}
		w.rc.PolicyDecisions = append(w.rc.PolicyDecisions, pd)
	case "policy.budget_exhausted":
		for i := len(w.rc.PolicyDecisions) - 1; i >= 0; i-- {
			d := &w.rc.PolicyDecisions[i]
			if d.FrameID == p.FrameID && d.ToolCallID == p.ToolCallID && d.Reason == p.Reason {
				d.BudgetExhausted = true
				break
			}
		}
	case "run.loop_detected":
		w.rc.LoopDetection = LoopDetection{Detected: true, Detector: p.Detector, Level: p.Level, Count: p.Count,
			Message: p.Message, ToolCallID: p.ToolCallID, Seq: ev.Seq}
	case "run.executor_lost":
		w.rc.ExecutorLost++
	case "run.finished":
		if p.FailedStep == "model_call" && p.FrameID != "" && p.ModelCall > 0 {
			c := w.call(p.FrameID, p.ModelCall, ev.Seq)
			c.Status, c.ReasonClass = CallFailed, p.ReasonClass
			if p.Provider != "" {
				c.Provider = p.Provider
			}
		}
		if p.Output != nil {
			w.rc.OutputSchema.Valid = p.Output.Valid
			w.rc.OutputSchema.Errors = p.Output.Errors
		}
	}
}

// finish lists the model calls in log order. A call that left only its
// fallback event and no outcome was interrupted when the run has ended.
func (w *walker) finish(terminal bool) {
	slices.SortStableFunc(w.order, func(a, b callKey) int {
		return cmp.Compare(w.calls[a].FirstSeq, w.calls[b].FirstSeq)
	})
	for _, k := range w.order {
		c := *w.calls[k]
		if terminal && c.Status == CallInProgress {
			c.Status = CallInterrupted
		}
		w.rc.ModelCalls = append(w.rc.ModelCalls, c)
	}
}

// spendKind tells a reservation's call key apart: "...:m<N>:spend" is a
// model call's, "...:m<N>:t<J>:spend" a tool call's.
func spendKind(key string) string {
	rest, ok := strings.CutSuffix(key, ":spend")
	if !ok {
		return ""
	}
	i := strings.LastIndexByte(rest, ':')
	seg := rest[i+1:]
	if len(seg) < 2 || strings.Trim(seg[1:], "0123456789") != "" {
		return ""
	}
	switch seg[0] {
	case 'm':
		return "model"
	case 't':
		return "tool"
	}
	return ""
}

// applyReservations sets the model calls' costs from their reservations
// (call keys are the executor's step keys) and totals what was charged.
func (w *walker) applyReservations(rows []store.Reservation) *SpendTotals {
	t := &SpendTotals{Reservations: len(rows)}
	byKey := map[string]*ModelCall{}
	for i := range w.rc.ModelCalls {
		c := &w.rc.ModelCalls[i]
		byKey[executor.StepKey(c.FrameID, c.Call, "spend")] = c
	}
	for _, r := range rows {
		switch r.State {
		case store.ReservationCommitted:
			t.ChargedSats += r.CommittedSats
			if c, ok := byKey[r.CallKey]; ok {
				c.CostSats = r.CommittedSats
			}
			switch spendKind(r.CallKey) {
			case "model":
				t.ModelSats += r.CommittedSats
			case "tool":
				t.ToolSats += r.CommittedSats
			}
		case store.ReservationReserved:
			t.ReservedSats += r.AmountSats
			t.OpenReservations++
		}
	}
	return t
}
