package auth

import (
	"errors"
	"testing"
	"time"
)

// FuzzVerify checks that no header value panics the verifier and that every
// failure is one of the documented sentinel errors (so the HTTP layer can
// always map it to a 4xx).
func FuzzVerify(f *testing.F) {
	now := time.Unix(1_771_459_200, 0)
	f.Add(Sign(testSecret, Claims{Iat: now.Unix(), Exp: now.Unix() + 60, Nonce: "n", Sub: "user:1"}))
	f.Add(rawToken(testSecret, `{"iat":1771459200,"exp":1771459260,"nonce":"x","sub":"guest:s","run_id":"r"}`))
	f.Add("v1..")
	f.Add("")
	sentinels := []error{ErrMissing, ErrEncoding, ErrSignature, ErrClaims, ErrExpired, ErrNotYetValid, ErrNonceUsed, ErrNonceCacheFull}
	f.Fuzz(func(t *testing.T, token string) {
		v, err := NewVerifier(testSecret, WithClock(func() time.Time { return now }))
		if err != nil {
			t.Fatal(err)
		}
		c, err := v.Verify(token)
		if err == nil {
			if c.Exp <= c.Iat || c.Exp-c.Iat > 300 || c.Nonce == "" || c.Sub == "" {
				t.Fatalf("accepted invalid claims %+v", c)
			}
			return
		}
		for _, s := range sentinels {
			if errors.Is(err, s) {
				return
			}
		}
		t.Fatalf("undocumented error %v", err)
	})
}
