package projection

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/oaruntime/oaruntime/internal/notify"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// Decisions (DESIGN section 7). The reason of a write or skip is also the
// drift reason_class when the decision is a drift.
const (
	ActionWrite = "write"
	ActionSkip  = "skip"

	ReasonNone                     = ""
	ReasonIdempotent               = "idempotent"
	ReasonCheckpointAhead          = "checkpoint_ahead"
	ReasonSummaryHashMismatch      = "summary_hash_mismatch"
	ReasonProjectionVersionChanged = "projection_version_changed"

	// Drift-only reasons.
	ReasonSequenceGap     = "sequence_gap"
	ReasonHashAndLagDrift = "hash_and_lag_drift"
	ReasonKhalaMissing    = "khala_missing"
	ReasonLagDrift        = "lag_drift"
)

// Decision is what the projector does with one rebuilt summary.
type Decision struct {
	Action string `json:"action"`
	Reason string `json:"reason,omitempty"`
	Drift  bool   `json:"drift"`
}

// Decide applies the decision table. cp is nil when the entity has no
// checkpoint.
func Decide(cp *store.Checkpoint, seq int64, version, hash string) Decision {
	switch {
	case cp == nil:
		return Decision{Action: ActionWrite}
	case cp.LastSeq > seq:
		return Decision{Action: ActionSkip, Reason: ReasonCheckpointAhead, Drift: true}
	case cp.LastSeq < seq:
		return Decision{Action: ActionWrite}
	case cp.ProjectionVersion != version:
		return Decision{Action: ActionWrite, Reason: ReasonProjectionVersionChanged, Drift: true}
	case cp.SummaryHash != hash:
		return Decision{Action: ActionWrite, Reason: ReasonSummaryHashMismatch, Drift: true}
	default:
		return Decision{Action: ActionSkip, Reason: ReasonIdempotent}
	}
}

// Outcome is the result of projecting one entity.
type Outcome struct {
	EntityID  string   `json:"entity_id"`
	DocKey    string   `json:"document_id"`
	Decision  Decision `json:"decision"`
	Seq       int64    `json:"seq"`
	Hash      string   `json:"summary_hash"`
	LagEvents int64    `json:"lag_events"`
	Watermark int64    `json:"watermark,omitempty"`
	// Result is the write metric's result: ok, skipped or error.
	Result string `json:"result"`
	// Superseded: another writer moved the checkpoint between our read and
	// our write; nothing was written and the next pass re-decides.
	Superseded bool  `json:"superseded,omitempty"`
	Gaps       []Gap `json:"gaps,omitempty"`

	// A codex worker's event lane: its cursor after the call, the events
	// appended to runtime.codex_worker_events and the last one's watermark.
	EventsCursor    int64 `json:"events_cursor,omitempty"`
	EventsAppended  int   `json:"events_appended,omitempty"`
	EventsWatermark int64 `json:"events_watermark,omitempty"`
}

// Config configures a Projector. Zero values take the defaults.
type Config struct {
	Version       string        // projection_version; default DefaultVersion
	PollInterval  time.Duration // wake without a notice; default 1 s
	FullScanEvery time.Duration // scan every run, not only recently updated ones; default 30 s
	ScanSlack     time.Duration // how far before the last scan an incremental scan starts; default 10 s
	BatchSize     int           // candidates per query; default 200
	BackoffMin    time.Duration // first retry delay of a failing entity; default 200 ms
	BackoffMax    time.Duration // default 30 s
	// Serving is true in the process whose metrics Prometheus scrapes
	// (oaruntime serve): it counts its own drift and replay rows at once and
	// claims the rows other processes (operator commands) recorded. An
	// operator command leaves Serving false, so the server counts its rows.
	Serving bool
	// AuditEvery runs the parity auditor in the background (0 = off, as
	// the original's default); AuditSample checkpoints per pass (default 200).
	AuditEvery  time.Duration
	AuditSample int
	Origin      string // recorded on drift and replay rows; default "serve|cli:<host>:<pid>"
	Logger      *slog.Logger
	Tracer      trace.Tracer // optional; spans "khala.projection.write" continue the event's trace
	Now         func() time.Time
}

// Projector is the background projection service.
type Projector struct {
	st   store.ProjectionStore
	sink Sink
	hub  *notify.Hub
	m    *telemetry.Metrics
	cfg  Config
	log  *slog.Logger

	mu          sync.Mutex
	failRate    float64
	delay       time.Duration
	replayFault bool
	backoff     map[entityKey]backoffState
	reported    map[entityKey]map[string]string // entity -> reason -> last finding reported, so retries do not repeat it
	parked      map[entityKey]parkedState
	scans       map[string]*scanState // per projection walk
	running     bool
	stop        context.CancelFunc
	done        chan struct{}
	lastExport  time.Time
	noted       noted

	// workers is the store's worker side; nil when the store given to New
	// does not implement it (then only runs are projected).
	workers workerSource
}

// workerSource is what projecting codex workers needs beyond
// store.ProjectionStore. Both drivers' *Store implement it; New finds it on
// the store it is given, so wiring stays projection.New(store, ...).
type workerSource interface {
	LoadWorkerLog(ctx context.Context, workerID string) (store.Worker, []store.WorkerEvent, error)
	ListWorkerIDs(ctx context.Context, afterWorkerID string, limit int) ([]string, error)
	store.WorkerProjectionStore
}

// laneWorkerEvents is the entityKey kind of a worker's event lane (topic
// runtime.codex_worker_events), which retries apart from its summary so
// that a failing sink never holds back the local event stream.
const laneWorkerEvents = "codex_worker_events"

// entityKey names per-entity state: kind is store.ProjectionRun,
// store.ProjectionCodexWorker (the summary) or laneWorkerEvents. Run and
// worker ids live in different namespaces and may be equal.
type entityKey struct{ kind, id string }

// projectionOf is the projection a kind's drift and replay rows carry.
func projectionOf(kind string) string {
	if kind == laneWorkerEvents {
		return store.ProjectionCodexWorker
	}
	return kind
}

// scanState is where a projection's candidate walk got to.
type scanState struct{ lastScan, lastFull time.Time }

type backoffState struct {
	attempts int
	next     time.Time
}

// parkedState remembers an entity skipped as checkpoint_ahead (for a
// worker: one whose summary and event cursor could not move) so that the
// loop does not rebuild it every pass while nothing changed. events is the
// worker's event cursor (0 for runs).
type parkedState struct{ latest, cp, events int64 }

// New builds a projector. hub may be nil (polling only); m may be nil.
func New(st store.ProjectionStore, sink Sink, hub *notify.Hub, m *telemetry.Metrics, cfg Config) *Projector {
	if cfg.Version == "" {
		cfg.Version = DefaultVersion
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.FullScanEvery <= 0 {
		cfg.FullScanEvery = 30 * time.Second
	}
	if cfg.ScanSlack <= 0 {
		cfg.ScanSlack = 10 * time.Second
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 200
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = 200 * time.Millisecond
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(30*time.Second, cfg.BackoffMin)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Origin == "" {
		host, _ := os.Hostname()
		kind := "cli"
		if cfg.Serving {
			kind = "serve"
		}
		cfg.Origin = fmt.Sprintf("%s:%s:%d", kind, host, os.Getpid())
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if sink == nil {
		sink = BuiltinSink{Store: st}
	}
	p := &Projector{
		st: st, sink: sink, hub: hub, m: m, cfg: cfg, log: log,
		backoff:  map[entityKey]backoffState{},
		reported: map[entityKey]map[string]string{},
		parked:   map[entityKey]parkedState{},
		scans:    map[string]*scanState{store.ProjectionRun: {}, store.ProjectionCodexWorker: {}},
	}
	if ws, ok := st.(workerSource); ok {
		p.workers = ws
	} else {
		log.Warn("khala projection: the store has no codex worker side; only runs are projected")
	}
	return p
}

// ProjectsWorkers reports whether codex workers are projected (the store
// implements the worker side).
func (p *Projector) ProjectsWorkers() bool { return p.workers != nil }

// Version is the projection_version this projector writes.
func (p *Projector) Version() string { return p.cfg.Version }

// SinkName is "builtin" or "http".
func (p *Projector) SinkName() string { return p.sink.Name() }

// SetFault makes that fraction (0..1) of sink writes fail with class
// sink_exception (load tests and alert drills).
func (p *Projector) SetFault(rate float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failRate = min(max(rate, 0), 1)
}

// SetDelay slows the projector by d per entity, so lag builds up under load.
func (p *Projector) SetDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = max(d, 0)
}

// SetReplayFault makes reprojection of every entity fail.
func (p *Projector) SetReplayFault(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.replayFault = on
}

// Faults reports the current fault settings.
func (p *Projector) Faults() (failRate float64, delay time.Duration, replayFault bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failRate, p.delay, p.replayFault
}

// injected is the fault SetFault asks for on this write, or nil.
func (p *Projector) injected() error {
	p.mu.Lock()
	rate := p.failRate
	p.mu.Unlock()
	if rate > 0 && rand.Float64() < rate {
		return &SinkError{Class: ClassSinkException, Err: errors.New("injected projection fault"), Injected: true}
	}
	return nil
}

// Start runs the projection loop until ctx ends or Stop is called. It returns
// an error when the projector is already running.
func (p *Projector) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running {
		return errors.New("projection: projector already running")
	}
	ctx, cancel := context.WithCancel(ctx)
	p.running, p.stop, p.done = true, cancel, make(chan struct{})
	p.m.SetSinkUp(true)
	var wake <-chan struct{}
	unsub := func() {}
	if p.hub != nil {
		wake, unsub = p.hub.SubscribeFiltered("", p.noted.note)
	}
	go func() {
		defer close(p.done)
		defer unsub()
		defer func() {
			p.mu.Lock()
			p.running = false
			p.mu.Unlock()
		}()
		auditDone := make(chan struct{})
		go func() {
			defer close(auditDone)
			p.auditLoop(ctx)
		}()
		p.loop(ctx, wake)
		<-auditDone
	}()
	return nil
}

// auditLoop runs the parity auditor every AuditEvery until ctx ends.
func (p *Projector) auditLoop(ctx context.Context) {
	if p.cfg.AuditEvery <= 0 {
		return
	}
	t := time.NewTicker(p.cfg.AuditEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rep, err := p.Audit(ctx, p.cfg.AuditSample)
		switch {
		case err != nil && ctx.Err() == nil:
			p.log.ErrorContext(ctx, "khala parity audit failed", "err", err)
		case rep.Mismatches > 0:
			p.log.WarnContext(ctx, "khala parity audit found drift", "sampled", rep.Sampled,
				"mismatches", rep.Mismatches, "missing_documents", rep.Missing, "hash_mismatches", rep.HashMismatches)
		}
	}
}

// Stop ends the loop and waits for it.
func (p *Projector) Stop() {
	p.mu.Lock()
	stop, done := p.stop, p.done
	p.mu.Unlock()
	if stop == nil {
		return
	}
	stop()
	<-done
}

// Running reports whether the loop runs (readiness).
func (p *Projector) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running
}

// loop walks the candidates every PollInterval (and when a retry falls
// due), and in between projects the runs that notices name as soon as they
// arrive: under load a notice-driven pass reads only the runs that moved,
// where a walk re-reads every run updated in the last ScanSlack. The walk
// stays the safety net for notices that never came (a failed notifier, a
// reconnected listener) and for other processes' writes.
func (p *Projector) loop(ctx context.Context, wake <-chan struct{}) {
	// The timer fires when the next walk is due: PollInterval after the
	// last one, or earlier when a retry falls due (walks run retries).
	timer := time.NewTimer(0)
	defer timer.Stop()
	var nextWalk time.Time
	for {
		walk := false
		select {
		case <-ctx.Done():
			return
		case <-wake:
			// A notice that did not say what moved asks for a walk now.
			walk = !p.projectNoted(ctx)
		case <-timer.C:
			walk = true
		}
		if walk {
			p.Cycle(ctx)
			nextWalk = time.Now().Add(p.cfg.PollInterval)
		}
		next := nextWalk
		if due, ok := p.nextBackoff(); ok && due.Before(next) {
			next = due
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(max(time.Until(next), time.Millisecond))
	}
}

// noted is what notices named since the projector last looked: the runs
// whose events moved, whether a worker moved, and whether anything may have
// (a notice without a run id, or more runs than a pass should hold).
type noted struct {
	mu      sync.Mutex
	runs    map[string]struct{}
	workers bool
	all     bool
}

// maxNotedRuns bounds the set; past it the next pass walks instead, which
// finds the same runs (they were updated just now).
const maxNotedRuns = 10000

// note is the hub filter of the projector's subscription. It runs under the
// hub's lock, so it only records.
func (n *noted) note(x store.Notice) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case x.RunID == "":
		n.all = true
	case x.Kind == store.NoticeWorker:
		n.workers = true
	case x.Kind == store.NoticeEvent:
		if n.all {
			break
		}
		if len(n.runs) >= maxNotedRuns {
			n.all, n.runs = true, nil
			break
		}
		if n.runs == nil {
			n.runs = map[string]struct{}{}
		}
		n.runs[x.RunID] = struct{}{}
	default:
		return false // a frame moves no projection
	}
	return true
}

// take empties the set and returns what it held, runs in id order.
func (n *noted) take() (runs []string, workers, all bool) {
	n.mu.Lock()
	set := n.runs
	workers, all = n.workers, n.all
	n.runs, n.workers, n.all = nil, false, false
	n.mu.Unlock()
	if all {
		return nil, workers, true
	}
	runs = make([]string, 0, len(set))
	for id := range set {
		runs = append(runs, id)
	}
	slices.Sort(runs)
	return runs, workers, false
}

// projectNoted projects the runs notices named since the last pass, and
// walks the workers when one moved. It returns false, having done nothing,
// when a notice did not say what moved; the caller then walks.
func (p *Projector) projectNoted(ctx context.Context) bool {
	ids, workers, all := p.noted.take()
	if all {
		return false
	}
	now := p.cfg.Now()
	p.mu.Lock()
	due := ids[:0]
	for _, id := range ids {
		// One waiting out a backoff is retried by a walk when it falls due.
		if p.dueLocked(entityKey{store.ProjectionRun, id}, now) {
			due = append(due, id)
		}
	}
	p.mu.Unlock()
	ps := p.newPass(ctx, store.ProjectionRun)
	for page := range slices.Chunk(due, p.cfg.BatchSize) {
		if !ps.projectBehind(page) {
			break
		}
	}
	if workers && p.workers != nil && ctx.Err() == nil {
		p.walk(ctx, now, store.ProjectionCodexWorker)
	}
	return true
}

func (p *Projector) nextBackoff() (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var (
		first time.Time
		ok    bool
	)
	for _, b := range p.backoff {
		if !ok || b.next.Before(first) {
			first, ok = b.next, true
		}
	}
	return first, ok
}

// Cycle runs one pass: export rows other processes recorded (at most once
// per poll interval), then walk the run candidates and the worker
// candidates. See walk.
func (p *Projector) Cycle(ctx context.Context) {
	now := p.cfg.Now()
	p.mu.Lock()
	export := p.cfg.Serving && (p.lastExport.IsZero() || now.Sub(p.lastExport) >= p.cfg.PollInterval)
	if export {
		p.lastExport = now
	}
	p.mu.Unlock()
	if export {
		p.exportRecorded(ctx)
	}
	// The walk reads after this, so it sees every run noted so far.
	p.noted.take()
	p.walk(ctx, now, store.ProjectionRun)
	if p.workers != nil && ctx.Err() == nil {
		p.walk(ctx, now, store.ProjectionCodexWorker)
	}
}

// candidate is one row of a walk: a run, or a worker with its event cursor.
type candidate struct {
	id                 string
	latest, cp, events int64
	updatedAt          time.Time
}

func (p *Projector) candidates(ctx context.Context, kind string, q store.CandidateQuery) ([]candidate, error) {
	var out []candidate
	if kind == store.ProjectionRun {
		page, err := p.st.ProjectionCandidates(ctx, q)
		for _, c := range page {
			out = append(out, candidate{id: c.EntityID, latest: c.LatestSeq, cp: c.CheckpointSeq, updatedAt: c.UpdatedAt})
		}
		return out, err
	}
	page, err := p.workers.WorkerProjectionCandidates(ctx, q)
	for _, c := range page {
		out = append(out, candidate{id: c.EntityID, latest: c.LatestSeq, cp: c.CheckpointSeq, events: c.EventsSeq, updatedAt: c.UpdatedAt})
	}
	return out, err
}

// task is what one entity of a walk gets: its summary, and for a worker its
// event lane; either may be waiting out a backoff.
type task struct {
	id              string
	summary, events bool
	log             *store.RunLog // a run read already (nil: read it when projecting)
}

// walk visits the candidates of one projection page by page and projects
// every one that is not waiting out a backoff or parked. An incremental walk
// only looks at entities updated since shortly before the previous walk;
// every FullScanEvery a walk visits all of them, which also catches what
// clock skew or long transactions hid from incremental walks. A walk that
// a failing sink cut short (see pass) counts as unfinished, so the next one
// starts from the same point.
func (p *Projector) walk(ctx context.Context, now time.Time, kind string) {
	p.mu.Lock()
	sc := p.scans[kind]
	full := sc.lastFull.IsZero() || now.Sub(sc.lastFull) >= p.cfg.FullScanEvery
	q := store.CandidateQuery{Version: p.cfg.Version, Limit: p.cfg.BatchSize}
	if !full {
		q.AfterUpdatedAt = sc.lastScan.Add(-p.cfg.ScanSlack)
	}
	p.mu.Unlock()
	isWorker := kind == store.ProjectionCodexWorker
	inWalk := func(k entityKey) bool { return k.kind == kind || (isWorker && k.kind == laneWorkerEvents) }

	seen := map[string]bool{}
	ps := p.newPass(ctx, kind)
	for {
		page, err := p.candidates(ctx, kind, q)
		if err != nil {
			if ctx.Err() == nil {
				p.log.ErrorContext(ctx, "khala projection: list candidates failed", "projection", kind, "err", err)
			}
			return
		}
		var todo []task
		p.mu.Lock()
		for _, c := range page {
			seen[c.id] = true
			if pk, ok := p.parked[entityKey{kind, c.id}]; ok && pk == (parkedState{c.latest, c.cp, c.events}) {
				continue
			}
			tk := task{id: c.id, summary: p.dueLocked(entityKey{kind, c.id}, now)}
			if isWorker {
				tk.events = p.dueLocked(entityKey{laneWorkerEvents, c.id}, now)
			}
			todo = append(todo, tk)
		}
		p.mu.Unlock()
		if !ps.project(todo) {
			return
		}
		if len(page) < q.Limit {
			break
		}
		last := page[len(page)-1]
		q.AfterUpdatedAt, q.AfterRunID = last.updatedAt, last.id
	}

	// Retries that are due for entities an incremental walk did not see.
	p.mu.Lock()
	dueByID := map[string]*task{}
	var due []*task
	for k, b := range p.backoff {
		if !inWalk(k) || seen[k.id] || now.Before(b.next) {
			continue
		}
		tk := dueByID[k.id]
		if tk == nil {
			tk = &task{id: k.id}
			dueByID[k.id] = tk
			due = append(due, tk)
		}
		if k.kind == laneWorkerEvents {
			tk.events = true
		} else {
			tk.summary = true
		}
	}
	if !ps.sinkDown {
		sc.lastScan = now
		if full {
			sc.lastFull = now
			// What a full walk did not see is in sync now (another process
			// or replica wrote it): forget its retry, parking and reported
			// drift.
			for k := range p.backoff {
				if inWalk(k) && !seen[k.id] {
					delete(p.backoff, k)
				}
			}
			for k := range p.parked {
				if inWalk(k) && !seen[k.id] {
					delete(p.parked, k)
				}
			}
			for k := range p.reported {
				if inWalk(k) && !seen[k.id] {
					delete(p.reported, k)
				}
			}
			due = nil
		}
	}
	p.mu.Unlock()
	for _, tk := range due {
		if ok, sinkFailed := ps.run(*tk); !ok || (sinkFailed && !isWorker) {
			return
		}
	}
}

// pass is one walk's (or notice-driven pass's) account of sink failures.
// A sink that keeps failing (down, timing out) would cost every remaining
// entity a timeout: after a few consecutive failures a run pass stops, and
// a worker pass goes on with the event lanes only (they are written
// locally, not through the sink).
type pass struct {
	p        *Projector
	ctx      context.Context
	kind     string
	failures int
	sinkDown bool
}

func (p *Projector) newPass(ctx context.Context, kind string) *pass {
	return &pass{p: p, ctx: ctx, kind: kind}
}

// run projects one task; ok false ends the pass, sinkFailed reports a real
// sink failure.
func (ps *pass) run(tk task) (ok, sinkFailed bool) {
	if ps.sinkDown {
		tk.summary = false
	}
	if !tk.summary && !tk.events {
		return true, false
	}
	alive, err := ps.p.projectPaced(ps.ctx, ps.kind, tk)
	if !alive {
		return false, false
	}
	return ps.account(err)
}

func (ps *pass) account(err error) (ok, sinkFailed bool) {
	switch {
	case err != nil && isSinkFailure(err):
		ps.failures++
		if ps.failures >= maxSinkFailuresPerPass && !ps.sinkDown {
			ps.p.log.WarnContext(ps.ctx, "khala projection: sink failing, pass cut short", "projection", ps.kind, "failures", ps.failures)
			if ps.kind != store.ProjectionCodexWorker {
				return false, true
			}
			ps.sinkDown = true
		}
		return true, true
	case err == nil:
		ps.failures = 0
	}
	return true, false
}

// project projects a page of tasks: run summaries in one sink call when
// the sink batches, else one by one. It reports false when the pass ends.
func (ps *pass) project(todo []task) bool {
	if bs, ok := ps.p.batchSink(ps.kind); ok && len(todo) > 1 {
		var ids []string
		for _, tk := range todo {
			if tk.summary {
				ids = append(ids, tk.id)
			}
		}
		if ps.ctx.Err() != nil {
			return false
		}
		return ps.accountAll(ps.p.projectRunBatch(ps.ctx, bs, ids, ps.p.readRuns(ps.ctx, ids)))
	}
	for _, tk := range todo {
		if ok, _ := ps.run(tk); !ok {
			return false
		}
	}
	return true
}

func (ps *pass) accountAll(errs []error) bool {
	for _, err := range errs {
		if ok, _ := ps.account(err); !ok {
			return false
		}
	}
	return true
}

// projectBehind projects those of runs whose checkpoint is behind the log
// (what a walk's candidate query selects): a notice can name a run another
// pass or replica has projected since. It reports false when the pass ends.
func (ps *pass) projectBehind(ids []string) bool {
	if ps.ctx.Err() != nil {
		return false
	}
	logs := ps.p.readRuns(ps.ctx, ids)
	var (
		behind []string
		read   []store.RunLog
	)
	for i, lr := range logs {
		if cp := lr.Checkpoint; lr.Err == nil && cp != nil && cp.LastSeq == lr.Run.LatestSeq && cp.ProjectionVersion == ps.p.cfg.Version {
			continue
		}
		behind, read = append(behind, ids[i]), append(read, lr)
	}
	if bs, ok := ps.p.batchSink(ps.kind); ok && len(behind) > 0 {
		return ps.accountAll(ps.p.projectRunBatch(ps.ctx, bs, behind, read))
	}
	for i, id := range behind {
		if ok, _ := ps.run(task{id: id, summary: true, log: &read[i]}); !ok {
			return false
		}
	}
	return true
}

// batchSink returns the sink as a BatchSink when a walk of kind may write
// in batches: run summaries, a sink that batches, and no fault delay (which
// paces writes one by one).
func (p *Projector) batchSink(kind string) (BatchSink, bool) {
	if kind != store.ProjectionRun {
		return nil, false
	}
	p.mu.Lock()
	delay := p.delay
	p.mu.Unlock()
	bs, ok := p.sink.(BatchSink)
	return bs, ok && delay == 0
}

// dueLocked reports whether k is not waiting out a backoff. p.mu is held.
func (p *Projector) dueLocked(k entityKey, now time.Time) bool {
	b, ok := p.backoff[k]
	return !ok || !now.Before(b.next)
}

// maxSinkFailuresPerPass consecutive sink failures end a pass early.
const maxSinkFailuresPerPass = 3

func isSinkFailure(err error) bool {
	var se *SinkError
	return errors.As(err, &se) && !se.Injected
}

// projectPaced projects one task after the configured fault delay; alive
// is false when ctx ended.
func (p *Projector) projectPaced(ctx context.Context, kind string, tk task) (alive bool, err error) {
	p.mu.Lock()
	delay := p.delay
	p.mu.Unlock()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, nil
		case <-t.C:
		}
	}
	if ctx.Err() != nil {
		return false, nil
	}
	if kind == store.ProjectionRun {
		_, err = p.projectRun(ctx, tk.id, tk.log)
	} else {
		_, err = p.projectWorkerLanes(ctx, tk.id, tk.summary, tk.events)
	}
	p.logWriteFailure(ctx, kind, tk.id, err)
	return true, err
}

// retryLater schedules the next attempt of k with exponential backoff and
// jitter (replicas do not retry in step). p.mu is held.
func (p *Projector) retryLaterLocked(k entityKey) {
	b := p.backoff[k]
	d := p.cfg.BackoffMin << min(b.attempts, 20)
	d = min(d, p.cfg.BackoffMax)
	d = d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
	b.attempts++
	b.next = p.cfg.Now().Add(d)
	p.backoff[k] = b
}

// ProjectRun rebuilds one run's summary, decides and writes it. A failed
// write leaves the checkpoint unchanged and schedules a retry with
// exponential backoff; every retry rebuilds the latest state, so no update
// is lost.
func (p *Projector) ProjectRun(ctx context.Context, runID string) (Outcome, error) {
	return p.projectRun(ctx, runID, nil)
}

// projectRun is ProjectRun of a run read already (lr nil: read it now).
func (p *Projector) projectRun(ctx context.Context, runID string, lr *store.RunLog) (Outcome, error) {
	if lr == nil {
		lr = &p.readRuns(ctx, []string{runID})[0]
	}
	out, err := p.projectLog(ctx, runID, false, *lr)
	p.settleRun(runID, out, err)
	return out, err
}

// settleRun records the outcome of a run projection: a success clears the
// retry (and parking, unless the checkpoint is ahead), a failure schedules
// the next attempt.
func (p *Projector) settleRun(runID string, out Outcome, err error) {
	k := entityKey{store.ProjectionRun, runID}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err == nil:
		delete(p.backoff, k)
		if out.Decision.Reason != ReasonCheckpointAhead {
			delete(p.parked, k)
		}
	case errors.Is(err, store.ErrNotFound):
		delete(p.backoff, k)
	default:
		p.retryLaterLocked(k)
	}
}

func (p *Projector) project(ctx context.Context, runID string, force bool) (Outcome, error) {
	return p.projectLog(ctx, runID, force, p.readRuns(ctx, []string{runID})[0])
}

// projectLog is project of a run read already.
func (p *Projector) projectLog(ctx context.Context, runID string, force bool, lr store.RunLog) (Outcome, error) {
	pr := p.prepareRun(ctx, runID, force, lr)
	if pr.err != nil || pr.in == nil {
		pr.end(pr.err)
		return pr.out, pr.err
	}
	wm, err := p.sinkWrite(pr.ctx, *pr.in)
	return p.finishRun(pr, wm, err)
}

// BatchLogLoader is a store that reads the checkpoints and logs of many
// runs in one snapshot and one round trip (results in runIDs' order, each
// with its own error); the events may come without their payloads, which
// a run summary does not read. One snapshot is as safe as the
// checkpoint-then-log order: a checkpoint only names a seq that was in the
// log when it committed.
type BatchLogLoader interface {
	LoadRunLogsAndCheckpoints(ctx context.Context, projection string, runIDs []string) ([]store.RunLog, error)
}

// readRuns reads the checkpoints (nil: none) and logs of ids: in one read
// when the store can (BatchLogLoader), else, or when that read fails, run
// by run.
func (p *Projector) readRuns(ctx context.Context, ids []string) []store.RunLog {
	if l, ok := p.st.(BatchLogLoader); ok {
		if logs, err := l.LoadRunLogsAndCheckpoints(ctx, store.ProjectionRun, ids); err == nil {
			return logs
		}
	}
	logs := make([]store.RunLog, len(ids))
	for i, id := range ids {
		// The checkpoint is read before the log: the log only grows and a
		// checkpoint only names a seq that was in it, so reading in this
		// order a concurrent writer (replica) can never make a checkpoint
		// look ahead of the log.
		cp, err := p.checkpoint(ctx, store.ProjectionRun, id)
		if err == nil {
			logs[i].Run, logs[i].Events, err = p.st.LoadRunLog(ctx, id)
		}
		logs[i].Checkpoint, logs[i].Err = cp, err
	}
	return logs
}

// preparedRun is a run projection up to its write.
type preparedRun struct {
	ctx context.Context // in the trace of the run's last event, inside the write's span
	end func(error)     // ends the span
	out Outcome
	w   summaryWrite
	in  *store.ProjectionWriteInput // nil: nothing to write (see out), or err
	err error
}

// prepareRun rebuilds and decides one run's summary from what readRuns
// read of it. A decision from a checkpoint gone stale since fails the
// write's precondition and is re-decided.
func (p *Projector) prepareRun(ctx context.Context, runID string, force bool, lr store.RunLog) (pr preparedRun) {
	pr = preparedRun{ctx: ctx, end: func(error) {}, out: Outcome{EntityID: runID, DocKey: RunDocKey(runID)}}
	if lr.Err != nil {
		pr.err = fmt.Errorf("load run %s: %w", runID, lr.Err)
		return pr
	}
	cp, run, events := lr.Checkpoint, lr.Run, lr.Events
	if n := len(events); n > 0 {
		last := events[n-1].Trace
		ctx = p.continueTrace(ctx, last)
	}
	pr.ctx, pr.end = p.span(ctx, telemetry.ProjectionRunSummary, run.LatestSeq)

	var prev *RunSummary
	if n := len(events); run.LatestSeq > 0 && (n == 0 || events[n-1].Seq != run.LatestSeq) {
		prev = p.previousSummary(pr.ctx, runID)
	}
	sum, gaps := buildRunSummary(run, lr.Elided, events, p.cfg.Version, prev, p.cfg.Now())
	doc, hash, err := encodeSummary(sum)
	if err != nil {
		pr.err = err
		return pr
	}
	pr.w = summaryWrite{
		kind: store.ProjectionRun, metric: telemetry.ProjectionRunSummary, topic: store.TopicRunSummaries,
		owner: run.OwnerSub, latest: run.LatestSeq, seq: sum.LatestSeq, doc: doc, hash: hash, gaps: gaps,
	}
	pr.in = p.decide(pr.ctx, &pr.out, cp, pr.w, force)
	return pr
}

// finishRun is a run projection after its write.
func (p *Projector) finishRun(pr preparedRun, wm int64, err error) (Outcome, error) {
	err = p.written(pr.ctx, &pr.out, pr.w, wm, err)
	pr.end(err)
	return pr.out, err
}

// projectRunBatch projects several runs with one sink call for all their
// writes (one transaction on PostgreSQL instead of one per run). Each
// run's outcome is settled as ProjectRun would; results are in ids' order.
func (p *Projector) projectRunBatch(ctx context.Context, bs BatchSink, ids []string, logs []store.RunLog) []error {
	prs := make([]preparedRun, len(ids))
	wms, errs := make([]int64, len(ids)), make([]error, len(ids))
	var ins []store.ProjectionWriteInput
	var at []int // index in ids of each input
	for i, id := range ids {
		prs[i] = p.prepareRun(ctx, id, false, logs[i])
		if prs[i].in == nil {
			continue
		}
		if errs[i] = p.injected(); errs[i] == nil {
			ins = append(ins, *prs[i].in)
			at = append(at, i)
		}
	}
	if len(ins) > 0 {
		bwms, berrs := bs.WriteBatch(ctx, ins)
		for j, i := range at {
			wms[i], errs[i] = bwms[j], berrs[j]
		}
	}
	for i, pr := range prs {
		out, err := pr.out, pr.err
		if pr.in == nil {
			pr.end(err) // nothing to write: the read failed or the decision was to skip
		} else {
			out, err = p.finishRun(pr, wms[i], errs[i])
		}
		p.settleRun(ids[i], out, err)
		p.logWriteFailure(ctx, store.ProjectionRun, ids[i], err)
		errs[i] = err
	}
	return errs
}

// checkpoint reads an entity's checkpoint; nil when it has none.
func (p *Projector) checkpoint(ctx context.Context, projection, entityID string) (*store.Checkpoint, error) {
	c, err := p.st.GetCheckpoint(ctx, projection, entityID)
	switch {
	case err == nil:
		return &c, nil
	case errors.Is(err, store.ErrNotFound):
		return nil, nil
	default:
		return nil, fmt.Errorf("checkpoint of %s %s: %w", projection, entityID, err)
	}
}

// continueTrace makes ctx continue the trace stored with the entity's last
// event, so the projection span joins the request that caused it.
func (p *Projector) continueTrace(ctx context.Context, tr store.TraceContext) context.Context {
	// Also without a tracer: the write's log line carries the ids.
	ctx = telemetry.ContextWithRemote(ctx, tr.TraceParent, tr.TraceState)
	if tr.RequestID != "" {
		ctx = telemetry.WithRequestID(ctx, tr.RequestID)
	}
	return ctx
}

// span starts "khala.projection.write" when tracing is on; end records the
// error and ends it.
func (p *Projector) span(ctx context.Context, projection string, seq int64) (context.Context, func(error)) {
	if p.cfg.Tracer == nil {
		return ctx, func(error) {}
	}
	ctx, span := p.cfg.Tracer.Start(ctx, "khala.projection.write",
		trace.WithAttributes(attribute.String("projection", projection), attribute.Int64("seq", seq)))
	return ctx, func(err error) {
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}

// summaryWrite is a rebuilt summary ready for the decision.
type summaryWrite struct {
	kind   string // store.ProjectionRun or store.ProjectionCodexWorker
	metric string // the metric's projection label
	topic  string
	owner  string
	latest int64 // the entity's latest seq
	seq    int64 // runtime_source.seq of the summary
	doc    json.RawMessage
	hash   string
	gaps   []Gap
}

// decideAndWrite reports gaps, decides (DESIGN section 7) from the
// checkpoint cp read before the log, and writes through the sink. The
// checkpoint advances only with a successful write. force (reprojection)
// always writes.
func (p *Projector) decideAndWrite(ctx context.Context, out *Outcome, cp *store.Checkpoint, w summaryWrite, force bool) error {
	in := p.decide(ctx, out, cp, w, force)
	if in == nil {
		return nil
	}
	wm, err := p.sinkWrite(ctx, *in)
	return p.written(ctx, out, w, wm, err)
}

// sinkWrite writes one document through the sink, or fails it when a
// fault is injected.
func (p *Projector) sinkWrite(ctx context.Context, in store.ProjectionWriteInput) (int64, error) {
	if err := p.injected(); err != nil {
		return 0, err
	}
	return p.sink.Write(ctx, in)
}

// logWriteFailure logs a failed projection of one entity (not when the
// projector is stopping).
func (p *Projector) logWriteFailure(ctx context.Context, kind, id string, err error) {
	if err != nil && ctx.Err() == nil {
		p.log.WarnContext(ctx, "khala projection write failed", "projection", kind, "entity_id", id, "err", err)
	}
}

// decide is decideAndWrite up to the write: the input to write, or nil
// when the decision is to skip (out records it).
func (p *Projector) decide(ctx context.Context, out *Outcome, cp *store.Checkpoint, w summaryWrite, force bool) *store.ProjectionWriteInput {
	key := entityKey{w.kind, out.EntityID}
	out.Seq, out.Hash, out.Gaps = w.seq, w.hash, w.gaps
	cpSeq := int64(-1)
	if cp != nil {
		cpSeq = cp.LastSeq
	}
	// A gap is news only above the checkpoint; below it, it was reported
	// when that part of the log was projected.
	for _, g := range w.gaps {
		switch {
		case force:
			p.drift(ctx, key, ReasonSequenceGap, g, "")
		case g.ExpectedSeq > cpSeq:
			p.drift(ctx, key, ReasonSequenceGap, g, fmt.Sprintf("%d|%d", g.ExpectedSeq, g.IncomingSeq))
		}
	}

	if force {
		out.Decision = Decision{Action: ActionWrite, Reason: "reproject"}
	} else {
		out.Decision = Decide(cp, w.seq, p.cfg.Version, w.hash)
	}
	if out.Decision.Drift {
		dedupe := fmt.Sprintf("%s|%d|%s|%s", out.Decision.Reason, cpSeq, cp.SummaryHash, cp.ProjectionVersion)
		p.drift(ctx, key, out.Decision.Reason, map[string]any{
			"document_id": out.DocKey, "checkpoint_seq": cp.LastSeq, "runtime_seq": w.seq,
			"checkpoint_hash": cp.SummaryHash, "summary_hash": w.hash,
			"checkpoint_version": cp.ProjectionVersion, "projection_version": p.cfg.Version,
		}, dedupe)
	}
	if out.Decision.Action == ActionSkip {
		out.Result = "skipped"
		p.m.ProjectionWrite(w.metric, "skipped")
		if out.Decision.Reason == ReasonCheckpointAhead && w.kind == store.ProjectionRun {
			p.mu.Lock()
			p.parked[key] = parkedState{latest: w.latest, cp: cpSeq}
			p.mu.Unlock()
		}
		return nil
	}

	out.LagEvents = w.latest
	if cp != nil {
		out.LagEvents = max(w.latest-cp.LastSeq, 0)
	}
	p.m.ProjectionLag(w.metric, out.LagEvents)

	in := store.ProjectionWriteInput{
		Projection: w.kind, EntityID: out.EntityID, Topic: w.topic,
		DocKey: out.DocKey, OwnerSub: w.owner, Doc: w.doc, Hash: w.hash,
		Version: p.cfg.Version, SourceSeq: w.seq, ExpectSeq: cpSeq,
		// Reprojection replaces a checkpoint that is ahead of the log
		// (corrupt) unconditionally; any other checkpoint only through the
		// precondition, so a concurrent projector's newer write is never
		// moved backwards.
		Force: force && cp != nil && cp.LastSeq > w.seq,
	}
	return &in
}

// written is decideAndWrite after the write: metrics, the write's log line
// and the outcome of the sink's answer.
func (p *Projector) written(ctx context.Context, out *Outcome, w summaryWrite, wm int64, err error) error {
	key := entityKey{w.kind, out.EntityID}
	switch {
	case err == nil:
		out.Result, out.Watermark = "ok", wm
		p.m.ProjectionWrite(w.metric, "ok")
		// One line per document write, in the trace of the request that
		// caused it (the runbook's correlation walkthrough, step 4).
		idKey := "run_id"
		if w.kind != store.ProjectionRun {
			idKey = "worker_id"
		}
		p.log.InfoContext(ctx, "khala projection write", "projection", w.metric, idKey, out.EntityID,
			"seq", w.seq, "decision", out.Decision.Reason, "lag_events", out.LagEvents, "watermark", wm)
		p.m.SetSinkUp(true)
		p.mu.Lock()
		delete(p.reported, key)
		p.mu.Unlock()
		return nil
	case errors.Is(err, store.ErrConflict):
		out.Result, out.Superseded = "skipped", true
		p.m.ProjectionWrite(w.metric, "skipped")
		return nil
	default:
		out.Result = "error"
		class := classOf(err)
		p.m.ProjectionWrite(w.metric, "error")
		p.m.ProjectionWriteFailure(w.metric, class)
		p.m.SetSinkUp(false)
		return fmt.Errorf("write %s through %s sink: %w", out.DocKey, p.sink.Name(), err)
	}
}

// previousSummary reads the stored document, used when retention pruned the
// run's latest event.
func (p *Projector) previousSummary(ctx context.Context, runID string) *RunSummary {
	d, err := p.st.GetDocument(ctx, store.TopicRunSummaries, RunDocKey(runID))
	if err != nil {
		return nil
	}
	var s RunSummary
	if json.Unmarshal(d.Payload, &s) != nil {
		return nil
	}
	return &s
}

// drift records one incident. dedupeKey, when set, suppresses a repeat of
// the same finding for the entity (a retried write re-decides the same
// drift); it is forgotten after the entity's next successful write.
func (p *Projector) drift(ctx context.Context, k entityKey, reason string, detail any, dedupeKey string) {
	if dedupeKey != "" {
		p.mu.Lock()
		seen := p.reported[k]
		if seen == nil {
			seen = map[string]string{}
			p.reported[k] = seen
		}
		if seen[reason] == dedupeKey {
			p.mu.Unlock()
			return
		}
		seen[reason] = dedupeKey
		p.mu.Unlock()
	}
	p.recordDrift(ctx, projectionOf(k.kind), k.id, reason, detail)
}

func (p *Projector) recordDrift(ctx context.Context, projection, entityID, reason string, detail any) {
	raw, err := json.Marshal(detail)
	if err != nil {
		raw = []byte(`{}`)
	}
	p.log.WarnContext(ctx, "khala projection drift detected", "projection", projection, "entity_id", entityID, "reason_class", reason)
	_, err = p.st.RecordDrift(ctx, store.DriftIncident{
		Projection: projection, EntityID: entityID, ReasonClass: reason, Detail: raw,
		Origin: p.cfg.Origin, Counted: p.cfg.Serving,
	})
	if err != nil {
		p.log.ErrorContext(ctx, "khala projection: record drift failed", "err", err)
	}
	// Count even when the row could not be stored: the metric is what
	// alerts see, and a serving process counts its own findings.
	if p.cfg.Serving {
		p.m.ProjectionDrift(metricProjection(projection), reason)
	}
}

func metricProjection(projection string) string {
	if projection == store.ProjectionCodexWorker {
		return telemetry.ProjectionCodexWorkerSummary
	}
	return telemetry.ProjectionRunSummary
}

// exportRecorded turns drift and replay rows recorded by operator commands
// (which Prometheus does not scrape) into this process's metrics. Claiming
// marks each row counted in the same statement, so replicas never count a
// row twice and rows this process counted itself are never claimed.
func (p *Projector) exportRecorded(ctx context.Context) {
	for {
		ds, err := p.st.ClaimUncountedDrift(ctx, 500)
		if err != nil {
			if ctx.Err() == nil {
				p.log.ErrorContext(ctx, "khala projection: claim drift rows failed", "err", err)
			}
			break
		}
		for _, d := range ds {
			p.m.ProjectionDrift(metricProjection(d.Projection), d.ReasonClass)
		}
		if len(ds) < 500 {
			break
		}
	}
	for {
		rs, err := p.st.ClaimUncountedReplays(ctx, 500)
		if err != nil {
			if ctx.Err() == nil {
				p.log.ErrorContext(ctx, "khala projection: claim replay rows failed", "err", err)
			}
			break
		}
		for _, r := range rs {
			p.m.ProjectionReplay(r.Scope, r.Result, r.Duration)
		}
		if len(rs) < 500 {
			break
		}
	}
}
