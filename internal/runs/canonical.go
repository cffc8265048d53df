package runs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
)

// Canonical encodes v as canonical JSON: object keys sorted by byte order, no
// insignificant whitespace, no HTML escaping, numbers kept as written.
// v may be any value json.Marshal accepts, including json.RawMessage.
func Canonical(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("canonical json: %w", err)
	}
	return CanonicalizeRaw(raw)
}

// CanonicalizeRaw re-encodes raw JSON canonically. Empty input encodes as {}.
func CanonicalizeRaw(raw []byte) ([]byte, error) {
	// Most payloads arrive canonical already (the runtime's own, and what
	// clients send most): checking costs a fraction of re-encoding.
	if isCanonical(raw) {
		return bytes.Clone(raw), nil
	}
	return canonicalizeSlow(raw)
}

// canonicalizeSlow decodes and re-encodes: the definition of canonical.
func canonicalizeSlow(raw []byte) ([]byte, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return []byte("{}"), nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("canonical json: %w", err)
	}
	// Only the end of input may follow the value: dec.More is false before
	// a stray "]" or "}", so it let "{}]" through as "{}".
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("canonical json: trailing data")
	}
	var buf bytes.Buffer
	if err := writeCanonical(&buf, v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writeCanonical(buf *bytes.Buffer, v any) error {
	switch x := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		buf.WriteString(strconv.FormatBool(x))
	case json.Number:
		buf.WriteString(x.String())
	case string:
		writeString(buf, x)
	case []any:
		buf.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeCanonical(buf, e); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeString(buf, k)
			buf.WriteByte(':')
			if err := writeCanonical(buf, x[k]); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	default:
		return fmt.Errorf("canonical json: unsupported type %T", v)
	}
	return nil
}

// writeString uses encoding/json's escaping minus HTML escaping, so "<", ">"
// and "&" stay literal as in the published hash vectors.
func writeString(buf *bytes.Buffer, s string) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	buf.Write(bytes.TrimRight(b.Bytes(), "\n"))
}

// SHA256Hex is the lowercase hex sha256 of b.
func SHA256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// PayloadHash is "sha256:<hex>" of the canonical encoding, the format of the
// khala payload hash vectors.
func PayloadHash(canonical []byte) string { return "sha256:" + SHA256Hex(canonical) }

// EventHash chains an event to its predecessor:
// sha256(run_id|seq|event_type|sha256(canonical payload)|prev or "root").
func EventHash(runID string, seq int64, eventType string, canonicalPayload []byte, prevHash string) string {
	prev := prevHash
	if prev == "" {
		prev = "root"
	}
	s := runID + "|" + strconv.FormatInt(seq, 10) + "|" + eventType + "|" + SHA256Hex(canonicalPayload) + "|" + prev
	return SHA256Hex([]byte(s))
}
