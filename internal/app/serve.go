package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/oaruntime/oaruntime/internal/auth"
	"github.com/oaruntime/oaruntime/internal/breaker"
	"github.com/oaruntime/oaruntime/internal/config"
	"github.com/oaruntime/oaruntime/internal/executor"
	"github.com/oaruntime/oaruntime/internal/gcfloor"
	"github.com/oaruntime/oaruntime/internal/httpapi"
	"github.com/oaruntime/oaruntime/internal/notify"
	"github.com/oaruntime/oaruntime/internal/projection"
	"github.com/oaruntime/oaruntime/internal/receipts"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/postgres"
	"github.com/oaruntime/oaruntime/internal/store/sqlite"
	"github.com/oaruntime/oaruntime/internal/stream"
	khalasync "github.com/oaruntime/oaruntime/internal/sync"
	"github.com/oaruntime/oaruntime/internal/sync/token"
	"github.com/oaruntime/oaruntime/internal/telemetry"
	"github.com/oaruntime/oaruntime/internal/workers"
)

// newSink is the configured projection sink.
func newSink(cfg *config.Config, st migratingStore) projection.Sink {
	if cfg.KhalaSink == "http" {
		return &projection.HTTPSink{BaseURL: cfg.KhalaURL, AdminKey: cfg.KhalaAdminKey, Store: st}
	}
	return projection.BuiltinSink{Store: st}
}

// principal is the signed subject of an authenticated request.
func principal(r *http.Request) (string, bool) {
	c, ok := auth.ClaimsFrom(r.Context())
	if !ok || c.Sub == "" {
		return "", false
	}
	return c.Sub, true
}

// migratingStore is what both drivers provide.
type migratingStore interface {
	store.Store
	store.ProjectionStore
	store.WorkerStore
	store.SyncStore
	store.RevocationStore
	Migrate(ctx context.Context) error
}

// openStore opens the configured database (migrations not applied).
func openStore(ctx context.Context, cfg *config.Config) (migratingStore, error) {
	if cfg.IsPostgres() {
		st, err := postgres.Open(ctx, cfg.DatabaseURL)
		if err != nil {
			return nil, fmt.Errorf("open postgres: %w", err)
		}
		return st, nil
	}
	st, err := sqlite.Open(ctx, cfg.SQLitePath())
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", cfg.SQLitePath(), err)
	}
	return st, nil
}

func parseLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}

func serveCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg config.Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.Register(fs)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if err := cfg.Resolve(); err != nil {
		return err
	}
	// Process-wide, so here rather than in NewServer (tests build many
	// servers in one process).
	if _, set := os.LookupEnv("GOGC"); !set && cfg.GCHeapFloorMB > 0 {
		defer gcfloor.Start(uint64(cfg.GCHeapFloorMB)<<20, 100)()
	}
	srv, err := NewServer(ctx, &cfg, stderr)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		srv.Close()
		return fmt.Errorf("listen %s: %w", cfg.Addr, err)
	}
	fmt.Fprintf(stdout, "oaruntime %s serving on http://%s (%s)\n", Version, ln.Addr(), srv.Store.Dialect())
	return srv.Serve(ctx, ln)
}

// Server is a wired oaruntime node.
type Server struct {
	Cfg      *config.Config
	Store    migratingStore
	Metrics  *telemetry.Metrics
	Registry *prometheus.Registry
	Log      *slog.Logger
	Hub      *notify.Hub
	Exec     *executor.Executor
	Janitor  *executor.Janitor
	Stream   *stream.Service
	Handler  http.Handler
	Minter   *token.Minter
	Proj     *projection.Projector
	Sync     *khalasync.Service
	Retain   *khalasync.Retention
	Revoked  *token.StoreRevocations

	faults        faultState
	shutdown      chan struct{}
	traceShutdown func(context.Context) error
	bg            context.CancelFunc
}

// NewServer opens the store, applies migrations and wires every service.
// Background services start in Serve.
func NewServer(ctx context.Context, cfg *config.Config, logOut io.Writer) (*Server, error) {
	log := telemetry.NewLogger(logOut, parseLevel(cfg.LogLevel))
	st, err := openStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := st.Migrate(ctx); err != nil {
		st.Close()
		return nil, fmt.Errorf("migrate: %w", err)
	}
	schema, _ := st.SchemaVersion(ctx)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := telemetry.NewMetrics(reg, telemetry.BuildInfo{Version: Version, Revision: Revision, SchemaVersion: strconv.FormatInt(schema, 10)})
	tp, traceShutdown, err := telemetry.NewTracerProvider(ctx, telemetry.TracingConfig{ServiceName: "oaruntime", OTLPEndpoint: cfg.OTLPEndpoint})
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("tracing: %w", err)
	}
	verifier, err := auth.NewVerifier([]byte(cfg.SignatureSecret))
	if err != nil {
		st.Close()
		return nil, err
	}
	hub := notify.NewHub()
	toolReg := buildTools(cfg, m, log)
	m.AllowProviders(append(executor.ScriptedProviderNames(), "openai")...)
	ex := executor.New(executor.Config{Owner: cfg.NodeID, LeaseTTL: cfg.LeaseTTL, RenewEvery: cfg.LeaseRenew, Concurrency: cfg.ExecutorConcurrency},
		executor.Deps{Store: st, Hub: hub, Metrics: m, Logger: log, Tracer: tp.Tracer("oaruntime/executor"), Tools: toolReg, Providers: providers(cfg),
			Breakers: breaker.NewRegistry(breaker.Config{Cooldown: cfg.BreakerCooldown}, m)})
	jan := executor.NewJanitor(executor.JanitorConfig{Interval: cfg.JanitorInterval, MaxAttempts: cfg.JanitorMaxAttempts}, st, m, log, ex.Wake)
	s := &Server{Cfg: cfg, Store: st, Metrics: m, Registry: reg, Log: log, Hub: hub, Exec: ex, Janitor: jan, shutdown: make(chan struct{}), traceShutdown: traceShutdown}
	minter, err := newMinter(cfg, st.Ping)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("sync token keys: %w", err)
	}
	s.Minter = minter
	kr, err := newKeyring(cfg)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("sync token keys: %w", err)
	}
	s.Revoked = token.NewStoreRevocations(st, token.StoreRevocationsConfig{Logger: log})
	syncVerifier := token.NewVerifier(token.VerifierConfig{Keyring: kr, Issuer: minter.Issuer(), Audience: minter.Audience(), Revocations: s.Revoked})
	s.Sync = khalasync.New(st, syncVerifier, hub, m, khalasync.Config{Logger: log})
	s.Retain = khalasync.NewRetention(st, khalasync.RetentionConfig{MaxAge: cfg.SyncRetention, Logger: log})
	s.Proj = projection.New(st, s.Sync.WakeOnWrite(newSink(cfg, st)), hub, m, projection.Config{Serving: true, Logger: log, Tracer: tp.Tracer("oaruntime/projection")})
	routes := []httpapi.Route{{Pattern: "POST /api/khala/token", Handler: token.NewHandler(minter, principal, m, log)}}
	var opRoutes []httpapi.Route
	for _, r := range s.Proj.Routes(cfg.EnableFaults) {
		opRoutes = append(opRoutes, httpapi.Route{Pattern: r.Pattern, Handler: r.Handler})
	}
	opRoutes = append(opRoutes, s.faultRoutes()...)
	opRoutes = append(opRoutes, httpapi.Route{Pattern: token.RevokePattern, Handler: token.NewRevokeHandler(s.Revoked, syncVerifier, log)})
	routes = append(routes, s.operatorRoutes(opRoutes)...)
	routes = append(routes, s.Sync.Routes()...)
	routes = append(routes, workers.Routes(st, log)...)
	routes = append(routes, receipts.Routes(st, m, log)...)
	s.Stream = stream.New(stream.Config{Heartbeat: cfg.StreamHeartbeat, IdleTimeout: cfg.StreamIdle, Shutdown: s.shutdown}, st, hub, m, log)
	s.Handler = httpapi.New(httpapi.Deps{
		Store: st, Metrics: m, Logger: log, Verifier: verifier, Stream: s.Stream,
		Tracer:         tp.Tracer("oaruntime/http"),
		MetricsHandler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
		Version:        Version,
		Fault:          s.httpFault,
		Receipt: func(ctx context.Context, run store.Run) (string, string, error) {
			rc, err := receipts.NewBuilder(st, m).Build(ctx, run)
			return rc.ReceiptID, rc.ReceiptHash, err
		},
		Routes:   routes,
		Executor: execSlots{ex},
		Ready: []httpapi.Check{
			{Name: "database", Fn: st.Ping},
			{Name: "notification_listener", Fn: func(context.Context) error {
				if !st.ListenerUp() {
					return errors.New("notification listener down")
				}
				return nil
			}},
			{Name: "projector", Fn: func(context.Context) error {
				if !s.Proj.Running() {
					return errors.New("projector not running")
				}
				return nil
			}},
		},
	})
	return s, nil
}

// execSlots gives the API the executor's slots (httpapi.Executor).
type execSlots struct{ e *executor.Executor }

func (x execSlots) Reserve(runID string) (httpapi.Slot, bool) {
	if s, ok := x.e.Reserve(runID); ok {
		return s, true
	}
	return nil, false
}

// Serve runs the node on ln until ctx ends, then shuts down cleanly: streams
// end with server_shutdown, in-flight runs release their leases.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	bg, cancel := context.WithCancel(context.Background())
	s.bg = cancel
	go func() { _ = s.Hub.Run(bg, s.Store) }()
	go s.healthLoop(bg)
	if err := s.Proj.Start(bg); err != nil {
		cancel()
		return fmt.Errorf("start projector: %w", err)
	}
	if err := s.Sync.Start(bg); err != nil {
		cancel()
		return fmt.Errorf("start sync delivery: %w", err)
	}
	s.Retain.Start(bg)
	go s.Revoked.RunPruning(bg, time.Minute)
	s.Exec.Start(bg)
	s.Janitor.Start(bg)
	if s.Cfg.PprofAddr != "" {
		if err := s.servePprof(bg); err != nil {
			cancel()
			return err
		}
	}
	hs := &http.Server{Handler: s.Handler, ReadHeaderTimeout: 10 * time.Second}
	hs.RegisterOnShutdown(s.Stream.Shutdown)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	s.Log.Info("serving", "addr", ln.Addr().String(), "dialect", s.Store.Dialect(), "node_id", s.Cfg.NodeID)
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	s.Log.Info("shutting down")
	close(s.shutdown)
	sctx, scancel := context.WithTimeout(context.Background(), s.Cfg.ShutdownGrace)
	defer scancel()
	_ = hs.Shutdown(sctx)
	s.Sync.Stop() // hijacked WebSockets are not closed by http.Server.Shutdown
	s.Retain.Stop()
	s.Janitor.Stop()
	if err := s.Exec.Stop(sctx); err != nil {
		s.Log.Warn("executor stop", "error", err)
	}
	s.Proj.Stop()
	cancel()
	s.Close()
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return serveErr
}

// servePprof serves the Go profiles on their own listener, never on the
// API address: they are for the operator on the node, not for clients.
func (s *Server) servePprof(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.Cfg.PprofAddr)
	if err != nil {
		return fmt.Errorf("pprof listen %s: %w", s.Cfg.PprofAddr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	go func() { <-ctx.Done(); _ = hs.Close() }()
	s.Log.Info("pprof serving", "addr", ln.Addr().String())
	return nil
}

// Close releases the store and flushes traces.
func (s *Server) Close() {
	if s.traceShutdown != nil {
		_ = s.traceShutdown(context.Background())
	}
	_ = s.Store.Close()
}

// healthLoop keeps the db_up and notify_listener_up gauges current.
func (s *Server) healthLoop(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		s.Metrics.SetDBUp(s.Store.Ping(pctx) == nil)
		cancel()
		s.Metrics.SetListenerUp(s.Store.ListenerUp())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
