package token

import (
	"context"
	"errors"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestVerifyRoundTrip(t *testing.T) {
	k := keyringOne(t)
	minted, err := newTestMinter(t, k).Mint(context.Background(),
		MintRequest{Subject: "guest:s1", TTLSeconds: i64(120)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := newTestVerifier(k, nil).Verify(context.Background(), minted.Token)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if c.KeyID != "k1" || c.Subject != "guest:s1" || c.OrgID != "guest:s1" || c.ID != minted.ID ||
		c.Issuer != DefaultIssuer || !slices.Equal(c.Audience, []string{DefaultAudience}) ||
		c.ClaimsVersion != ClaimsVersion || !slices.Equal(c.Scopes, []string{TopicRunSummaries}) ||
		!c.IssuedAt.Equal(testNow()) || !c.NotBefore.Equal(testNow()) || !c.ExpiresAt.Equal(testNow().Add(120*time.Second)) {
		t.Errorf("claims = %+v", c)
	}
	if !c.HasScope(TopicRunSummaries) || c.HasScope(TopicCodexWorkerEvents) {
		t.Error("HasScope disagrees with Scopes")
	}
}

func TestVerifyRotation(t *testing.T) {
	oldRing := keyringOne(t)
	rotating := mustKeyring(t, KeyConfig{KeyID: "k2", SigningKey: secretTwo, PreviousKeyID: "k1", PreviousSigningKey: secretOne})
	rotated := mustKeyring(t, KeyConfig{KeyID: "k2", SigningKey: secretTwo})

	mint := func(k *Keyring) string {
		m, err := newTestMinter(t, k).Mint(context.Background(), MintRequest{Subject: "user:7"})
		if err != nil {
			t.Fatal(err)
		}
		return m.Token
	}
	oldTok := mint(oldRing)
	newTok := mint(rotating)
	if kid := decodeSegment(t, newTok, 0)["kid"]; kid != "k2" {
		t.Fatalf("rotating keyring signs with %v, want the current key k2", kid)
	}

	tests := []struct {
		name    string
		ring    *Keyring
		tok     string
		wantKID string
		want    Reason // "" = valid
	}{
		{"old token, old keyring", oldRing, oldTok, "k1", ""},
		{"old token during rotation (previous key)", rotating, oldTok, "k1", ""},
		{"new token during rotation (current key)", rotating, newTok, "k2", ""},
		{"old token after previous key removed", rotated, oldTok, "", ReasonUnknownKID},
		{"new token after rotation", rotated, newTok, "k2", ""},
		{"new token on a node not yet rotated", oldRing, newTok, "", ReasonUnknownKID},
		{"empty keyring", mustKeyring(t, KeyConfig{}), oldTok, "", ReasonUnknownKID},
		{"nil keyring", nil, oldTok, "", ReasonUnknownKID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := newTestVerifier(tt.ring, nil).Verify(context.Background(), tt.tok)
			if got := ReasonOf(err); got != tt.want {
				t.Fatalf("reason = %q (err %v), want %q", got, err, tt.want)
			}
			if tt.want == "" && c.KeyID != tt.wantKID {
				t.Errorf("KeyID = %q, want %q", c.KeyID, tt.wantKID)
			}
			if tt.want != "" && c != nil {
				t.Error("rejected token returned claims")
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	k := keyringOne(t)
	with := func(edit func(jwt.MapClaims)) jwt.MapClaims {
		c := validClaims()
		edit(c)
		return c
	}
	hs256 := func(c jwt.MapClaims) string { return signMap(t, jwt.SigningMethodHS256, "k1", []byte(secretOne), c) }
	leeway := int64(DefaultLeeway / time.Second)
	now := testNow().Unix()

	tests := []struct {
		name string
		tok  string
		want Reason // "" = accepted
	}{
		{"valid control", hs256(validClaims()), ""},
		{"empty", "", ReasonMissingToken},
		{"garbage", "not-a-jwt", ReasonInvalidToken},
		{"four segments", hs256(validClaims()) + ".x", ReasonInvalidToken},
		{"oversized", strings.Repeat("a", MaxTokenBytes+1), ReasonInvalidToken},

		// Algorithm confusion.
		{"alg none", signMap(t, jwt.SigningMethodNone, "k1", jwt.UnsafeAllowNoneSignatureType, validClaims()), ReasonInvalidToken},
		{"alg none carrying an HMAC signature", handMade(t, map[string]any{"alg": "none", "kid": "k1"}, validClaims(), secretOne), ReasonInvalidToken},
		{"HS512 with the right secret", signMap(t, jwt.SigningMethodHS512, "k1", []byte(secretOne), validClaims()), ReasonInvalidToken},
		{"HS384 with the right secret", signMap(t, jwt.SigningMethodHS384, "k1", []byte(secretOne), validClaims()), ReasonInvalidToken},
		{"RS256 header over an HMAC signature", handMade(t, map[string]any{"alg": "RS256", "kid": "k1", "typ": "JWT"}, validClaims(), secretOne), ReasonInvalidToken},
		{"lower-case alg", handMade(t, map[string]any{"alg": "hs256", "kid": "k1"}, validClaims(), secretOne), ReasonInvalidToken},
		{"alg missing", handMade(t, map[string]any{"kid": "k1"}, validClaims(), secretOne), ReasonInvalidToken},
		{"crit header", handMade(t, map[string]any{"alg": "HS256", "kid": "k1", "crit": []string{"exp"}}, validClaims(), secretOne), ReasonInvalidToken},
		{"hand-made HS256 control", handMade(t, map[string]any{"alg": "HS256", "kid": "k1"}, validClaims(), secretOne), ""},

		// Keys and signatures.
		{"no kid", signMap(t, jwt.SigningMethodHS256, "", []byte(secretOne), validClaims()), ReasonInvalidToken},
		{"numeric kid", handMade(t, map[string]any{"alg": "HS256", "kid": 1}, validClaims(), secretOne), ReasonInvalidToken},
		{"unknown kid", signMap(t, jwt.SigningMethodHS256, "k9", []byte(secretOne), validClaims()), ReasonUnknownKID},
		{"wrong secret for kid", signMap(t, jwt.SigningMethodHS256, "k1", []byte(secretOther), validClaims()), ReasonInvalidToken},
		{"signature stripped", strings.Join(strings.Split(hs256(validClaims()), ".")[:2], ".") + ".", ReasonInvalidToken},

		// Time.
		{"expired", hs256(with(func(c jwt.MapClaims) { c["iat"], c["nbf"], c["exp"] = now-600, now-600, now-300 })), ReasonExpired},
		{"expired exactly at leeway", hs256(with(func(c jwt.MapClaims) { c["iat"], c["nbf"], c["exp"] = now-300, now-300, now-leeway })), ReasonExpired},
		{"expired within leeway", hs256(with(func(c jwt.MapClaims) { c["iat"], c["nbf"], c["exp"] = now-300, now-300, now-leeway+1 })), ""},
		{"issued 600s ago with 300s ttl (chaos drill)", hs256(with(func(c jwt.MapClaims) { c["iat"], c["nbf"], c["exp"] = now-600, now-600, now-300 })), ReasonExpired},
		{"nbf in the future", hs256(with(func(c jwt.MapClaims) { c["nbf"] = now + 60 })), ReasonNotYetValid},
		{"nbf in the future within leeway", hs256(with(func(c jwt.MapClaims) { c["nbf"] = now + leeway })), ""},
		{"iat in the future", hs256(with(func(c jwt.MapClaims) { c["iat"], c["nbf"], c["exp"] = now+60, now+60, now+360 })), ReasonNotYetValid},
		{"exp before iat", hs256(with(func(c jwt.MapClaims) { c["exp"] = now - 1 })), ReasonInvalidToken},
		{"exp equals iat", hs256(with(func(c jwt.MapClaims) { c["exp"] = now })), ReasonInvalidToken},
		{"lifetime above max ttl", hs256(with(func(c jwt.MapClaims) { c["exp"] = now + 901 })), ReasonInvalidToken},
		{"lifetime at max ttl", hs256(with(func(c jwt.MapClaims) { c["exp"] = now + 900 })), ""},
		{"fractional exp", hs256(with(func(c jwt.MapClaims) { c["exp"] = float64(now) + 300.5 })), ReasonInvalidToken},
		{"string exp", hs256(with(func(c jwt.MapClaims) { c["exp"] = "1800000300" })), ReasonInvalidToken},
		{"negative iat", hs256(with(func(c jwt.MapClaims) { c["iat"] = -1 })), ReasonInvalidToken},

		// Claims.
		{"wrong aud", hs256(with(func(c jwt.MapClaims) { c["aud"] = []string{"openagents-khala"} })), ReasonClaimMismatch},
		{"aud as a single string", hs256(with(func(c jwt.MapClaims) { c["aud"] = DefaultAudience })), ""},
		{"aud list containing ours", hs256(with(func(c jwt.MapClaims) { c["aud"] = []string{"other", DefaultAudience} })), ""},
		{"wrong iss", hs256(with(func(c jwt.MapClaims) { c["iss"] = "https://evil.example" })), ReasonClaimMismatch},
		{"wrong claims version", hs256(with(func(c jwt.MapClaims) { c["oa_claims_version"] = "oa_khala_claims_v1" })), ReasonClaimMismatch},
		{"only unknown scopes", hs256(with(func(c jwt.MapClaims) { c["oa_sync_scopes"] = []string{"runtime.notifications"} })), ReasonClaimMismatch},
		{"scopes as a string", hs256(with(func(c jwt.MapClaims) { c["oa_sync_scopes"] = TopicRunSummaries })), ReasonInvalidToken},
		{"sub not a string", hs256(with(func(c jwt.MapClaims) { c["sub"] = 42 })), ReasonInvalidToken},
	}
	for _, claim := range []string{"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "oa_org_id", "oa_sync_scopes", "oa_claims_version"} {
		tests = append(tests, struct {
			name string
			tok  string
			want Reason
		}{"missing " + claim, hs256(with(func(c jwt.MapClaims) { delete(c, claim) })), ReasonInvalidToken})
		tests = append(tests, struct {
			name string
			tok  string
			want Reason
		}{"empty " + claim, hs256(with(func(c jwt.MapClaims) {
			switch c[claim].(type) {
			case string:
				c[claim] = ""
			case []string:
				c[claim] = []string{}
			default:
				c[claim] = nil
			}
		})), ReasonInvalidToken})
	}

	v := newTestVerifier(k, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := v.Verify(context.Background(), tt.tok)
			if got := ReasonOf(err); got != tt.want {
				t.Fatalf("reason = %q (err %v), want %q", got, err, tt.want)
			}
			if tt.want != "" {
				var ve *VerifyError
				if !errors.As(err, &ve) || c != nil {
					t.Errorf("rejection is not a *VerifyError with nil claims: %T %v", err, c)
				}
				if strings.Contains(err.Error(), secretOne) {
					t.Errorf("error leaks the secret: %v", err)
				}
			}
		})
	}
}

func TestVerifyScopesFiltered(t *testing.T) {
	c := validClaims()
	c["oa_sync_scopes"] = []string{"runtime.notifications", TopicCodexWorkerSummaries, TopicCodexWorkerSummaries, TopicRunSummaries}
	tok := signMap(t, jwt.SigningMethodHS256, "k1", []byte(secretOne), c)
	got, err := newTestVerifier(keyringOne(t), nil).Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{TopicCodexWorkerSummaries, TopicRunSummaries}; !slices.Equal(got.Scopes, want) {
		t.Errorf("scopes = %v, want %v", got.Scopes, want)
	}
}

func TestVerifyIssuerAudienceConfig(t *testing.T) {
	k := keyringOne(t)
	m := NewMinter(MinterConfig{Keyring: k, Now: fixedNow, Issuer: "https://runtime.example", Audience: "aud-x"})
	minted, err := m.Mint(context.Background(), MintRequest{Subject: "user:1"})
	if err != nil {
		t.Fatal(err)
	}
	matching := NewVerifier(VerifierConfig{Keyring: k, Now: fixedNow, Issuer: m.Issuer(), Audience: m.Audience()})
	if _, err := matching.Verify(context.Background(), minted.Token); err != nil {
		t.Errorf("verifier configured like the minter rejects: %v", err)
	}
	if _, err := newTestVerifier(k, nil).Verify(context.Background(), minted.Token); ReasonOf(err) != ReasonClaimMismatch {
		t.Errorf("default verifier: err = %v, want claim_mismatch", err)
	}
}

func TestVerifyLeewayConfig(t *testing.T) {
	k := keyringOne(t)
	c := validClaims()
	c["iat"], c["nbf"], c["exp"] = testNow().Unix()-300, testNow().Unix()-300, testNow().Unix()-2
	tok := signMap(t, jwt.SigningMethodHS256, "k1", []byte(secretOne), c)
	// The token expired 2 s ago.
	tests := []struct {
		leeway time.Duration
		want   Reason
	}{
		{0, ""},                      // default 5 s covers 2 s
		{-1, ReasonExpired},          // negative: no leeway
		{time.Second, ReasonExpired}, // 1 s does not cover 2 s
		{3 * time.Second, ""},
	}
	for _, tt := range tests {
		v := NewVerifier(VerifierConfig{Keyring: k, Now: fixedNow, Leeway: tt.leeway})
		if _, err := v.Verify(context.Background(), tok); ReasonOf(err) != tt.want {
			t.Errorf("leeway %v: err = %v, want %q", tt.leeway, err, tt.want)
		}
	}
}

type brokenRevocations struct{}

func (brokenRevocations) IsRevoked(context.Context, string) (bool, error) {
	return false, errors.New("store down")
}

func TestVerifyRevocation(t *testing.T) {
	k := keyringOne(t)
	m := newTestMinter(t, k)
	revoked, err := m.Mint(context.Background(), MintRequest{Subject: "user:1"})
	if err != nil {
		t.Fatal(err)
	}
	kept, err := m.Mint(context.Background(), MintRequest{Subject: "user:1"})
	if err != nil {
		t.Fatal(err)
	}
	rev := NewMemoryRevocations()
	rev.Revoke(revoked.ID, revoked.ExpiresAt)
	v := newTestVerifier(k, rev)

	if _, err := v.Verify(context.Background(), revoked.Token); ReasonOf(err) != ReasonRevoked {
		t.Errorf("revoked token: err = %v, want revoked", err)
	}
	if _, err := v.Verify(context.Background(), kept.Token); err != nil {
		t.Errorf("other token of the same subject: %v", err)
	}
	// A revocation store failure fails closed, distinguishable for a 503.
	_, err = newTestVerifier(k, brokenRevocations{}).Verify(context.Background(), kept.Token)
	if ReasonOf(err) != ReasonInvalidToken || !errors.Is(err, ErrRevocationCheck) {
		t.Errorf("broken revocations: err = %v, want invalid_token wrapping ErrRevocationCheck", err)
	}
}

func TestMemoryRevocationsPrune(t *testing.T) {
	rev := NewMemoryRevocations()
	rev.Revoke("old", testNow().Add(-time.Hour))
	rev.Revoke("fresh", testNow().Add(time.Minute))
	rev.Revoke("in-grace", testNow().Add(-3*time.Second))
	if n := rev.Prune(testNow(), DefaultLeeway); n != 1 {
		t.Errorf("Prune dropped %d, want 1", n)
	}
	for jti, want := range map[string]bool{"old": false, "fresh": true, "in-grace": true, "never": false} {
		if got, err := rev.IsRevoked(context.Background(), jti); err != nil || got != want {
			t.Errorf("IsRevoked(%q) = %v, %v; want %v", jti, got, err, want)
		}
	}
	if rev.Len() != 2 {
		t.Errorf("Len = %d, want 2", rev.Len())
	}
}

func TestReasons(t *testing.T) {
	want := []string{"missing_token", "invalid_token", "expired", "not_yet_valid", "revoked", "unknown_kid", "claim_mismatch"}
	var got []string
	for _, r := range Reasons() {
		got = append(got, string(r))
	}
	if !slices.Equal(got, want) {
		t.Errorf("Reasons = %v, want %v", got, want)
	}
	if ReasonOf(nil) != "" || ReasonOf(errors.New("x")) != ReasonInvalidToken {
		t.Error("ReasonOf of nil / foreign errors")
	}
}

func TestTokenFromRequest(t *testing.T) {
	tests := []struct {
		name, auth, url, want string
	}{
		{"bearer header", "Bearer abc.def.ghi", "/sync/v1", "abc.def.ghi"},
		{"scheme case-insensitive", "bearer abc", "/sync/v1", "abc"},
		{"query parameter", "", "/sync/v1?token=q.r.s", "q.r.s"},
		{"header wins over query", "Bearer h", "/sync/v1?token=q", "h"},
		{"other scheme", "Basic dXNlcjpwYXNz", "/sync/v1?token=q", ""},
		{"scheme only", "Bearer", "/sync/v1", ""},
		{"nothing", "", "/sync/v1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tt.url, nil)
			if tt.auth != "" {
				r.Header.Set("Authorization", tt.auth)
			}
			if got := TokenFromRequest(r); got != tt.want {
				t.Errorf("TokenFromRequest = %q, want %q", got, tt.want)
			}
		})
	}
}
