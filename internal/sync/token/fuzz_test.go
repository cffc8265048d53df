package token

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// FuzzVerify feeds arbitrary strings to the verifier. It must never panic,
// every rejection must carry a reason from the closed set, and anything it
// accepts must satisfy every rule Verify promises. The keyring and clock are
// the fixed test ones, so the committed corpus (testdata/fuzz/FuzzVerify)
// holds tokens valid under them.
func FuzzVerify(f *testing.F) {
	k := mustKeyring(f, KeyConfig{KeyID: "k2", SigningKey: secretTwo, PreviousKeyID: "k1", PreviousSigningKey: secretOne})
	rev := NewMemoryRevocations()
	rev.Revoke("revoked-jti", testNow().Add(MaxTTL))
	v := newTestVerifier(k, rev)

	f.Add("")
	f.Add(signMap(f, jwt.SigningMethodHS256, "k1", []byte(secretOne), validClaims()))
	f.Add(signMap(f, jwt.SigningMethodHS256, "k2", []byte(secretTwo), validClaims()))
	f.Add(signMap(f, jwt.SigningMethodNone, "k1", jwt.UnsafeAllowNoneSignatureType, validClaims()))
	f.Add(signMap(f, jwt.SigningMethodHS512, "k1", []byte(secretOne), validClaims()))
	revoked := validClaims()
	revoked["jti"] = "revoked-jti"
	f.Add(signMap(f, jwt.SigningMethodHS256, "k1", []byte(secretOne), revoked))

	reasons := Reasons()
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := v.Verify(context.Background(), raw)
		if err != nil {
			if c != nil {
				t.Fatalf("rejection with claims: %v", err)
			}
			if r := ReasonOf(err); !slices.Contains(reasons, r) {
				t.Fatalf("reason %q outside the closed set (err %v)", r, err)
			}
			if raw == "" && ReasonOf(err) != ReasonMissingToken {
				t.Fatalf("empty token: reason %q", ReasonOf(err))
			}
			return
		}
		// Accepted: every promise must hold.
		if len(raw) > MaxTokenBytes {
			t.Fatal("accepted an oversized token")
		}
		if _, ok := k.lookup(c.KeyID); !ok {
			t.Fatalf("accepted kid %q outside the keyring", c.KeyID)
		}
		if hdr := decodeSegment(t, raw, 0); hdr["alg"] != Algorithm {
			t.Fatalf("accepted alg %v", hdr["alg"])
		}
		if c.Issuer != DefaultIssuer || !slices.Contains(c.Audience, DefaultAudience) || c.ClaimsVersion != ClaimsVersion {
			t.Fatalf("accepted mismatching claims %+v", c)
		}
		if c.Subject == "" || c.OrgID == "" || c.ID == "" || c.ID == "revoked-jti" {
			t.Fatalf("accepted incomplete or revoked claims %+v", c)
		}
		if len(c.Scopes) == 0 {
			t.Fatal("accepted a token without scopes")
		}
		for _, s := range c.Scopes {
			if !IsTopic(s) {
				t.Fatalf("accepted unknown topic %q", s)
			}
		}
		if !c.ExpiresAt.After(c.IssuedAt) || c.ExpiresAt.Sub(c.IssuedAt) > MaxTTL {
			t.Fatalf("accepted lifetime %v", c.ExpiresAt.Sub(c.IssuedAt))
		}
		if !c.ExpiresAt.Add(DefaultLeeway).After(testNow()) || c.NotBefore.After(testNow().Add(DefaultLeeway)) ||
			c.IssuedAt.After(testNow().Add(DefaultLeeway)) {
			t.Fatalf("accepted a token outside its validity window: %+v", c)
		}
		// Verification is deterministic.
		if _, err := v.Verify(context.Background(), raw); err != nil {
			t.Fatalf("second verification disagrees: %v", err)
		}
	})
}

// The committed corpus must keep meaning what its file names say, or the
// fuzzer would start from the wrong places.
func TestFuzzCorpusReasons(t *testing.T) {
	want := map[string]Reason{
		"valid_k1": "", "valid_k2_all_scopes": "", "expired": ReasonExpired, "not_yet_valid": ReasonNotYetValid,
		"wrong_aud": ReasonClaimMismatch, "unknown_kid": ReasonUnknownKID, "alg_none": ReasonInvalidToken,
		"alg_hs512": ReasonInvalidToken, "alg_rs256_hmac": ReasonInvalidToken, "missing_jti": ReasonInvalidToken,
		"float_exp": ReasonInvalidToken, "garbage": ReasonInvalidToken,
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzVerify")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want) {
		t.Errorf("corpus has %d files, want %d", len(entries), len(want))
	}
	v := newTestVerifier(mustKeyring(t, KeyConfig{KeyID: "k2", SigningKey: secretTwo, PreviousKeyID: "k1", PreviousSigningKey: secretOne}), nil)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "string(") {
			t.Fatalf("%s: not a fuzz corpus file", e.Name())
		}
		raw, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "string("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		r, ok := want[e.Name()]
		if !ok {
			t.Errorf("unexpected corpus file %s", e.Name())
			continue
		}
		if _, err := v.Verify(context.Background(), raw); ReasonOf(err) != r {
			t.Errorf("%s: reason %q (err %v), want %q", e.Name(), ReasonOf(err), err, r)
		}
	}
}
