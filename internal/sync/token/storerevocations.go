package token

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// RevocationBackend is the durable, shared record of revoked jtis. The
// store drivers' *Store implement it (store.RevocationStore).
type RevocationBackend interface {
	RevokeToken(ctx context.Context, jti string, expiresAt time.Time, reason string) error
	IsTokenRevoked(ctx context.Context, jti string) (bool, error)
	PruneRevocations(ctx context.Context, now time.Time) (int, error)
}

// Adapter defaults.
const (
	// DefaultNegativeTTL bounds how long a replica may go on accepting a
	// token after another replica revoked it.
	DefaultNegativeTTL = time.Second
	// DefaultPruneGrace keeps a revocation row this long past the token's
	// exp. It must exceed the verifiers' leeway (a token is accepted until
	// exp+leeway) plus the clock skew between replicas.
	DefaultPruneGrace = time.Minute
	// DefaultMaxCacheEntries bounds each of the two caches.
	DefaultMaxCacheEntries = 1 << 16
)

// StoreRevocationsConfig configures StoreRevocations. Zero values take the
// defaults.
type StoreRevocationsConfig struct {
	// NegativeTTL is how long a "not revoked" answer is reused before the
	// store is asked again. Default DefaultNegativeTTL; negative disables
	// the negative cache (every check reads the store).
	NegativeTTL time.Duration
	// PruneGrace: see DefaultPruneGrace.
	PruneGrace time.Duration
	// MaxCacheEntries bounds the positive and the negative cache each.
	MaxCacheEntries int
	Logger          *slog.Logger
	Now             func() time.Time
}

// StoreRevocations implements Revocations over the shared store, so that a
// revocation made on any replica is honoured by all of them.
//
// Verify runs at connect, at every WebSocket heartbeat and on every polling
// request, so answers are cached in process:
//   - revoked: until the token can no longer be valid. A revocation is never
//     undone, so a cached "revoked" is never wrong; the bound only frees
//     memory. The jti alone does not tell the token's exp, so the bound is
//     the longest any token can still live (MaxTTL plus leeway).
//   - not revoked: for NegativeTTL only, which bounds how long a
//     revocation made on another replica can go unnoticed here.
//
// Errors are never cached. Safe for concurrent use.
type StoreRevocations struct {
	b           RevocationBackend
	negativeTTL time.Duration
	positiveTTL time.Duration
	pruneGrace  time.Duration
	maxEntries  int
	log         *slog.Logger
	now         func() time.Time

	mu       sync.Mutex
	revoked  map[string]time.Time // jti -> forget after
	notFound map[string]time.Time // jti -> ask the store again after
}

var _ Revocations = (*StoreRevocations)(nil)

// NewStoreRevocations wraps b.
func NewStoreRevocations(b RevocationBackend, cfg StoreRevocationsConfig) *StoreRevocations {
	r := &StoreRevocations{
		b:           b,
		negativeTTL: cfg.NegativeTTL,
		positiveTTL: maxTokenLife(),
		pruneGrace:  cfg.PruneGrace,
		maxEntries:  cfg.MaxCacheEntries,
		log:         cfg.Logger,
		now:         cfg.Now,
		revoked:     make(map[string]time.Time),
		notFound:    make(map[string]time.Time),
	}
	if r.negativeTTL == 0 {
		r.negativeTTL = DefaultNegativeTTL
	}
	if r.pruneGrace <= 0 {
		r.pruneGrace = DefaultPruneGrace
	}
	if r.maxEntries <= 0 {
		r.maxEntries = DefaultMaxCacheEntries
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.now == nil {
		r.now = time.Now
	}
	return r
}

// maxTokenLife is the longest a token issued up to now can still be
// accepted: a token's life is at most MaxTTL, and its iat may be ahead of
// our clock by the default leeway.
func maxTokenLife() time.Duration { return MaxTTL + DefaultLeeway }

// IsRevoked implements Revocations.
func (r *StoreRevocations) IsRevoked(ctx context.Context, jti string) (bool, error) {
	now := r.now()
	r.mu.Lock()
	if until, ok := r.revoked[jti]; ok {
		if now.Before(until) {
			r.mu.Unlock()
			return true, nil
		}
		delete(r.revoked, jti)
	}
	if until, ok := r.notFound[jti]; ok {
		if now.Before(until) {
			r.mu.Unlock()
			return false, nil
		}
		delete(r.notFound, jti)
	}
	r.mu.Unlock()

	revoked, err := r.b.IsTokenRevoked(ctx, jti)
	if err != nil {
		return false, fmt.Errorf("sync token revocations: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if revoked {
		r.putRevoked(jti, now.Add(r.positiveTTL), now)
	} else if r.negativeTTL > 0 {
		// A local RevokeToken that raced this lookup has already filled
		// the positive cache, which is consulted first; the stale
		// negative entry below can never hide it.
		r.putNotFound(jti, now.Add(r.negativeTTL), now)
	}
	return revoked, nil
}

// RevokeToken records the revocation in the store and, once it is durable,
// in this replica's cache, so that this replica honours it at once (other
// replicas within their NegativeTTL). It implements the store's contract:
// idempotent, the later expiry kept.
func (r *StoreRevocations) RevokeToken(ctx context.Context, jti string, expiresAt time.Time, reason string) error {
	if err := r.b.RevokeToken(ctx, jti, expiresAt, reason); err != nil {
		return fmt.Errorf("sync token revocations: %w", err)
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.notFound, jti)
	r.putRevoked(jti, now.Add(r.positiveTTL), now)
	return nil
}

// putRevoked caches a positive answer. Called with mu held. When the cache
// is full of live entries the answer is not cached: the store still has it.
func (r *StoreRevocations) putRevoked(jti string, until, now time.Time) {
	if _, ok := r.revoked[jti]; !ok && len(r.revoked) >= r.maxEntries {
		sweep(r.revoked, now)
		if len(r.revoked) >= r.maxEntries {
			return
		}
	}
	r.revoked[jti] = until
}

// putNotFound caches a negative answer. Called with mu held. A full cache
// is emptied: negatives live a second, so nothing of value is lost.
func (r *StoreRevocations) putNotFound(jti string, until, now time.Time) {
	if _, ok := r.notFound[jti]; !ok && len(r.notFound) >= r.maxEntries {
		sweep(r.notFound, now)
		if len(r.notFound) >= r.maxEntries {
			clear(r.notFound)
		}
	}
	r.notFound[jti] = until
}

func sweep(m map[string]time.Time, now time.Time) {
	for k, until := range m {
		if !now.Before(until) {
			delete(m, k)
		}
	}
}

// Prune deletes the store's revocations of tokens that expired more than
// PruneGrace ago, drops expired cache entries, and returns how many rows
// it deleted. Every replica may run it; the deletes do not conflict.
func (r *StoreRevocations) Prune(ctx context.Context) (int, error) {
	now := r.now()
	n, err := r.b.PruneRevocations(ctx, now.Add(-r.pruneGrace))
	if err != nil {
		return n, fmt.Errorf("sync token revocations: prune: %w", err)
	}
	r.mu.Lock()
	sweep(r.revoked, now)
	sweep(r.notFound, now)
	r.mu.Unlock()
	return n, nil
}

// RunPruning calls Prune at once and then every interval (default one
// minute) until ctx ends. Failures are logged and retried next interval.
func (r *StoreRevocations) RunPruning(ctx context.Context, every time.Duration) {
	if every <= 0 {
		every = time.Minute
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		n, err := r.Prune(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			r.log.WarnContext(ctx, "sync token revocation pruning failed", "error", err)
		case n > 0:
			r.log.InfoContext(ctx, "sync token revocations pruned", "deleted", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// cacheSizes reports the number of cached positive and negative answers.
func (r *StoreRevocations) cacheSizes() (revoked, notFound int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.revoked), len(r.notFound)
}
