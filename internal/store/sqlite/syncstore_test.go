package sqlite

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

// TestSyncConformance runs the sync delivery sub-suite on a fresh file per subtest.
func TestSyncConformance(t *testing.T) {
	storetest.RunSync(t, func(t *testing.T) storetest.SyncDriver {
		s, err := Open(context.Background(), filepath.Join(t.TempDir(), "runtime.db"), WithMigrate(), WithSynchronous("NORMAL"))
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}
