package postgres

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Group commit. Under load many goroutines write at once (executors
// appending to their runs, API requests creating runs and frames), each a
// transaction of its own, and PostgreSQL spends most of its time on
// per-statement and per-commit work rather than on rows. A batcher lets a
// few flushers each take whatever writes of one kind are waiting and apply
// them in one call: one round trip and one commit for all. A write that
// finds an idle flusher goes at once, so a quiet system waits for no batch
// to fill.
//
// The apply functions never let one item's refusal fail the others: each
// checks before it writes, and an item it cannot decide comes back "not
// applied" for the caller's full transactional path, which decides every
// error and replay the way the store contract says.

const (
	// batchMax bounds one call: its arrays, and the time its items wait.
	batchMax = 256
	// batchTimeout bounds one call. A flush does not use its items'
	// contexts: once taken, a write's outcome must be learned, not
	// abandoned (it may commit).
	batchTimeout = 30 * time.Second
)

// errStoreClosed answers writes still waiting when the store closes.
var errStoreClosed = errors.New("store closed")

const (
	itemQueued int32 = iota
	itemTaken
	itemAbandoned
)

type waiting[T, R any] struct {
	item  T
	state atomic.Int32
	done  chan R // buffered: a flusher never waits for the caller
}

// batcher applies items of type T in groups; apply returns one result per
// item, in order.
type batcher[T, R any] struct {
	queue    chan *waiting[T, R]
	flushers int
	closed   chan struct{}
	apply    func(ctx context.Context, items []T) []R
}

func newBatcher[T, R any](flushers int, apply func(context.Context, []T) []R) *batcher[T, R] {
	return &batcher[T, R]{queue: make(chan *waiting[T, R], 4*batchMax), flushers: max(1, flushers),
		closed: make(chan struct{}), apply: apply}
}

// submit waits for item's result. The error is ctx's or errStoreClosed,
// and only when the item was never taken (so never written).
func (b *batcher[T, R]) submit(ctx context.Context, item T) (R, error) {
	w := &waiting[T, R]{item: item, done: make(chan R, 1)}
	var zero R
	select {
	case b.queue <- w:
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-b.closed:
		return zero, errStoreClosed
	}
	select {
	case r := <-w.done:
		return r, nil
	case <-ctx.Done():
		if w.state.CompareAndSwap(itemQueued, itemAbandoned) {
			return zero, ctx.Err()
		}
	case <-b.closed:
		if w.state.CompareAndSwap(itemQueued, itemAbandoned) {
			return zero, errStoreClosed
		}
	}
	// A flusher took it: its result is the truth, whatever ctx says.
	return <-w.done, nil
}

// run starts the flushers and returns once done is closed and they have
// finished their calls.
func (b *batcher[T, R]) run(done <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for range b.flushers {
		wg.Go(func() { b.flushLoop(ctx, done) })
	}
	<-done
	close(b.closed)
	wg.Wait()
}

func (b *batcher[T, R]) flushLoop(ctx context.Context, done <-chan struct{}) {
	for {
		var batch []*waiting[T, R]
		select {
		case w := <-b.queue:
			batch = b.take(batch, w)
		case <-done:
			return
		}
	drain:
		for len(batch) < batchMax {
			select {
			case w := <-b.queue:
				batch = b.take(batch, w)
			default:
				break drain
			}
		}
		if len(batch) > 0 {
			b.flush(ctx, batch)
		}
	}
}

// take adds w to batch unless its caller gave up waiting.
func (b *batcher[T, R]) take(batch []*waiting[T, R], w *waiting[T, R]) []*waiting[T, R] {
	if w.state.CompareAndSwap(itemQueued, itemTaken) {
		return append(batch, w)
	}
	return batch
}

func (b *batcher[T, R]) flush(ctx context.Context, batch []*waiting[T, R]) {
	ctx, cancel := context.WithTimeout(ctx, batchTimeout)
	defer cancel()
	items := make([]T, len(batch))
	for i, w := range batch {
		items[i] = w.item
	}
	results := b.apply(ctx, items)
	if len(results) != len(batch) {
		panic("postgres: batch apply returned a result count that differs from its items")
	}
	for i, r := range results {
		batch[i].done <- r
	}
}

// firstOf returns the indexes of items whose key appears for the first
// time, in order. A later item with the same key stays out of the call and
// is answered "not applied": the full path decides it after the first one
// committed (a replay, a conflict, a stale head).
func firstOf(n int, key func(int) string) []int {
	order := make([]int, 0, n)
	seen := make(map[string]bool, n)
	for i := range n {
		if k := key(i); !seen[k] {
			seen[k] = true
			order = append(order, i)
		}
	}
	return order
}

// refusedCall reports whether err is the server's refusal of a whole call
// (a deadlock, a constraint the checks did not foresee): the transaction
// rolled back, nothing was written, and every item can take the full path.
func refusedCall(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr)
}
