package postgres

import (
	"testing"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

// TestConformance runs the shared store suite, each subtest in its own
// fresh schema.
func TestConformance(t *testing.T) {
	testURL(t)
	storetest.Run(t, func(t *testing.T) store.Store { return newTestStore(t) })
}
