package postgres

import (
	"testing"

	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

// TestWorkerConformance runs the codex worker sub-suite, each subtest in its
// own fresh schema.
func TestWorkerConformance(t *testing.T) {
	testURL(t)
	storetest.RunWorkers(t, func(t *testing.T) storetest.WorkerDriver { return newTestStore(t) })
}
