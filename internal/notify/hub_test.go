package notify

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// woken reports whether ch holds a pending wake-up, without waiting.
func woken(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestPublishRouting(t *testing.T) {
	tests := []struct {
		name    string
		notice  store.Notice
		wantA   bool // subscriber of run_a
		wantB   bool // subscriber of run_b
		wantAll bool // subscriber of ""
	}{
		{"event for a", store.Notice{Kind: store.NoticeEvent, RunID: "run_a", Seq: 3}, true, false, true},
		{"frame for b", store.Notice{Kind: store.NoticeFrame, RunID: "run_b"}, false, true, true},
		{"unknown run", store.Notice{Kind: store.NoticeEvent, RunID: "run_z"}, false, false, true},
		{"reconnect wakes everyone", store.Notice{}, true, true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHub()
			a, cancelA := h.Subscribe("run_a")
			defer cancelA()
			b, cancelB := h.Subscribe("run_b")
			defer cancelB()
			all, cancelAll := h.Subscribe("")
			defer cancelAll()

			h.Publish(tc.notice)
			if got := woken(a); got != tc.wantA {
				t.Errorf("run_a woken = %v, want %v", got, tc.wantA)
			}
			if got := woken(b); got != tc.wantB {
				t.Errorf("run_b woken = %v, want %v", got, tc.wantB)
			}
			if got := woken(all); got != tc.wantAll {
				t.Errorf(`"" woken = %v, want %v`, got, tc.wantAll)
			}
		})
	}
}

func TestWakeupsCoalesce(t *testing.T) {
	h := NewHub()
	ch, cancel := h.Subscribe("run_a")
	defer cancel()
	for i := 0; i < 100; i++ {
		h.Publish(store.Notice{Kind: store.NoticeEvent, RunID: "run_a", Seq: int64(i)})
	}
	if !woken(ch) {
		t.Fatal("no wake-up after 100 notices")
	}
	if woken(ch) {
		t.Fatal("wake-ups did not coalesce: a second one was pending")
	}
	// Draining makes room for the next wake-up.
	h.Publish(store.Notice{Kind: store.NoticeEvent, RunID: "run_a"})
	if !woken(ch) {
		t.Fatal("no wake-up after draining")
	}
}

// A filter sees every notice, a notice without a run id included, and can
// veto only notices that name a run.
func TestFilterSeesEveryNotice(t *testing.T) {
	h := NewHub()
	var seen []store.Notice
	ch, cancel := h.SubscribeFiltered("", func(n store.Notice) bool {
		seen = append(seen, n)
		return false
	})
	defer cancel()
	h.Publish(store.Notice{Kind: store.NoticeEvent, RunID: "run_a", Seq: 3})
	if woken(ch) {
		t.Fatal("a vetoed notice woke the subscriber")
	}
	h.Publish(store.Notice{Kind: store.NoticeEvent})
	if !woken(ch) {
		t.Fatal("a notice without a run id was vetoed")
	}
	want := []store.Notice{{Kind: store.NoticeEvent, RunID: "run_a", Seq: 3}, {Kind: store.NoticeEvent}}
	if len(seen) != len(want) || seen[0] != want[0] || seen[1] != want[1] {
		t.Fatalf("filter saw %+v, want %+v", seen, want)
	}
}

func TestSeveralSubscribersSameRun(t *testing.T) {
	h := NewHub()
	c1, cancel1 := h.Subscribe("run_a")
	c2, cancel2 := h.Subscribe("run_a")
	defer cancel2()
	h.Publish(store.Notice{RunID: "run_a"})
	if !woken(c1) || !woken(c2) {
		t.Fatal("both subscribers of run_a must be woken")
	}
	cancel1()
	h.Publish(store.Notice{RunID: "run_a"})
	if woken(c1) {
		t.Fatal("cancelled subscriber was woken")
	}
	if !woken(c2) {
		t.Fatal("remaining subscriber not woken")
	}
}

func TestCancelIdempotentAndCounts(t *testing.T) {
	h := NewHub()
	_, c1 := h.Subscribe("run_a")
	_, c2 := h.Subscribe("")
	if got := h.Subscribers(); got != 2 {
		t.Fatalf("Subscribers = %d, want 2", got)
	}
	c1()
	c1()
	if got := h.Subscribers(); got != 1 {
		t.Fatalf("after double cancel Subscribers = %d, want 1", got)
	}
	// A new subscription on the same run after the set was removed works,
	// and an old cancel must not remove it.
	ch, c3 := h.Subscribe("run_a")
	defer c3()
	c1()
	h.Publish(store.Notice{RunID: "run_a"})
	if !woken(ch) {
		t.Fatal("new subscriber not woken after stale cancel")
	}
	c2()
	if got := h.Subscribers(); got != 1 {
		t.Fatalf("Subscribers = %d, want 1", got)
	}
}

type chanSource struct {
	ch  chan store.Notice
	err error
}

func (s chanSource) Watch(ctx context.Context) (<-chan store.Notice, error) {
	return s.ch, s.err
}

func TestRunForwardsNotices(t *testing.T) {
	h := NewHub()
	wake, cancel := h.Subscribe("run_a")
	defer cancel()
	src := chanSource{ch: make(chan store.Notice)}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx, src) }()

	src.ch <- store.Notice{Kind: store.NoticeEvent, RunID: "run_a", Seq: 1}
	select {
	case <-wake:
	case <-time.After(10 * time.Second):
		t.Fatal("notice from the source never woke the subscriber")
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
}

func TestRunSourceClosedWakesEveryone(t *testing.T) {
	h := NewHub()
	wake, cancel := h.Subscribe("run_a")
	defer cancel()
	src := chanSource{ch: make(chan store.Notice)}
	close(src.ch)
	err := h.Run(context.Background(), src)
	if !errors.Is(err, ErrSourceClosed) {
		t.Fatalf("Run = %v, want ErrSourceClosed", err)
	}
	if !woken(wake) {
		t.Fatal("closing source must wake subscribers so they re-read")
	}
}

func TestRunWatchError(t *testing.T) {
	boom := errors.New("db down")
	err := NewHub().Run(context.Background(), chanSource{err: boom})
	if !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want wrapped %v", err, boom)
	}
}

// TestConcurrentUse exercises Publish, Subscribe and cancel together; run
// with -race it proves the hub's locking.
func TestConcurrentUse(t *testing.T) {
	h := NewHub()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				ch, cancel := h.Subscribe("run_a")
				woken(ch)
				cancel()
			}
		}()
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				h.Publish(store.Notice{RunID: "run_a"})
				h.Publish(store.Notice{})
			}
		}()
	}
	wg.Wait()
	if got := h.Subscribers(); got != 0 {
		t.Fatalf("Subscribers after all cancels = %d, want 0", got)
	}
}

func TestSubscribeFilteredDropsUnwantedNotices(t *testing.T) {
	h := NewHub()
	// A runner that appended seq 1 and 2 itself wants only other writes.
	own := map[int64]bool{1: true, 2: true}
	ch, cancel := h.SubscribeFiltered("run_a", func(n store.Notice) bool {
		return n.Kind == store.NoticeEvent && !own[n.Seq]
	})
	defer cancel()
	tests := []struct {
		notice store.Notice
		want   bool
	}{
		{store.Notice{Kind: store.NoticeEvent, RunID: "run_a", Seq: 2}, false},
		{store.Notice{Kind: store.NoticeFrame, RunID: "run_a"}, false},
		{store.Notice{Kind: store.NoticeEvent, RunID: "run_a", Seq: 3}, true},
		{store.Notice{}, true}, // reconnect: writes may have been missed
	}
	for _, tc := range tests {
		h.Publish(tc.notice)
		if got := woken(ch); got != tc.want {
			t.Errorf("notice %+v: woken = %v, want %v", tc.notice, got, tc.want)
		}
	}
}
