package postgres

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// The batcher's own contract, without a database: each caller gets the
// result of its own item; items wait while every flusher is busy and then
// go together; a caller that gives up before its item is taken gets its
// context's error and the item is never applied; once taken, the caller
// learns the result whatever its context says; closing answers the
// waiting callers errStoreClosed.

type fakeApply struct {
	mu      sync.Mutex
	calls   [][]int
	applied map[int]bool
	gate    chan struct{} // when set, apply waits for a receive per call
	entered chan struct{} // signalled when a call starts (buffered)
}

func (f *fakeApply) apply(_ context.Context, items []int) []int {
	if f.entered != nil {
		f.entered <- struct{}{}
	}
	if f.gate != nil {
		<-f.gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, append([]int(nil), items...))
	out := make([]int, len(items))
	for i, x := range items {
		if f.applied == nil {
			f.applied = map[int]bool{}
		}
		f.applied[x] = true
		out[i] = x * 10
	}
	return out
}

func (f *fakeApply) wasApplied(x int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied[x]
}

func startBatcher(t *testing.T, flushers int, f *fakeApply, opts ...func(*batcher[int, int])) (*batcher[int, int], func()) {
	t.Helper()
	b := newBatcher(flushers, f.apply)
	for _, o := range opts {
		o(b)
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() { b.run(done); close(stopped) }()
	var once sync.Once
	stop := func() { once.Do(func() { close(done); <-stopped }) }
	t.Cleanup(stop)
	return b, stop
}

func TestBatcherGroupsWaitingItems(t *testing.T) {
	f := &fakeApply{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	b, _ := startBatcher(t, 1, f)
	ctx := context.Background()

	// The first item occupies the only flusher; the next ones wait and
	// must then go in one call.
	results := make([]int, 6)
	var wg sync.WaitGroup
	wg.Go(func() { results[0], _ = b.submit(ctx, 0) })
	<-f.entered
	for i := 1; i < len(results); i++ {
		wg.Go(func() { results[i], _ = b.submit(ctx, i) })
	}
	waitQueued(t, b, len(results)-1)
	f.gate <- struct{}{} // the first call
	<-f.entered
	f.gate <- struct{}{} // the second: everything else
	wg.Wait()
	for i, r := range results {
		if r != i*10 {
			t.Fatalf("item %d got %d, want %d", i, r, i*10)
		}
	}
	if len(f.calls) != 2 || len(f.calls[1]) != len(results)-1 {
		t.Fatalf("calls %v, want [0] then the other %d together", f.calls, len(results)-1)
	}
}

func TestBatcherCallerGivesUp(t *testing.T) {
	f := &fakeApply{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	b, _ := startBatcher(t, 1, f)
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = b.submit(context.Background(), 1) })
	<-f.entered // the flusher is busy with item 1

	// Item 2 waits in the queue; its caller gives up: it gets its
	// context's error and item 2 is never applied.
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := b.submit(ctx, 2); errc <- err }()
	waitQueued(t, b, 1)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("gave up: %v, want context.Canceled", err)
	}
	f.gate <- struct{}{}
	wg.Wait()
	// Item 3 goes alone: item 2 was dropped, not applied.
	f.gate = nil
	if r, err := b.submit(context.Background(), 3); err != nil || r != 30 {
		t.Fatalf("item 3: %d %v", r, err)
	}
	if f.wasApplied(2) {
		t.Fatal("an abandoned item was applied")
	}
}

func TestBatcherTakenItemOutlivesItsContext(t *testing.T) {
	f := &fakeApply{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	b, _ := startBatcher(t, 1, f)
	ctx, cancel := context.WithCancel(context.Background())
	type res struct {
		r   int
		err error
	}
	out := make(chan res, 1)
	go func() { r, err := b.submit(ctx, 4); out <- res{r, err} }()
	<-f.entered // taken: the call is in flight
	cancel()
	select {
	case got := <-out:
		t.Fatalf("returned %+v before the call it is part of ended", got)
	case <-time.After(50 * time.Millisecond):
	}
	f.gate <- struct{}{}
	if got := <-out; got.err != nil || got.r != 40 {
		t.Fatalf("taken item: %+v, want its result", got)
	}
}

func TestBatcherClose(t *testing.T) {
	f := &fakeApply{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	b, stop := startBatcher(t, 1, f)
	first := make(chan error, 1)
	go func() { _, err := b.submit(context.Background(), 1); first <- err }()
	<-f.entered
	waiting := make(chan error, 1)
	go func() { _, err := b.submit(context.Background(), 2); waiting <- err }()
	waitQueued(t, b, 1)
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	if err := <-waiting; !errors.Is(err, errStoreClosed) {
		t.Fatalf("waiting caller at close: %v, want errStoreClosed", err)
	}
	f.gate <- struct{}{} // the call in flight ends; close waits for it
	<-stopped
	if err := <-first; err != nil {
		t.Fatalf("the call in flight: %v", err)
	}
	if _, err := b.submit(context.Background(), 3); !errors.Is(err, errStoreClosed) {
		t.Fatalf("submit after close: %v, want errStoreClosed", err)
	}
	if f.wasApplied(2) || f.wasApplied(3) {
		t.Fatal("an item was applied after close")
	}
}

// waitQueued waits until n items sit in b's queue.
func waitQueued(t *testing.T, b *batcher[int, int], n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(b.queue) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d items queued, want %d", len(b.queue), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// While a call is in flight, a second flusher does not go with one item: it
// gathers what arrives until the call ends, and then goes with all of it.
func TestBatcherLingersWhileACallIsInFlight(t *testing.T) {
	f := &fakeApply{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	// Only the end of the call may release it.
	b, _ := startBatcher(t, 2, f, func(b *batcher[int, int]) { b.lingerMax = time.Minute })
	ctx := context.Background()

	var wg sync.WaitGroup
	wg.Go(func() { _, _ = b.submit(ctx, 0) })
	<-f.entered // call 1 holds the first flusher
	for i := 1; i <= 5; i++ {
		wg.Go(func() { _, _ = b.submit(ctx, i) })
	}
	waitQueued(t, b, 0)
	deadline := time.Now().Add(5 * time.Second)
	for len(b.queue) > 0 { // the lingering flusher gathers them all
		if time.Now().After(deadline) {
			t.Fatal("items stay queued while a flusher is free")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case <-f.entered:
		t.Fatal("a second call started while the first was in flight with a small batch")
	case <-time.After(20 * time.Millisecond):
	}
	f.gate <- struct{}{} // call 1 ends
	<-f.entered
	f.gate <- struct{}{}
	wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) != 2 || len(f.calls[1]) != 5 {
		t.Fatalf("calls %v, want [0] then the five others together", f.calls)
	}
}

// A batch of lingerItems goes even while another call is in flight.
func TestBatcherBigBatchDoesNotLinger(t *testing.T) {
	f := &fakeApply{gate: make(chan struct{}), entered: make(chan struct{}, 100)}
	b, _ := startBatcher(t, 2, f, func(b *batcher[int, int]) { b.lingerMax = time.Minute })
	ctx := context.Background()

	var wg sync.WaitGroup
	wg.Go(func() { _, _ = b.submit(ctx, 0) })
	<-f.entered
	for i := 1; i <= lingerItems; i++ {
		wg.Go(func() { _, _ = b.submit(ctx, i) })
	}
	select {
	case <-f.entered: // call 2 started, call 1 still in flight
	case <-time.After(10 * time.Second):
		t.Fatal("a full batch waited for the call in flight")
	}
	f.gate <- struct{}{}
	f.gate <- struct{}{}
	wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) != 2 || len(f.calls[0])+len(f.calls[1]) != lingerItems+1 {
		t.Fatalf("calls %v", f.calls)
	}
}
