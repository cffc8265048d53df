package postgres

import (
	"testing"

	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

// TestProjectionConformance runs the projection sub-suite, each subtest in
// its own fresh schema.
func TestProjectionConformance(t *testing.T) {
	testURL(t)
	storetest.RunProjection(t, func(t *testing.T) storetest.ProjectionDriver { return newTestStore(t) })
}
