package token

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// FailureClass is the failure_class label of the token mint metric. The
// runbook's three classes cover refusals (authz_denied: no principal, or a
// scope the principal may not hold) and server-side failures (signing_error,
// upstream_unavailable). invalid_request is kept apart for malformed requests
// (bad JSON, unknown field, ttl or topic out of range) so that one client
// sending bad bodies does not read as an authorization problem.
type FailureClass string

const (
	ClassNone                FailureClass = "none"
	ClassInvalidRequest      FailureClass = "invalid_request"
	ClassAuthzDenied         FailureClass = "authz_denied"
	ClassSigningError        FailureClass = "signing_error"
	ClassUpstreamUnavailable FailureClass = "upstream_unavailable"
)

// Sentinels wrapped by MintError, one per HTTP outcome.
var (
	ErrInvalidRequest = errors.New("invalid sync token request")        // 400
	ErrForbidden      = errors.New("sync token request forbidden")      // 403
	ErrSigning        = errors.New("sync token signing failed")         // 503
	ErrUpstream       = errors.New("sync token dependency unavailable") // 503
)

// MintError is returned by Mint for every failure.
type MintError struct {
	Class FailureClass
	// Field names the request field at fault ("sub", "scopes", "ttl_seconds"),
	// empty for server-side failures.
	Field string
	// Message is safe to show the caller: it never carries key material or
	// dependency error text.
	Message string
	err     error
}

func (e *MintError) Error() string {
	if e.err != nil {
		return e.Message + ": " + e.err.Error()
	}
	return e.Message
}

func (e *MintError) Unwrap() error { return e.err }

// ClassOf returns the failure class of a Mint error: ClassNone for nil and
// ClassSigningError for errors that did not come from Mint.
func ClassOf(err error) FailureClass {
	if err == nil {
		return ClassNone
	}
	var me *MintError
	if errors.As(err, &me) {
		return me.Class
	}
	return ClassSigningError
}

func invalid(field, msg string) *MintError {
	return &MintError{Class: ClassInvalidRequest, Field: field, Message: msg, err: ErrInvalidRequest}
}

func forbidden(field, msg string) *MintError {
	return &MintError{Class: ClassAuthzDenied, Field: field, Message: msg, err: ErrForbidden}
}

// FaultFunc is an operator fault hook: when it returns an error, minting fails
// as signing_error. It lets end-to-end alert tests fire the token-mint alert
// through the real runtime.
type FaultFunc func() error

// MinterConfig configures a Minter. Only Keyring matters for correctness; the
// rest has defaults.
type MinterConfig struct {
	Keyring  *Keyring // nil or empty: every mint fails as signing_error
	Issuer   string   // default DefaultIssuer
	Audience string   // default DefaultAudience
	// Upstream, when set, is checked before each mint (e.g. the store ping);
	// an error fails the mint as upstream_unavailable.
	Upstream        func(ctx context.Context) error
	UpstreamTimeout time.Duration // default 2s
	Fault           FaultFunc     // optional; see SetFault
	Now             func() time.Time
	Rand            io.Reader // jti source; default crypto/rand
}

// Minter issues sync tokens. Safe for concurrent use.
type Minter struct {
	keys            *Keyring
	issuer          string
	audience        string
	upstream        func(ctx context.Context) error
	upstreamTimeout time.Duration
	now             func() time.Time
	rand            io.Reader
	fault           atomic.Pointer[FaultFunc]
}

// NewMinter builds a Minter from cfg, filling defaults.
func NewMinter(cfg MinterConfig) *Minter {
	m := &Minter{
		keys:            cfg.Keyring,
		issuer:          cmp(cfg.Issuer, DefaultIssuer),
		audience:        cmp(cfg.Audience, DefaultAudience),
		upstream:        cfg.Upstream,
		upstreamTimeout: cfg.UpstreamTimeout,
		now:             cfg.Now,
		rand:            cfg.Rand,
	}
	if m.upstreamTimeout <= 0 {
		m.upstreamTimeout = 2 * time.Second
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.rand == nil {
		m.rand = rand.Reader
	}
	m.SetFault(cfg.Fault)
	return m
}

func cmp(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// SetFault installs (or, with nil, removes) the fault hook while serving.
func (m *Minter) SetFault(f FaultFunc) {
	if f == nil {
		m.fault.Store(nil)
		return
	}
	m.fault.Store(&f)
}

// Issuer and Audience return the values written into iss and aud, so a
// Verifier can be configured to match.
func (m *Minter) Issuer() string   { return m.issuer }
func (m *Minter) Audience() string { return m.audience }

// MintRequest asks for a token for Subject.
type MintRequest struct {
	Subject string   // "user:<id>" or "guest:<scope>"
	Scopes  []string // nil: DefaultScopes(Subject); otherwise non-empty known topics
	// TTLSeconds nil means DefaultTTL; otherwise it must lie in [60, 900].
	TTLSeconds *int64
}

// Minted is an issued token and what the caller needs to describe it.
type Minted struct {
	Token     string
	KeyID     string
	ID        string // jti
	Subject   string
	Scopes    []string
	IssuedAt  time.Time
	ExpiresAt time.Time
	TTL       time.Duration
}

// DefaultScopes is what a principal gets when it asks for no scopes: every
// topic for users (delivery filters documents by owner anyway), only run
// summaries for guests.
func DefaultScopes(sub string) []string {
	if isGuest(sub) {
		return []string{TopicRunSummaries}
	}
	return Topics()
}

func isGuest(sub string) bool { return strings.HasPrefix(sub, "guest:") }

const maxSubjectLen = 200

// validSubject accepts "user:<id>" and "guest:<scope>" with a non-empty,
// visible-ASCII remainder.
func validSubject(sub string) bool {
	rest, ok := strings.CutPrefix(sub, "user:")
	if !ok {
		rest, ok = strings.CutPrefix(sub, "guest:")
	}
	if !ok || rest == "" || len(sub) > maxSubjectLen {
		return false
	}
	for i := 0; i < len(rest); i++ {
		if rest[i] <= ' ' || rest[i] > '~' {
			return false
		}
	}
	return true
}

// Mint validates req and signs a token. Every error is a *MintError.
func (m *Minter) Mint(ctx context.Context, req MintRequest) (*Minted, error) {
	if !validSubject(req.Subject) {
		return nil, forbidden("sub", "sub (the principal) must be user:<id> or guest:<scope>")
	}
	ttl := DefaultTTL
	if req.TTLSeconds != nil {
		s := *req.TTLSeconds
		if s < int64(MinTTL/time.Second) || s > int64(MaxTTL/time.Second) {
			return nil, invalid("ttl_seconds", fmt.Sprintf("ttl_seconds must be between %d and %d, got %d",
				int64(MinTTL/time.Second), int64(MaxTTL/time.Second), s))
		}
		ttl = time.Duration(s) * time.Second
	}
	scopes, merr := m.resolveScopes(req.Subject, req.Scopes)
	if merr != nil {
		return nil, merr
	}

	if m.upstream != nil {
		uctx, cancel := context.WithTimeout(ctx, m.upstreamTimeout)
		err := m.upstream(uctx)
		cancel()
		if err != nil {
			return nil, &MintError{Class: ClassUpstreamUnavailable, Message: "sync token dependency unavailable",
				err: fmt.Errorf("%w: %w", ErrUpstream, err)}
		}
	}
	if f := m.fault.Load(); f != nil {
		if err := (*f)(); err != nil {
			return nil, &MintError{Class: ClassSigningError, Message: "sync token signing unavailable",
				err: fmt.Errorf("%w: injected fault: %w", ErrSigning, err)}
		}
	}
	k, ok := m.keys.signingKey()
	if !ok {
		return nil, &MintError{Class: ClassSigningError, Message: "sync token signing unavailable",
			err: fmt.Errorf("%w: no signing key configured (OA_SYNC_TOKEN_KEY_ID / OA_SYNC_TOKEN_SIGNING_KEY)", ErrSigning)}
	}
	jti, err := m.newJTI()
	if err != nil {
		return nil, &MintError{Class: ClassSigningError, Message: "sync token signing unavailable",
			err: fmt.Errorf("%w: jti: %w", ErrSigning, err)}
	}

	// Whole seconds: the claims carry integer times, and the response must
	// describe exactly what the token says.
	now := m.now().Truncate(time.Second).UTC()
	iat := now.Unix()
	exp := now.Add(ttl).Unix()
	claims := &wireClaims{
		Issuer:        m.issuer,
		Audience:      jwt.ClaimStrings{m.audience},
		Subject:       req.Subject,
		IssuedAt:      &iat,
		NotBefore:     &iat,
		ExpiresAt:     &exp,
		ID:            jti,
		OrgID:         req.Subject, // the owner the sync layer filters documents by
		Scopes:        scopes,
		ClaimsVersion: ClaimsVersion,
	}
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	t.Header["kid"] = k.id
	signed, err := t.SignedString(k.secret)
	if err != nil {
		return nil, &MintError{Class: ClassSigningError, Message: "sync token signing unavailable",
			err: fmt.Errorf("%w: %w", ErrSigning, err)}
	}
	return &Minted{
		Token: signed, KeyID: k.id, ID: jti, Subject: req.Subject, Scopes: scopes,
		IssuedAt: now, ExpiresAt: now.Add(ttl), TTL: ttl,
	}, nil
}

const maxEchoLen = 64

// resolveScopes applies the default, rejects unknown topics (400) and topics
// the principal may not hold (403), and drops duplicates keeping order.
func (m *Minter) resolveScopes(sub string, requested []string) ([]string, *MintError) {
	if requested == nil {
		return DefaultScopes(sub), nil
	}
	if len(requested) == 0 {
		return nil, invalid("scopes", "scopes must list at least one topic when present")
	}
	out := make([]string, 0, len(Topics()))
	var unknown []string
	for _, s := range requested {
		if !IsTopic(s) {
			if len(unknown) < 3 {
				unknown = append(unknown, fmt.Sprintf("%q", truncate(s, maxEchoLen)))
			}
			continue
		}
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	if len(unknown) > 0 {
		return nil, invalid("scopes", fmt.Sprintf("scopes contains unknown topic %s (allowed: %s)",
			strings.Join(unknown, ", "), strings.Join(Topics(), ", ")))
	}
	if isGuest(sub) {
		for _, s := range out {
			if s != TopicRunSummaries {
				return nil, forbidden("scopes", fmt.Sprintf("scopes: guest principals may only request %s, not %s", TopicRunSummaries, s))
			}
		}
	}
	return out, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func (m *Minter) newJTI() (string, error) {
	var b [16]byte // 128 bits
	if _, err := io.ReadFull(m.rand, b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}
