package sync

import (
	"context"
	"errors"
	gosync "sync"
	"testing"
	"time"
)

// fakePruner records calls and deletes from a pretend backlog.
type fakePruner struct {
	mu      gosync.Mutex
	backlog int
	cutoffs []time.Time
	err     error
}

func (f *fakePruner) PruneStream(_ context.Context, olderThan time.Time, batch int) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cutoffs = append(f.cutoffs, olderThan)
	if f.err != nil {
		return 0, f.err
	}
	n := min(batch, f.backlog)
	f.backlog -= n
	return n, nil
}

func TestRetentionCycle(t *testing.T) {
	now := time.Date(2026, 2, 21, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name      string
		backlog   int
		batch     int
		wantN     int
		wantCalls int
		err       error
	}{
		{"nothing to prune", 0, 10, 0, 1, nil},
		{"one short batch", 7, 10, 7, 1, nil},
		{"exact batches end with an empty one", 20, 10, 20, 3, nil},
		{"several batches", 25, 10, 25, 3, nil},
		{"bounded per cycle", 10 * maxBatchesPerCycle * 2, 10, 10 * maxBatchesPerCycle, maxBatchesPerCycle, nil},
		{"store error", 5, 10, 0, 1, errors.New("disk full")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := &fakePruner{backlog: tc.backlog, err: tc.err}
			r := NewRetention(p, RetentionConfig{MaxAge: 24 * time.Hour, Batch: tc.batch, Now: func() time.Time { return now }})
			n, err := r.Cycle(context.Background())
			if (err != nil) != (tc.err != nil) || (tc.err != nil && !errors.Is(err, tc.err)) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if n != tc.wantN || len(p.cutoffs) != tc.wantCalls {
				t.Fatalf("deleted %d in %d calls, want %d in %d", n, len(p.cutoffs), tc.wantN, tc.wantCalls)
			}
			for _, c := range p.cutoffs {
				if !c.Equal(now.Add(-24 * time.Hour)) {
					t.Fatalf("cutoff %v, want 24 h before %v", c, now)
				}
			}
		})
	}
}

func TestRetentionDefaults(t *testing.T) {
	r := NewRetention(&fakePruner{}, RetentionConfig{})
	if r.cfg.MaxAge != 24*time.Hour || r.cfg.Interval != time.Minute || r.cfg.Batch != 5000 {
		t.Fatalf("defaults = %+v, want 24h, 1m, 5000", r.cfg)
	}
}

// TestRetentionStartStop: the background loop prunes the real store
// (first cycle at once), a second Start fails, Stop returns.
func TestRetentionStartStop(t *testing.T) {
	e := newEnv(t, openSQLite(t, nil))
	e.createRuns(userA, "a", 4)
	r := NewRetention(e.st, RetentionConfig{MaxAge: time.Hour, Interval: 20 * time.Millisecond, Batch: 3,
		Now: func() time.Time { return time.Now().Add(2 * time.Hour) }})
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err == nil {
		t.Fatal("a second Start succeeded")
	}
	eventually(t, 10*time.Second, "the floor to reach the head", func() bool {
		b, err := e.st.StreamBounds(context.Background(), []string{runs})
		return err == nil && b[runs].Floor == 4 && b[runs].Head == 4
	})
	r.Stop()
	r.Stop() // idempotent
}
