package sqlite

import (
	"context"
	"errors"
	"sync"

	"github.com/oaruntime/oaruntime/internal/store"
)

// watchBuffer bounds each watcher's backlog; past it notices are dropped,
// which only delays a reader that always re-reads the store.
const watchBuffer = 1024

// broadcaster fans committed-write notices out to in-process watchers.
type broadcaster struct {
	mu     sync.Mutex
	subs   map[chan store.Notice]struct{}
	closed bool
}

func newBroadcaster() *broadcaster {
	return &broadcaster{subs: make(map[chan store.Notice]struct{})}
}

func (b *broadcaster) subscribe(ctx context.Context) (<-chan store.Notice, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errors.New("sqlite: watch: store closed")
	}
	ch := make(chan store.Notice, watchBuffer)
	b.subs[ch] = struct{}{}
	context.AfterFunc(ctx, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if _, ok := b.subs[ch]; ok {
			delete(b.subs, ch)
			close(ch)
		}
	})
	return ch, nil
}

func (b *broadcaster) publish(n store.Notice) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- n:
		default:
		}
	}
}

func (b *broadcaster) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// close ends every watch.
func (b *broadcaster) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.closed = true
	for ch := range b.subs {
		delete(b.subs, ch)
		close(ch)
	}
}
