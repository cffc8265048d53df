// Package executor executes runs: it claims runs with pending work under a
// lease, walks their frames through the agent loop (run_once), renews and
// releases leases, and runs the janitor that reclaims the leases of executors
// that died.
//
// A run created with input on this node skips the claim when a slot is free:
// the API reserves the slot (Reserve), the store creates the run already
// leased to this executor (store.CreateLeasedRun), and the slot starts it
// from the grant. Its lease is an ordinary lease from then on: renewed,
// fenced, released, reclaimed by a janitor when this node dies.
package executor

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/oaruntime/oaruntime/internal/breaker"
	"github.com/oaruntime/oaruntime/internal/notify"
	"github.com/oaruntime/oaruntime/internal/provider"
	"github.com/oaruntime/oaruntime/internal/spend"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
	"github.com/oaruntime/oaruntime/internal/tools"
)

// Config of an executor node.
type Config struct {
	Owner         string        // lease owner identity of this node
	LeaseTTL      time.Duration // default 10s
	RenewEvery    time.Duration // default 3s
	PollInterval  time.Duration // claim poll when no notice arrives; default 500ms
	Concurrency   int           // runs executed at once; default 64
	MaxModelCalls int           // per turn; default 32
	Loop          LoopConfig    // loop detection thresholds; zero = 30/10/20/30
	// StartCoalesce is how long a new run's run.started may wait to be
	// committed together with the turn's first output (one commit instead
	// of two when the provider answers at once); past it run.started is
	// appended alone. Default 10ms; negative: append it at once.
	StartCoalesce time.Duration
}

func (c *Config) defaults() {
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 10 * time.Second
	}
	if c.RenewEvery <= 0 {
		c.RenewEvery = 3 * time.Second
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 500 * time.Millisecond
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 64
	}
	if c.MaxModelCalls <= 0 {
		c.MaxModelCalls = 32
	}
	if c.StartCoalesce == 0 {
		c.StartCoalesce = 10 * time.Millisecond
	}
	c.Loop = c.Loop.Normalize()
}

// ProviderFunc returns the model provider called name for a run (name is
// the run's provider.name, or its fallback).
type ProviderFunc func(run store.Run, name string) (provider.Provider, error)

// Deps are the executor's collaborators.
type Deps struct {
	Store     store.Store
	Hub       *notify.Hub
	Metrics   *telemetry.Metrics
	Logger    *slog.Logger
	Tracer    trace.Tracer
	Providers ProviderFunc
	Tools     *tools.Registry
	// Breakers guard model calls per provider; nil uses a default registry.
	Breakers *breaker.Registry
	// Spend checks priced model and tool calls; nil builds one over Store
	// when it implements spend.Store (both drivers do).
	Spend *spend.Guard
}

// Executor is the per-node run executor service.
type Executor struct {
	cfg Config
	d   Deps

	mu      sync.Mutex
	running map[string]context.CancelFunc // nil value: a reserved slot (see Reserve)
	wg      sync.WaitGroup
	kick    chan struct{}
	// runCtx is Start's context (nil before Start); closed is set, under
	// mu, once the claim loop ended: no slot is reserved after that, so
	// every wg.Add happens before the final wg.Wait.
	runCtx context.Context
	closed bool
	// missed: a claim found every slot taken or filled them all, so there
	// may be runnable runs left; the next run to end wakes the loop.
	missed bool

	// abandon is a fault knob (parts per million): a claimed run is dropped
	// without release, as if this node crashed holding it.
	abandon atomic.Int64

	stopOnce sync.Once
	stopCh   chan struct{} // closed by Stop: a clean shutdown releases leases
	cancel   context.CancelFunc
	done     chan struct{}
}

// New returns an executor; Start runs it.
func New(cfg Config, d Deps) *Executor {
	cfg.defaults()
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Tracer == nil {
		d.Tracer = noop.NewTracerProvider().Tracer("oaruntime/executor")
	}
	if d.Providers == nil {
		d.Providers = DefaultProviders
	}
	if d.Breakers == nil {
		d.Breakers = breaker.NewRegistry(breaker.Config{}, d.Metrics)
	}
	if d.Spend == nil {
		if ss, ok := d.Store.(spend.Store); ok {
			d.Spend = spend.NewGuard(ss, d.Metrics)
		}
	}
	if d.Tools == nil {
		d.Tools = tools.NewRegistry(tools.Echo{}, tools.Sleep{})
	}
	return &Executor{cfg: cfg, d: d, running: map[string]context.CancelFunc{}, kick: make(chan struct{}, 1), stopCh: make(chan struct{}), done: make(chan struct{})}
}

// Start runs the claim loop until ctx ends or Stop is called. Cancelling ctx
// is an abrupt stop, like a crash: leases are NOT released and the janitor of
// another node reclaims them. Stop is the clean shutdown.
func (e *Executor) Start(ctx context.Context) {
	ctx, e.cancel = context.WithCancel(ctx)
	e.mu.Lock()
	e.runCtx = ctx
	e.mu.Unlock()
	go func() {
		defer close(e.done)
		e.loop(ctx)
		e.mu.Lock()
		e.closed = true
		e.mu.Unlock()
		e.wg.Wait()
	}()
}

// Stop shuts down cleanly: in-flight turns are canceled, and their leases
// released so that another executor can continue at once.
func (e *Executor) Stop(ctx context.Context) error {
	e.stopOnce.Do(func() { close(e.stopCh) })
	if e.cancel != nil {
		e.cancel()
	}
	select {
	case <-e.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Running reports how many runs this node is executing.
func (e *Executor) Running() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.running)
}

func (e *Executor) clean() bool {
	select {
	case <-e.stopCh:
		return true
	default:
		return false
	}
}

func (e *Executor) wake() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

func (e *Executor) loop(ctx context.Context) {
	var notices <-chan struct{}
	if e.d.Hub != nil {
		// A worker write never makes a run runnable: worker heartbeats
		// would otherwise each cost a claim query. Nor does the input of a
		// run created leased: its executor has it already.
		ch, unsub := e.d.Hub.SubscribeFiltered("", func(n store.Notice) bool { return n.Kind != store.NoticeWorker && !n.Leased })
		defer unsub()
		notices = ch
	}
	t := time.NewTicker(e.cfg.PollInterval)
	defer t.Stop()
	for {
		full := e.claim(ctx)
		select {
		case <-ctx.Done():
			return
		case <-notices:
			// Every event append is a notice; under load they would turn
			// the claim query into a hot loop. Notices coalesce while we
			// pause, so pickup latency grows by at most claimPause.
			if !full {
				pause(ctx, claimPause)
			}
		case <-e.kick:
		case <-t.C:
		}
	}
}

// claimPause bounds claim queries triggered by notices to about 100/s.
const claimPause = 10 * time.Millisecond

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// claim leases runnable runs for the free slots; full reports whether it got
// as many as it asked for (more may be waiting).
func (e *Executor) claim(ctx context.Context) (full bool) {
	e.mu.Lock()
	free := e.cfg.Concurrency - len(e.running)
	e.mu.Unlock()
	if free <= 0 {
		e.setMissed() // look again when a slot frees
		return false
	}
	grants, err := e.d.Store.ClaimRunnable(ctx, e.cfg.Owner, e.cfg.LeaseTTL, free)
	if err != nil {
		if ctx.Err() == nil {
			e.d.Logger.WarnContext(ctx, "claim runnable runs failed", "error", err)
			e.d.Metrics.LeaseOp("acquire", "error")
		}
		return false
	}
	for _, g := range grants {
		e.d.Metrics.LeaseOp("acquire", g.Result)
		e.spawn(ctx, g)
	}
	if len(grants) == free {
		e.setMissed() // there may be more than fitted
		return true
	}
	return false
}

func (e *Executor) setMissed() {
	e.mu.Lock()
	e.missed = true
	e.mu.Unlock()
}

// wakeIfMissed wakes the claim loop when a claim was turned away since the
// last look (a slot has just freed).
func (e *Executor) wakeIfMissed() {
	e.mu.Lock()
	missed := e.missed
	e.missed = false
	e.mu.Unlock()
	if missed {
		e.wake()
	}
}

// Slot is one of the executor's slots, reserved for a run about to be
// created leased to this executor (store.CreateLeasedRun): the run starts
// without a claim. It must be used (Start) or given back (Cancel), once.
type Slot struct {
	e     *Executor
	ctx   context.Context // the executor's (Start's)
	runID string
	done  bool
}

// Reserve takes a slot for runID; ok=false when none is free, the run is
// already executing here, or the executor is not running.
func (e *Executor) Reserve(runID string) (*Slot, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.runCtx == nil || e.closed || e.runCtx.Err() != nil || e.cfg.Concurrency-len(e.running) <= 0 {
		return nil, false
	}
	if _, busy := e.running[runID]; busy {
		return nil, false
	}
	e.running[runID] = nil
	e.wg.Add(1) // Stop waits for the slot's run, or for its Cancel
	return &Slot{e: e, ctx: e.runCtx, runID: runID}, true
}

// Owner and TTL are what CreateLeasedRun needs.
func (s *Slot) Owner() string      { return s.e.cfg.Owner }
func (s *Slot) TTL() time.Duration { return s.e.cfg.LeaseTTL }

// Start executes the run under g's lease (g from CreateLeasedRun for the
// slot's run). A grant without a lease (the run was not created leased)
// gives the slot back: the run is claimed as any other.
func (s *Slot) Start(g store.LeaseGrant) {
	if s.done {
		return
	}
	if g.Lease.Owner == "" || g.Lease.RunID != s.runID {
		s.Cancel()
		s.e.wake()
		return
	}
	s.done = true
	e := s.e
	e.d.Metrics.LeaseOp("acquire", g.Result)
	e.spawn(s.ctx, g)
	e.wg.Done() // the run's goroutine holds its own count now
}

// Cancel gives the slot back unused.
func (s *Slot) Cancel() {
	if s.done {
		return
	}
	s.done = true
	e := s.e
	e.mu.Lock()
	if c, ok := e.running[s.runID]; ok && c == nil {
		delete(e.running, s.runID)
	}
	e.mu.Unlock()
	e.wakeIfMissed()
	e.wg.Done()
}

func (e *Executor) spawn(ctx context.Context, g store.LeaseGrant) {
	l := g.Lease
	runCtx, cancel := context.WithCancel(ctx)
	e.mu.Lock()
	e.running[l.RunID] = cancel
	e.mu.Unlock()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		settled := false
		defer func() {
			e.mu.Lock()
			delete(e.running, l.RunID)
			e.mu.Unlock()
			cancel()
			// Work may have arrived while we held the lease (a run left
			// open can have new input), or while every slot was taken.
			// A finished run on an executor that turned nothing away
			// leaves nothing to look for.
			if !settled {
				e.wake()
			}
			e.wakeIfMissed()
		}()
		settled = e.execute(runCtx, g)
	}()
}

// SetAbandonRate makes this node drop the given fraction (0..1) of the runs
// it claims without releasing their leases, exactly as a crash would: the
// janitor reclaims them and another claim steals them. Fault injection for
// the lease alerts (--enable-faults); 0 turns it off.
func (e *Executor) SetAbandonRate(rate float64) {
	e.abandon.Store(int64(min(max(rate, 0), 1) * 1e6))
}

// execute runs one leased run, keeping the lease alive while it works;
// settled: the run ended terminal.
func (e *Executor) execute(ctx context.Context, g store.LeaseGrant) (settled bool) {
	l := g.Lease
	if p := e.abandon.Load(); p > 0 && rand.Int64N(1e6) < p {
		e.d.Logger.Warn("fault injection: abandoning claimed run", "run_id", l.RunID, "lease_owner", l.Owner)
		return
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	lost := make(chan struct{})
	keeperDone := make(chan struct{})
	go func() {
		defer close(keeperDone)
		e.keepLease(runCtx, l, cancel, lost)
	}()
	res := e.runOnce(runCtx, l, g.Run, g.Next)
	cancel()
	<-keeperDone
	select {
	case <-lost:
		return // the lease is someone else's now
	default:
	}
	if ctx.Err() != nil && !e.clean() {
		return // abrupt stop: behave like a crash, leave the lease to expire
	}
	if res.Err == nil && store.Terminal(res.Status) {
		// The event that finished the run released its lease (store
		// contract): nothing left to give up.
		e.d.Metrics.LeaseOp("release", "ok")
		return true
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer rcancel()
	if err := e.d.Store.ReleaseLease(rctx, l); err != nil {
		e.d.Metrics.LeaseOp("release", "error")
		e.d.Logger.Warn("release lease failed", "run_id", l.RunID, "error", err)
		return false
	}
	e.d.Metrics.LeaseOp("release", "ok")
	return false
}

func (e *Executor) keepLease(ctx context.Context, l store.Lease, cancel context.CancelFunc, lost chan<- struct{}) {
	t := time.NewTicker(e.cfg.RenewEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		nl, err := e.d.Store.RenewLease(ctx, l, e.cfg.LeaseTTL)
		switch {
		case err == nil:
			l = nl
			e.d.Metrics.LeaseOp("renew", store.LeaseRenewed)
		case errors.Is(err, store.ErrFenced):
			e.d.Metrics.LeaseOp("renew", "lost")
			e.d.Logger.Warn("lease lost; stopping run", "run_id", l.RunID, "lease_owner", l.Owner)
			close(lost)
			cancel()
			return
		default:
			if ctx.Err() != nil {
				return
			}
			// A transient database error: keep trying until the TTL runs out;
			// fencing protects the log if another executor takes over.
			e.d.Metrics.LeaseOp("renew", "error")
			e.d.Logger.Warn("lease renewal failed", "run_id", l.RunID, "error", err)
		}
	}
}

// ScriptedNames are the names under which the built-in scripted provider
// answers; each has its own circuit breaker, so that tests and the load
// generator can fail one "provider" and fall back to another.
var scriptedNames = map[string]bool{"scripted": true, "scripted-primary": true, "scripted-fallback": true}

// ScriptedProviderNames lists them (for the metric label allowlist).
func ScriptedProviderNames() []string {
	return []string{"scripted", "scripted-primary", "scripted-fallback"}
}

// DefaultProviders resolves a provider name to the built-in scripted
// provider; the run's fault settings apply to its primary provider only, so
// a fallback is healthy. Other providers are wired by the server.
func DefaultProviders(run store.Run, name string) (provider.Provider, error) {
	spec, err := ParseProviderSpec(run.Provider)
	if err != nil {
		return nil, err
	}
	if !scriptedNames[name] {
		return nil, &provider.Error{Class: "provider_unavailable", Err: errors.New("unknown provider " + name)}
	}
	p := &provider.Scripted{}
	if name == spec.primary() {
		p.Faults = spec.Faults
	}
	return p, nil
}

// Wake asks the claim loop to look for work now.
func (e *Executor) Wake() { e.wake() }
