// Package token mints and verifies the sync tokens that authorize Khala sync
// delivery (WebSocket and polling): HS256 JWTs signed with a keyring that holds
// a current key and, during rotation, the previous one.
package token

import (
	"errors"
	"fmt"
	"log/slog"
)

// MinKeyBytes is the shortest accepted HS256 secret: RFC 7518 §3.2 requires a
// key at least as long as the hash output (256 bits).
const MinKeyBytes = 32

// maxKeyIDLen bounds the kid so a header lookup can never be made expensive.
const maxKeyIDLen = 128

// ErrInvalidKeyConfig is wrapped by every NewKeyring error.
var ErrInvalidKeyConfig = errors.New("invalid sync token key configuration")

// KeyConfig carries the OA_SYNC_TOKEN_* configuration values. The coordinator
// fills it; this package never reads the environment.
type KeyConfig struct {
	KeyID              string // OA_SYNC_TOKEN_KEY_ID
	SigningKey         string // OA_SYNC_TOKEN_SIGNING_KEY
	PreviousKeyID      string // OA_SYNC_TOKEN_PREVIOUS_KEY_ID
	PreviousSigningKey string // OA_SYNC_TOKEN_PREVIOUS_SIGNING_KEY
}

// String never prints the secrets, so a config dumped into a log stays safe.
func (c KeyConfig) String() string {
	return fmt.Sprintf("KeyConfig{KeyID:%q SigningKey:%s PreviousKeyID:%q PreviousSigningKey:%s}",
		c.KeyID, redact(c.SigningKey), c.PreviousKeyID, redact(c.PreviousSigningKey))
}

// GoString covers %#v, which would otherwise bypass String.
func (c KeyConfig) GoString() string { return c.String() }

// LogValue keeps slog from printing the secrets.
func (c KeyConfig) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("key_id", c.KeyID),
		slog.String("signing_key", redact(c.SigningKey)),
		slog.String("previous_key_id", c.PreviousKeyID),
		slog.String("previous_signing_key", redact(c.PreviousSigningKey)),
	)
}

func redact(secret string) string {
	if secret == "" {
		return "<unset>"
	}
	return "<redacted>"
}

type key struct {
	id     string
	secret []byte
}

// Keyring holds the current signing key and an optional previous key that is
// still accepted for verification. It is immutable: rotation builds a new one.
// The zero configuration is valid and yields an empty keyring, which signs
// nothing (mint fails as signing_error) and verifies nothing (unknown_kid).
type Keyring struct {
	current  *key
	previous *key
}

// NewKeyring validates c and builds the keyring. Each key needs both its id and
// its secret; secrets shorter than MinKeyBytes are rejected; a previous key
// requires a current key and a different id.
func NewKeyring(c KeyConfig) (*Keyring, error) {
	cur, err := buildKey(c.KeyID, c.SigningKey, "OA_SYNC_TOKEN_KEY_ID", "OA_SYNC_TOKEN_SIGNING_KEY")
	if err != nil {
		return nil, err
	}
	prev, err := buildKey(c.PreviousKeyID, c.PreviousSigningKey,
		"OA_SYNC_TOKEN_PREVIOUS_KEY_ID", "OA_SYNC_TOKEN_PREVIOUS_SIGNING_KEY")
	if err != nil {
		return nil, err
	}
	if prev != nil && cur == nil {
		return nil, fmt.Errorf("%w: OA_SYNC_TOKEN_PREVIOUS_KEY_ID is set but OA_SYNC_TOKEN_KEY_ID is not (a previous key only makes sense during rotation to a current key)", ErrInvalidKeyConfig)
	}
	if prev != nil && prev.id == cur.id {
		return nil, fmt.Errorf("%w: OA_SYNC_TOKEN_PREVIOUS_KEY_ID must differ from OA_SYNC_TOKEN_KEY_ID (both are %q)", ErrInvalidKeyConfig, cur.id)
	}
	return &Keyring{current: cur, previous: prev}, nil
}

func buildKey(id, secret, idVar, secretVar string) (*key, error) {
	switch {
	case id == "" && secret == "":
		return nil, nil
	case id == "":
		return nil, fmt.Errorf("%w: %s is set but %s is empty", ErrInvalidKeyConfig, secretVar, idVar)
	case secret == "":
		return nil, fmt.Errorf("%w: %s is set but %s is empty", ErrInvalidKeyConfig, idVar, secretVar)
	}
	if len(id) > maxKeyIDLen {
		return nil, fmt.Errorf("%w: %s is %d bytes, at most %d allowed", ErrInvalidKeyConfig, idVar, len(id), maxKeyIDLen)
	}
	for _, r := range id {
		if r <= ' ' || r > '~' {
			return nil, fmt.Errorf("%w: %s must be visible ASCII without spaces", ErrInvalidKeyConfig, idVar)
		}
	}
	if len(secret) < MinKeyBytes {
		return nil, fmt.Errorf("%w: %s is %d bytes, HS256 needs at least %d", ErrInvalidKeyConfig, secretVar, len(secret), MinKeyBytes)
	}
	return &key{id: id, secret: []byte(secret)}, nil
}

// CurrentKeyID returns the kid new tokens are signed with, and false when no
// signing key is configured.
func (k *Keyring) CurrentKeyID() (string, bool) {
	if k == nil || k.current == nil {
		return "", false
	}
	return k.current.id, true
}

// KeyIDs lists the kids accepted for verification, current first.
func (k *Keyring) KeyIDs() []string {
	var ids []string
	if k == nil {
		return ids
	}
	for _, kk := range []*key{k.current, k.previous} {
		if kk != nil {
			ids = append(ids, kk.id)
		}
	}
	return ids
}

// lookup returns the secret for kid (current or previous).
func (k *Keyring) lookup(kid string) ([]byte, bool) {
	if k == nil {
		return nil, false
	}
	for _, kk := range []*key{k.current, k.previous} {
		if kk != nil && kk.id == kid {
			return kk.secret, true
		}
	}
	return nil, false
}

func (k *Keyring) signingKey() (*key, bool) {
	if k == nil || k.current == nil {
		return nil, false
	}
	return k.current, true
}

// String describes the keyring without its secrets.
func (k *Keyring) String() string {
	cur, _ := k.CurrentKeyID()
	prev := ""
	if k != nil && k.previous != nil {
		prev = k.previous.id
	}
	return fmt.Sprintf("Keyring{current:%q previous:%q}", cur, prev)
}
