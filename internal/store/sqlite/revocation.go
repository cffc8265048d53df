package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/oaruntime/oaruntime/internal/store"
)

var _ store.RevocationStore = (*Store)(nil)

// checkRevocation applies the limits both drivers share; SQLite itself
// would store anything.
func checkRevocation(jti, reason string) error {
	switch {
	case jti == "":
		return fmt.Errorf("%w: jti is empty", store.ErrInvalidRevocation)
	case len(jti) > store.MaxRevocationJTILen:
		return fmt.Errorf("%w: jti is %d bytes, at most %d", store.ErrInvalidRevocation, len(jti), store.MaxRevocationJTILen)
	case len(reason) > store.MaxRevocationReasonLen:
		return fmt.Errorf("%w: reason is %d bytes, at most %d", store.ErrInvalidRevocation, len(reason), store.MaxRevocationReasonLen)
	case !utf8.ValidString(jti) || !utf8.ValidString(reason):
		// Kept identical to PostgreSQL, so a revocation accepted on one
		// driver is accepted on the other.
		return fmt.Errorf("%w: jti and reason must be valid UTF-8", store.ErrInvalidRevocation)
	case strings.ContainsRune(jti, 0) || strings.ContainsRune(reason, 0):
		return fmt.Errorf("%w: jti and reason must not contain NUL", store.ErrInvalidRevocation)
	}
	return nil
}

// RevokeToken implements store.RevocationStore.
func (s *Store) RevokeToken(ctx context.Context, jti string, expiresAt time.Time, reason string) error {
	if err := checkRevocation(jti, reason); err != nil {
		return fmt.Errorf("sqlite: revoke token: %w", err)
	}
	// max() on the fixed-width text keeps the later expiry: the layout
	// sorts as strings in time order.
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO revoked_tokens (jti, expires_at, reason, revoked_at)
			VALUES (?, ?, ?, ?)
			ON CONFLICT (jti) DO UPDATE SET expires_at = max(revoked_tokens.expires_at, excluded.expires_at)`,
			jti, formatTS(expiresAt), reason, formatTS(s.now()))
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlite: revoke token: %w", err)
	}
	return nil
}

// IsTokenRevoked implements store.RevocationStore.
func (s *Store) IsTokenRevoked(ctx context.Context, jti string) (bool, error) {
	var one int
	err := s.reader.QueryRowContext(ctx, `SELECT 1 FROM revoked_tokens WHERE jti = ?`, jti).Scan(&one)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("sqlite: is token revoked: %w", err)
	}
	return true, nil
}

// PruneRevocations implements store.RevocationStore. Revocations are few
// (operator actions), so one statement suffices; no batching.
func (s *Store) PruneRevocations(ctx context.Context, now time.Time) (int, error) {
	var n int64
	err := s.write(ctx, func(tx *sql.Tx, _ func(store.Notice)) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM revoked_tokens WHERE expires_at < ?`, formatTS(now))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("sqlite: prune revocations: %w", err)
	}
	return int(n), nil
}
