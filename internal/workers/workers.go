// Package workers is the codex worker registry's HTTP API (DESIGN section
// 4): durable records of remote Codex sessions, their heartbeats and their
// append-only event logs, stored through store.WorkerStore. Routes returns
// the handlers for httpapi.Deps.Routes, which puts them behind the signed
// request check, request ids, tracing, metrics and the body limit.
//
// A worker belongs to the principal (the signed claims' sub) that created
// it: other principals get 403 on every route, unknown ids 404. Errors use
// httpapi's envelope; bad input is a 400 naming the field.
package workers

import (
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/oaruntime/oaruntime/internal/auth"
	"github.com/oaruntime/oaruntime/internal/httpapi"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// DefaultStaleAfter is how old the last heartbeat may be before a live
// worker reads as stale (the original's 120,000 ms).
const DefaultStaleAfter = 120 * time.Second

// Heartbeat states of a worker view. A stopped or failed worker reports its
// status instead.
const (
	HeartbeatFresh   = "fresh"
	HeartbeatStale   = "stale"
	HeartbeatMissing = "missing" // no heartbeat since create or reattach
)

// CodeIllegalTransition answers (409) a write the worker's status refuses:
// events or heartbeats after it stopped or failed.
const CodeIllegalTransition = httpapi.CodeIllegalTransition

// Paging of GET .../events.
const (
	DefaultEventsLimit = 100
	MaxEventsLimit     = 1000
)

type config struct {
	now        func() time.Time
	staleAfter time.Duration
}

// Option configures Routes.
type Option func(*config)

// WithClock replaces time.Now for heartbeat freshness (tests).
func WithClock(now func() time.Time) Option { return func(c *config) { c.now = now } }

// WithStaleAfter sets the heartbeat freshness window (default 120 s).
func WithStaleAfter(d time.Duration) Option { return func(c *config) { c.staleAfter = d } }

type handler struct {
	st  store.WorkerStore
	log *slog.Logger
	cfg config
}

// Routes returns the worker routes for httpapi.Deps.Routes. All are signed.
func Routes(st store.WorkerStore, log *slog.Logger, opts ...Option) []httpapi.Route {
	h := &handler{st: st, log: log, cfg: config{now: time.Now, staleAfter: DefaultStaleAfter}}
	for _, o := range opts {
		o(&h.cfg)
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.cfg.staleAfter <= 0 {
		h.cfg.staleAfter = DefaultStaleAfter
	}
	return []httpapi.Route{
		{Pattern: "POST /internal/v1/workers", Handler: h.fn(h.create)},
		{Pattern: "GET /internal/v1/workers/{worker_id}", Handler: h.fn(h.get)},
		{Pattern: "POST /internal/v1/workers/{worker_id}/heartbeat", Handler: h.fn(h.heartbeat)},
		{Pattern: "POST /internal/v1/workers/{worker_id}/events", Handler: h.fn(h.postEvent)},
		{Pattern: "GET /internal/v1/workers/{worker_id}/events", Handler: h.fn(h.listEvents)},
		{Pattern: "POST /internal/v1/workers/{worker_id}/stop", Handler: h.fn(h.stop)},
	}
}

func (h *handler) fn(f func(w http.ResponseWriter, r *http.Request) *httpapi.APIError) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if aerr := f(w, r); aerr != nil {
			httpapi.WriteError(w, aerr.Status, aerr.Code, aerr.Message)
		}
	})
}

func apiErr(status int, code, msg string) *httpapi.APIError {
	return &httpapi.APIError{Status: status, Code: code, Message: msg}
}

// HeartbeatState is the freshness of w's heartbeat at now: its status when
// stopped or failed, else missing, stale (older than staleAfter) or fresh.
func HeartbeatState(w store.Worker, now time.Time, staleAfter time.Duration) string {
	switch {
	case store.WorkerEnded(w.Status):
		return w.Status
	case w.LastHeartbeatAt == nil:
		return HeartbeatMissing
	case now.Sub(*w.LastHeartbeatAt) > staleAfter:
		return HeartbeatStale
	}
	return HeartbeatFresh
}

// view is a worker as the API shows it.
type view struct {
	store.Worker
	HeartbeatState string `json:"heartbeat_state"`
	// HeartbeatAgeMS is null without a heartbeat; never negative.
	HeartbeatAgeMS *int64 `json:"heartbeat_age_ms"`
}

func (h *handler) view(w store.Worker) view {
	now := h.cfg.now()
	v := view{Worker: w, HeartbeatState: HeartbeatState(w, now, h.cfg.staleAfter)}
	if w.LastHeartbeatAt != nil {
		age := max(now.Sub(*w.LastHeartbeatAt).Milliseconds(), 0)
		v.HeartbeatAgeMS = &age
	}
	return v
}

// storeError maps a store error to its answer: sentinels are client
// errors, anything else is the store failing (logged; 503 so clients retry).
func (h *handler) storeError(r *http.Request, op string, err error) *httpapi.APIError {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return apiErr(http.StatusNotFound, httpapi.CodeNotFound, "worker_id: worker not found")
	case errors.Is(err, store.ErrIllegalTransition):
		return apiErr(http.StatusConflict, CodeIllegalTransition, illegalMessage(err))
	case errors.Is(err, store.ErrConflict):
		return apiErr(http.StatusConflict, httpapi.CodeConflict, err.Error())
	case r.Context().Err() != nil:
		// The client went away; 499 (as nginx) keeps it out of the 5xx ratio.
		return apiErr(499, "client_closed", "request canceled")
	}
	rid := httpapi.RequestID(r.Context())
	h.log.LogAttrs(r.Context(), slog.LevelError, "worker store error",
		slog.String("op", op), slog.String("request_id", rid), slog.String("error", err.Error()))
	return apiErr(http.StatusServiceUnavailable, httpapi.CodeUnavailable, "store unavailable, retry later (request id "+rid+")")
}

// illegalMessage keeps the state machine's words and drops the driver's
// wrapping (which names tables and ids).
func illegalMessage(err error) string {
	msg := err.Error()
	if _, rest, ok := strings.Cut(msg, store.ErrIllegalTransition.Error()+": "); ok {
		return "worker: " + rest
	}
	return "worker: " + msg
}

// principal is the signed subject. Worker routes need an unbound token: a
// token bound to a run or thread was issued for that run only.
func principal(r *http.Request) (string, *httpapi.APIError) {
	c, ok := auth.ClaimsFrom(r.Context())
	if !ok || c.Sub == "" {
		return "", apiErr(http.StatusUnauthorized, httpapi.CodeUnauthorized, "missing runtime signature")
	}
	if c.RunID != "" || c.ThreadID != "" {
		return "", apiErr(http.StatusForbidden, httpapi.CodeForbidden, "token is bound to a run or thread; worker routes need an unbound token")
	}
	return c.Sub, nil
}

// load validates the path's worker_id, loads the worker and checks the
// caller owns it.
func (h *handler) load(r *http.Request) (store.Worker, *httpapi.APIError) {
	sub, aerr := principal(r)
	if aerr != nil {
		return store.Worker{}, aerr
	}
	id := r.PathValue("worker_id")
	if aerr := httpapi.CheckID("worker_id", id, true); aerr != nil {
		return store.Worker{}, aerr
	}
	w, err := h.st.GetWorker(r.Context(), id)
	if err != nil {
		return store.Worker{}, h.storeError(r, "get_worker", err)
	}
	if w.OwnerSub != sub {
		return store.Worker{}, apiErr(http.StatusForbidden, httpapi.CodeForbidden, "worker does not belong to principal")
	}
	return w, nil
}

// traceOf is stored with the events a request writes, so that the
// projector continues this request's trace.
func traceOf(r *http.Request) store.TraceContext {
	tp, ts := telemetry.Inject(r.Context())
	return store.TraceContext{TraceParent: tp, TraceState: ts, RequestID: httpapi.RequestID(r.Context())}
}

type workerResponse struct {
	Worker           view `json:"worker"`
	IdempotentReplay bool `json:"idempotent_replay"`
	Reattached       bool `json:"reattached,omitempty"`
}

// create answers 201 for a new worker, 200 for an identical repeat (and
// for a reattach of a stopped or failed one), 409 for an id in use with
// other fields or by another principal.
func (h *handler) create(w http.ResponseWriter, r *http.Request) *httpapi.APIError {
	sub, aerr := principal(r)
	if aerr != nil {
		return aerr
	}
	var q createRequest
	if aerr := httpapi.DecodeJSON(r, &q, true); aerr != nil {
		return aerr
	}
	if aerr := q.validate(); aerr != nil {
		return aerr
	}
	if q.WorkerID == "" {
		q.WorkerID = uuid.Must(uuid.NewV7()).String()
	}
	wk, outcome, err := h.st.CreateWorker(r.Context(), store.CreateWorkerInput{
		WorkerID: q.WorkerID, OwnerSub: sub, WorkspaceRef: q.WorkspaceRef, CodexHomeRef: q.CodexHomeRef,
		Adapter: q.Adapter, Metadata: q.Metadata, Trace: traceOf(r),
	})
	if errors.Is(err, store.ErrConflict) {
		return apiErr(http.StatusConflict, httpapi.CodeConflict, "worker_id: a worker with this id exists with different fields")
	}
	if err != nil {
		return h.storeError(r, "create_worker", err)
	}
	status := http.StatusOK
	if outcome == store.WorkerCreated {
		status = http.StatusCreated
	}
	httpapi.WriteJSON(w, status, workerResponse{
		Worker: h.view(wk), IdempotentReplay: outcome == store.WorkerExisting, Reattached: outcome == store.WorkerReattached,
	})
	return nil
}

func (h *handler) get(w http.ResponseWriter, r *http.Request) *httpapi.APIError {
	wk, aerr := h.load(r)
	if aerr != nil {
		return aerr
	}
	httpapi.WriteJSON(w, http.StatusOK, workerResponse{Worker: h.view(wk)})
	return nil
}

type heartbeatResponse struct {
	Worker view              `json:"worker"`
	Event  store.WorkerEvent `json:"event"`
}

func (h *handler) heartbeat(w http.ResponseWriter, r *http.Request) *httpapi.APIError {
	wk, aerr := h.load(r)
	if aerr != nil {
		return aerr
	}
	var q heartbeatRequest
	if aerr := httpapi.DecodeJSON(r, &q, true); aerr != nil {
		return aerr
	}
	wk, ev, err := h.st.HeartbeatWorker(r.Context(), wk.WorkerID, traceOf(r))
	if err != nil {
		return h.storeError(r, "heartbeat_worker", err)
	}
	httpapi.WriteJSON(w, http.StatusOK, heartbeatResponse{Worker: h.view(wk), Event: ev})
	return nil
}

type eventResponse struct {
	Event            store.WorkerEvent `json:"event"`
	IdempotentReplay bool              `json:"idempotent_replay"`
}

// postEvent answers 201 for a new event, 200 for a replay of a seen
// idempotency key, 409 for a key reused with another event or a worker
// that stopped or failed.
func (h *handler) postEvent(w http.ResponseWriter, r *http.Request) *httpapi.APIError {
	wk, aerr := h.load(r)
	if aerr != nil {
		return aerr
	}
	var q eventRequest
	if aerr := httpapi.DecodeJSON(r, &q, false); aerr != nil {
		return aerr
	}
	if aerr := q.validate(); aerr != nil {
		return aerr
	}
	ev, replay, err := h.st.AppendWorkerEvent(r.Context(), store.WorkerEventInput{
		WorkerID: wk.WorkerID, EventType: q.EventType, Payload: q.Payload, IdempotencyKey: q.IdempotencyKey, Trace: traceOf(r),
	})
	if errors.Is(err, store.ErrConflict) {
		return apiErr(http.StatusConflict, httpapi.CodeConflict, "idempotency_key: already used for another event type or payload")
	}
	if err != nil {
		return h.storeError(r, "append_worker_event", err)
	}
	status := http.StatusCreated
	if replay {
		status = http.StatusOK
	}
	httpapi.WriteJSON(w, status, eventResponse{Event: ev, IdempotentReplay: replay})
	return nil
}

type eventsResponse struct {
	Events     []store.WorkerEvent `json:"events"`
	NextCursor *int64              `json:"next_cursor"` // null when no more events exist now
}

func (h *handler) listEvents(w http.ResponseWriter, r *http.Request) *httpapi.APIError {
	wk, aerr := h.load(r)
	if aerr != nil {
		return aerr
	}
	after, aerr := httpapi.ParseQueryInt(r, "after_seq", 0, 0)
	if aerr != nil {
		return aerr
	}
	limit, aerr := httpapi.ParseQueryInt(r, "limit", DefaultEventsLimit, MaxEventsLimit)
	if aerr != nil {
		return aerr
	}
	if limit < 1 {
		return httpapi.Invalid("limit", "must be between 1 and %d", MaxEventsLimit)
	}
	evs, err := h.st.ListWorkerEvents(r.Context(), wk.WorkerID, after, int(limit)+1)
	if err != nil {
		return h.storeError(r, "list_worker_events", err)
	}
	out := eventsResponse{Events: evs}
	if len(evs) > int(limit) {
		out.Events = evs[:limit]
		next := out.Events[len(out.Events)-1].Seq
		out.NextCursor = &next
	}
	if out.Events == nil {
		out.Events = []store.WorkerEvent{}
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}

// stop answers 202 when it stopped the worker, 200 when it had already
// stopped or failed (the body then shows that status).
func (h *handler) stop(w http.ResponseWriter, r *http.Request) *httpapi.APIError {
	wk, aerr := h.load(r)
	if aerr != nil {
		return aerr
	}
	var q stopRequest
	if aerr := httpapi.DecodeJSON(r, &q, true); aerr != nil {
		return aerr
	}
	if aerr := q.validate(); aerr != nil {
		return aerr
	}
	wk, stopped, err := h.st.StopWorker(r.Context(), wk.WorkerID, q.Reason, traceOf(r))
	if err != nil {
		return h.storeError(r, "stop_worker", err)
	}
	status := http.StatusOK
	if stopped {
		status = http.StatusAccepted
	}
	httpapi.WriteJSON(w, status, workerResponse{Worker: h.view(wk), IdempotentReplay: !stopped})
	return nil
}
