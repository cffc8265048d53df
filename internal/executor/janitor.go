package executor

import (
	"context"
	"log/slog"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// JanitorConfig configures the lease janitor.
type JanitorConfig struct {
	Interval    time.Duration // default 2s
	MaxAttempts int           // reclaims without progress before failing the run; default 3
	Batch       int           // reclaims per cycle; default 100
}

// Janitor reclaims the expired leases of non-terminal runs: it appends
// run.executor_lost and makes the run claimable again, failing it with
// executor_recovery_exhausted after MaxAttempts reclaims without progress.
// Every node runs one; the store's row locks keep them from double-reclaiming.
type Janitor struct {
	cfg  JanitorConfig
	st   store.Store
	m    *telemetry.Metrics
	log  *slog.Logger
	wake func() // kicks the local executor after a reclaim
	stop context.CancelFunc
	done chan struct{}
}

// NewJanitor returns a janitor; wake (optional) is called after reclaims.
func NewJanitor(cfg JanitorConfig, st store.Store, m *telemetry.Metrics, log *slog.Logger, wake func()) *Janitor {
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 3
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 100
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Janitor{cfg: cfg, st: st, m: m, log: log, wake: wake, done: make(chan struct{})}
}

// Start runs cycles every Interval until Stop or ctx ends.
func (j *Janitor) Start(ctx context.Context) {
	ctx, j.stop = context.WithCancel(ctx)
	go func() {
		defer close(j.done)
		t := time.NewTicker(j.cfg.Interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				j.Cycle(ctx)
			}
		}
	}()
}

// Stop ends the janitor and waits for it.
func (j *Janitor) Stop() {
	if j.stop != nil {
		j.stop()
		<-j.done
	}
}

// Cycle runs one reclaim pass and returns what it did.
func (j *Janitor) Cycle(ctx context.Context) []store.Reclaim {
	j.m.JanitorCycle()
	recs, err := j.st.ReclaimExpired(ctx, time.Now(), j.cfg.MaxAttempts, j.cfg.Batch)
	if err != nil {
		if ctx.Err() == nil {
			j.log.WarnContext(ctx, "janitor cycle failed", "error", err)
			j.m.JanitorReclaim("error")
		}
		return nil
	}
	for _, r := range recs {
		j.m.JanitorReclaim(r.Outcome)
		if r.Outcome == store.ReclaimExhausted {
			j.m.Terminal(store.StatusFailed, "executor_recovery_exhausted")
		}
		j.log.WarnContext(ctx, "reclaimed expired lease", "run_id", r.RunID, "lease_owner", r.Owner, "attempts", r.Attempts, "outcome", r.Outcome)
	}
	if len(recs) > 0 && j.wake != nil {
		j.wake()
	}
	return recs
}
