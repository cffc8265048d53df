// Package httpapi serves oaruntime's HTTP API (DESIGN section 4): the
// unauthenticated health, readiness and metrics routes and the signed
// internal API under /internal/v1. Every request gets a request id, a server
// span named by its route pattern, one log line and one HTTP metric labelled
// by pattern (never by raw path). Every error has the body
// {"error":{"code","message"}}; bad input is a 4xx naming the field.
package httpapi

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/oaruntime/oaruntime/internal/auth"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// Streamer serves a run's SSE stream (DESIGN section 6) once the request is
// authenticated and the run loaded and owned by the caller.
type Streamer interface {
	Serve(w http.ResponseWriter, r *http.Request, run store.Run)
}

// Check is one named readiness check of /readyz.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
}

// Route mounts an extra handler (workers, khala, token endpoints) behind the
// same middleware. Unless Public, the request must carry a valid runtime
// signature and the handler finds the verified claims with auth.ClaimsFrom
// (or Principal). Pattern is a Go 1.22 ServeMux pattern such as
// "POST /internal/v1/workers/{worker_id}/heartbeat".
type Route struct {
	Pattern string
	Handler http.Handler
	Public  bool
}

// Deps are the collaborators of the API.
type Deps struct {
	Store    store.Store        // required
	Metrics  *telemetry.Metrics // nil: no metrics
	Logger   *slog.Logger       // nil: discard
	Verifier *auth.Verifier     // nil: every signed route answers 401
	// Stream serves GET .../stream; nil leaves the route unregistered.
	Stream Streamer
	// Ready are the checks of /readyz, run in order, each with ReadyTimeout.
	Ready        []Check
	ReadyTimeout time.Duration // default 2 s
	// MetricsHandler serves GET /metrics; nil leaves the route unregistered.
	MetricsHandler http.Handler
	Tracer         trace.Tracer                  // nil: noop
	Propagator     propagation.TextMapPropagator // nil: W3C trace context + baggage
	// Routes are mounted after the built-in routes.
	Routes       []Route
	MaxBodyBytes int64            // default DefaultMaxBodyBytes (1 MiB)
	Version      string           // reported by /healthz
	Now          func() time.Time // default time.Now (cancel's requested_at)
	// Fault, when set, is asked before every signed request past
	// authentication; a non-nil error answers 500 injected_fault. It exists
	// for the alert tests and `oaruntime loadgen` (--enable-faults) and is
	// never set in production.
	Fault func(r *http.Request) error
	// Receipt, when set, gives the run's current receipt id and hash, so
	// that GET .../verify also checks a saved receipt (?receipt_hash=).
	Receipt func(ctx context.Context, run store.Run) (id, hash string, err error)
	// Executor, when set, is this node's run executor: a run created with
	// input while it has a free slot is created leased to it and started
	// at once, without a claim (store.CreateLeasedRun).
	Executor Executor
}

// Executor reserves execution slots (see executor.Executor.Reserve).
type Executor interface {
	Reserve(runID string) (Slot, bool)
}

// Slot is a reserved execution slot: Start it with the grant of the run
// created leased to it, or Cancel it (see executor.Slot).
type Slot interface {
	Owner() string
	TTL() time.Duration
	Start(store.LeaseGrant)
	Cancel()
}

type api struct {
	store        store.Store
	metrics      *telemetry.Metrics
	log          *slog.Logger
	verifier     *auth.Verifier
	stream       Streamer
	ready        []Check
	readyTimeout time.Duration
	tracer       trace.Tracer
	propagator   propagation.TextMapPropagator
	maxBody      int64
	version      string
	now          func() time.Time
	fault        func(r *http.Request) error
	receipt      func(ctx context.Context, run store.Run) (id, hash string, err error)
	executor     Executor
	idents       runIdents

	mux      *http.ServeMux
	patterns map[string]struct{}
}

// New builds the API handler. Like http.ServeMux, it panics when two routes
// have conflicting patterns: that is a wiring error found at start-up.
func New(d Deps) http.Handler {
	a := &api{
		store: d.Store, metrics: d.Metrics, log: d.Logger, verifier: d.Verifier, stream: d.Stream,
		ready: d.Ready, readyTimeout: d.ReadyTimeout, tracer: d.Tracer, propagator: d.Propagator,
		maxBody: d.MaxBodyBytes, version: d.Version, now: d.Now, fault: d.Fault, receipt: d.Receipt, executor: d.Executor,
		mux: http.NewServeMux(), patterns: make(map[string]struct{}),
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.tracer == nil {
		a.tracer = noop.NewTracerProvider().Tracer("oaruntime/http")
	}
	if a.propagator == nil {
		a.propagator = telemetry.Propagator()
	}
	if a.maxBody <= 0 {
		a.maxBody = DefaultMaxBodyBytes
	}
	if a.readyTimeout <= 0 {
		a.readyTimeout = 2 * time.Second
	}
	if a.now == nil {
		a.now = time.Now
	}

	a.handle("GET /healthz", false, http.HandlerFunc(a.healthz))
	a.handle("GET /readyz", false, http.HandlerFunc(a.readyz))
	if d.MetricsHandler != nil {
		a.handle("GET /metrics", false, d.MetricsHandler)
	}
	a.handle("POST /internal/v1/runs", true, a.fn(a.createRun))
	a.handle("GET /internal/v1/runs/{run_id}", true, a.fn(a.getRun))
	a.handle("POST /internal/v1/runs/{run_id}/frames", true, a.fn(a.postFrame))
	a.handle("POST /internal/v1/runs/{run_id}/events", true, a.fn(a.postEvent))
	a.handle("GET /internal/v1/runs/{run_id}/events", true, a.fn(a.listEvents))
	if a.stream != nil {
		a.handle("GET /internal/v1/runs/{run_id}/stream", true, a.fn(a.serveStream))
	}
	a.handle("POST /internal/v1/runs/{run_id}/cancel", true, a.fn(a.cancel))
	a.handle("GET /internal/v1/runs/{run_id}/verify", true, a.fn(a.verify))
	for _, rt := range d.Routes {
		a.handle(rt.Pattern, !rt.Public, rt.Handler)
	}

	pats := make([]string, 0, len(a.patterns))
	for p := range a.patterns {
		pats = append(pats, p)
	}
	a.metrics.AllowRoutes(pats...)
	return a.observe()
}

// handle registers pattern. The wrapper records the pattern for the metric,
// the span and the log, then checks the signature of signed routes before the
// handler reads anything.
func (a *api) handle(pattern string, signed bool, h http.Handler) {
	a.patterns[pattern] = struct{}{}
	a.mux.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ri := infoFrom(r.Context())
		ri.pattern = pattern
		if signed {
			c, aerr := a.authenticate(r)
			if aerr != nil {
				writeAPIError(w, aerr)
				return
			}
			ri.sub = c.Sub
			r = r.WithContext(auth.WithClaims(r.Context(), c))
			if a.fault != nil {
				if err := a.fault(r); err != nil {
					writeAPIError(w, errf(http.StatusInternalServerError, "injected_fault", "%v", err))
					return
				}
			}
		}
		h.ServeHTTP(w, r)
	}))
}

func (a *api) authenticate(r *http.Request) (auth.Claims, *APIError) {
	if a.verifier == nil {
		return auth.Claims{}, errf(http.StatusUnauthorized, CodeUnauthorized, "runtime signature verification is not configured")
	}
	c, err := a.verifier.VerifyRequest(r)
	switch {
	case err == nil:
		return c, nil
	case errors.Is(err, auth.ErrNonceCacheFull):
		return auth.Claims{}, errf(http.StatusTooManyRequests, CodeRateLimited, "%v", err)
	default:
		return auth.Claims{}, errf(http.StatusUnauthorized, CodeUnauthorized, "%v", err)
	}
}

// Principal returns the verified subject ("user:<id>" or "guest:<scope>") of
// a signed request. Its signature matches token.PrincipalFunc.
func Principal(r *http.Request) (string, bool) {
	c, ok := auth.ClaimsFrom(r.Context())
	if !ok || c.Sub == "" {
		return "", false
	}
	return c.Sub, true
}

// fn adapts a handler that returns its error.
func (a *api) fn(h func(w http.ResponseWriter, r *http.Request) *APIError) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if aerr := h(w, r); aerr != nil {
			writeAPIError(w, aerr)
		}
	})
}

func (a *api) healthz(w http.ResponseWriter, _ *http.Request) {
	WriteJSON(w, http.StatusOK, map[string]any{"status": "ok", "service": "oaruntime", "version": a.version})
}

// readyz runs every check (so the body shows the whole picture) and names the
// first failing one.
func (a *api) readyz(w http.ResponseWriter, r *http.Request) {
	checks := make(map[string]string, len(a.ready))
	failed := ""
	var failedErr string
	for _, c := range a.ready {
		if c.Fn == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(r.Context(), a.readyTimeout)
		err := c.Fn(ctx)
		cancel()
		if err == nil {
			checks[c.Name] = "ok"
			continue
		}
		msg := err.Error()
		if len(msg) > 300 {
			msg = msg[:300] + "..."
		}
		checks[c.Name] = "error: " + msg
		if failed == "" {
			failed, failedErr = c.Name, msg
		}
	}
	if failed != "" {
		WriteJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not_ready", "failed": failed, "error": failedErr, "checks": checks})
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"status": "ready", "checks": checks})
}
