package sqlite

import (
	"context"
	"path/filepath"
	"testing"
	"time"

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

// The batch read elides no damaged log (see storetest.BatchReadOfDamagedLogs).
func TestBatchReadOfDamagedLogs(t *testing.T) {
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "runtime.db"), WithMigrate(), WithSynchronous("NORMAL"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	storetest.BatchReadOfDamagedLogs(t, s, func(gapRun, belowRun string) {
		ctx := context.Background()
		if _, err := s.writer.ExecContext(ctx, `DELETE FROM run_events WHERE run_id = ? AND seq = 3`, gapRun); err != nil {
			t.Fatal(err)
		}
		if _, err := s.writer.ExecContext(ctx, `INSERT INTO run_events (run_id, seq, event_type, payload, event_hash, created_at)
			VALUES (?, 1, 'run.delta', '{}', 'x', ?)`, belowRun, time.Now().UTC().Format("2006-01-02T15:04:05.000000Z")); err != nil {
			t.Fatal(err)
		}
	})
}
