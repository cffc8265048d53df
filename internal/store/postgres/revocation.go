package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oaruntime/oaruntime/internal/store"
)

var _ store.RevocationStore = (*Store)(nil)

// RevokeToken implements store.RevocationStore.
func (s *Store) RevokeToken(ctx context.Context, jti string, expiresAt time.Time, reason string) error {
	switch {
	case jti == "":
		return fmt.Errorf("postgres: revoke token: %w: jti is empty", store.ErrInvalidRevocation)
	case len(jti) > store.MaxRevocationJTILen:
		return fmt.Errorf("postgres: revoke token: %w: jti is %d bytes, at most %d", store.ErrInvalidRevocation, len(jti), store.MaxRevocationJTILen)
	case len(reason) > store.MaxRevocationReasonLen:
		return fmt.Errorf("postgres: revoke token: %w: reason is %d bytes, at most %d", store.ErrInvalidRevocation, len(reason), store.MaxRevocationReasonLen)
	}
	if err := checkText("jti", jti, "reason", reason); err != nil {
		return fmt.Errorf("postgres: revoke token: %w: %w", store.ErrInvalidRevocation, err)
	}
	// Truncated as SQLite keeps it, so both drivers store the same instant.
	exp := expiresAt.UTC().Truncate(time.Microsecond)
	_, err := s.pool.Exec(ctx, `INSERT INTO revoked_tokens (jti, expires_at, reason)
		VALUES ($1, $2, $3)
		ON CONFLICT (jti) DO UPDATE SET expires_at = GREATEST(revoked_tokens.expires_at, excluded.expires_at)`,
		jti, exp, reason)
	if err != nil {
		return fmt.Errorf("postgres: revoke token: %w", err)
	}
	return nil
}

// IsTokenRevoked implements store.RevocationStore.
func (s *Store) IsTokenRevoked(ctx context.Context, jti string) (bool, error) {
	if !storable(jti) {
		return false, nil // nothing unstorable was ever revoked
	}
	var one int
	err := s.pool.QueryRow(ctx, `SELECT 1 FROM revoked_tokens WHERE jti = $1`, jti).Scan(&one)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("postgres: is token revoked: %w", err)
	}
	return true, nil
}

// PruneRevocations implements store.RevocationStore. Revocations are few
// (operator actions), so one statement suffices; no batching. Concurrent
// pruners (replicas) delete disjoint rows or wait and find them gone.
func (s *Store) PruneRevocations(ctx context.Context, now time.Time) (int, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM revoked_tokens WHERE expires_at < $1`, now.UTC())
	if err != nil {
		return 0, fmt.Errorf("postgres: prune revocations: %w", err)
	}
	return int(tag.RowsAffected()), nil
}
