package token

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMintClaims(t *testing.T) {
	m := newTestMinter(t, keyringOne(t))
	minted, err := m.Mint(context.Background(), MintRequest{Subject: "user:42", Scopes: []string{TopicCodexWorkerEvents}})
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	if minted.KeyID != "k1" || minted.Subject != "user:42" || minted.TTL != DefaultTTL {
		t.Errorf("minted = %+v", minted)
	}
	if !minted.IssuedAt.Equal(testNow()) || !minted.ExpiresAt.Equal(testNow().Add(300*time.Second)) {
		t.Errorf("times: iat %v exp %v", minted.IssuedAt, minted.ExpiresAt)
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(minted.ID) {
		t.Errorf("jti %q is not 128 bits of hex", minted.ID)
	}

	header := decodeSegment(t, minted.Token, 0)
	if header["alg"] != "HS256" || header["kid"] != "k1" {
		t.Errorf("header = %v", header)
	}
	payload := decodeSegment(t, minted.Token, 1)
	wantKeys := []string{"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "oa_org_id", "oa_sync_scopes", "oa_claims_version"}
	gotKeys := make([]string, 0, len(payload))
	for k := range payload {
		gotKeys = append(gotKeys, k)
	}
	slices.Sort(gotKeys)
	slices.Sort(wantKeys)
	if !slices.Equal(gotKeys, wantKeys) {
		t.Errorf("claim keys = %v, want %v", gotKeys, wantKeys)
	}
	checks := map[string]string{
		"iss": DefaultIssuer, "sub": "user:42", "jti": minted.ID, "oa_org_id": "user:42",
		"oa_claims_version": ClaimsVersion,
	}
	for k, want := range checks {
		if payload[k] != want {
			t.Errorf("claim %s = %v, want %v", k, payload[k], want)
		}
	}
	// Times must be JSON integers, as the verifier requires.
	for k, want := range map[string]int64{"iat": testNow().Unix(), "nbf": testNow().Unix(), "exp": testNow().Unix() + 300} {
		n, ok := payload[k].(json.Number)
		if !ok || n.String() != jsonInt(want) {
			t.Errorf("claim %s = %v, want integer %d", k, payload[k], want)
		}
	}
	if aud, _ := payload["aud"].([]any); len(aud) != 1 || aud[0] != DefaultAudience {
		t.Errorf("aud = %v", payload["aud"])
	}
	if sc, _ := payload["oa_sync_scopes"].([]any); len(sc) != 1 || sc[0] != TopicCodexWorkerEvents {
		t.Errorf("oa_sync_scopes = %v", payload["oa_sync_scopes"])
	}

	again, err := m.Mint(context.Background(), MintRequest{Subject: "user:42"})
	if err != nil {
		t.Fatal(err)
	}
	if again.ID == minted.ID {
		t.Error("two mints share a jti")
	}
}

func jsonInt(v int64) string { b, _ := json.Marshal(v); return string(b) }

func TestMintTTL(t *testing.T) {
	m := newTestMinter(t, keyringOne(t))
	tests := []struct {
		name    string
		ttl     *int64
		want    time.Duration
		wantErr bool
	}{
		{"default", nil, 300 * time.Second, false},
		{"lower bound", i64(60), 60 * time.Second, false},
		{"upper bound", i64(900), 900 * time.Second, false},
		{"below lower bound", i64(59), 0, true},
		{"above upper bound", i64(901), 0, true},
		{"zero", i64(0), 0, true},
		{"negative", i64(-300), 0, true},
		{"huge", i64(1 << 62), 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			minted, err := m.Mint(context.Background(), MintRequest{Subject: "user:1", TTLSeconds: tt.ttl})
			if tt.wantErr {
				var me *MintError
				if !errors.As(err, &me) || me.Field != "ttl_seconds" || me.Class != ClassInvalidRequest ||
					!errors.Is(err, ErrInvalidRequest) || !strings.Contains(me.Message, "ttl_seconds") {
					t.Fatalf("err = %#v, want invalid ttl_seconds", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if minted.TTL != tt.want || !minted.ExpiresAt.Equal(testNow().Add(tt.want)) {
				t.Errorf("TTL %v exp %v, want %v", minted.TTL, minted.ExpiresAt, tt.want)
			}
		})
	}
}

func TestMintScopesAndSubjects(t *testing.T) {
	m := newTestMinter(t, keyringOne(t))
	tests := []struct {
		name      string
		sub       string
		scopes    []string
		want      []string
		wantField string
		wantErr   error
		wantMsg   string
	}{
		{name: "user default is every topic", sub: "user:1", want: Topics()},
		{name: "guest default is run summaries", sub: "guest:abc", want: []string{TopicRunSummaries}},
		{name: "duplicates dropped, order kept", sub: "user:1",
			scopes: []string{TopicCodexWorkerEvents, TopicRunSummaries, TopicCodexWorkerEvents},
			want:   []string{TopicCodexWorkerEvents, TopicRunSummaries}},
		{name: "guest may have run summaries", sub: "guest:abc", scopes: []string{TopicRunSummaries}, want: []string{TopicRunSummaries}},
		{name: "empty list", sub: "user:1", scopes: []string{}, wantField: "scopes", wantErr: ErrInvalidRequest},
		{name: "unknown topic", sub: "user:1", scopes: []string{TopicRunSummaries, "runtime.secrets"},
			wantField: "scopes", wantErr: ErrInvalidRequest, wantMsg: "runtime.secrets"},
		{name: "topic differing in case", sub: "user:1", scopes: []string{"Runtime.Run_Summaries"},
			wantField: "scopes", wantErr: ErrInvalidRequest},
		{name: "guest asks for worker events", sub: "guest:abc", scopes: []string{TopicCodexWorkerEvents},
			wantField: "scopes", wantErr: ErrForbidden, wantMsg: TopicCodexWorkerEvents},
		{name: "guest asks for worker summaries among others", sub: "guest:abc",
			scopes: []string{TopicRunSummaries, TopicCodexWorkerSummaries}, wantField: "scopes", wantErr: ErrForbidden},
		{name: "subject without kind", sub: "42", wantField: "sub", wantErr: ErrForbidden},
		{name: "subject with empty id", sub: "user:", wantField: "sub", wantErr: ErrForbidden},
		{name: "subject with control char", sub: "user:4\n2", wantField: "sub", wantErr: ErrForbidden},
		{name: "subject of another kind", sub: "admin:1", wantField: "sub", wantErr: ErrForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			minted, err := m.Mint(context.Background(), MintRequest{Subject: tt.sub, Scopes: tt.scopes})
			if tt.wantErr != nil {
				var me *MintError
				if !errors.As(err, &me) || !errors.Is(err, tt.wantErr) || me.Field != tt.wantField {
					t.Fatalf("err = %v, want %v on field %s", err, tt.wantErr, tt.wantField)
				}
				wantClass := ClassAuthzDenied
				if tt.wantErr == ErrInvalidRequest {
					wantClass = ClassInvalidRequest
				}
				if me.Class != wantClass || ClassOf(err) != wantClass {
					t.Errorf("class = %s, want %s", me.Class, wantClass)
				}
				if !strings.Contains(me.Message, tt.wantField) || !strings.Contains(me.Message, tt.wantMsg) {
					t.Errorf("message %q should name %q and %q", me.Message, tt.wantField, tt.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(minted.Scopes, tt.want) {
				t.Errorf("scopes = %v, want %v", minted.Scopes, tt.want)
			}
		})
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("entropy exhausted") }

func TestMintServerFailures(t *testing.T) {
	upErr := errors.New("store ping: connection refused")
	tests := []struct {
		name      string
		cfg       MinterConfig
		fault     FaultFunc
		wantClass FailureClass
		wantErr   error
		wantIn    string
	}{
		{name: "no key configured", cfg: MinterConfig{Keyring: mustKeyring(t, KeyConfig{})},
			wantClass: ClassSigningError, wantErr: ErrSigning, wantIn: "OA_SYNC_TOKEN_SIGNING_KEY"},
		{name: "nil keyring", cfg: MinterConfig{},
			wantClass: ClassSigningError, wantErr: ErrSigning},
		{name: "upstream down", cfg: MinterConfig{Keyring: keyringOne(t), Upstream: func(context.Context) error { return upErr }},
			wantClass: ClassUpstreamUnavailable, wantErr: upErr},
		{name: "injected fault", cfg: MinterConfig{Keyring: keyringOne(t)},
			fault:     func() error { return errors.New("drill") },
			wantClass: ClassSigningError, wantErr: ErrSigning, wantIn: "drill"},
		{name: "fault in config", cfg: MinterConfig{Keyring: keyringOne(t), Fault: func() error { return errors.New("cfg drill") }},
			wantClass: ClassSigningError, wantErr: ErrSigning, wantIn: "cfg drill"},
		{name: "randomness fails", cfg: MinterConfig{Keyring: keyringOne(t), Rand: failingReader{}},
			wantClass: ClassSigningError, wantErr: ErrSigning, wantIn: "entropy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMinter(tt.cfg)
			if tt.fault != nil {
				m.SetFault(tt.fault)
			}
			_, err := m.Mint(context.Background(), MintRequest{Subject: "user:1"})
			var me *MintError
			if !errors.As(err, &me) || me.Class != tt.wantClass || !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want class %s wrapping %v", err, tt.wantClass, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantIn) {
				t.Errorf("error %q should mention %q", err, tt.wantIn)
			}
			if me.Field != "" {
				t.Errorf("server-side failure names field %q", me.Field)
			}
			// The caller-facing message must not echo dependency details.
			if strings.Contains(me.Message, "connection refused") {
				t.Errorf("message leaks the cause: %q", me.Message)
			}
		})
	}
}

func TestMintFaultToggle(t *testing.T) {
	m := newTestMinter(t, keyringOne(t))
	m.SetFault(func() error { return errors.New("drill") })
	if _, err := m.Mint(context.Background(), MintRequest{Subject: "user:1"}); ClassOf(err) != ClassSigningError {
		t.Fatalf("with fault: err = %v", err)
	}
	m.SetFault(func() error { return nil })
	if _, err := m.Mint(context.Background(), MintRequest{Subject: "user:1"}); err != nil {
		t.Fatalf("fault returning nil must not fail: %v", err)
	}
	m.SetFault(nil)
	if _, err := m.Mint(context.Background(), MintRequest{Subject: "user:1"}); err != nil {
		t.Fatalf("after removing the fault: %v", err)
	}
}

func TestMintUpstreamGetsDeadline(t *testing.T) {
	var sawDeadline bool
	m := NewMinter(MinterConfig{Keyring: keyringOne(t), Now: fixedNow, Upstream: func(ctx context.Context) error {
		_, sawDeadline = ctx.Deadline()
		return nil
	}})
	if _, err := m.Mint(context.Background(), MintRequest{Subject: "user:1"}); err != nil {
		t.Fatal(err)
	}
	if !sawDeadline {
		t.Error("upstream check ran without a deadline")
	}
}

func TestClassOf(t *testing.T) {
	if ClassOf(nil) != ClassNone {
		t.Error("nil error should be class none")
	}
	if ClassOf(errors.New("foreign")) != ClassSigningError {
		t.Error("a foreign error should be class signing_error")
	}
}
