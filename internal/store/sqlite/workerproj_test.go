package sqlite

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

// TestWorkerProjectionConformance runs the worker projection sub-suite on a
// fresh file per subtest.
func TestWorkerProjectionConformance(t *testing.T) {
	storetest.RunWorkerProjection(t, func(t *testing.T) storetest.WorkerProjectionDriver {
		s, err := Open(context.Background(), filepath.Join(t.TempDir(), "runtime.db"), WithMigrate(), WithSynchronous("NORMAL"))
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}
