package gcfloor

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mb = 1 << 20
	for _, tc := range []struct {
		live, roots, floor uint64
		base, want         int
	}{
		{live: 16 * mb, floor: 256 * mb, base: 100, want: 1500},                // goal 16 + 16*15 = 256 MB
		{live: 12 * mb, roots: 4 * mb, floor: 256 * mb, base: 100, want: 1525}, // goal 12 + 16*15.25 = 256 MB
		{live: 128 * mb, floor: 256 * mb, base: 100, want: 100},
		{live: 200 * mb, floor: 256 * mb, base: 100, want: 100}, // GOGC's own goal is above the floor
		{live: 512 * mb, floor: 256 * mb, base: 100, want: 100},
		{live: 512 * mb, floor: 256 * mb, base: 50, want: 50},
		{live: 0, floor: 256 * mb, base: 100, want: 1 << 20}, // capped
	} {
		if got := Percent(tc.live, tc.roots, tc.floor, tc.base); got != tc.want {
			t.Errorf("Percent(%d MB, %d MB, %d MB, %d) = %d, want %d", tc.live/mb, tc.roots/mb, tc.floor/mb, tc.base, got, tc.want)
		}
	}
}

// TestStartRaisesPercentAfterCollection: after a collection the percent
// in force puts the goal at the floor, and stop restores the old percent.
func TestStartRaisesPercentAfterCollection(t *testing.T) {
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)
	stop := Start(1<<40, 100) // 1 TiB: far above any test heap
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		// The cleanup runs on its own goroutine after the collection.
		time.Sleep(10 * time.Millisecond)
		if p := debug.SetGCPercent(-1); p > 100 {
			debug.SetGCPercent(p)
			break
		} else {
			debug.SetGCPercent(p)
		}
		if time.Now().After(deadline) {
			t.Fatal("GC percent still at 100 after collections")
		}
	}
	stop()
	if p := debug.SetGCPercent(100); p != 100 {
		t.Fatalf("after stop the percent is %d, want 100 restored", p)
	}
}
