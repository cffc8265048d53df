package token

import (
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Sync topics a token may grant (DESIGN §8).
const (
	TopicRunSummaries         = "runtime.run_summaries"
	TopicCodexWorkerSummaries = "runtime.codex_worker_summaries"
	TopicCodexWorkerEvents    = "runtime.codex_worker_events"
)

// Topics returns the topics a token may carry, in canonical order. A fresh
// slice each call, so callers cannot alter the set.
func Topics() []string {
	return []string{TopicRunSummaries, TopicCodexWorkerSummaries, TopicCodexWorkerEvents}
}

// IsTopic reports whether t is a known sync topic.
func IsTopic(t string) bool { return slices.Contains(Topics(), t) }

// Defaults and bounds (DESIGN §8; the original's numbers).
const (
	DefaultIssuer   = "oaruntime"
	DefaultAudience = "openagents-sync"
	// ClaimsVersion is written into oa_claims_version; verifiers require it.
	ClaimsVersion = "oa_sync_claims_v1"

	DefaultTTL = 300 * time.Second
	MinTTL     = 60 * time.Second
	MaxTTL     = 900 * time.Second

	// DefaultLeeway absorbs clock skew between the minting and verifying
	// instances (DESIGN section 8: 30 s, as for the runtime signature).
	DefaultLeeway = 30 * time.Second

	// Algorithm is the only accepted JWS alg.
	Algorithm = "HS256"
)

// wireClaims is the JWT payload. Times are *int64 so that a float, a string or
// an absent value is a decode error or nil rather than silently accepted.
type wireClaims struct {
	Issuer        string           `json:"iss,omitempty"`
	Audience      jwt.ClaimStrings `json:"aud,omitempty"`
	Subject       string           `json:"sub,omitempty"`
	IssuedAt      *int64           `json:"iat,omitempty"`
	NotBefore     *int64           `json:"nbf,omitempty"`
	ExpiresAt     *int64           `json:"exp,omitempty"`
	ID            string           `json:"jti,omitempty"`
	OrgID         string           `json:"oa_org_id,omitempty"`
	Scopes        []string         `json:"oa_sync_scopes,omitempty"`
	ClaimsVersion string           `json:"oa_claims_version,omitempty"`
}

// The jwt.Claims methods exist only to satisfy the library's interface: the
// library's own claim validation is disabled and Verifier checks the claims.

func (c *wireClaims) GetExpirationTime() (*jwt.NumericDate, error) {
	return numericDate(c.ExpiresAt), nil
}
func (c *wireClaims) GetIssuedAt() (*jwt.NumericDate, error)  { return numericDate(c.IssuedAt), nil }
func (c *wireClaims) GetNotBefore() (*jwt.NumericDate, error) { return numericDate(c.NotBefore), nil }
func (c *wireClaims) GetIssuer() (string, error)              { return c.Issuer, nil }
func (c *wireClaims) GetSubject() (string, error)             { return c.Subject, nil }
func (c *wireClaims) GetAudience() (jwt.ClaimStrings, error)  { return c.Audience, nil }

func numericDate(sec *int64) *jwt.NumericDate {
	if sec == nil {
		return nil
	}
	return jwt.NewNumericDate(time.Unix(*sec, 0))
}

// Claims are the verified contents of a sync token.
type Claims struct {
	KeyID         string
	Issuer        string
	Audience      []string
	Subject       string // principal: "user:<id>" or "guest:<scope>"
	OrgID         string
	Scopes        []string // known topics only, in token order
	ID            string   // jti
	ClaimsVersion string
	IssuedAt      time.Time
	NotBefore     time.Time
	ExpiresAt     time.Time
}

// HasScope reports whether the token grants topic.
func (c *Claims) HasScope(topic string) bool { return c != nil && slices.Contains(c.Scopes, topic) }
