package httpapi

import (
	"log/slog"
	"net/http"

	"github.com/oaruntime/oaruntime/internal/store"
)

// LoadOwnedRun is the access check of the built-in run routes, for handlers
// mounted through Deps.Routes under /internal/v1/runs/{run_id}/...: it
// validates the path's run_id, loads the run and checks that the signed
// principal owns it (a run- or thread-bound token must name it). The
// answers are the built-in routes' own: 400 for a bad id, 403 for another
// principal's run or a mismatched binding, 404 for an unknown run, 503 (logged
// to log, which may be nil) when the store fails.
func LoadOwnedRun(r *http.Request, st store.Store, log *slog.Logger) (store.Run, *APIError) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &api{store: st, log: log}
	return a.loadRun(r)
}
