package postgres

import (
	"testing"

	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

// TestSyncConformance runs the sync delivery sub-suite, each subtest in its
// own fresh schema.
func TestSyncConformance(t *testing.T) {
	testURL(t)
	storetest.RunSync(t, func(t *testing.T) storetest.SyncDriver { return newTestStore(t) })
}
