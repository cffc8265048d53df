package token

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Fixed test material: the clock is frozen so expiry cases are exact.
const (
	secretOne   = "11111111111111111111111111111111" // exactly MinKeyBytes
	secretTwo   = "second-secret-that-is-long-enough-0123456789"
	secretOther = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
)

func testNow() time.Time { return time.Unix(1_800_000_000, 0).UTC() }

func fixedNow() time.Time { return testNow() }

func mustKeyring(t testing.TB, c KeyConfig) *Keyring {
	t.Helper()
	k, err := NewKeyring(c)
	if err != nil {
		t.Fatalf("NewKeyring(%v): %v", c, err)
	}
	return k
}

func keyringOne(t testing.TB) *Keyring {
	return mustKeyring(t, KeyConfig{KeyID: "k1", SigningKey: secretOne})
}

func newTestMinter(t testing.TB, k *Keyring) *Minter {
	return NewMinter(MinterConfig{Keyring: k, Now: fixedNow})
}

func newTestVerifier(k *Keyring, rev Revocations) *Verifier {
	return NewVerifier(VerifierConfig{Keyring: k, Revocations: rev, Now: fixedNow})
}

func i64(v int64) *int64 { return &v }

// validClaims is a complete, valid payload as a map, so tests can delete or
// alter single claims.
func validClaims() jwt.MapClaims {
	return jwt.MapClaims{
		"iss":               DefaultIssuer,
		"aud":               []string{DefaultAudience},
		"sub":               "user:42",
		"iat":               testNow().Unix(),
		"nbf":               testNow().Unix(),
		"exp":               testNow().Unix() + 300,
		"jti":               "00112233445566778899aabbccddeeff",
		"oa_org_id":         "user:42",
		"oa_sync_scopes":    []string{TopicRunSummaries},
		"oa_claims_version": ClaimsVersion,
	}
}

// signMap signs claims with method and secret, setting kid unless empty.
func signMap(t testing.TB, method jwt.SigningMethod, kid string, secret any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(secret)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return s
}

// handMade builds a token from a raw header and payload and signs the
// signing input with HMAC-SHA256 whatever the header says: the shape of an
// algorithm-confusion attack.
func handMade(t testing.TB, header map[string]any, claims jwt.MapClaims, secret string) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	input := enc(header) + "." + enc(claims)
	sig, err := jwt.SigningMethodHS256.Sign(input, []byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// decodeSegment returns the JSON object of a token segment (0 header, 1 payload).
func decodeSegment(t testing.TB, tok string, i int) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d segments", len(parts))
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[i])
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}
