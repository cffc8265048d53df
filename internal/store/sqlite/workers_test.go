package sqlite

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

// TestWorkerConformance runs the codex worker sub-suite on a fresh file per subtest.
func TestWorkerConformance(t *testing.T) {
	storetest.RunWorkers(t, func(t *testing.T) storetest.WorkerDriver {
		s, err := Open(context.Background(), filepath.Join(t.TempDir(), "runtime.db"), WithMigrate(), WithSynchronous("NORMAL"))
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}
