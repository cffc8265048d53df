package sqlite

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

// TestProjectionConformance runs the projection sub-suite on a fresh file per subtest.
func TestProjectionConformance(t *testing.T) {
	storetest.RunProjection(t, func(t *testing.T) storetest.ProjectionDriver {
		s, err := Open(context.Background(), filepath.Join(t.TempDir(), "runtime.db"), WithMigrate(), WithSynchronous("NORMAL"))
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}
