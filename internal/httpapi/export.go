package httpapi

import (
	"encoding/json"
	"net/http"
)

// Exported forms of the request validation helpers, so that handlers
// mounted through Deps.Routes (codex workers, ...) answer bad input with
// exactly the rules and messages of the built-in routes.

// Invalid is a 400 invalid_request whose message starts with field.
func Invalid(field, format string, args ...any) *APIError { return invalid(field, format, args...) }

// CheckID validates an identifier: 1-MaxIDLen characters of letters, digits
// and - _ . : (safe in paths, logs and SSE ids).
func CheckID(field, v string, required bool) *APIError { return checkID(field, v, required) }

// CheckType validates an event type: lowercase letters, digits, "." and "_",
// at most MaxTypeLen.
func CheckType(field, v string) *APIError { return checkType(field, v) }

// CheckText bounds free text and refuses invalid UTF-8 and NUL.
func CheckText(field, v string, maxLen int) *APIError { return checkText(field, v, maxLen) }

// CheckKey validates an idempotency key: up to MaxIDLen visible ASCII characters.
func CheckKey(field, v string) *APIError { return checkKey(field, v) }

// Present reports whether an optional raw field was given (null counts as absent).
func Present(raw json.RawMessage) bool { return present(raw) }

// WantObject checks raw is a JSON object.
func WantObject(field string, raw json.RawMessage) *APIError { return wantObject(field, raw) }

// ParseQueryInt reads an optional non-negative integer query parameter,
// at most maxV when maxV > 0.
func ParseQueryInt(r *http.Request, name string, def, maxV int64) (int64, *APIError) {
	return parseQueryInt(r, name, def, maxV)
}
