package store

import (
	"context"
	"errors"
	"time"
)

// ErrInvalidRevocation is wrapped by RevokeToken when the jti or reason
// cannot be recorded (empty, too long, or not storable text).
var ErrInvalidRevocation = errors.New("invalid token revocation")

// RevocationStore records revoked sync token ids (jti, DESIGN §8) so that a
// revocation made on one replica is seen by every replica. Both drivers'
// *Store implement it.
//
// A revocation is never undone: once a jti is revoked it stays revoked until
// its row is pruned, which only happens after the token expired anyway.
type RevocationStore interface {
	// RevokeToken records jti as revoked. expiresAt is the token's exp (or an
	// upper bound of it): after it the token is rejected as expired and the
	// row may be pruned. Idempotent: revoking a revoked jti again keeps the
	// first reason and revoked_at, and keeps the later of the two expiries,
	// so a second call can only lengthen how long the row is kept. An empty
	// jti, or text a driver cannot store (NUL, invalid UTF-8), is an error.
	RevokeToken(ctx context.Context, jti string, expiresAt time.Time, reason string) error
	// IsTokenRevoked reports whether jti has a revocation row. It does not
	// look at expires_at: a row still present means revoked, whatever the
	// clocks say, and rows go away only through PruneRevocations.
	IsTokenRevoked(ctx context.Context, jti string) (bool, error)
	// PruneRevocations deletes the rows whose expires_at is before now and
	// returns how many it deleted. Callers pass a now reduced by the
	// verifier's clock leeway, so that a token still accepted within the
	// leeway keeps its row.
	PruneRevocations(ctx context.Context, now time.Time) (int, error)
}

// MaxRevocationJTILen bounds a stored jti (ours are 32 hex characters); the
// drivers reject longer ones rather than index unbounded text.
const MaxRevocationJTILen = 256

// MaxRevocationReasonLen bounds the stored reason in bytes.
const MaxRevocationReasonLen = 1024
