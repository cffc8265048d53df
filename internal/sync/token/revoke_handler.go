package token

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

// RevokePattern is the route of the revocation endpoint. It is an operator
// route: the caller mounts it behind its operator guard.
const RevokePattern = "POST /internal/v1/khala/tokens/revoke"

// Limits of the revocation request (the store's limits).
const (
	MaxRevokeJTILen    = 256
	MaxRevokeReasonLen = 1024
)

// TokenRevoker records a revocation; StoreRevocations implements it (and
// so do the store drivers, without the local cache).
type TokenRevoker interface {
	RevokeToken(ctx context.Context, jti string, expiresAt time.Time, reason string) error
}

type revokeHandler struct {
	st  TokenRevoker
	v   *Verifier
	log *slog.Logger
}

// NewRevokeHandler serves RevokePattern: body {token?, jti?, expires_at?,
// reason?}, answer 200 {jti, revoked: true, expires_at}. Idempotent.
//
// With token, its signature is checked against v's keyring (current and
// previous keys) and its jti and exp are used; an expired token is still
// accepted, since revoking it is harmless and saves the operator a race
// with the clock, but a token that is not validly signed is refused, so
// nobody can plant revocations for ids they made up through this field.
// With jti alone, expires_at defaults to the latest a token issued until
// now can expire (now + MaxTTL + leeway).
//
// st should be the replica's StoreRevocations, so this replica honours the
// revocation at once. No metric is recorded here: the HTTP middleware
// already counts the route by status.
func NewRevokeHandler(st TokenRevoker, v *Verifier, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &revokeHandler{st: st, v: v, log: log}
}

type revokeBody struct {
	Token     string
	JTI       string
	ExpiresAt time.Time // zero when absent
	Reason    string
}

type revokeResponse struct {
	JTI       string `json:"jti"`
	Revoked   bool   `json:"revoked"`
	ExpiresAt string `json:"expires_at"`
}

func (h *revokeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.fail(w, r, http.StatusMethodNotAllowed, "method_not_allowed", "method "+r.Method+" not allowed, use POST", nil)
		return
	}
	body, rerr := decodeRevokeBody(w, r)
	if rerr != nil {
		h.fail(w, r, rerr.status, rerr.code, rerr.msg, nil)
		return
	}
	// A token issued until now expires by now + MaxTTL + leeway at the
	// latest (its iat may be ahead of our clock by the leeway).
	now, leeway := time.Now(), DefaultLeeway
	if h.v != nil {
		now, leeway = h.v.now(), max(leeway, time.Duration(h.v.leeway)*time.Second)
	}
	latest := now.Add(MaxTTL + leeway)

	jti, exp, source := body.JTI, body.ExpiresAt, "jti"
	if body.Token != "" {
		source = "token"
		tj, texp, err := h.v.revocationTarget(body.Token)
		if err != nil {
			h.fail(w, r, http.StatusBadRequest, "invalid_request", "token: "+err.Error(), nil)
			return
		}
		switch {
		case jti != "" && jti != tj:
			h.fail(w, r, http.StatusBadRequest, "invalid_request", "jti: does not match the token's jti (send one of them)", nil)
			return
		case !exp.IsZero() && !exp.Equal(texp):
			h.fail(w, r, http.StatusBadRequest, "invalid_request", "expires_at: differs from the token's exp "+texp.Format(time.RFC3339)+" (omit it when sending token)", nil)
			return
		}
		jti, exp = tj, texp
		if rerr := checkRevokeJTI(jti, "token"); rerr != nil {
			h.fail(w, r, rerr.status, rerr.code, rerr.msg, nil)
			return
		}
	} else {
		if jti == "" {
			h.fail(w, r, http.StatusBadRequest, "invalid_request", "token or jti: one of them is required", nil)
			return
		}
		// An expires_at already past is accepted: the row is moot and
		// pruned, and refusing it would only make the operator race the
		// clock.
		switch {
		case exp.IsZero():
			exp = latest
		case exp.After(latest):
			h.fail(w, r, http.StatusBadRequest, "invalid_request", fmt.Sprintf(
				"expires_at: later than any sync token issued now can expire (%s; tokens live at most %d s)",
				latest.UTC().Format(time.RFC3339), int64(MaxTTL/time.Second)), nil)
			return
		}
	}

	if err := h.st.RevokeToken(r.Context(), jti, exp, body.Reason); err != nil {
		h.fail(w, r, http.StatusServiceUnavailable, "unavailable", "token revocation store unavailable", err)
		return
	}
	h.log.InfoContext(r.Context(), "sync token revoked",
		slog.String("jti", jti), slog.String("source", source),
		slog.String("expires_at", exp.UTC().Format(time.RFC3339)), slog.String("reason", body.Reason))
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, revokeResponse{JTI: jti, Revoked: true, ExpiresAt: exp.UTC().Format(time.RFC3339)})
}

func (h *revokeHandler) fail(w http.ResponseWriter, r *http.Request, status int, code, msg string, cause error) {
	level := slog.LevelInfo
	if status >= 500 {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{slog.Int("status", status), slog.String("message", msg)}
	if cause != nil {
		attrs = append(attrs, slog.String("error", cause.Error()))
	}
	h.log.LogAttrs(r.Context(), level, "sync token revocation failed", attrs...)
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// revokeFields are the accepted body keys, in the order messages list them.
var revokeFields = []string{"token", "jti", "expires_at", "reason"}

// decodeRevokeBody parses the body strictly, as the mint handler does:
// exact key names, no unknown fields, no trailing data; null means absent.
func decodeRevokeBody(w http.ResponseWriter, r *http.Request) (revokeBody, *requestError) {
	var out revokeBody
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return out, &requestError{status: http.StatusRequestEntityTooLarge, code: "body_too_large",
				msg: fmt.Sprintf("request body exceeds %d bytes", MaxBodyBytes)}
		}
		return out, badRequest("request body could not be read")
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return out, badRequest("token or jti: one of them is required (the body is empty)")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	var fields map[string]json.RawMessage
	if err := dec.Decode(&fields); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return out, badRequest("request body must be a JSON object")
		}
		return out, badRequest("request body is not valid JSON")
	}
	if fields == nil { // the literal null
		return out, badRequest("request body must be a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return out, badRequest("request body has data after the JSON object")
	}
	var unknown []string
	for k := range fields {
		known := false
		for _, f := range revokeFields {
			known = known || k == f
		}
		if !known {
			unknown = append(unknown, fmt.Sprintf("%q", truncate(k, maxEchoLen)))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		if len(unknown) > 5 {
			unknown = append(unknown[:5], "...")
		}
		return out, badRequest("unknown field " + strings.Join(unknown, ", ") + " (allowed: " + strings.Join(revokeFields, ", ") + ")")
	}

	str := func(name string, dst *string) *requestError {
		v, ok := fields[name]
		if !ok || isNull(v) {
			return nil
		}
		if err := json.Unmarshal(v, dst); err != nil {
			return badRequest(name + ": must be a string")
		}
		return nil
	}
	var expiresAt string
	for _, f := range []struct {
		name string
		dst  *string
	}{{"token", &out.Token}, {"jti", &out.JTI}, {"expires_at", &expiresAt}, {"reason", &out.Reason}} {
		if rerr := str(f.name, f.dst); rerr != nil {
			return out, rerr
		}
	}

	if len(out.Token) > MaxTokenBytes {
		return out, badRequest(fmt.Sprintf("token: longer than %d bytes", MaxTokenBytes))
	}
	if out.JTI != "" {
		if rerr := checkRevokeJTI(out.JTI, "jti"); rerr != nil {
			return out, rerr
		}
	}
	if expiresAt != "" {
		t, err := time.Parse(time.RFC3339Nano, expiresAt)
		if err != nil {
			return out, badRequest("expires_at: must be an RFC 3339 time such as 2030-01-02T03:04:05Z")
		}
		if t.Unix() <= 0 || t.Year() > 9999 {
			return out, badRequest("expires_at: out of range")
		}
		out.ExpiresAt = t.UTC()
	}
	if len(out.Reason) > MaxRevokeReasonLen {
		return out, badRequest(fmt.Sprintf("reason: longer than %d bytes", MaxRevokeReasonLen))
	}
	if !utf8.ValidString(out.Reason) || strings.ContainsFunc(out.Reason, isControl) {
		return out, badRequest("reason: must be text without control characters")
	}
	return out, nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) }

// checkRevokeJTI keeps jtis to what the minter issues in spirit: short,
// visible ASCII. field names the request field at fault.
func checkRevokeJTI(jti, field string) *requestError {
	if jti == "" || len(jti) > MaxRevokeJTILen {
		return badRequest(fmt.Sprintf("%s: jti must be 1-%d characters", field, MaxRevokeJTILen))
	}
	for i := range len(jti) {
		if c := jti[i]; c <= ' ' || c > '~' {
			return badRequest(field + ": jti must be visible ASCII without spaces")
		}
	}
	return nil
}

// maxRevocationExp is the last second of year 9999: both drivers store
// times up to it, and no token of ours comes near it.
const maxRevocationExp = 253402300799

// revocationTarget returns the jti and exp of raw when it is validly signed
// by a key of v's keyring. Unlike Verify it ignores every time claim except
// reading exp, and does not require iss, aud or scopes: only the signature
// proves the token is ours. The errors are safe to show the caller.
func (v *Verifier) revocationTarget(raw string) (string, time.Time, error) {
	if v == nil || len(v.keys.KeyIDs()) == 0 {
		return "", time.Time{}, errors.New("this server holds no sync token keys to check it with")
	}
	raw = strings.TrimSpace(raw)
	if scheme, tok, ok := strings.Cut(raw, " "); ok && strings.EqualFold(scheme, "Bearer") {
		raw = strings.TrimSpace(tok)
	}
	parser := jwt.NewParser(
		jwt.WithValidMethods([]string{Algorithm}),
		jwt.WithoutClaimsValidation(),
		jwt.WithStrictDecoding(),
	)
	wc := &wireClaims{}
	_, err := parser.ParseWithClaims(raw, wc, func(t *jwt.Token) (any, error) {
		// The same pinning as Verify: an HMAC secret is never handed to
		// another algorithm.
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
		return secret, nil
	})
	switch {
	case errors.Is(err, errUnknownKID):
		return "", time.Time{}, errors.New("signed with a key id this server does not hold (current or previous)")
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "", time.Time{}, errors.New("signature does not verify")
	case err != nil:
		return "", time.Time{}, errors.New("not a validly signed sync token")
	case wc.ID == "":
		return "", time.Time{}, errors.New("has no jti")
	case wc.ExpiresAt == nil || *wc.ExpiresAt <= 0 || *wc.ExpiresAt > maxRevocationExp:
		return "", time.Time{}, errors.New("has no usable exp")
	}
	return wc.ID, time.Unix(*wc.ExpiresAt, 0).UTC(), nil
}
