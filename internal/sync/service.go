// Package sync delivers Khala projection documents to clients (DESIGN
// section 8): the WebSocket protocol at GET /sync/v1, the polling fallback
// GET /internal/v1/khala/topics/{topic}/messages, and the retention service
// that prunes the replay journal.
//
// Both delivery paths authenticate a Bearer sync token (internal/sync/token)
// and deliver only the rows whose owner_sub is the token's subject. Cursors
// are topic watermarks: a subscriber's position advances over other owners'
// rows without seeing them, so resuming never re-reads or misses anything.
//
// The package shares its name with the standard library's; importers
// usually alias it (khalasync).
package sync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	gosync "sync"
	"sync/atomic"
	"time"

	"github.com/oaruntime/oaruntime/internal/httpapi"
	"github.com/oaruntime/oaruntime/internal/notify"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/sync/token"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// Store is what delivery reads; both drivers' *Store implement it.
type Store interface {
	ReadOwnerStream(ctx context.Context, q store.OwnerStreamQuery) (store.OwnerStreamPage, error)
	StreamBounds(ctx context.Context, topics []string) (map[string]store.StreamBounds, error)
}

// Verifier checks a raw sync token; *token.Verifier implements it.
type Verifier interface {
	Verify(ctx context.Context, raw string) (*token.Claims, error)
}

// Defaults (DESIGN section 8 and the original's numbers).
const (
	DefaultHeartbeat    = 15 * time.Second
	DefaultIdleTimeout  = 60 * time.Second
	DefaultPollInterval = time.Second
	DefaultWriteTimeout = 10 * time.Second
	// MaxBatch is the most updates one update_batch carries.
	MaxBatch = 200
	// maxClientMessage bounds a client message; a subscribe is tiny.
	maxClientMessage = 64 << 10
	// chaseWindow and chaseInterval: after a store notice the projector
	// usually writes its stream row within milliseconds, so heads are
	// re-read quickly for a short while instead of waiting a full poll.
	chaseWindow   = time.Second
	chaseInterval = 50 * time.Millisecond
)

// Config configures a Service. Zero values take the defaults.
type Config struct {
	Heartbeat    time.Duration // server heartbeat interval; default 15 s
	IdleTimeout  time.Duration // close after this long without a client message; default 60 s
	PollInterval time.Duration // head check without a wake-up; default 1 s
	WriteTimeout time.Duration // one socket write; default 10 s
	BatchSize    int           // updates per batch, 1..MaxBatch; default MaxBatch
	// OriginPatterns, when set, restricts browser origins (coder/websocket
	// patterns). When empty any origin is accepted: authentication is the
	// Bearer token, never an ambient cookie, so a foreign page gains nothing
	// from opening a socket it has no token for.
	OriginPatterns []string
	Logger         *slog.Logger
	Now            func() time.Time // token expiry checks; default time.Now
}

// Service serves sync delivery. Construct with New, call Start before
// serving sockets (it runs the head watcher that wakes live subscribers),
// and Stop on shutdown: hijacked WebSocket connections are not closed by
// http.Server.Shutdown, so Stop closes them (status 1001).
type Service struct {
	st  Store
	v   Verifier
	hub *notify.Hub
	m   *telemetry.Metrics
	cfg Config
	log *slog.Logger

	base   context.Context // parent of every session; canceled by Stop
	cancel context.CancelFunc
	wake   chan struct{}
	conns  gosync.WaitGroup
	// sockets counts open sockets: only they read the heads, so without
	// any the watcher does not read them either.
	sockets atomic.Int64

	mu       gosync.Mutex
	heads    map[string]int64 // replaced, never mutated, when a head moves
	changed  chan struct{}    // closed and replaced when a head moves
	running  bool
	stopped  bool
	watchEnd chan struct{}
}

// New builds a Service. hub may be nil (polling only); m may be nil.
func New(st Store, v Verifier, hub *notify.Hub, m *telemetry.Metrics, cfg Config) *Service {
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.BatchSize <= 0 || cfg.BatchSize > MaxBatch {
		cfg.BatchSize = MaxBatch
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	base, cancel := context.WithCancel(context.Background())
	return &Service{
		st: st, v: v, hub: hub, m: m, cfg: cfg, log: log,
		base: base, cancel: cancel,
		wake:    make(chan struct{}, 1),
		heads:   map[string]int64{},
		changed: make(chan struct{}),
	}
}

// Start runs the head watcher until ctx ends or Stop is called.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	switch {
	case s.stopped:
		s.mu.Unlock()
		return errors.New("sync: service stopped")
	case s.running:
		s.mu.Unlock()
		return errors.New("sync: service already running")
	}
	s.running = true
	s.watchEnd = make(chan struct{})
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.base, cancel)
	// A first read before returning, so that sockets accepted right after
	// Start compare against real heads.
	s.readHeads(ctx)
	go func() {
		defer close(s.watchEnd)
		defer stop()
		defer cancel()
		s.watch(ctx)
	}()
	return nil
}

// Stop closes every socket with 1001 server_shutdown, stops the watcher and
// waits for both. Sockets and polls arriving afterwards get 503.
func (s *Service) Stop() {
	s.mu.Lock()
	s.stopped = true
	end := s.watchEnd
	s.mu.Unlock()
	s.cancel()
	s.conns.Wait()
	if end != nil {
		<-end
	}
}

func (s *Service) isStopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

// Wake tells the watcher that a stream row may have been written, so live
// subscribers get it without waiting for the next poll. It never blocks.
func (s *Service) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Sink is the shape of projection.Sink, declared here so that this package
// does not depend on the projector.
type Sink interface {
	Name() string
	Write(ctx context.Context, in store.ProjectionWriteInput) (int64, error)
}

type wakeSink struct {
	Sink
	svc *Service
}

// batchWriter is the batch method of projection.BatchSink.
type batchWriter interface {
	WriteBatch(ctx context.Context, ins []store.ProjectionWriteInput) ([]int64, []error)
}

// wakeBatchSink is wakeSink around a sink that writes batches; it keeps
// that ability visible to the projector.
type wakeBatchSink struct {
	wakeSink
	batch batchWriter
}

func (w wakeBatchSink) WriteBatch(ctx context.Context, ins []store.ProjectionWriteInput) ([]int64, []error) {
	wms, errs := w.batch.WriteBatch(ctx, ins)
	for i, wm := range wms {
		if errs[i] == nil && wm > 0 {
			w.svc.Wake()
			break
		}
	}
	return wms, errs
}

func (w wakeSink) Write(ctx context.Context, in store.ProjectionWriteInput) (int64, error) {
	wm, err := w.Sink.Write(ctx, in)
	if err == nil && wm > 0 {
		w.svc.Wake()
	}
	return wm, err
}

// WakeOnWrite wraps the projector's sink so that every stream row it writes
// wakes this service at once. Stream rows are written after the event that
// caused them, so the store's event notices arrive too early to carry them.
func (s *Service) WakeOnWrite(sink Sink) Sink {
	w := wakeSink{Sink: sink, svc: s}
	if b, ok := sink.(batchWriter); ok {
		return wakeBatchSink{wakeSink: w, batch: b}
	}
	return w
}

// snapshot returns the current head watermarks (never mutated; do not write)
// and a channel closed at the next change.
func (s *Service) snapshot() (map[string]int64, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.heads, s.changed
}

func (s *Service) watch(ctx context.Context) {
	var hubWake <-chan struct{}
	if s.hub != nil {
		ch, unsub := s.hub.Subscribe("")
		defer unsub()
		hubWake = ch
	}
	timer := time.NewTimer(s.cfg.PollInterval)
	defer timer.Stop()
	var chaseUntil time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-hubWake:
			chaseUntil = time.Now().Add(chaseWindow)
		case <-s.wake:
		case <-timer.C:
		}
		s.refresh(ctx)
		next := s.cfg.PollInterval
		if time.Now().Before(chaseUntil) {
			next = min(next, chaseInterval)
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

// refresh reads every topic's head and wakes sessions when one moved. With
// no socket open there is nobody to wake: the read is skipped (a socket
// that opens wakes the watcher, see track).
func (s *Service) refresh(ctx context.Context) {
	if s.sockets.Load() == 0 {
		return
	}
	s.readHeads(ctx)
}

func (s *Service) readHeads(ctx context.Context) {
	bounds, err := s.st.StreamBounds(ctx, nil)
	if err != nil {
		if ctx.Err() == nil {
			s.log.WarnContext(ctx, "sync: reading stream heads failed; live delivery waits for the next poll", "error", err)
		}
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	moved := false
	for t, b := range bounds {
		if b.Head != s.heads[t] {
			moved = true
			break
		}
	}
	if !moved {
		return
	}
	heads := make(map[string]int64, len(bounds))
	for t, b := range bounds {
		heads[t] = b.Head
	}
	s.heads = heads
	close(s.changed)
	s.changed = make(chan struct{})
}

// Route patterns.
const (
	SocketPattern = "GET /sync/v1"
	PollPattern   = "GET /internal/v1/khala/topics/{topic}/messages"
)

// Routes returns both delivery routes, Public because they authenticate the
// Bearer sync token themselves (not the runtime signature).
func (s *Service) Routes() []httpapi.Route {
	return []httpapi.Route{
		{Pattern: SocketPattern, Handler: http.HandlerFunc(s.serveSocket), Public: true},
		{Pattern: PollPattern, Handler: http.HandlerFunc(s.servePoll), Public: true},
	}
}

// authenticate verifies the request's Bearer token, records the auth
// metric on failure and answers 401 (503 when the revocation lookup
// failed). ok=false means the response was written.
func (s *Service) authenticate(w http.ResponseWriter, r *http.Request) (*token.Claims, string, bool) {
	raw := token.TokenFromRequest(r)
	c, err := s.v.Verify(r.Context(), raw)
	if err == nil && !c.ExpiresAt.After(s.cfg.Now()) {
		// Inside the verifier's clock-skew leeway: accepted there, but a
		// session would have no lifetime left, so it is refused as expired.
		err = &token.VerifyError{Reason: token.ReasonExpired, Detail: "no lifetime left"}
	}
	if err == nil {
		return c, raw, true
	}
	reason := token.ReasonOf(err)
	s.m.SyncAuth("error", string(reason))
	if errors.Is(err, token.ErrRevocationCheck) {
		s.log.ErrorContext(r.Context(), "sync: token revocation lookup failed", "error", err)
		httpapi.WriteError(w, http.StatusServiceUnavailable, httpapi.CodeUnavailable, "sync token revocation check is unavailable; retry")
		return nil, "", false
	}
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer error="invalid_token", error_description=%q`, string(reason)))
	httpapi.WriteError(w, http.StatusUnauthorized, httpapi.CodeUnauthorized, "sync token rejected: "+string(reason))
	return nil, "", false
}

// clone copies m for a message (sessions keep mutating their own maps).
func clone(m map[string]int64) map[string]int64 {
	if m == nil {
		return map[string]int64{}
	}
	return maps.Clone(m)
}
