package postgres

import (
	"testing"

	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

// TestWorkerProjectionConformance runs the worker projection sub-suite, each
// subtest in its own fresh schema.
func TestWorkerProjectionConformance(t *testing.T) {
	testURL(t)
	storetest.RunWorkerProjection(t, func(t *testing.T) storetest.WorkerProjectionDriver { return newTestStore(t) })
}
