// Package gcfloor keeps the Go garbage collector from collecting a small
// heap more often than the memory it would save is worth.
//
// A runtime node's live heap is small (tens of MB) while it allocates fast
// (request bodies, query arguments, rebuilt summaries): with GOGC=100 the
// heap goal is twice a small number, the collector runs several times a
// second and its marking takes a quarter of the process's CPU under load.
// A floor on the heap goal, as the Go team suggests for such programs in
// the GC guide, trades a bounded amount of memory for that CPU: while the
// live heap is below half the floor the goal is the floor; above it GOGC
// applies as usual. GOMEMLIMIT, when set, still caps the heap.
package gcfloor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// What the pacer sets the next goal from (Go 1.18+): goal = live +
// (live + scanned stacks + scanned globals) * GOGC / 100.
var pacerInputs = []string{"/gc/heap/live:bytes", "/gc/scan/stack:bytes", "/gc/scan/globals:bytes"}

// Start keeps the heap goal at least floor bytes, re-deciding the GC
// percent after every collection, until stop is called (which restores the
// percent in force before). base is the percent used once the live heap
// is large enough (100 is Go's default).
func Start(floor uint64, base int) (stop func()) {
	prev := debug.SetGCPercent(base)
	t := &tuner{floor: floor, base: base, sample: make([]metrics.Sample, len(pacerInputs))}
	for i, name := range pacerInputs {
		t.sample[i].Name = name
	}
	t.arm()
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if !t.stopped {
			t.stopped = true
			debug.SetGCPercent(prev)
		}
	}
}

type tuner struct {
	floor  uint64
	base   int
	sample []metrics.Sample

	mu      sync.Mutex // orders tune and stop
	stopped bool
}

// sentinel holds a pointer so that it is not a tiny allocation, which
// shares its block with other objects and could outlive its collection.
type sentinel struct{ _ *byte }

// arm registers a cleanup on a fresh object, so that the collection that
// frees it calls tune; tune arms the next one.
func (t *tuner) arm() {
	runtime.AddCleanup(&sentinel{}, func(t *tuner) { t.tune() }, t)
}

func (t *tuner) tune() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	metrics.Read(t.sample)
	var v [3]uint64
	for i, s := range t.sample {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	debug.SetGCPercent(Percent(v[0], v[1]+v[2], t.floor, t.base))
	t.arm()
}

// Percent is the GC percent that puts the next heap goal at the floor for
// a live heap of live bytes and roots bytes of scanned stacks and globals,
// and never below base.
func Percent(live, roots, floor uint64, base int) int {
	if live >= floor {
		return base
	}
	p := (floor - live) * 100 / max(live+roots, 1)
	return int(min(max(p, uint64(base)), 1<<20))
}
