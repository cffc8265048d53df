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
// finds no call in flight goes at once, so a quiet system waits for no
// batch to fill.
//
// One flusher gathers at a time, and while a call is in flight it holds a
// small batch back, gathering, until the call ends, the batch reaches
// lingerItems, or lingerMax passes: under load, runs start and finish a few
// at a time, and flushers that each took whatever was waiting made two to
// four times the calls (and commits) that the work needed. The batch then
// grows with the load (what arrives during one call), as with a lone
// flusher, but a big batch, or a call stuck on a row lock for longer than
// lingerMax, does not hold up the others. An item waits at most lingerMax
// longer than it did.
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
	// lingerItems: a batch this big goes even while another call is in
	// flight; lingerMax bounds the wait for one.
	lingerItems = 32
	lingerMax   = 2 * time.Millisecond
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
	// inflight counts calls being applied; ended gets a token when one
	// ends (a lingering flusher takes it and goes).
	inflight  atomic.Int32
	ended     chan struct{}
	gather    chan struct{} // the token of the one flusher gathering items
	lingerMax time.Duration // lingerMax; tests set their own
}

func newBatcher[T, R any](flushers int, apply func(context.Context, []T) []R) *batcher[T, R] {
	b := &batcher[T, R]{queue: make(chan *waiting[T, R], 4*batchMax), flushers: max(1, flushers),
		closed: make(chan struct{}), apply: apply, ended: make(chan struct{}, 1), gather: make(chan struct{}, 1),
		lingerMax: lingerMax}
	b.gather <- struct{}{}
	return b
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
		// One flusher gathers at a time: waiting items go to one batch,
		// not a few each to every idle flusher.
		select {
		case <-b.gather:
		case <-done:
			return
		}
		var batch []*waiting[T, R]
		select {
		case w := <-b.queue:
			batch = b.take(batch, w)
		case <-done:
			b.gather <- struct{}{}
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
		batch = b.linger(batch, done)
		b.inflight.Add(1)
		b.gather <- struct{}{}
		if len(batch) > 0 {
			b.flush(ctx, batch)
		}
		b.inflight.Add(-1)
		select {
		case b.ended <- struct{}{}:
		default:
		}
	}
}

// linger lets a small batch grow while another call is in flight (see the
// package comment above): it returns when no call is in flight, the batch
// reached lingerItems, a call ended, lingerMax passed, or done closed.
func (b *batcher[T, R]) linger(batch []*waiting[T, R], done <-chan struct{}) []*waiting[T, R] {
	if b.inflight.Load() == 0 || len(batch) >= lingerItems {
		return batch
	}
	// A token left by a call that ended before we looked is stale.
	select {
	case <-b.ended:
		if b.inflight.Load() == 0 {
			return batch
		}
	default:
	}
	t := time.NewTimer(b.lingerMax)
	defer t.Stop()
	for len(batch) < lingerItems {
		select {
		case w := <-b.queue:
			batch = b.take(batch, w)
		case <-b.ended:
			return batch
		case <-t.C:
			return batch
		case <-done:
			return batch
		}
	}
	return batch
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
