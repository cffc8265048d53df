package postgres

import (
	"testing"

	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

// TestSpendConformance runs the spend sub-suite, each subtest in its own
// fresh schema.
func TestSpendConformance(t *testing.T) {
	testURL(t)
	storetest.RunSpend(t, func(t *testing.T) storetest.SpendDriver { return newTestStore(t) })
}
