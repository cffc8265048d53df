package httpapi

import (
	"log/slog"
	"net/http"
	"sync"

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

// runIdent is what never changes about a run once created: its owner and
// thread (a create with the same id and other fields is a conflict).
type runIdent struct{ owner, thread string }

// maxRunIdents bounds the identity cache; past it the cache starts over (a
// forgotten run only costs one read).
const maxRunIdents = 100_000

// runIdents remembers the identity of runs this node created or read, so
// that writes to a run (frames, events) check access without reading it.
type runIdents struct {
	mu sync.Mutex
	m  map[string]runIdent
}

func (c *runIdents) get(runID string) (runIdent, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[runID]
	return v, ok
}

func (c *runIdents) put(run store.Run) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxRunIdents {
		c.m = make(map[string]runIdent)
	}
	c.m[run.RunID] = runIdent{owner: run.OwnerSub, thread: run.ThreadID}
}

// loadRunIdent is loadRun for handlers that need only the run's identity
// (id, owner, thread): the same checks and answers, from the identity
// cache when the run is in it. The returned run has only those fields.
func (a *api) loadRunIdent(r *http.Request) (store.Run, *APIError) {
	runID := r.PathValue("run_id")
	id, ok := a.idents.get(runID)
	if !ok {
		run, aerr := a.loadRun(r)
		if aerr == nil {
			a.idents.put(run)
		}
		return run, aerr
	}
	infoFrom(r.Context()).runID = runID
	c := claimsOf(r)
	if c.RunID != "" && c.RunID != runID {
		return store.Run{}, errf(http.StatusForbidden, CodeForbidden, "claim mismatch for run_id")
	}
	if id.owner != c.Sub {
		return store.Run{}, errf(http.StatusForbidden, CodeForbidden, "run does not belong to principal")
	}
	if err := c.Bind(runID, id.thread); err != nil {
		return store.Run{}, errf(http.StatusForbidden, CodeForbidden, "%v", err)
	}
	return store.Run{RunID: runID, OwnerSub: id.owner, ThreadID: id.thread}, nil
}
