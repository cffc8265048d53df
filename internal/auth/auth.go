// Package auth verifies the signed header that every internal API request
// carries:
//
//	X-OA-RUNTIME-SIGNATURE: v1.<b64url(claims JSON)>.<b64url(HMAC-SHA256(secret, claims segment))>
//
// Base64url is unpadded. The principal (sub) comes only from the signed claims,
// never from an unsigned header.
package auth

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Header is the request header carrying the signature.
const Header = "X-OA-RUNTIME-SIGNATURE"

// Limits of the protocol.
const (
	MaxLifetime  = 300 * time.Second // exp - iat
	ClockSkew    = 30 * time.Second  // tolerated for iat in the future
	MaxTokenLen  = 8192              // header bytes; a claims set is a few hundred
	MaxClaimLen  = 200               // sub, nonce, run_id, thread_id
	tokenVersion = "v1"
)

// Errors. Every verification failure wraps exactly one of them; the messages
// are safe to return to the client (they never echo the token).
var (
	ErrMissing        = errors.New("missing runtime signature")
	ErrEncoding       = errors.New("invalid token encoding")
	ErrSignature      = errors.New("invalid token signature")
	ErrClaims         = errors.New("invalid token claims")
	ErrExpired        = errors.New("token expired")
	ErrNotYetValid    = errors.New("token issued in the future")
	ErrNonceUsed      = errors.New("token nonce already used")
	ErrNonceCacheFull = errors.New("too many live token nonces, retry later")
	// ErrClaimMismatch is a valid token used for another run or thread: the
	// caller answers 403, not 401.
	ErrClaimMismatch = errors.New("claim mismatch")
)

// Claims is the signed claims set.
type Claims struct {
	Iat      int64  `json:"iat"`
	Exp      int64  `json:"exp"`
	Nonce    string `json:"nonce"`
	Sub      string `json:"sub"`
	RunID    string `json:"run_id,omitempty"`
	ThreadID string `json:"thread_id,omitempty"`
}

// Principal kinds of Claims.Sub.
const (
	KindUser  = "user"
	KindGuest = "guest"
)

// Principal splits Sub into its kind ("user" or "guest") and id or scope.
func (c Claims) Principal() (kind, id string) {
	kind, id, _ = strings.Cut(c.Sub, ":")
	return kind, id
}

// Bind checks the optional run_id and thread_id claims against the request's.
// An empty claim binds nothing; an empty request value never matches a set
// claim (a run-bound token cannot be used where the run is unknown).
func (c Claims) Bind(runID, threadID string) error {
	if c.RunID != "" && c.RunID != runID {
		return fmt.Errorf("%w for run_id", ErrClaimMismatch)
	}
	if c.ThreadID != "" && c.ThreadID != threadID {
		return fmt.Errorf("%w for thread_id", ErrClaimMismatch)
	}
	return nil
}

// Sign returns the header value for claims. It is used by clients and tests.
func Sign(secret []byte, c Claims) string {
	raw, _ := json.Marshal(c) // a struct of strings and ints always encodes
	seg := base64.RawURLEncoding.EncodeToString(raw)
	return tokenVersion + "." + seg + "." + base64.RawURLEncoding.EncodeToString(mac(secret, seg))
}

// NewClaims returns claims for sub valid from now for ttl (capped at
// MaxLifetime) with a random nonce.
func NewClaims(now time.Time, sub string, ttl time.Duration) Claims {
	if ttl <= 0 || ttl > MaxLifetime {
		ttl = MaxLifetime
	}
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return Claims{Iat: now.Unix(), Exp: now.Add(ttl).Unix(), Nonce: hex.EncodeToString(b[:]), Sub: sub}
}

func mac(secret []byte, segment string) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(segment))
	return h.Sum(nil)
}

// Option configures a Verifier.
type Option func(*Verifier)

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(v *Verifier) { v.now = now } }

// WithNonceCapacity bounds the number of live nonces remembered. When the
// cache is full of unexpired nonces, new tokens are refused with
// ErrNonceCacheFull rather than forgetting a nonce early, which would allow a
// replay. The default, 200000, covers about 600 requests per second
// sustained over the longest token lifetime.
func WithNonceCapacity(n int) Option {
	return func(v *Verifier) {
		if n > 0 {
			v.nonces.capacity = n
		}
	}
}

// Verifier checks signatures and remembers nonces until their tokens expire.
// It is safe for concurrent use.
type Verifier struct {
	secret []byte
	now    func() time.Time
	nonces *nonceCache
}

// NewVerifier returns a Verifier for secret, which must not be empty.
func NewVerifier(secret []byte, opts ...Option) (*Verifier, error) {
	if len(secret) == 0 {
		return nil, errors.New("auth: empty signature secret")
	}
	v := &Verifier{secret: bytes.Clone(secret), now: time.Now, nonces: newNonceCache(200000)}
	for _, o := range opts {
		o(v)
	}
	return v, nil
}

// VerifyRequest verifies the request's signature header.
func (v *Verifier) VerifyRequest(r *http.Request) (Claims, error) {
	return v.Verify(r.Header.Get(Header))
}

// Verify checks token and consumes its nonce. The returned error wraps one of
// the package's sentinel errors.
func (v *Verifier) Verify(token string) (Claims, error) {
	token = strings.TrimSpace(token)
	if token == "" {
		return Claims{}, ErrMissing
	}
	if len(token) > MaxTokenLen {
		return Claims{}, fmt.Errorf("%w: token longer than %d bytes", ErrEncoding, MaxTokenLen)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 || parts[0] != tokenVersion {
		return Claims{}, fmt.Errorf("%w: want v1.<claims>.<signature>", ErrEncoding)
	}
	sig, err := base64.RawURLEncoding.Strict().DecodeString(parts[2])
	if err != nil {
		return Claims{}, fmt.Errorf("%w: signature is not unpadded base64url", ErrEncoding)
	}
	// The signature is checked before the claims are even decoded, so that an
	// unauthenticated caller learns nothing about claim validation.
	if !hmac.Equal(sig, mac(v.secret, parts[1])) {
		return Claims{}, ErrSignature
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(parts[1])
	if err != nil {
		return Claims{}, fmt.Errorf("%w: claims are not unpadded base64url", ErrEncoding)
	}
	c, err := parseClaims(raw)
	if err != nil {
		return Claims{}, err
	}
	now := v.now()
	switch {
	case c.Exp <= c.Iat:
		return Claims{}, fmt.Errorf("%w: exp must be after iat", ErrClaims)
	case c.Exp-c.Iat > int64(MaxLifetime/time.Second):
		return Claims{}, fmt.Errorf("%w: lifetime exp-iat exceeds %d s", ErrClaims, int64(MaxLifetime/time.Second))
	case c.Exp <= now.Unix():
		return Claims{}, ErrExpired
	case c.Iat > now.Add(ClockSkew).Unix():
		return Claims{}, ErrNotYetValid
	}
	if err := v.nonces.use(c.Nonce, c.Exp, now.Unix()); err != nil {
		return Claims{}, err
	}
	return c, nil
}

// parseClaims decodes the claims strictly enough that a typo in a type cannot
// pass: iat and exp must be JSON integers, the strings must be strings.
// Unknown claims are ignored so that signers may add claims.
func parseClaims(raw []byte) (Claims, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil || dec.More() {
		return Claims{}, fmt.Errorf("%w: not a JSON object", ErrClaims)
	}
	var c Claims
	var err error
	if c.Iat, err = intClaim(m, "iat"); err != nil {
		return Claims{}, err
	}
	if c.Exp, err = intClaim(m, "exp"); err != nil {
		return Claims{}, err
	}
	if c.Nonce, err = stringClaim(m, "nonce", true); err != nil {
		return Claims{}, err
	}
	if c.Sub, err = stringClaim(m, "sub", true); err != nil {
		return Claims{}, err
	}
	if c.RunID, err = stringClaim(m, "run_id", false); err != nil {
		return Claims{}, err
	}
	if c.ThreadID, err = stringClaim(m, "thread_id", false); err != nil {
		return Claims{}, err
	}
	kind, id, ok := strings.Cut(c.Sub, ":")
	if !ok || (kind != KindUser && kind != KindGuest) || id == "" {
		return Claims{}, fmt.Errorf("%w: sub must be user:<id> or guest:<scope>", ErrClaims)
	}
	return c, nil
}

func intClaim(m map[string]any, name string) (int64, error) {
	n, ok := m[name].(json.Number)
	if !ok {
		return 0, fmt.Errorf("%w: %s must be an integer", ErrClaims, name)
	}
	i, err := n.Int64()
	if err != nil || i <= 0 {
		return 0, fmt.Errorf("%w: %s must be a positive integer", ErrClaims, name)
	}
	return i, nil
}

func stringClaim(m map[string]any, name string, required bool) (string, error) {
	v, present := m[name]
	if !present || v == nil {
		if required {
			return "", fmt.Errorf("%w: %s is required", ErrClaims, name)
		}
		return "", nil
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%w: %s must be a string", ErrClaims, name)
	}
	if required && s == "" {
		return "", fmt.Errorf("%w: %s is required", ErrClaims, name)
	}
	if len(s) > MaxClaimLen || !visible(s) {
		return "", fmt.Errorf("%w: %s must be at most %d visible ASCII characters", ErrClaims, name, MaxClaimLen)
	}
	return s, nil
}

func visible(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

type claimsKey struct{}

// WithClaims returns ctx carrying verified claims.
func WithClaims(ctx context.Context, c Claims) context.Context {
	return context.WithValue(ctx, claimsKey{}, c)
}

// ClaimsFrom returns the verified claims of the request, if any.
func ClaimsFrom(ctx context.Context) (Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(Claims)
	return c, ok
}
