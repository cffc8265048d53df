package projection

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// Route is one operator endpoint. The coordinator mounts it behind the
// signed-request middleware (httpapi.Route{Pattern, Handler}).
type Route struct {
	Pattern string
	Handler http.Handler
}

// Operator route patterns.
const (
	PatternCheckpoint = "GET /internal/v1/projectors/checkpoints/{run_id}"
	PatternDrift      = "GET /internal/v1/projectors/drift"
	PatternReproject  = "POST /internal/v1/projectors/reproject"
	PatternVerify     = "POST /internal/v1/projectors/verify"
	PatternFaults     = "POST /internal/v1/ops/faults/projection"
)

// maxBody bounds request bodies of the operator endpoints.
const maxBody = 1 << 20

// Routes returns the operator endpoints; the fault endpoint only when
// faults is true (serve --enable-faults: alert tests and loadgen).
func (p *Projector) Routes(faults bool) []Route {
	rs := []Route{
		{PatternCheckpoint, http.HandlerFunc(p.handleCheckpoint)},
		{PatternDrift, http.HandlerFunc(p.handleDrift)},
		{PatternReproject, http.HandlerFunc(p.handleReproject)},
		{PatternVerify, http.HandlerFunc(p.handleVerify)},
	}
	if faults {
		rs = append(rs, Route{PatternFaults, http.HandlerFunc(p.handleFaults)})
	}
	return rs
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	raw, err := json.Marshal(v)
	if err != nil {
		status, raw = http.StatusInternalServerError, []byte(`{"error":{"code":"internal","message":"response encoding failed"}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(raw, '\n'))
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func badRequest(w http.ResponseWriter, field, format string, args ...any) {
	writeError(w, http.StatusBadRequest, "invalid_request", field+": "+fmt.Sprintf(format, args...))
}

// storeFailure answers a store error: 503 while the database is
// unreachable, never a bare 500 for input.
func (p *Projector) storeFailure(w http.ResponseWriter, r *http.Request, err error) {
	p.log.ErrorContext(r.Context(), "khala operator endpoint: store error", "path", r.URL.Path, "err", err)
	if r.Context().Err() != nil {
		writeError(w, http.StatusServiceUnavailable, "unavailable", "request canceled")
		return
	}
	writeError(w, http.StatusServiceUnavailable, "unavailable", "projection store unavailable")
}

var idRe = regexp.MustCompile(`^[\x21-\x7e]{1,200}$`)

var reasonRe = regexp.MustCompile(`^[a-z0-9_.]{1,100}$`)

// decodeBody decodes an optional JSON object body into v, rejecting unknown
// fields, wrong types, oversized bodies and trailing data with a 400 that
// names the field. An empty body is {}.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if errors.Is(err, io.EOF) {
		return true
	}
	if err == nil {
		if _, terr := dec.Token(); !errors.Is(terr, io.EOF) {
			badRequest(w, "body", "must be a single JSON object")
			return false
		}
		return true
	}
	var (
		typeErr *json.UnmarshalTypeError
		maxErr  *http.MaxBytesError
	)
	switch {
	case errors.As(err, &maxErr):
		writeError(w, http.StatusRequestEntityTooLarge, "payload_too_large", fmt.Sprintf("body: larger than %d bytes", maxBody))
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field == "" {
			field = "body"
		}
		badRequest(w, field, "must be %s", typeErr.Type.String())
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		badRequest(w, strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`), "unknown field")
	default:
		badRequest(w, "body", "invalid JSON: %v", err)
	}
	return false
}

// CheckpointView is the answer of GET .../checkpoints/{run_id}. With
// ?projection=codex_worker the path names a codex worker instead of a run
// (RunID then holds the worker id) and EventsCursor shows how far its
// events reached topic runtime.codex_worker_events.
type CheckpointView struct {
	RunID             string            `json:"run_id"`
	Projection        string            `json:"projection"`
	ProjectionVersion string            `json:"projection_version"` // what this server writes
	RuntimeLatestSeq  int64             `json:"runtime_latest_seq"`
	LagEvents         int64             `json:"lag_events"`
	Checkpoint        *store.Checkpoint `json:"checkpoint"`
	Document          *DocumentView     `json:"document"`
	EventsCursor      *store.Checkpoint `json:"events_cursor,omitempty"`
}

// DocumentView describes the stored document without its payload.
type DocumentView struct {
	DocKey            string    `json:"document_id"`
	Topic             string    `json:"topic"`
	SourceSeq         int64     `json:"runtime_source_seq"`
	SummaryHash       string    `json:"summary_hash"`
	ProjectionVersion string    `json:"projection_version"`
	UpdatedAt         time.Time `json:"updated_at"`
}

func (p *Projector) handleCheckpoint(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("run_id")
	if !idRe.MatchString(id) {
		badRequest(w, "run_id", "must be 1-200 visible ASCII characters")
		return
	}
	kind := r.URL.Query().Get("projection")
	switch kind {
	case "", store.ProjectionRun:
		kind = store.ProjectionRun
	case store.ProjectionCodexWorker:
		if p.workers == nil {
			writeError(w, http.StatusNotImplemented, "not_implemented", "projection: this server does not project codex workers")
			return
		}
	default:
		badRequest(w, "projection", "must be run or codex_worker")
		return
	}
	ctx := r.Context()
	v := CheckpointView{RunID: id, Projection: kind, ProjectionVersion: p.cfg.Version}
	topic, docKey, what := store.TopicRunSummaries, RunDocKey(id), "run"
	if kind == store.ProjectionCodexWorker {
		topic, docKey, what = store.TopicCodexWorkerSummaries, WorkerDocKey(id), "worker"
	}
	latest, err := p.latestSeq(ctx, kind, id)
	found := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		p.storeFailure(w, r, err)
		return
	}
	v.RuntimeLatestSeq = latest
	cp, err := p.st.GetCheckpoint(ctx, kind, id)
	switch {
	case err == nil:
		v.Checkpoint = &cp
		v.LagEvents = max(latest-cp.LastSeq, 0)
	case errors.Is(err, store.ErrNotFound):
		v.LagEvents = latest
	default:
		p.storeFailure(w, r, err)
		return
	}
	if !found && v.Checkpoint == nil {
		writeError(w, http.StatusNotFound, "not_found", "run_id: no "+what+" and no checkpoint "+strconv.Quote(id))
		return
	}
	doc, err := p.st.GetDocument(ctx, topic, docKey)
	switch {
	case err == nil:
		v.Document = &DocumentView{DocKey: doc.DocKey, Topic: doc.Topic, SourceSeq: doc.SourceSeq,
			SummaryHash: doc.SummaryHash, ProjectionVersion: doc.ProjectionVersion, UpdatedAt: doc.UpdatedAt}
	case !errors.Is(err, store.ErrNotFound):
		p.storeFailure(w, r, err)
		return
	}
	if kind == store.ProjectionCodexWorker {
		c, err := p.st.GetCheckpoint(ctx, kind, store.WorkerEventsCursorID(id))
		switch {
		case err == nil:
			v.EventsCursor = &c
		case !errors.Is(err, store.ErrNotFound):
			p.storeFailure(w, r, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, v)
}

func queryInt(w http.ResponseWriter, r *http.Request, name string, def, lo, hi int64) (int64, bool) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, true
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < lo || n > hi {
		badRequest(w, name, "must be an integer in %d..%d", lo, hi)
		return 0, false
	}
	return n, true
}

func (p *Projector) handleDrift(w http.ResponseWriter, r *http.Request) {
	q := store.DriftQuery{}
	limit, ok := queryInt(w, r, "limit", 100, 1, 1000)
	if !ok {
		return
	}
	after, ok := queryInt(w, r, "after_id", 0, 0, 1<<62)
	if !ok {
		return
	}
	q.Limit, q.AfterID = int(limit), after
	if rc := r.URL.Query().Get("reason_class"); rc != "" {
		if !reasonRe.MatchString(rc) {
			badRequest(w, "reason_class", "must match %s", reasonRe)
			return
		}
		q.ReasonClass = rc
	}
	if id := r.URL.Query().Get("entity_id"); id != "" {
		if !idRe.MatchString(id) {
			badRequest(w, "entity_id", "must be 1-200 visible ASCII characters")
			return
		}
		q.EntityID = id
	}
	ds, err := p.st.ListDrift(r.Context(), q)
	if err != nil {
		p.storeFailure(w, r, err)
		return
	}
	if ds == nil {
		ds = []store.DriftIncident{}
	}
	resp := map[string]any{"incidents": ds}
	if n := len(ds); n > 0 {
		resp["last_id"] = max(ds[0].ID, ds[n-1].ID)
	}
	writeJSON(w, http.StatusOK, resp)
}

// ReprojectRequest is the body of POST .../reproject: exactly one of all
// (every run, then every codex worker), run_id or worker_id.
type ReprojectRequest struct {
	All      bool   `json:"all"`
	RunID    string `json:"run_id"`
	WorkerID string `json:"worker_id"`
	DryRun   bool   `json:"dry_run"`
}

func (p *Projector) handleReproject(w http.ResponseWriter, r *http.Request) {
	var req ReprojectRequest
	if !decodeBody(w, r, &req) {
		return
	}
	n := 0
	for _, set := range []bool{req.All, req.RunID != "", req.WorkerID != ""} {
		if set {
			n++
		}
	}
	switch {
	case n != 1:
		badRequest(w, "all", "set exactly one of all, run_id or worker_id")
		return
	case req.RunID != "" && !idRe.MatchString(req.RunID):
		badRequest(w, "run_id", "must be 1-200 visible ASCII characters")
		return
	case req.WorkerID != "" && !idRe.MatchString(req.WorkerID):
		badRequest(w, "worker_id", "must be 1-200 visible ASCII characters")
		return
	case req.WorkerID != "" && p.workers == nil:
		writeError(w, http.StatusNotImplemented, "not_implemented", "worker_id: this server does not project codex workers")
		return
	}
	rep, err := p.Reproject(r.Context(), Scope(req), nil)
	switch {
	case errors.Is(err, store.ErrNotFound) && req.WorkerID != "":
		writeError(w, http.StatusNotFound, "not_found", "worker_id: no such worker "+strconv.Quote(req.WorkerID))
		return
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", "run_id: no such run "+strconv.Quote(req.RunID))
		return
	case err != nil:
		p.storeFailure(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": rep.Failed == 0, "report": rep})
}

// VerifyRequest is the body of POST .../verify.
type VerifyRequest struct {
	Sample int `json:"sample"`
}

func (p *Projector) handleVerify(w http.ResponseWriter, r *http.Request) {
	var req VerifyRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Sample < 0 || req.Sample > 10000 {
		badRequest(w, "sample", "must be in 0..10000 (0 = %d)", DefaultAuditSample)
		return
	}
	rep, err := p.Audit(r.Context(), req.Sample)
	if err != nil {
		p.storeFailure(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": rep.Mismatches == 0, "report": rep})
}

// FaultRequest is the body of POST /internal/v1/ops/faults/projection.
// Absent fields keep their current value.
type FaultRequest struct {
	FailRate   *float64 `json:"fail_rate"`
	DelayMS    *int64   `json:"delay_ms"`
	ReplayFail *bool    `json:"replay_fail"`
}

// FaultState is the fault endpoint's answer.
type FaultState struct {
	FailRate   float64 `json:"fail_rate"`
	DelayMS    int64   `json:"delay_ms"`
	ReplayFail bool    `json:"replay_fail"`
}

func (p *Projector) handleFaults(w http.ResponseWriter, r *http.Request) {
	var req FaultRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.FailRate != nil && (*req.FailRate < 0 || *req.FailRate > 1) {
		badRequest(w, "fail_rate", "must be in 0..1")
		return
	}
	if req.DelayMS != nil && (*req.DelayMS < 0 || *req.DelayMS > 600000) {
		badRequest(w, "delay_ms", "must be in 0..600000")
		return
	}
	if req.FailRate != nil {
		p.SetFault(*req.FailRate)
	}
	if req.DelayMS != nil {
		p.SetDelay(time.Duration(*req.DelayMS) * time.Millisecond)
	}
	if req.ReplayFail != nil {
		p.SetReplayFault(*req.ReplayFail)
	}
	rate, delay, replay := p.Faults()
	writeJSON(w, http.StatusOK, FaultState{FailRate: rate, DelayMS: delay.Milliseconds(), ReplayFail: replay})
}
