package token

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/oaruntime/oaruntime/internal/store/sqlite"
)

type revocation struct {
	jti    string
	exp    time.Time
	reason string
}

// recordingRevoker records RevokeToken calls; fail makes them fail.
type recordingRevoker struct {
	mu    sync.Mutex
	calls []revocation
	fail  error
}

func (r *recordingRevoker) RevokeToken(_ context.Context, jti string, exp time.Time, reason string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.calls = append(r.calls, revocation{jti, exp, reason})
	return nil
}

// Keys of the handler tests: k1 current, k0 previous (rotation).
const secretPrev = "previous-secret-0123456789-0123456789-abcdef"

func rotatingKeyring(t testing.TB) *Keyring {
	return mustKeyring(t, KeyConfig{KeyID: "k1", SigningKey: secretOne, PreviousKeyID: "k0", PreviousSigningKey: secretPrev})
}

func postRevoke(t *testing.T, h http.Handler, method, body string) (*http.Response, []byte) {
	t.Helper()
	req := httptest.NewRequest(method, "/internal/v1/khala/tokens/revoke", strings.NewReader(body))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	res := rec.Result()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, b
}

func TestRevokeHandler(t *testing.T) {
	k := rotatingKeyring(t)
	v := newTestVerifier(k, nil)
	minted, err := newTestMinter(t, k).Mint(context.Background(), MintRequest{Subject: "user:42"})
	if err != nil {
		t.Fatal(err)
	}
	// claimsWith returns a valid payload with changes applied (nil deletes).
	claimsWith := func(changes map[string]any) jwt.MapClaims {
		c := validClaims()
		for key, val := range changes {
			if val == nil {
				delete(c, key)
			} else {
				c[key] = val
			}
		}
		return c
	}
	sign := func(kid, secret string, changes map[string]any) string {
		return signMap(t, jwt.SigningMethodHS256, kid, []byte(secret), claimsWith(changes))
	}
	validJTI := validClaims()["jti"].(string)
	validExp := time.Unix(validClaims()["exp"].(int64), 0).UTC()
	latest := testNow().Add(MaxTTL + DefaultLeeway)
	expired := sign("k1", secretOne, map[string]any{"iat": testNow().Add(-2 * time.Hour).Unix(),
		"nbf": testNow().Add(-2 * time.Hour).Unix(), "exp": testNow().Add(-time.Hour).Unix()})
	body := func(fields map[string]any) string {
		b, err := json.Marshal(fields)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	ok := []struct {
		name   string
		body   string
		want   revocation
		source string
	}{
		{"minted token", body(map[string]any{"token": minted.Token, "reason": "lost laptop"}),
			revocation{minted.ID, minted.ExpiresAt.UTC(), "lost laptop"}, "token"},
		{"expired token still revocable", body(map[string]any{"token": expired}),
			revocation{validJTI, testNow().Add(-time.Hour), ""}, "token"},
		{"token signed with the previous key", body(map[string]any{"token": sign("k0", secretPrev, nil)}),
			revocation{validJTI, validExp, ""}, "token"},
		{"token with a Bearer prefix", body(map[string]any{"token": "Bearer " + sign("k1", secretOne, nil)}),
			revocation{validJTI, validExp, ""}, "token"},
		{"token of another issuer but our signature", body(map[string]any{"token": sign("k1", secretOne, map[string]any{"iss": "elsewhere", "oa_sync_scopes": nil})}),
			revocation{validJTI, validExp, ""}, "token"},
		{"token with its own jti and exp repeated", body(map[string]any{"token": sign("k1", secretOne, nil), "jti": validJTI, "expires_at": validExp.Format(time.RFC3339)}),
			revocation{validJTI, validExp, ""}, "token"},
		{"jti alone defaults to the longest possible life", `{"jti":"abc123"}`,
			revocation{"abc123", latest, ""}, "jti"},
		{"jti with expires_at", body(map[string]any{"jti": "abc123", "expires_at": testNow().Add(time.Minute).Format(time.RFC3339Nano), "reason": "r"}),
			revocation{"abc123", testNow().Add(time.Minute), "r"}, "jti"},
		{"jti with expires_at in another zone", `{"jti":"abc123","expires_at":"` + testNow().Add(time.Minute).In(time.FixedZone("z", -7*3600)).Format(time.RFC3339) + `"}`,
			revocation{"abc123", testNow().Add(time.Minute), ""}, "jti"},
		{"jti with expires_at already past", body(map[string]any{"jti": "abc123", "expires_at": testNow().Add(-time.Hour).Format(time.RFC3339)}),
			revocation{"abc123", testNow().Add(-time.Hour), ""}, "jti"},
		{"jti with expires_at at the bound", body(map[string]any{"jti": "abc123", "expires_at": latest.Format(time.RFC3339)}),
			revocation{"abc123", latest, ""}, "jti"},
		{"nulls are absent fields", `{"jti":"abc123","expires_at":null,"reason":null,"token":null}`,
			revocation{"abc123", latest, ""}, "jti"},
		{"unicode reason", `{"jti":"abc123","reason":"vol signalé ✓"}`,
			revocation{"abc123", latest, "vol signalé ✓"}, "jti"},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			rev := &recordingRevoker{}
			h := NewRevokeHandler(rev, v, nil)
			for range 2 { // idempotent: the same answer twice
				res, b := postRevoke(t, h, http.MethodPost, tc.body)
				if res.StatusCode != http.StatusOK {
					t.Fatalf("status %d, body %s", res.StatusCode, b)
				}
				if cc := res.Header.Get("Cache-Control"); cc != "no-store" {
					t.Errorf("Cache-Control %q", cc)
				}
				var got map[string]any
				if err := json.Unmarshal(b, &got); err != nil {
					t.Fatalf("body %s: %v", b, err)
				}
				want := map[string]any{"jti": tc.want.jti, "revoked": true, "expires_at": tc.want.exp.UTC().Format(time.RFC3339)}
				if len(got) != len(want) {
					t.Errorf("body %v, want %v", got, want)
				}
				for key, w := range want {
					if got[key] != w {
						t.Errorf("%s = %v, want %v", key, got[key], w)
					}
				}
			}
			if len(rev.calls) != 2 {
				t.Fatalf("store calls %d, want 2", len(rev.calls))
			}
			c := rev.calls[0]
			if c.jti != tc.want.jti || !c.exp.Equal(tc.want.exp) || c.reason != tc.want.reason {
				t.Fatalf("stored %+v, want %+v", c, tc.want)
			}
		})
	}

	bad := []struct {
		name    string
		method  string
		body    string
		status  int
		code    string
		message string // must appear in the message
	}{
		{"GET", http.MethodGet, "", 405, "method_not_allowed", "use POST"},
		{"empty body", "", "", 400, "invalid_request", "token or jti"},
		{"empty object", "", `{}`, 400, "invalid_request", "token or jti"},
		{"empty strings", "", `{"token":"","jti":""}`, 400, "invalid_request", "token or jti"},
		{"null body", "", `null`, 400, "invalid_request", "JSON object"},
		{"array body", "", `[]`, 400, "invalid_request", "JSON object"},
		{"invalid JSON", "", `{"jti":`, 400, "invalid_request", "not valid JSON"},
		{"trailing data", "", `{"jti":"a"} {}`, 400, "invalid_request", "after the JSON object"},
		{"unknown field", "", `{"jti":"a","sub":"user:1"}`, 400, "invalid_request", `unknown field "sub"`},
		{"field names are exact", "", `{"JTI":"a"}`, 400, "invalid_request", `unknown field "JTI"`},
		{"jti not a string", "", `{"jti":42}`, 400, "invalid_request", "jti: must be a string"},
		{"token not a string", "", `{"token":{"a":1}}`, 400, "invalid_request", "token: must be a string"},
		{"reason not a string", "", `{"jti":"a","reason":["x"]}`, 400, "invalid_request", "reason: must be a string"},
		{"expires_at a number", "", `{"jti":"a","expires_at":1800000000}`, 400, "invalid_request", "expires_at: must be a string"},
		{"expires_at not RFC 3339", "", `{"jti":"a","expires_at":"tomorrow"}`, 400, "invalid_request", "expires_at: must be an RFC 3339"},
		{"expires_at before 1970", "", `{"jti":"a","expires_at":"1960-01-01T00:00:00Z"}`, 400, "invalid_request", "expires_at: out of range"},
		{"expires_at beyond any token", "", body(map[string]any{"jti": "a", "expires_at": latest.Add(time.Second).Format(time.RFC3339)}), 400, "invalid_request", "expires_at: later than"},
		{"jti too long", "", body(map[string]any{"jti": strings.Repeat("j", MaxRevokeJTILen+1)}), 400, "invalid_request", "jti: jti must be 1-256"},
		{"jti with a space", "", `{"jti":"a b"}`, 400, "invalid_request", "jti: jti must be visible ASCII"},
		{"jti non-ASCII", "", `{"jti":"é"}`, 400, "invalid_request", "jti: jti must be visible ASCII"},
		{"reason too long", "", body(map[string]any{"jti": "a", "reason": strings.Repeat("r", MaxRevokeReasonLen+1)}), 400, "invalid_request", "reason: longer than"},
		{"reason with a newline", "", `{"jti":"a","reason":"x\ny"}`, 400, "invalid_request", "reason: must be text"},
		{"reason with NUL", "", `{"jti":"a","reason":"x\u0000y"}`, 400, "invalid_request", "reason: must be text"},
		{"garbage token", "", `{"token":"not.a.token"}`, 400, "invalid_request", "token: not a validly signed"},
		{"token too long", "", body(map[string]any{"token": strings.Repeat("a", MaxTokenBytes+1)}), 400, "invalid_request", "token: longer than"},
		{"token with a bad signature", "", body(map[string]any{"token": sign("k1", secretOther, nil)}), 400, "invalid_request", "token: signature does not verify"},
		{"token with an unknown kid", "", body(map[string]any{"token": sign("k9", secretOne, nil)}), 400, "invalid_request", "token: signed with a key id"},
		{"token without kid", "", body(map[string]any{"token": sign("", secretOne, nil)}), 400, "invalid_request", "token: not a validly signed"},
		{"token alg none", "", body(map[string]any{"token": signMap(t, jwt.SigningMethodNone, "k1", jwt.UnsafeAllowNoneSignatureType, validClaims())}), 400, "invalid_request", "token: signature does not verify"},
		{"token alg HS512", "", body(map[string]any{"token": signMap(t, jwt.SigningMethodHS512, "k1", []byte(secretOne), validClaims())}), 400, "invalid_request", "token: signature does not verify"},
		{"token alg confusion header", "", body(map[string]any{"token": handMade(t, map[string]any{"alg": "RS256", "kid": "k1", "typ": "JWT"}, validClaims(), secretOne)}), 400, "invalid_request", "token: signature does not verify"},
		{"token without jti", "", body(map[string]any{"token": sign("k1", secretOne, map[string]any{"jti": nil})}), 400, "invalid_request", "token: has no jti"},
		{"token without exp", "", body(map[string]any{"token": sign("k1", secretOne, map[string]any{"exp": nil})}), 400, "invalid_request", "token: has no usable exp"},
		{"token with a float exp", "", body(map[string]any{"token": sign("k1", secretOne, map[string]any{"exp": 1.8e9 + 0.5})}), 400, "invalid_request", "token: not a validly signed"},
		{"token with a huge exp", "", body(map[string]any{"token": sign("k1", secretOne, map[string]any{"exp": int64(1) << 60})}), 400, "invalid_request", "token: has no usable exp"},
		{"token with a jti we never issue", "", body(map[string]any{"token": sign("k1", secretOne, map[string]any{"jti": "has space"})}), 400, "invalid_request", "token: jti must be visible ASCII"},
		{"token and another jti", "", body(map[string]any{"token": minted.Token, "jti": "other"}), 400, "invalid_request", "jti: does not match"},
		{"token and another expiry", "", body(map[string]any{"token": minted.Token, "expires_at": minted.ExpiresAt.Add(time.Second).Format(time.RFC3339)}), 400, "invalid_request", "expires_at: differs"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			rev := &recordingRevoker{}
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			res, b := postRevoke(t, NewRevokeHandler(rev, v, nil), method, tc.body)
			checkErrorResponse(t, res, b, tc.status, tc.code, tc.message)
			if len(rev.calls) != 0 {
				t.Fatalf("a rejected request reached the store: %+v", rev.calls)
			}
		})
	}

	t.Run("body too large", func(t *testing.T) {
		rev := &recordingRevoker{}
		big := `{"reason":"` + strings.Repeat("r", MaxBodyBytes) + `"}`
		res, b := postRevoke(t, NewRevokeHandler(rev, v, nil), http.MethodPost, big)
		checkErrorResponse(t, res, b, http.StatusRequestEntityTooLarge, "body_too_large", "exceeds")
	})

	t.Run("store failure is 503 without detail", func(t *testing.T) {
		rev := &recordingRevoker{fail: errors.New("dial tcp 10.0.0.7:5432: connection refused")}
		res, b := postRevoke(t, NewRevokeHandler(rev, v, nil), http.MethodPost, `{"jti":"abc"}`)
		checkErrorResponse(t, res, b, http.StatusServiceUnavailable, "unavailable", "store unavailable")
		if strings.Contains(string(b), "10.0.0.7") {
			t.Fatalf("the store error leaked to the caller: %s", b)
		}
	})

	t.Run("no keys: token refused, jti accepted", func(t *testing.T) {
		rev := &recordingRevoker{}
		h := NewRevokeHandler(rev, newTestVerifier(mustKeyring(t, KeyConfig{}), nil), nil)
		res, b := postRevoke(t, h, http.MethodPost, body(map[string]any{"token": minted.Token}))
		checkErrorResponse(t, res, b, 400, "invalid_request", "token: this server holds no sync token keys")
		res, b = postRevoke(t, h, http.MethodPost, `{"jti":"abc"}`)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("jti with an empty keyring: status %d, body %s", res.StatusCode, b)
		}
		h = NewRevokeHandler(rev, nil, nil) // nil verifier must not panic either
		res, b = postRevoke(t, h, http.MethodPost, body(map[string]any{"token": minted.Token}))
		checkErrorResponse(t, res, b, 400, "invalid_request", "token: this server holds no sync token keys")
	})
}

func checkErrorResponse(t *testing.T, res *http.Response, b []byte, status int, code, message string) {
	t.Helper()
	if res.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", res.StatusCode, status, b)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var e errBody
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("error body %s: %v", b, err)
	}
	if e.Error.Code != code || !strings.Contains(e.Error.Message, message) {
		t.Fatalf("error %+v, want code %q and a message containing %q", e.Error, code, message)
	}
}

// TestRevokeHandlerEndToEnd: revoking through the handler on replica A
// makes both replicas' verifiers reject the token (B once its negative
// answer ages out), over one SQLite database.
func TestRevokeHandlerEndToEnd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "runtime.db")
	clk := newFakeClock()
	replica := func() (*StoreRevocations, *Verifier, *Keyring) {
		s, err := sqlite.Open(context.Background(), path, sqlite.WithMigrate())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		k := rotatingKeyring(t)
		r := NewStoreRevocations(s, StoreRevocationsConfig{Now: clk.Now})
		return r, NewVerifier(VerifierConfig{Keyring: k, Revocations: r, Now: clk.Now}), k
	}
	ra, va, k := replica()
	_, vb, _ := replica()
	tok, err := newTestMinter(t, k).Mint(t.Context(), MintRequest{Subject: "user:7"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vb.Verify(t.Context(), tok.Token); err != nil {
		t.Fatalf("before: %v", err)
	}
	h := NewRevokeHandler(ra, va, nil)
	b, _ := json.Marshal(map[string]string{"token": tok.Token, "reason": "test"})
	for range 2 {
		res, body := postRevoke(t, h, http.MethodPost, string(b))
		if res.StatusCode != http.StatusOK {
			t.Fatalf("revoke: %d %s", res.StatusCode, body)
		}
	}
	if _, err := va.Verify(t.Context(), tok.Token); ReasonOf(err) != ReasonRevoked {
		t.Fatalf("replica A: %v, want revoked", err)
	}
	clk.Advance(DefaultNegativeTTL)
	if _, err := vb.Verify(t.Context(), tok.Token); ReasonOf(err) != ReasonRevoked {
		t.Fatalf("replica B: %v, want revoked", err)
	}
	// Another token of the same subject is unaffected.
	other, err := newTestMinter(t, k).Mint(t.Context(), MintRequest{Subject: "user:7"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vb.Verify(t.Context(), other.Token); err != nil {
		t.Fatalf("another token: %v", err)
	}
}

// FuzzRevokeHandler: no body yields a 5xx or a panic while the store works,
// and only 200 answers reach the store.
func FuzzRevokeHandler(f *testing.F) {
	k := rotatingKeyring(f)
	tok := signMap(f, jwt.SigningMethodHS256, "k1", []byte(secretOne), validClaims())
	for _, seed := range []string{
		``, `{}`, `null`, `{"jti":"a"}`, `{"token":"` + tok + `"}`, `{"token":"` + tok + `","jti":"x"}`,
		`{"jti":"a","expires_at":"2030-01-01T00:00:00Z"}`, `{"jti":"a","expires_at":"9999-12-31T23:59:59Z"}`,
		`{"jti":"a","reason":"\u0000"}`, `{"token":"a.b.c"}`, `{"jti":"\ud800"}`, `{"jti":"a"}{"jti":"b"}`,
	} {
		f.Add(seed)
	}
	v := newTestVerifier(k, nil)
	f.Fuzz(func(t *testing.T, body string) {
		rev := &recordingRevoker{}
		res, b := postRevoke(t, NewRevokeHandler(rev, v, nil), http.MethodPost, body)
		if res.StatusCode >= 500 {
			t.Fatalf("status %d for %q: %s", res.StatusCode, body, b)
		}
		if (res.StatusCode == http.StatusOK) != (len(rev.calls) == 1) {
			t.Fatalf("status %d with %d store calls for %q", res.StatusCode, len(rev.calls), body)
		}
	})
}
