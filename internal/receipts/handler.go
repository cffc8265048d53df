package receipts

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/oaruntime/oaruntime/internal/httpapi"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// Pattern is the receipt route.
const Pattern = "GET /internal/v1/runs/{run_id}/receipt"

// Routes returns the receipt route for httpapi.Deps.Routes (signed). The
// caller must own the run, exactly as on the other run routes.
func Routes(st store.Store, m *telemetry.Metrics, log *slog.Logger, opts ...Option) []httpapi.Route {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &handler{st: st, b: NewBuilder(st, m, opts...), log: log}
	return []httpapi.Route{{Pattern: Pattern, Handler: http.HandlerFunc(h.serve)}}
}

type handler struct {
	st  store.Store
	b   *Builder
	log *slog.Logger
}

func (h *handler) serve(w http.ResponseWriter, r *http.Request) {
	run, aerr := httpapi.LoadOwnedRun(r, h.st, h.log)
	if aerr != nil {
		httpapi.WriteError(w, aerr.Status, aerr.Code, aerr.Message)
		return
	}
	rc, err := h.b.Build(r.Context(), run)
	switch {
	case err == nil:
	case errors.Is(err, store.ErrNotFound):
		httpapi.WriteError(w, http.StatusNotFound, httpapi.CodeNotFound, "run_id: run not found")
		return
	case r.Context().Err() != nil:
		// The client went away; 499 (as nginx) keeps it out of the 5xx ratio.
		httpapi.WriteError(w, 499, "client_closed", "request canceled")
		return
	default:
		rid := httpapi.RequestID(r.Context())
		// The logger adds request_id and trace ids from the context.
		h.log.LogAttrs(r.Context(), slog.LevelError, "receipt build failed",
			slog.String("run_id", run.RunID), slog.String("error", err.Error()))
		httpapi.WriteError(w, http.StatusServiceUnavailable, httpapi.CodeUnavailable, "store unavailable, retry later (request id "+rid+")")
		return
	}
	if !rc.Verification.OK {
		h.log.LogAttrs(r.Context(), slog.LevelWarn, "receipt: hash chain does not verify", slog.String("run_id", run.RunID),
			slog.Int64("broken_seq", rc.Verification.BrokenSeq), slog.String("reason", rc.Verification.Reason))
	}
	httpapi.WriteJSON(w, http.StatusOK, rc)
}
