package token

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Reason is why a token was rejected: a closed set, safe as a metric label.
type Reason string

const (
	ReasonMissingToken  Reason = "missing_token"
	ReasonInvalidToken  Reason = "invalid_token"
	ReasonExpired       Reason = "expired"
	ReasonNotYetValid   Reason = "not_yet_valid"
	ReasonRevoked       Reason = "revoked"
	ReasonUnknownKID    Reason = "unknown_kid"
	ReasonClaimMismatch Reason = "claim_mismatch"
)

// Reasons lists every Reason, for metric pre-registration and tests.
func Reasons() []Reason {
	return []Reason{ReasonMissingToken, ReasonInvalidToken, ReasonExpired, ReasonNotYetValid,
		ReasonRevoked, ReasonUnknownKID, ReasonClaimMismatch}
}

// ErrRevocationCheck is wrapped (reason invalid_token, failing closed) when
// the Revocations lookup itself fails, so callers can answer 503 rather than
// 401 while the metric stays within the closed set.
var ErrRevocationCheck = errors.New("sync token revocation check failed")

// VerifyError is returned by Verify for every rejection.
type VerifyError struct {
	Reason Reason
	Detail string // for logs; never contains key material
	err    error
}

func (e *VerifyError) Error() string {
	msg := "sync token rejected: " + string(e.Reason)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	if e.err != nil {
		msg += ": " + e.err.Error()
	}
	return msg
}

func (e *VerifyError) Unwrap() error { return e.err }

// ReasonOf returns the rejection reason of a Verify error: "" for nil and
// invalid_token for errors that did not come from Verify.
func ReasonOf(err error) Reason {
	if err == nil {
		return ""
	}
	var ve *VerifyError
	if errors.As(err, &ve) {
		return ve.Reason
	}
	return ReasonInvalidToken
}

func reject(r Reason, detail string) *VerifyError { return &VerifyError{Reason: r, Detail: detail} }

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	Keyring  *Keyring // kids accepted: current and previous
	Issuer   string   // required iss; default DefaultIssuer
	Audience string   // required in aud; default DefaultAudience
	// Leeway tolerates clock skew on exp, nbf and iat. 0 means DefaultLeeway;
	// a negative value means none.
	Leeway      time.Duration
	Revocations Revocations // nil: nothing is revoked
	Now         func() time.Time
}

// Verifier checks sync tokens. Safe for concurrent use.
type Verifier struct {
	keys     *Keyring
	issuer   string
	audience string
	leeway   int64 // seconds: the claims carry whole seconds
	revoked  Revocations
	now      func() time.Time
}

// NewVerifier builds a Verifier from cfg, filling defaults.
func NewVerifier(cfg VerifierConfig) *Verifier {
	v := &Verifier{
		keys:     cfg.Keyring,
		issuer:   cmp(cfg.Issuer, DefaultIssuer),
		audience: cmp(cfg.Audience, DefaultAudience),
		revoked:  cfg.Revocations,
		now:      cfg.Now,
	}
	switch {
	case cfg.Leeway == 0:
		v.leeway = int64(DefaultLeeway / time.Second)
	case cfg.Leeway > 0:
		v.leeway = int64((cfg.Leeway + time.Second - 1) / time.Second)
	}
	if v.now == nil {
		v.now = time.Now
	}
	return v
}

// MaxTokenBytes bounds the accepted token length: ours are well under 1 KiB,
// and the bound keeps hostile input from costing decode time.
const MaxTokenBytes = 4096

var (
	errNoKID      = errors.New("header has no kid")
	errUnknownKID = errors.New("kid not in keyring")
)

// Verify checks raw (the bare token, without "Bearer ") and returns its
// claims. Every rejection is a *VerifyError; see ReasonOf.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Claims, error) {
	if raw == "" {
		return nil, reject(ReasonMissingToken, "")
	}
	if len(raw) > MaxTokenBytes {
		return nil, reject(ReasonInvalidToken, fmt.Sprintf("token longer than %d bytes", MaxTokenBytes))
	}

	// Claim validation is ours (below), so that each failure maps to exactly
	// one Reason; the library checks structure, alg and signature only.
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{Algorithm}),
		jwt.WithoutClaimsValidation(),
		jwt.WithStrictDecoding(),
	)
	wc := &wireClaims{}
	var kid string
	_, err := parser.ParseWithClaims(raw, wc, func(t *jwt.Token) (any, error) {
		// Pinned again here: the keyfunc must never hand an HMAC secret to
		// another algorithm, whatever the parser options say.
		if t.Method != jwt.SigningMethodHS256 {
			return nil, fmt.Errorf("alg %v not allowed", t.Header["alg"])
		}
		if _, crit := t.Header["crit"]; crit {
			return nil, errors.New("crit header not supported")
		}
		k, ok := t.Header["kid"].(string)
		if !ok || k == "" {
			return nil, errNoKID
		}
		secret, ok := v.keys.lookup(k)
		if !ok {
			return nil, errUnknownKID
		}
		kid = k
		return secret, nil
	})
	if err != nil {
		if errors.Is(err, errUnknownKID) {
			return nil, &VerifyError{Reason: ReasonUnknownKID, err: err}
		}
		return nil, &VerifyError{Reason: ReasonInvalidToken, err: err}
	}

	c, verr := v.checkClaims(wc)
	if verr != nil {
		return nil, verr
	}
	c.KeyID = kid

	if v.revoked != nil {
		revoked, err := v.revoked.IsRevoked(ctx, c.ID)
		if err != nil {
			return nil, &VerifyError{Reason: ReasonInvalidToken, Detail: "revocation lookup failed",
				err: fmt.Errorf("%w: %w", ErrRevocationCheck, err)}
		}
		if revoked {
			return nil, reject(ReasonRevoked, "")
		}
	}
	return c, nil
}

func (v *Verifier) checkClaims(wc *wireClaims) (*Claims, *VerifyError) {
	// Presence first: a token missing a claim is malformed, whatever else.
	switch {
	case wc.Issuer == "":
		return nil, reject(ReasonInvalidToken, "missing iss")
	case len(wc.Audience) == 0:
		return nil, reject(ReasonInvalidToken, "missing aud")
	case wc.Subject == "":
		return nil, reject(ReasonInvalidToken, "missing sub")
	case wc.IssuedAt == nil:
		return nil, reject(ReasonInvalidToken, "missing iat")
	case wc.NotBefore == nil:
		return nil, reject(ReasonInvalidToken, "missing nbf")
	case wc.ExpiresAt == nil:
		return nil, reject(ReasonInvalidToken, "missing exp")
	case wc.ID == "":
		return nil, reject(ReasonInvalidToken, "missing jti")
	case wc.OrgID == "":
		return nil, reject(ReasonInvalidToken, "missing oa_org_id")
	case len(wc.Scopes) == 0:
		return nil, reject(ReasonInvalidToken, "missing oa_sync_scopes")
	case wc.ClaimsVersion == "":
		return nil, reject(ReasonInvalidToken, "missing oa_claims_version")
	}

	iat, nbf, exp := *wc.IssuedAt, *wc.NotBefore, *wc.ExpiresAt
	// Positive times keep the arithmetic below free of overflow.
	if iat <= 0 || nbf <= 0 || exp <= 0 {
		return nil, reject(ReasonInvalidToken, "non-positive time claim")
	}
	if exp <= iat {
		return nil, reject(ReasonInvalidToken, "exp not after iat")
	}
	if exp-iat > int64(MaxTTL/time.Second) {
		return nil, reject(ReasonInvalidToken, "lifetime exceeds the maximum ttl")
	}

	if wc.Issuer != v.issuer {
		return nil, reject(ReasonClaimMismatch, "iss")
	}
	if !slices.Contains(wc.Audience, v.audience) {
		return nil, reject(ReasonClaimMismatch, "aud")
	}
	if wc.ClaimsVersion != ClaimsVersion {
		return nil, reject(ReasonClaimMismatch, "oa_claims_version")
	}
	// Unknown topics are dropped rather than fatal, so a token from a newer
	// instance that knows more topics still works for the ones we serve.
	var scopes []string
	for _, s := range wc.Scopes {
		if IsTopic(s) && !slices.Contains(scopes, s) {
			scopes = append(scopes, s)
		}
	}
	if len(scopes) == 0 {
		return nil, reject(ReasonClaimMismatch, "oa_sync_scopes has no known topic")
	}

	now := v.now().Unix()
	if now-v.leeway >= exp {
		return nil, reject(ReasonExpired, "")
	}
	if nbf > now+v.leeway || iat > now+v.leeway {
		return nil, reject(ReasonNotYetValid, "")
	}

	return &Claims{
		Issuer:        wc.Issuer,
		Audience:      slices.Clone([]string(wc.Audience)),
		Subject:       wc.Subject,
		OrgID:         wc.OrgID,
		Scopes:        scopes,
		ID:            wc.ID,
		ClaimsVersion: wc.ClaimsVersion,
		IssuedAt:      time.Unix(iat, 0).UTC(),
		NotBefore:     time.Unix(nbf, 0).UTC(),
		ExpiresAt:     time.Unix(exp, 0).UTC(),
	}, nil
}

// TokenFromRequest returns the bearer token of r: the Authorization header
// ("Bearer <token>", scheme case-insensitive) or, for WebSocket clients that
// cannot set headers, the token query parameter. "" when neither is present,
// which Verify rejects as missing_token.
func TokenFromRequest(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return ""
		}
		return strings.TrimSpace(tok)
	}
	return r.URL.Query().Get("token")
}
