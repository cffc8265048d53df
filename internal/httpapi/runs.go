package httpapi

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/google/uuid"

	"github.com/oaruntime/oaruntime/internal/auth"
	"github.com/oaruntime/oaruntime/internal/runs"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// Paging of GET .../events.
const (
	DefaultEventsLimit = 100
	MaxEventsLimit     = 1000
)

// storeError maps a store error to its answer. Sentinels are client errors;
// anything else is the store failing (logged, 503 so that clients retry).
func (a *api) storeError(r *http.Request, op string, err error) *APIError {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return errf(http.StatusNotFound, CodeNotFound, "run_id: run not found")
	case errors.Is(err, store.ErrSeqConflict):
		return errf(http.StatusConflict, CodeConflict, "expected_previous_seq: %v", err)
	case errors.Is(err, store.ErrIllegalTransition), errors.Is(err, runs.ErrIllegalTransition):
		return errf(http.StatusBadRequest, CodeIllegalTransition, "event_type: %v", err)
	case errors.Is(err, store.ErrConflict):
		return errf(http.StatusConflict, CodeConflict, "%v", err)
	case r.Context().Err() != nil:
		// The client went away; 499 (as nginx) keeps it out of the 5xx ratio.
		return errf(499, "client_closed", "request canceled")
	}
	a.logRequest(r.Context(), slog.LevelError, "store error", slog.String("op", op), slog.String("error", err.Error()))
	return errf(http.StatusServiceUnavailable, CodeUnavailable, "store unavailable, retry later (request id %s)", RequestID(r.Context()))
}

func claimsOf(r *http.Request) auth.Claims {
	c, _ := auth.ClaimsFrom(r.Context())
	return c
}

// loadRun validates the path's run_id, loads the run and checks that the
// caller may use it: a run-bound token must name it, the run must belong to
// the token's principal, and a thread-bound token must name its thread.
func (a *api) loadRun(r *http.Request) (store.Run, *APIError) {
	runID := r.PathValue("run_id")
	if aerr := checkID("run_id", runID, true); aerr != nil {
		return store.Run{}, aerr
	}
	infoFrom(r.Context()).runID = runID
	c := claimsOf(r)
	if c.RunID != "" && c.RunID != runID {
		return store.Run{}, errf(http.StatusForbidden, CodeForbidden, "claim mismatch for run_id")
	}
	run, err := a.store.GetRun(r.Context(), runID)
	if err != nil {
		return store.Run{}, a.storeError(r, "get_run", err)
	}
	if run.OwnerSub != c.Sub {
		return store.Run{}, errf(http.StatusForbidden, CodeForbidden, "run does not belong to principal")
	}
	if err := c.Bind(run.RunID, run.ThreadID); err != nil {
		return store.Run{}, errf(http.StatusForbidden, CodeForbidden, "%v", err)
	}
	return run, nil
}

// traceOf is the trace context stored with a frame or event: the server
// span's (so the executor and the projector continue this request's trace)
// and the request id.
func traceOf(ctx context.Context) store.TraceContext {
	tp, ts := telemetry.Inject(ctx)
	return store.TraceContext{TraceParent: tp, TraceState: ts, RequestID: RequestID(ctx)}
}

type runResponse struct {
	Run store.Run `json:"run"`
}

func (a *api) createRun(w http.ResponseWriter, r *http.Request) *APIError {
	var q createRunRequest
	if aerr := DecodeJSON(r, &q, false); aerr != nil {
		return aerr
	}
	if aerr := q.validate(); aerr != nil {
		return aerr
	}
	c := claimsOf(r)
	if q.RunID == "" {
		q.RunID = c.RunID // a run-bound token names the run to create
	}
	if q.RunID == "" {
		q.RunID = uuid.Must(uuid.NewV7()).String()
	}
	infoFrom(r.Context()).runID = q.RunID
	if err := c.Bind(q.RunID, q.ThreadID); err != nil {
		return errf(http.StatusForbidden, CodeForbidden, "%v", err)
	}
	in := store.CreateRunInput{
		RunID: q.RunID, ThreadID: q.ThreadID, OwnerSub: c.Sub,
		Provider: q.Provider, Tools: q.Tools, Authorization: q.Authorization, OutputSchema: q.OutputSchema, Metadata: q.Metadata,
	}
	if q.Input != nil {
		in.Input = &store.InsertFrameInput{FrameID: q.Input.FrameID, Type: q.Input.Type, Payload: q.Input.Payload, Trace: traceOf(r.Context())}
	}
	run, created, err := a.create(r.Context(), in)
	if err == nil && !created && run.OwnerSub != c.Sub {
		err = store.ErrConflict
	}
	if errors.Is(err, store.ErrConflict) {
		// The run's fields, or (for a replay) the input's frame_id with
		// another type or payload.
		return errf(http.StatusConflict, CodeConflict, "run_id: a run with this id exists with different fields, or input.frame_id is used with another type or payload")
	}
	if err != nil {
		return a.storeError(r, "create_run", err)
	}
	a.idents.put(run)
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	WriteJSON(w, status, runResponse{Run: run})
	return nil
}

// create stores a new run; one with input goes to this node's executor
// at once, leased at creation, when it has a free slot.
func (a *api) create(ctx context.Context, in store.CreateRunInput) (store.Run, bool, error) {
	if in.Input == nil || a.executor == nil {
		return a.store.CreateRun(ctx, in)
	}
	slot, ok := a.executor.Reserve(in.RunID)
	if !ok {
		return a.store.CreateRun(ctx, in)
	}
	g, created, err := a.store.CreateLeasedRun(ctx, in, slot.Owner(), slot.TTL())
	if err != nil || !created {
		slot.Cancel()
	} else {
		slot.Start(g) // a grant without a lease gives the slot back
	}
	if err != nil {
		return store.Run{}, false, err
	}
	return *g.Run, created, nil
}

func (a *api) getRun(w http.ResponseWriter, r *http.Request) *APIError {
	run, aerr := a.loadRun(r)
	if aerr != nil {
		return aerr
	}
	WriteJSON(w, http.StatusOK, runResponse{Run: run})
	return nil
}

// frameResponse keeps the original's camelCase idempotentReplay (DESIGN
// section 4) and adds the snake_case spelling the rest of the API uses.
type frameResponse struct {
	RunID             string `json:"run_id"`
	FrameID           string `json:"frame_id"`
	Status            string `json:"status"`
	IdempotentReplay  bool   `json:"idempotentReplay"`
	IdempotentReplay2 bool   `json:"idempotent_replay"`
}

func (a *api) postFrame(w http.ResponseWriter, r *http.Request) *APIError {
	run, aerr := a.loadRunIdent(r)
	if aerr != nil {
		return aerr
	}
	var q frameRequest
	if aerr := DecodeJSON(r, &q, false); aerr != nil {
		return aerr
	}
	if aerr := q.validate(); aerr != nil {
		return aerr
	}
	if q.ThreadID != "" && q.ThreadID != run.ThreadID {
		return invalid("thread_id", "is not the run's thread")
	}
	_, inserted, err := a.store.InsertFrame(r.Context(), store.InsertFrameInput{
		RunID: run.RunID, FrameID: q.FrameID, Type: q.Type, Payload: q.Payload, Trace: traceOf(r.Context()),
	})
	if errors.Is(err, store.ErrConflict) {
		return errf(http.StatusConflict, CodeConflict, "frame_id: already used with another type or payload")
	}
	if err != nil {
		return a.storeError(r, "insert_frame", err)
	}
	status := http.StatusAccepted
	if !inserted {
		status = http.StatusOK
	}
	WriteJSON(w, status, frameResponse{RunID: run.RunID, FrameID: q.FrameID, Status: "accepted", IdempotentReplay: !inserted, IdempotentReplay2: !inserted})
	return nil
}

type eventResponse struct {
	Event            store.Event `json:"event"`
	IdempotentReplay bool        `json:"idempotent_replay"`
}

func (a *api) postEvent(w http.ResponseWriter, r *http.Request) *APIError {
	run, aerr := a.loadRunIdent(r)
	if aerr != nil {
		return aerr
	}
	var q eventRequest
	if aerr := DecodeJSON(r, &q, false); aerr != nil {
		return aerr
	}
	if aerr := q.validate(); aerr != nil {
		return aerr
	}
	ev, replay, err := a.store.AppendEvent(r.Context(), store.AppendInput{
		RunID: run.RunID, EventType: q.EventType, Payload: q.Payload, IdempotencyKey: q.IdempotencyKey,
		ExpectedPreviousSeq: q.ExpectedPreviousSeq, Trace: traceOf(r.Context()),
	})
	if errors.Is(err, store.ErrSeqConflict) {
		latest := "unknown"
		if cur, gerr := a.store.GetRun(r.Context(), run.RunID); gerr == nil {
			latest = formatInt(cur.LatestSeq)
		}
		return errf(http.StatusConflict, CodeConflict, "expected_previous_seq: %d does not match the run's latest seq %s", *q.ExpectedPreviousSeq, latest)
	}
	if err != nil {
		return a.storeError(r, "append_event", err)
	}
	status := http.StatusCreated
	if replay {
		status = http.StatusOK
	}
	WriteJSON(w, status, eventResponse{Event: ev, IdempotentReplay: replay})
	return nil
}

type eventsResponse struct {
	Events     []store.Event `json:"events"`
	NextCursor *int64        `json:"next_cursor"` // null when no more events exist now
}

func (a *api) listEvents(w http.ResponseWriter, r *http.Request) *APIError {
	run, aerr := a.loadRun(r)
	if aerr != nil {
		return aerr
	}
	after, aerr := parseQueryInt(r, "after_seq", 0, 0)
	if aerr != nil {
		return aerr
	}
	limit, aerr := parseQueryInt(r, "limit", DefaultEventsLimit, MaxEventsLimit)
	if aerr != nil {
		return aerr
	}
	if limit < 1 {
		return invalid("limit", "must be between 1 and %d", MaxEventsLimit)
	}
	if after < run.RetentionFloorSeq {
		return errf(http.StatusGone, CodeStaleCursor, "after_seq: %d is below the retention floor %d; resync from seq %d", after, run.RetentionFloorSeq, run.RetentionFloorSeq)
	}
	evs, err := a.store.ListEvents(r.Context(), run.RunID, after, int(limit)+1)
	if err != nil {
		return a.storeError(r, "list_events", err)
	}
	out := eventsResponse{Events: evs}
	if len(evs) > int(limit) {
		out.Events = evs[:limit]
		next := out.Events[len(out.Events)-1].Seq
		out.NextCursor = &next
	}
	if out.Events == nil {
		out.Events = []store.Event{}
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

func (a *api) serveStream(w http.ResponseWriter, r *http.Request) *APIError {
	run, aerr := a.loadRun(r)
	if aerr != nil {
		return aerr
	}
	a.stream.Serve(w, r, run)
	return nil
}

type cancelResponse struct {
	RunID            string `json:"run_id"`
	Status           string `json:"status"`
	CancelRequested  bool   `json:"cancel_requested"`
	IdempotentReplay bool   `json:"idempotent_replay"`
}

// cancel appends run.cancel_requested once (its idempotency key makes
// concurrent first cancels converge on one event) and moves the run to
// canceling; the executor then finishes it canceled.
func (a *api) cancel(w http.ResponseWriter, r *http.Request) *APIError {
	run, aerr := a.loadRun(r)
	if aerr != nil {
		return aerr
	}
	var q cancelRequest
	if aerr := DecodeJSON(r, &q, true); aerr != nil {
		return aerr
	}
	if aerr := q.validate(); aerr != nil {
		return aerr
	}
	terminal := func(run store.Run) *APIError {
		WriteJSON(w, http.StatusOK, cancelResponse{RunID: run.RunID, Status: run.Status, CancelRequested: true, IdempotentReplay: true})
		return nil
	}
	if store.Terminal(run.Status) {
		return terminal(run)
	}
	reason := q.Reason
	if reason == "" {
		reason = "cancel requested"
	}
	payload, err := runs.Canonical(runs.Sanitize(map[string]any{
		"reason":       reason,
		"requested_by": claimsOf(r).Sub,
		"requested_at": a.now().UTC().Format(time.RFC3339Nano),
	}))
	if err != nil {
		return a.storeError(r, "cancel_payload", err)
	}
	_, replay, err := a.store.AppendEvent(r.Context(), store.AppendInput{
		RunID: run.RunID, EventType: "run.cancel_requested", Payload: payload,
		IdempotencyKey: "run.cancel_requested", Trace: traceOf(r.Context()),
	})
	if errors.Is(err, store.ErrIllegalTransition) || errors.Is(err, runs.ErrIllegalTransition) {
		// The run finished between the read and the append.
		if cur, gerr := a.store.GetRun(r.Context(), run.RunID); gerr == nil && store.Terminal(cur.Status) {
			return terminal(cur)
		}
	}
	if err != nil {
		return a.storeError(r, "cancel", err)
	}
	status := store.StatusCanceling
	if cur, gerr := a.store.GetRun(r.Context(), run.RunID); gerr == nil {
		status = cur.Status
	}
	code := http.StatusAccepted
	if replay {
		code = http.StatusOK
	}
	WriteJSON(w, code, cancelResponse{RunID: run.RunID, Status: status, CancelRequested: true, IdempotentReplay: replay})
	return nil
}

type verifyResponse struct {
	RunID string `json:"run_id"`
	runs.VerifyResult
	LatestSeq         int64         `json:"latest_seq"`
	RetentionFloorSeq int64         `json:"retention_floor_seq"`
	Receipt           *receiptCheck `json:"receipt,omitempty"`
}

// receiptCheck is the run's current receipt identity and, when the client
// sent the hash of a receipt it saved, whether that receipt still matches.
type receiptCheck struct {
	ReceiptID   string `json:"receipt_id"`
	ReceiptHash string `json:"receipt_hash"`
	Matches     *bool  `json:"matches,omitempty"`
}

// verify recomputes the run's hash chain page by page. After retention the
// first kept event's prev_hash is the trust anchor (the pruned events are
// gone, so nothing older can be checked).
func (a *api) verify(w http.ResponseWriter, r *http.Request) *APIError {
	saved := r.URL.Query().Get("receipt_hash")
	if saved != "" && !isHex64(saved) {
		return errf(http.StatusBadRequest, CodeInvalidRequest, "receipt_hash: want 64 lowercase hex characters")
	}
	run, aerr := a.loadRun(r)
	if aerr != nil {
		return aerr
	}
	var chain *runs.Chain
	after := run.RetentionFloorSeq
	lastSeq := after
	for {
		evs, err := a.store.ListEvents(r.Context(), run.RunID, after, MaxEventsLimit)
		if err != nil {
			return a.storeError(r, "list_events", err)
		}
		if chain == nil {
			floor := ""
			if run.RetentionFloorSeq > 0 && len(evs) > 0 {
				floor = evs[0].PrevHash
			}
			chain = runs.NewChain(run.RunID, floor)
		}
		intact := true
		for _, ev := range evs {
			if intact = chain.Add(runs.ChainEvent{Seq: ev.Seq, EventType: ev.EventType, Payload: ev.Payload, PrevHash: ev.PrevHash, EventHash: ev.EventHash}); !intact {
				break
			}
			lastSeq = ev.Seq
		}
		if !intact || len(evs) < MaxEventsLimit {
			break
		}
		after = evs[len(evs)-1].Seq
	}
	res := chain.Result()
	if res.OK && lastSeq < run.LatestSeq {
		// Events the run row counts are missing from the log's tail.
		res = runs.VerifyResult{OK: false, EventCount: res.EventCount, HeadHash: res.HeadHash, BrokenSeq: lastSeq + 1,
			Reason: runs.BrokenSeqGap + ": events missing up to latest_seq " + formatInt(run.LatestSeq)}
	}
	out := verifyResponse{RunID: run.RunID, VerifyResult: res, LatestSeq: run.LatestSeq, RetentionFloorSeq: run.RetentionFloorSeq}
	if a.receipt != nil {
		id, hash, err := a.receipt(r.Context(), run)
		if err != nil {
			return a.storeError(r, "receipt", err)
		}
		out.Receipt = &receiptCheck{ReceiptID: id, ReceiptHash: hash}
		if saved != "" {
			m := saved == hash
			out.Receipt.Matches = &m
		}
	} else if saved != "" {
		return errf(http.StatusBadRequest, CodeInvalidRequest, "receipt_hash: receipts are not served by this node")
	}
	WriteJSON(w, http.StatusOK, out)
	return nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
