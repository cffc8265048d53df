package sync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	gosync "sync"
	"time"
)

// Pruner deletes old stream rows; both drivers' *Store implement it.
type Pruner interface {
	PruneStream(ctx context.Context, olderThan time.Time, batch int) (int, error)
}

// Retention defaults (DESIGN section 8; the original's retention job).
const (
	DefaultRetentionMaxAge   = 24 * time.Hour
	DefaultRetentionInterval = time.Minute
	DefaultRetentionBatch    = 5000
	// maxBatchesPerCycle keeps one cycle from holding the writer for long
	// after an outage left a large backlog; the next cycle continues.
	maxBatchesPerCycle = 200
)

// RetentionConfig configures Retention. Zero values take the defaults.
type RetentionConfig struct {
	MaxAge   time.Duration // rows older than this are pruned; default 24 h
	Interval time.Duration // between cycles; default 1 min
	Batch    int           // rows per transaction; default 5000
	Logger   *slog.Logger
	Now      func() time.Time
}

// Retention prunes the replay journal in the background, raising each
// topic's retention floor; subscribers resuming below it get stale_cursor.
type Retention struct {
	p   Pruner
	cfg RetentionConfig
	log *slog.Logger

	mu      gosync.Mutex
	running bool
	stop    context.CancelFunc
	done    chan struct{}
}

// NewRetention builds the service.
func NewRetention(p Pruner, cfg RetentionConfig) *Retention {
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultRetentionMaxAge
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultRetentionInterval
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultRetentionBatch
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Retention{p: p, cfg: cfg, log: log}
}

// Start runs a cycle at once and then every Interval until ctx ends or
// Stop is called.
func (r *Retention) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running {
		return errors.New("sync: retention already running")
	}
	ctx, cancel := context.WithCancel(ctx)
	r.running, r.stop, r.done = true, cancel, make(chan struct{})
	go func() {
		defer close(r.done)
		defer func() {
			r.mu.Lock()
			r.running = false
			r.mu.Unlock()
		}()
		t := time.NewTicker(r.cfg.Interval)
		defer t.Stop()
		for {
			n, err := r.Cycle(ctx)
			switch {
			case err != nil && ctx.Err() == nil:
				r.log.ErrorContext(ctx, "sync retention cycle failed", "error", err, "deleted", n)
			case n > 0:
				r.log.InfoContext(ctx, "sync retention pruned stream rows", "deleted", n, "max_age", r.cfg.MaxAge.String())
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return nil
}

// Stop ends the loop and waits for it.
func (r *Retention) Stop() {
	r.mu.Lock()
	stop, done := r.stop, r.done
	r.mu.Unlock()
	if stop == nil {
		return
	}
	stop()
	<-done
}

// Cycle prunes rows older than MaxAge in batches until a short batch says
// nothing older is left (or the per-cycle bound is reached), and returns
// how many rows it deleted.
func (r *Retention) Cycle(ctx context.Context) (int, error) {
	cutoff := r.cfg.Now().Add(-r.cfg.MaxAge)
	total := 0
	for range maxBatchesPerCycle {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := r.p.PruneStream(ctx, cutoff, r.cfg.Batch)
		total += n
		if err != nil {
			return total, fmt.Errorf("sync: prune stream older than %s: %w", cutoff.UTC().Format(time.RFC3339), err)
		}
		if n < r.cfg.Batch {
			break
		}
	}
	return total, nil
}
