package token

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
)

func TestNewKeyring(t *testing.T) {
	short := strings.Repeat("s", MinKeyBytes-1)
	tests := []struct {
		name    string
		cfg     KeyConfig
		wantErr []string // substrings of the error; nil means success
		wantKID string
		wantIDs []string
		canSign bool
	}{
		{name: "empty config is an empty keyring", cfg: KeyConfig{}, wantIDs: nil},
		{name: "current only", cfg: KeyConfig{KeyID: "k1", SigningKey: secretOne},
			wantKID: "k1", wantIDs: []string{"k1"}, canSign: true},
		{name: "current and previous", cfg: KeyConfig{KeyID: "k2", SigningKey: secretTwo, PreviousKeyID: "k1", PreviousSigningKey: secretOne},
			wantKID: "k2", wantIDs: []string{"k2", "k1"}, canSign: true},
		{name: "exactly 32 bytes accepted", cfg: KeyConfig{KeyID: "k1", SigningKey: strings.Repeat("z", 32)},
			wantKID: "k1", wantIDs: []string{"k1"}, canSign: true},
		{name: "short current key", cfg: KeyConfig{KeyID: "k1", SigningKey: short},
			wantErr: []string{"OA_SYNC_TOKEN_SIGNING_KEY", "31 bytes", "at least 32"}},
		{name: "short previous key", cfg: KeyConfig{KeyID: "k2", SigningKey: secretTwo, PreviousKeyID: "k1", PreviousSigningKey: "tiny"},
			wantErr: []string{"OA_SYNC_TOKEN_PREVIOUS_SIGNING_KEY", "4 bytes", "at least 32"}},
		{name: "key without id", cfg: KeyConfig{SigningKey: secretOne},
			wantErr: []string{"OA_SYNC_TOKEN_KEY_ID"}},
		{name: "id without key", cfg: KeyConfig{KeyID: "k1"},
			wantErr: []string{"OA_SYNC_TOKEN_SIGNING_KEY"}},
		{name: "previous without current", cfg: KeyConfig{PreviousKeyID: "k1", PreviousSigningKey: secretOne},
			wantErr: []string{"OA_SYNC_TOKEN_PREVIOUS_KEY_ID", "OA_SYNC_TOKEN_KEY_ID"}},
		{name: "previous id equals current id", cfg: KeyConfig{KeyID: "k1", SigningKey: secretTwo, PreviousKeyID: "k1", PreviousSigningKey: secretOne},
			wantErr: []string{"must differ"}},
		{name: "kid with a space", cfg: KeyConfig{KeyID: "k 1", SigningKey: secretOne},
			wantErr: []string{"OA_SYNC_TOKEN_KEY_ID", "visible ASCII"}},
		{name: "kid too long", cfg: KeyConfig{KeyID: strings.Repeat("k", maxKeyIDLen+1), SigningKey: secretOne},
			wantErr: []string{"OA_SYNC_TOKEN_KEY_ID", "at most"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := NewKeyring(tt.cfg)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("NewKeyring succeeded, want error containing %q", tt.wantErr)
				}
				if !errors.Is(err, ErrInvalidKeyConfig) {
					t.Errorf("error %v does not wrap ErrInvalidKeyConfig", err)
				}
				for _, sub := range tt.wantErr {
					if !strings.Contains(err.Error(), sub) {
						t.Errorf("error %q does not contain %q", err, sub)
					}
				}
				if strings.Contains(err.Error(), secretOne) || strings.Contains(err.Error(), secretTwo) {
					t.Errorf("error leaks a secret: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewKeyring: %v", err)
			}
			kid, ok := k.CurrentKeyID()
			if ok != tt.canSign || kid != tt.wantKID {
				t.Errorf("CurrentKeyID = %q, %v; want %q, %v", kid, ok, tt.wantKID, tt.canSign)
			}
			if got := k.KeyIDs(); !slices.Equal(got, tt.wantIDs) {
				t.Errorf("KeyIDs = %v, want %v", got, tt.wantIDs)
			}
		})
	}
}

func TestKeyringLookup(t *testing.T) {
	k := mustKeyring(t, KeyConfig{KeyID: "k2", SigningKey: secretTwo, PreviousKeyID: "k1", PreviousSigningKey: secretOne})
	for kid, want := range map[string]string{"k2": secretTwo, "k1": secretOne} {
		got, ok := k.lookup(kid)
		if !ok || string(got) != want {
			t.Errorf("lookup(%q) = %q, %v", kid, got, ok)
		}
	}
	if _, ok := k.lookup("k3"); ok {
		t.Error("lookup(k3) found a key")
	}
	var nilRing *Keyring
	if _, ok := nilRing.lookup("k1"); ok {
		t.Error("nil keyring found a key")
	}
	if _, ok := nilRing.CurrentKeyID(); ok {
		t.Error("nil keyring has a current key")
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	cfg := KeyConfig{KeyID: "k2", SigningKey: secretTwo, PreviousKeyID: "k1", PreviousSigningKey: secretOne}
	k := mustKeyring(t, cfg)
	var logBuf bytes.Buffer
	slog.New(slog.NewJSONHandler(&logBuf, nil)).Info("cfg", "keys", cfg, "ring", k)
	outputs := map[string]string{
		"%v cfg":  fmt.Sprintf("%v", cfg),
		"%+v cfg": fmt.Sprintf("%+v", cfg),
		"%#v cfg": fmt.Sprintf("%#v", cfg),
		"%v ring": fmt.Sprintf("%v", k),
		"%s ring": fmt.Sprintf("%s", k),
		"slog":    logBuf.String(),
	}
	for name, out := range outputs {
		if strings.Contains(out, secretOne) || strings.Contains(out, secretTwo) {
			t.Errorf("%s leaks a secret: %s", name, out)
		}
		if !strings.Contains(out, "k2") || !strings.Contains(out, "k1") {
			t.Errorf("%s does not name the key ids: %s", name, out)
		}
	}
}
