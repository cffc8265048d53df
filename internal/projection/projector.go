package projection

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
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
	backoff     map[string]backoffState
	reported    map[string]map[string]string // entity -> reason -> last finding reported, so retries do not repeat it
	parked      map[string]parkedState
	running     bool
	stop        context.CancelFunc
	done        chan struct{}
	lastScan    time.Time
	lastFull    time.Time
	lastExport  time.Time
}

type backoffState struct {
	attempts int
	next     time.Time
}

// parkedState remembers an entity skipped as checkpoint_ahead so that the
// loop does not rebuild it every pass while nothing changed.
type parkedState struct{ latest, cp int64 }

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
	return &Projector{
		st: st, sink: sink, hub: hub, m: m, cfg: cfg, log: log,
		backoff:  map[string]backoffState{},
		reported: map[string]map[string]string{},
		parked:   map[string]parkedState{},
	}
}

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

func (p *Projector) injectFailure() bool {
	p.mu.Lock()
	rate := p.failRate
	p.mu.Unlock()
	return rate > 0 && rand.Float64() < rate
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
		wake, unsub = p.hub.Subscribe("")
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

func (p *Projector) loop(ctx context.Context, wake <-chan struct{}) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-timer.C:
		}
		p.Cycle(ctx)
		next := p.cfg.PollInterval
		if due, ok := p.nextBackoff(); ok {
			next = min(next, max(time.Until(due), time.Millisecond))
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
// per poll interval), then walk the candidates page by page and project
// every one that is not waiting out a backoff or parked as checkpoint_ahead.
// An incremental pass only looks at runs updated since shortly before the
// previous pass; every FullScanEvery a pass walks all runs, which also
// catches what clock skew or long transactions hid from incremental passes.
func (p *Projector) Cycle(ctx context.Context) {
	now := p.cfg.Now()
	p.mu.Lock()
	export := p.cfg.Serving && (p.lastExport.IsZero() || now.Sub(p.lastExport) >= p.cfg.PollInterval)
	if export {
		p.lastExport = now
	}
	full := p.lastFull.IsZero() || now.Sub(p.lastFull) >= p.cfg.FullScanEvery
	q := store.CandidateQuery{Version: p.cfg.Version, Limit: p.cfg.BatchSize}
	if !full {
		q.AfterUpdatedAt = p.lastScan.Add(-p.cfg.ScanSlack)
	}
	p.mu.Unlock()
	if export {
		p.exportRecorded(ctx)
	}

	seen := map[string]bool{}
	failures := 0
	for {
		page, err := p.st.ProjectionCandidates(ctx, q)
		if err != nil {
			if ctx.Err() == nil {
				p.log.ErrorContext(ctx, "khala projection: list candidates failed", "err", err)
			}
			return
		}
		var todo []string
		p.mu.Lock()
		for _, c := range page {
			seen[c.EntityID] = true
			if b, ok := p.backoff[c.EntityID]; ok && now.Before(b.next) {
				continue
			}
			if pk, ok := p.parked[c.EntityID]; ok && pk.latest == c.LatestSeq && pk.cp == c.CheckpointSeq {
				continue
			}
			todo = append(todo, c.EntityID)
		}
		p.mu.Unlock()
		for _, id := range todo {
			alive, err := p.projectPaced(ctx, id)
			if !alive {
				return
			}
			// A sink that keeps failing (down, timing out) would cost every
			// remaining entity a timeout; stop the pass and let backoff and
			// the next pass retry, so an outage costs a few calls per pass.
			if err != nil && isSinkFailure(err) {
				failures++
				if failures >= maxSinkFailuresPerPass {
					p.log.WarnContext(ctx, "khala projection: sink failing, pass cut short", "failures", failures)
					return
				}
			} else if err == nil {
				failures = 0
			}
		}
		if len(page) < q.Limit {
			break
		}
		last := page[len(page)-1]
		q.AfterUpdatedAt, q.AfterRunID = last.UpdatedAt, last.EntityID
	}

	// Retries that are due for entities an incremental walk did not see.
	p.mu.Lock()
	var due []string
	for id, b := range p.backoff {
		if !seen[id] && !now.Before(b.next) {
			due = append(due, id)
		}
	}
	p.lastScan = now
	if full {
		p.lastFull = now
		// What a full walk did not see is in sync now (another process or
		// replica wrote it): forget its retry, parking and reported drift.
		for id := range p.backoff {
			if !seen[id] {
				delete(p.backoff, id)
			}
		}
		for id := range p.parked {
			if !seen[id] {
				delete(p.parked, id)
			}
		}
		for id := range p.reported {
			if !seen[id] {
				delete(p.reported, id)
			}
		}
		due = nil
	}
	p.mu.Unlock()
	for _, id := range due {
		alive, err := p.projectPaced(ctx, id)
		if !alive || (err != nil && isSinkFailure(err)) {
			return
		}
	}
}

// maxSinkFailuresPerPass consecutive sink failures end a pass early.
const maxSinkFailuresPerPass = 3

func isSinkFailure(err error) bool {
	var se *SinkError
	return errors.As(err, &se) && !se.Injected
}

// projectPaced projects one run after the configured fault delay; alive is
// false when ctx ended.
func (p *Projector) projectPaced(ctx context.Context, id string) (alive bool, err error) {
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
	if _, err = p.ProjectRun(ctx, id); err != nil && ctx.Err() == nil {
		p.log.WarnContext(ctx, "khala projection write failed", "run_id", id, "err", err)
	}
	return true, err
}

// ProjectRun rebuilds one run's summary, decides and writes it. A failed
// write leaves the checkpoint unchanged and schedules a retry with
// exponential backoff; every retry rebuilds the latest state, so no update
// is lost.
func (p *Projector) ProjectRun(ctx context.Context, runID string) (Outcome, error) {
	out, err := p.project(ctx, runID, false)
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err == nil:
		delete(p.backoff, runID)
		if out.Decision.Reason != ReasonCheckpointAhead {
			delete(p.parked, runID)
		}
	case errors.Is(err, store.ErrNotFound):
		delete(p.backoff, runID)
	default:
		b := p.backoff[runID]
		d := p.cfg.BackoffMin << min(b.attempts, 20)
		d = min(d, p.cfg.BackoffMax)
		d = d/2 + time.Duration(rand.Int64N(int64(d/2)+1)) // jitter: replicas do not retry in step
		b.attempts++
		b.next = p.cfg.Now().Add(d)
		p.backoff[runID] = b
	}
	return out, err
}

func (p *Projector) project(ctx context.Context, runID string, force bool) (Outcome, error) {
	out := Outcome{EntityID: runID, DocKey: RunDocKey(runID)}
	// The checkpoint is read before the log: the log only grows and a
	// checkpoint only names a seq that was in it, so reading in this order
	// a concurrent writer (replica) can never make a checkpoint look ahead
	// of the log. A decision from a stale checkpoint fails the write's
	// precondition instead and is re-decided.
	var cp *store.Checkpoint
	c, err := p.st.GetCheckpoint(ctx, store.ProjectionRun, runID)
	switch {
	case err == nil:
		cp = &c
	case !errors.Is(err, store.ErrNotFound):
		return out, fmt.Errorf("checkpoint of %s: %w", runID, err)
	}
	run, events, err := p.st.LoadRunLog(ctx, runID)
	if err != nil {
		return out, fmt.Errorf("load run %s: %w", runID, err)
	}
	if p.cfg.Tracer != nil {
		if n := len(events); n > 0 {
			last := events[n-1].Trace
			ctx = telemetry.ContextWithRemote(ctx, last.TraceParent, last.TraceState)
			if last.RequestID != "" {
				ctx = telemetry.WithRequestID(ctx, last.RequestID)
			}
		}
		var span trace.Span
		ctx, span = p.cfg.Tracer.Start(ctx, "khala.projection.write",
			trace.WithAttributes(attribute.String("projection", telemetry.ProjectionRunSummary), attribute.Int64("seq", run.LatestSeq)))
		defer func() {
			if err != nil {
				span.SetStatus(codes.Error, err.Error())
			}
			span.End()
		}()
	}

	var prev *RunSummary
	if n := len(events); run.LatestSeq > 0 && (n == 0 || events[n-1].Seq != run.LatestSeq) {
		prev = p.previousSummary(ctx, runID)
	}
	sum, gaps := BuildRunSummary(run, events, p.cfg.Version, prev, p.cfg.Now())
	doc, hash, err := encodeSummary(sum)
	if err != nil {
		return out, err
	}
	out.Seq, out.Hash, out.Gaps = sum.LatestSeq, hash, gaps

	cpSeq := int64(-1)
	if cp != nil {
		cpSeq = cp.LastSeq
	}
	// A gap is news only above the checkpoint; below it, it was reported
	// when that part of the log was projected.
	for _, g := range gaps {
		switch {
		case force:
			p.drift(ctx, runID, ReasonSequenceGap, g, "")
		case g.ExpectedSeq > cpSeq:
			p.drift(ctx, runID, ReasonSequenceGap, g, fmt.Sprintf("%d|%d", g.ExpectedSeq, g.IncomingSeq))
		}
	}

	if force {
		out.Decision = Decision{Action: ActionWrite, Reason: "reproject"}
	} else {
		out.Decision = Decide(cp, sum.LatestSeq, p.cfg.Version, hash)
	}
	proj := telemetry.ProjectionRunSummary
	if out.Decision.Drift {
		key := fmt.Sprintf("%s|%d|%s|%s", out.Decision.Reason, cpSeq, cp.SummaryHash, cp.ProjectionVersion)
		p.drift(ctx, runID, out.Decision.Reason, map[string]any{
			"document_id": out.DocKey, "checkpoint_seq": cp.LastSeq, "runtime_seq": sum.LatestSeq,
			"checkpoint_hash": cp.SummaryHash, "summary_hash": hash,
			"checkpoint_version": cp.ProjectionVersion, "projection_version": p.cfg.Version,
		}, key)
	}
	if out.Decision.Action == ActionSkip {
		out.Result = "skipped"
		p.m.ProjectionWrite(proj, "skipped")
		if out.Decision.Reason == ReasonCheckpointAhead {
			p.mu.Lock()
			p.parked[runID] = parkedState{latest: run.LatestSeq, cp: cpSeq}
			p.mu.Unlock()
		}
		return out, nil
	}

	out.LagEvents = run.LatestSeq
	if cp != nil {
		out.LagEvents = max(run.LatestSeq-cp.LastSeq, 0)
	}
	p.m.ProjectionLag(proj, out.LagEvents)

	in := store.ProjectionWriteInput{
		Projection: store.ProjectionRun, EntityID: runID, Topic: store.TopicRunSummaries,
		DocKey: out.DocKey, OwnerSub: run.OwnerSub, Doc: doc, Hash: hash,
		Version: p.cfg.Version, SourceSeq: sum.LatestSeq, ExpectSeq: cpSeq,
		// Reprojection replaces a checkpoint that is ahead of the log
		// (corrupt) unconditionally; any other checkpoint only through the
		// precondition, so a concurrent projector's newer write is never
		// moved backwards.
		Force: force && cp != nil && cp.LastSeq > sum.LatestSeq,
	}
	var wm int64
	if p.injectFailure() {
		err = &SinkError{Class: ClassSinkException, Err: errors.New("injected projection fault"), Injected: true}
	} else {
		wm, err = p.sink.Write(ctx, in)
	}
	switch {
	case err == nil:
		out.Result, out.Watermark = "ok", wm
		p.m.ProjectionWrite(proj, "ok")
		p.m.SetSinkUp(true)
		p.mu.Lock()
		delete(p.reported, runID)
		p.mu.Unlock()
		return out, nil
	case errors.Is(err, store.ErrConflict):
		out.Result, out.Superseded = "skipped", true
		p.m.ProjectionWrite(proj, "skipped")
		return out, nil
	default:
		out.Result = "error"
		class := classOf(err)
		p.m.ProjectionWrite(proj, "error")
		p.m.ProjectionWriteFailure(proj, class)
		p.m.SetSinkUp(false)
		return out, fmt.Errorf("write %s through %s sink: %w", out.DocKey, p.sink.Name(), err)
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
func (p *Projector) drift(ctx context.Context, entityID, reason string, detail any, dedupeKey string) {
	if dedupeKey != "" {
		p.mu.Lock()
		seen := p.reported[entityID]
		if seen == nil {
			seen = map[string]string{}
			p.reported[entityID] = seen
		}
		if seen[reason] == dedupeKey {
			p.mu.Unlock()
			return
		}
		seen[reason] = dedupeKey
		p.mu.Unlock()
	}
	p.recordDrift(ctx, store.ProjectionRun, entityID, reason, detail)
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
