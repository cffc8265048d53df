package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Input limits.
const (
	// DefaultMaxBodyBytes is the request body limit (DESIGN section 4).
	DefaultMaxBodyBytes = 1 << 20
	// MaxIDLen bounds run_id, thread_id, frame_id and idempotency keys.
	MaxIDLen = 200
	// MaxTypeLen bounds event and frame types.
	MaxTypeLen = 100
	// MaxReasonLen bounds free-text reasons.
	MaxReasonLen = 2000
)

// ReadBody reads the (already size-limited) body. A body over the limit is a
// 413 naming the body.
func ReadBody(r *http.Request) ([]byte, *APIError) {
	if r.Body == nil {
		return nil, nil
	}
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errf(http.StatusRequestEntityTooLarge, CodePayloadTooLarge, "body: larger than %d bytes", mbe.Limit)
		}
		return nil, invalid("body", "could not be read: %v", err)
	}
	return raw, nil
}

// DecodeJSON reads the request body into dst strictly: it must be one JSON
// object, unknown fields and wrong types are rejected with the field named.
// An empty body decodes as {} when allowEmpty, else it is an error.
func DecodeJSON(r *http.Request, dst any, allowEmpty bool) *APIError {
	raw, aerr := ReadBody(r)
	if aerr != nil {
		return aerr
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		if !allowEmpty {
			return invalid("body", "required: a JSON object")
		}
		raw = []byte("{}")
	}
	return decodeStrict(raw, dst, "")
}

// decodeStrict decodes one JSON value into dst, naming fields in errors with
// prefix (e.g. "payload.script[2]").
func decodeStrict(raw []byte, dst any, prefix string) *APIError {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(dst); err != nil {
		return decodeError(err, prefix)
	}
	if _, err := dec.Token(); err != io.EOF {
		return invalid(fieldName(prefix, ""), "unexpected data after the JSON value")
	}
	return nil
}

func fieldName(prefix, field string) string {
	switch {
	case prefix == "" && field == "":
		return "body"
	case prefix == "":
		return field
	case field == "":
		return prefix
	default:
		return prefix + "." + field
	}
}

func decodeError(err error, prefix string) *APIError {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return invalid(fieldName(prefix, ""), "invalid JSON at byte %d: %s", syn.Offset, strings.TrimPrefix(syn.Error(), "json: "))
	case errors.As(err, &typ):
		return invalid(fieldName(prefix, typ.Field), "must be %s, got %s", jsonKind(typ.Type), typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return invalid(fieldName(prefix, ""), "truncated JSON")
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		name, _ := strconv.Unquote(f)
		if name == "" {
			name = strings.Trim(f, `"`)
		}
		return invalid(fieldName(prefix, name), "unknown field")
	}
	return invalid(fieldName(prefix, ""), "%s", strings.TrimPrefix(msg, "json: "))
}

// jsonKind names the JSON type a Go type expects.
func jsonKind(t reflect.Type) string {
	if t == nil {
		return "a valid value"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer in range"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "a valid value"
}

// checkID validates an identifier: 1-200 characters of letters, digits and
// - _ . : (so ids are safe in paths, logs and SSE ids).
func checkID(field, v string, required bool) *APIError {
	if v == "" {
		if required {
			return invalid(field, "required")
		}
		return nil
	}
	if len(v) > MaxIDLen {
		return invalid(field, "longer than %d characters", MaxIDLen)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return invalid(field, "may contain only letters, digits and - _ . : (got %q at %d)", c, i)
		}
	}
	return nil
}

// checkType validates an event or frame type: lowercase letters, digits, "."
// and "_", at most MaxTypeLen.
func checkType(field, v string) *APIError {
	if v == "" {
		return invalid(field, "required")
	}
	if len(v) > MaxTypeLen {
		return invalid(field, "longer than %d characters", MaxTypeLen)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_') {
			return invalid(field, "may contain only lowercase letters, digits, . and _")
		}
	}
	return nil
}

// checkText bounds free text.
func checkText(field, v string, maxLen int) *APIError {
	if len(v) > maxLen {
		return invalid(field, "longer than %d bytes", maxLen)
	}
	if !utf8.ValidString(v) {
		return invalid(field, "not valid UTF-8")
	}
	// PostgreSQL text columns cannot hold NUL: refusing it here keeps it from
	// becoming a store error (a 5xx) later.
	if strings.IndexByte(v, 0) >= 0 {
		return invalid(field, "must not contain NUL characters")
	}
	return nil
}

// present reports whether an optional raw field was given (JSON null counts
// as absent).
func present(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) > 0 && !bytes.Equal(t, []byte("null"))
}

// rawKind is the JSON type of raw: object, array, string, number, boolean, null.
func rawKind(raw json.RawMessage) string {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return "nothing"
	}
	switch t[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// wantObject checks raw is a JSON object.
func wantObject(field string, raw json.RawMessage) *APIError {
	if k := rawKind(raw); k != "object" {
		return invalid(field, "must be an object, got %s", k)
	}
	return nil
}

// parseQueryInt reads an optional non-negative integer query parameter.
func parseQueryInt(r *http.Request, name string, def, maxV int64) (int64, *APIError) {
	q := r.URL.Query()
	vs, ok := q[name]
	if !ok {
		return def, nil
	}
	if len(vs) != 1 {
		return 0, invalid(name, "given more than once")
	}
	n, err := strconv.ParseInt(vs[0], 10, 64)
	if err != nil || n < 0 {
		return 0, invalid(name, "must be a non-negative integer")
	}
	if maxV > 0 && n > maxV {
		return 0, invalid(name, "must be at most %d", maxV)
	}
	return n, nil
}

func formatInt(n int64) string { return strconv.FormatInt(n, 10) }
