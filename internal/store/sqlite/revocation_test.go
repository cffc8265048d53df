package sqlite

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

func newRevocationStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "runtime.db"), WithMigrate(), WithSynchronous("NORMAL"))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestRevocationConformance runs the token revocation sub-suite on a fresh
// file per subtest.
func TestRevocationConformance(t *testing.T) {
	storetest.RunRevocation(t, func(t *testing.T) store.RevocationStore { return newRevocationStore(t) })
}

// TestMigration00050Indexes checks the indexes 00050 adds exist with the
// columns the queries order by, and that the migration rolls back cleanly.
func TestMigration00050Indexes(t *testing.T) {
	s := newRevocationStore(t)
	ctx := t.Context()
	cols := func(index string) []string {
		t.Helper()
		rows, err := s.reader.QueryContext(ctx, `SELECT name FROM pragma_index_info(?) ORDER BY seqno`, index)
		if err != nil {
			t.Fatalf("index_info(%s): %v", index, err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var c string
			if err := rows.Scan(&c); err != nil {
				t.Fatal(err)
			}
			out = append(out, c)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	for index, want := range map[string][]string{
		"codex_workers_updated_at_idx":  {"updated_at", "worker_id"},
		"revoked_tokens_expires_at_idx": {"expires_at"},
	} {
		if got := cols(index); !slices.Equal(got, want) {
			t.Errorf("index %s columns %v, want %v", index, got, want)
		}
	}

	// Down to 00040 and up again: the Down section removes what Up created.
	before, err := s.SchemaVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.goose.DownTo(ctx, 40); err != nil {
		t.Fatalf("migrate down to 00040: %v", err)
	}
	if got := cols("codex_workers_updated_at_idx"); len(got) != 0 {
		t.Errorf("after down: index still has columns %v", got)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("migrate up again: %v", err)
	}
	if v, err := s.SchemaVersion(ctx); err != nil || v != before || v < 50 {
		t.Fatalf("SchemaVersion = %d, %v; want %d (>= 50)", v, err, before)
	}
	if err := s.RevokeToken(ctx, "after-reup", time.Now().Add(time.Minute), ""); err != nil {
		t.Fatalf("revoke after re-up: %v", err)
	}
	if ok, err := s.IsTokenRevoked(ctx, "after-reup"); err != nil || !ok {
		t.Fatalf("IsTokenRevoked after re-up = %v, %v; want true", ok, err)
	}
}
