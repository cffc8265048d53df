package postgres

import (
	"slices"
	"testing"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/storetest"
)

// TestRevocationConformance runs the token revocation sub-suite, each
// subtest in its own fresh schema.
func TestRevocationConformance(t *testing.T) {
	testURL(t)
	storetest.RunRevocation(t, func(t *testing.T) store.RevocationStore { return newTestStore(t) })
}

// TestMigration00050Indexes checks the indexes 00050 adds exist with the
// columns the queries order by, and that the migration rolls back cleanly.
func TestMigration00050Indexes(t *testing.T) {
	s := newTestStore(t)
	ctx := t.Context()
	cols := func(index string) []string {
		t.Helper()
		var out []string
		err := s.Pool().QueryRow(ctx, `SELECT COALESCE(array_agg(a.attname ORDER BY k.ord), '{}')
			FROM pg_index i
			JOIN pg_class c ON c.oid = i.indexrelid
			JOIN pg_namespace n ON n.oid = c.relnamespace
			CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
			JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
			WHERE c.relname = $1 AND n.nspname = $2`, index, s.Schema()).Scan(&out)
		if err != nil {
			t.Fatalf("columns of %s: %v", index, err)
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
