package sqlite

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

// TestSpendConformance runs the spend sub-suite on a fresh file per subtest.
func TestSpendConformance(t *testing.T) {
	storetest.RunSpend(t, func(t *testing.T) storetest.SpendDriver {
		s, err := Open(context.Background(), filepath.Join(t.TempDir(), "runtime.db"), WithMigrate(), WithSynchronous("NORMAL"))
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}
