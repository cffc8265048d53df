// Package notify fans store notices out to in-process subscribers.
//
// A notice is only a hint that something was written for a run: subscribers
// get a coalescing wake-up, never the notice itself, and always re-read the
// store. A dropped or merged wake-up therefore only delays a reader, which
// keeps the hub free of per-subscriber queues that could grow without bound
// when a reader is slow.
package notify

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/oaruntime/oaruntime/internal/store"
)

// Source delivers notices; store.Store satisfies it.
type Source interface {
	Watch(ctx context.Context) (<-chan store.Notice, error)
}

// ErrSourceClosed is returned by Run when the source's channel closes before
// the context ends (the caller may call Run again).
var ErrSourceClosed = errors.New("notify: notice source closed")

// Hub delivers wake-ups to subscribers of a run id, or of every run ("").
// The zero value is not usable; call NewHub.
type Hub struct {
	mu   sync.Mutex
	subs map[string]map[*subscription]struct{}
}

type subscription struct {
	ch chan struct{}
	// want, when set, drops notices the subscriber has no use for (for
	// example its own appends) before they wake it. It runs under the hub's
	// lock, so it must be quick and must not call the hub.
	want func(store.Notice) bool
}

// NewHub returns an empty hub.
func NewHub() *Hub {
	return &Hub{subs: make(map[string]map[*subscription]struct{})}
}

// Run publishes every notice from src until ctx ends (returns nil) or the
// source fails (returns the wrapped error). While Run is not running,
// subscribers still make progress by polling the store.
func (h *Hub) Run(ctx context.Context, src Source) error {
	ch, err := src.Watch(ctx)
	if err != nil {
		return fmt.Errorf("notify: watch: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case n, ok := <-ch:
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				// Readers may have missed notices while the source was
				// failing; wake them all so they re-read promptly.
				h.Publish(store.Notice{})
				return ErrSourceClosed
			}
			h.Publish(n)
		}
	}
}

// Publish wakes the subscribers of n.RunID and the subscribers of every run.
// A notice with an empty RunID (sent by the PostgreSQL listener after it
// reconnects, since notices may have been lost meanwhile) wakes everyone.
// Publish never blocks: a subscriber with a wake-up already pending keeps
// just that one.
func (h *Hub) Publish(n store.Notice) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n.RunID == "" {
		for _, set := range h.subs {
			wakeAll(set, n)
		}
		return
	}
	wakeAll(h.subs[n.RunID], n)
	wakeAll(h.subs[""], n)
}

func wakeAll(set map[*subscription]struct{}, n store.Notice) {
	for s := range set {
		// want sees a notice without a run id too (a subscriber keeping
		// its own record of what changed must learn that anything may
		// have), but cannot veto it.
		if s.want != nil && !s.want(n) && n.RunID != "" {
			continue
		}
		select {
		case s.ch <- struct{}{}:
		default:
		}
	}
}

// Subscribe registers a subscriber for runID ("" = every run). The returned
// channel receives a coalesced wake-up after notices; cancel removes the
// subscription and is safe to call more than once. The channel is never
// closed, so a select that still holds it after cancel simply never fires.
func (h *Hub) Subscribe(runID string) (<-chan struct{}, func()) {
	return h.SubscribeFiltered(runID, nil)
}

// SubscribeFiltered is Subscribe with a filter: a notice wakes the
// subscriber only when want returns true. want is called for every notice
// published to the subscription, before its wake-up is sent, so it may also
// record which runs changed. Notices without a run id (a reconnected
// source) are passed to want and wake every subscriber regardless, since
// writes may have been missed.
func (h *Hub) SubscribeFiltered(runID string, want func(store.Notice) bool) (<-chan struct{}, func()) {
	s := &subscription{ch: make(chan struct{}, 1), want: want}
	h.mu.Lock()
	set := h.subs[runID]
	if set == nil {
		set = make(map[*subscription]struct{})
		h.subs[runID] = set
	}
	set[s] = struct{}{}
	h.mu.Unlock()

	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			if set := h.subs[runID]; set != nil {
				delete(set, s)
				if len(set) == 0 {
					delete(h.subs, runID)
				}
			}
		})
	}
}

// Subscribers returns the number of live subscriptions (for diagnostics).
func (h *Hub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, set := range h.subs {
		n += len(set)
	}
	return n
}
