package auth

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

var testSecret = []byte("test-secret-0123456789")

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTestVerifier(t *testing.T, opts ...Option) (*Verifier, *clock) {
	t.Helper()
	c := &clock{t: time.Unix(1_771_459_200, 0)}
	v, err := NewVerifier(testSecret, append([]Option{WithClock(c.now)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return v, c
}

func rawToken(secret []byte, claimsJSON string) string {
	seg := base64.RawURLEncoding.EncodeToString([]byte(claimsJSON))
	return "v1." + seg + "." + base64.RawURLEncoding.EncodeToString(mac(secret, seg))
}

func TestNewVerifierRejectsEmptySecret(t *testing.T) {
	if _, err := NewVerifier(nil); err == nil {
		t.Fatal("want error for empty secret")
	}
}

func TestVerify(t *testing.T) {
	base := time.Unix(1_771_459_200, 0)
	good := Claims{Iat: base.Unix(), Exp: base.Unix() + 60, Nonce: "n1", Sub: "user:42"}
	with := func(f func(*Claims)) Claims { c := good; f(&c); return c }
	seg := func(tok string) []string { return strings.Split(tok, ".") }

	tests := []struct {
		name    string
		token   string
		wantErr error
		wantMsg string
	}{
		{"valid user", Sign(testSecret, good), nil, ""},
		{"valid guest", Sign(testSecret, with(func(c *Claims) { c.Sub = "guest:thread-9"; c.Nonce = "n2" })), nil, ""},
		{"valid with bindings", Sign(testSecret, with(func(c *Claims) { c.RunID = "run_1"; c.ThreadID = "th_1"; c.Nonce = "n3" })), nil, ""},
		{"iat in skew window", Sign(testSecret, with(func(c *Claims) { c.Iat += 30; c.Exp = c.Iat + 10; c.Nonce = "n4" })), nil, ""},
		{"empty", "", ErrMissing, "missing runtime signature"},
		{"blank", "   ", ErrMissing, "missing runtime signature"},
		{"two parts", "v1.abc", ErrEncoding, "invalid token encoding"},
		{"wrong version", "v2" + strings.TrimPrefix(Sign(testSecret, good), "v1"), ErrEncoding, ""},
		{"padded signature", Sign(testSecret, good) + "=", ErrEncoding, ""},
		{"sig not base64", seg(Sign(testSecret, good))[0] + "." + seg(Sign(testSecret, good))[1] + ".!!!", ErrEncoding, ""},
		{"wrong secret", Sign([]byte("other"), good), ErrSignature, "invalid token signature"},
		{"tampered claims", "v1." + base64.RawURLEncoding.EncodeToString([]byte(`{"iat":1,"exp":2}`)) + "." + seg(Sign(testSecret, good))[2], ErrSignature, ""},
		{"too long", "v1." + strings.Repeat("a", MaxTokenLen) + ".x", ErrEncoding, ""},
		{"claims not json", rawToken(testSecret, `nope`), ErrClaims, "invalid token claims"},
		{"claims array", rawToken(testSecret, `[1,2]`), ErrClaims, ""},
		{"claims null", rawToken(testSecret, `null`), ErrClaims, ""},
		{"iat string", rawToken(testSecret, `{"iat":"1771459200","exp":1771459260,"nonce":"x","sub":"user:1"}`), ErrClaims, "iat must be an integer"},
		{"exp float", rawToken(testSecret, `{"iat":1771459200,"exp":1771459260.5,"nonce":"x","sub":"user:1"}`), ErrClaims, "exp must be a positive integer"},
		{"nonce missing", rawToken(testSecret, `{"iat":1771459200,"exp":1771459260,"sub":"user:1"}`), ErrClaims, "nonce is required"},
		{"nonce number", rawToken(testSecret, `{"iat":1771459200,"exp":1771459260,"nonce":5,"sub":"user:1"}`), ErrClaims, "nonce must be a string"},
		{"sub missing", Sign(testSecret, with(func(c *Claims) { c.Sub = "" })), ErrClaims, "sub is required"},
		{"sub kind", Sign(testSecret, with(func(c *Claims) { c.Sub = "admin:1" })), ErrClaims, "sub must be user:<id> or guest:<scope>"},
		{"sub empty id", Sign(testSecret, with(func(c *Claims) { c.Sub = "user:" })), ErrClaims, ""},
		{"sub with space", Sign(testSecret, with(func(c *Claims) { c.Sub = "user:a b" })), ErrClaims, ""},
		{"run_id number", rawToken(testSecret, `{"iat":1771459200,"exp":1771459260,"nonce":"x","sub":"user:1","run_id":7}`), ErrClaims, "run_id must be a string"},
		{"exp before iat", Sign(testSecret, with(func(c *Claims) { c.Exp = c.Iat })), ErrClaims, "exp must be after iat"},
		{"lifetime too long", Sign(testSecret, with(func(c *Claims) { c.Exp = c.Iat + 301 })), ErrClaims, "lifetime"},
		{"expired", Sign(testSecret, with(func(c *Claims) { c.Iat -= 100; c.Exp = base.Unix() })), ErrExpired, "token expired"},
		{"future", Sign(testSecret, with(func(c *Claims) { c.Iat += 31; c.Exp = c.Iat + 10 })), ErrNotYetValid, "token issued in the future"},
	}
	v, _ := newTestVerifier(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := v.Verify(tc.token)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if c.Sub == "" || c.Nonce == "" {
					t.Fatalf("claims not returned: %+v", c)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if tc.wantMsg != "" && !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %q, want it to contain %q", err, tc.wantMsg)
			}
		})
	}
}

func TestNonceSingleUseUntilExp(t *testing.T) {
	v, clk := newTestVerifier(t)
	now := clk.t.Unix()
	tok := Sign(testSecret, Claims{Iat: now, Exp: now + 10, Nonce: "once", Sub: "user:1"})
	if _, err := v.Verify(tok); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(tok); !errors.Is(err, ErrNonceUsed) || err.Error() != "token nonce already used" {
		t.Fatalf("replay: err = %v", err)
	}
	// The same nonce in a differently signed token is still a replay.
	tok2 := Sign(testSecret, Claims{Iat: now, Exp: now + 20, Nonce: "once", Sub: "user:2"})
	if _, err := v.Verify(tok2); !errors.Is(err, ErrNonceUsed) {
		t.Fatalf("same nonce other token: err = %v", err)
	}
	// After exp the first token is expired, and its nonce is pruned.
	clk.t = clk.t.Add(11 * time.Second)
	if _, err := v.Verify(tok); !errors.Is(err, ErrExpired) {
		t.Fatalf("after exp: err = %v", err)
	}
	fresh := Sign(testSecret, Claims{Iat: clk.t.Unix(), Exp: clk.t.Unix() + 5, Nonce: "once", Sub: "user:1"})
	if _, err := v.Verify(fresh); err != nil {
		t.Fatalf("nonce reuse after expiry: %v", err)
	}
	// tok2 was refused, so the expired entry of tok was pruned and only
	// fresh's remains.
	if n := v.nonces.len(); n != 1 {
		t.Fatalf("nonce cache holds %d entries after expiry, want 1", n)
	}
}

func TestNonceCacheBounded(t *testing.T) {
	v, clk := newTestVerifier(t, WithNonceCapacity(3))
	now := clk.t.Unix()
	for i, n := range []string{"a", "b", "c"} {
		if _, err := v.Verify(Sign(testSecret, Claims{Iat: now, Exp: now + int64(10+i), Nonce: n, Sub: "user:1"})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.Verify(Sign(testSecret, Claims{Iat: now, Exp: now + 50, Nonce: "d", Sub: "user:1"})); !errors.Is(err, ErrNonceCacheFull) {
		t.Fatalf("full cache: err = %v", err)
	}
	// Once the earliest token expires there is room again.
	clk.t = clk.t.Add(10 * time.Second)
	if _, err := v.Verify(Sign(testSecret, Claims{Iat: clk.t.Unix(), Exp: clk.t.Unix() + 50, Nonce: "d", Sub: "user:1"})); err != nil {
		t.Fatalf("after prune: %v", err)
	}
	if n := v.nonces.len(); n != 3 {
		t.Fatalf("cache len = %d, want 3", n)
	}
}

func TestBind(t *testing.T) {
	tests := []struct {
		name             string
		claims           Claims
		runID, threadID  string
		wantErr, wantMsg string
	}{
		{"unbound", Claims{}, "r", "t", "", ""},
		{"run match", Claims{RunID: "r"}, "r", "t", "", ""},
		{"run mismatch", Claims{RunID: "r"}, "x", "t", "claim mismatch", "run_id"},
		{"run bound, request has none", Claims{RunID: "r"}, "", "t", "claim mismatch", "run_id"},
		{"thread mismatch", Claims{ThreadID: "t"}, "r", "u", "claim mismatch", "thread_id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.claims.Bind(tc.runID, tc.threadID)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrClaimMismatch) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func TestNewClaimsRoundTrip(t *testing.T) {
	v, clk := newTestVerifier(t)
	c := NewClaims(clk.t, "guest:abc", time.Hour) // capped to MaxLifetime
	if c.Exp-c.Iat != int64(MaxLifetime/time.Second) {
		t.Fatalf("lifetime = %d", c.Exp-c.Iat)
	}
	got, err := v.Verify(Sign(testSecret, c))
	if err != nil {
		t.Fatal(err)
	}
	if got != c {
		t.Fatalf("got %+v want %+v", got, c)
	}
	if kind, id := got.Principal(); kind != KindGuest || id != "abc" {
		t.Fatalf("principal = %s %s", kind, id)
	}
	if c2 := NewClaims(clk.t, "user:1", time.Minute); c2.Nonce == c.Nonce {
		t.Fatal("nonces repeat")
	}
}
