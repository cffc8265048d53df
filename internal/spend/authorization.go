package spend

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/oaruntime/oaruntime/internal/store"
)

// Envelope is a run's parsed `authorization` document:
//
//	{"authorization_id": "auth_1", "mode": "delegated_budget",
//	 "max_total_sats": 100, "expires_at": "2030-01-01T00:00:00Z"}
//
// authorization_id and mode are required; mode is one of the closed set
// store.AuthModeDelegatedBudget ("delegated_budget") and
// store.AuthModeDenyAll ("deny_all"). max_total_sats is required for
// delegated_budget (a budget without a maximum is refused rather than read
// as unlimited) and ignored for deny_all. expires_at (RFC 3339) is optional.
// Other fields are allowed and ignored: the original's per-call, per-day and
// threshold limits were never enforced and are not here either.
type Envelope struct {
	AuthorizationID string
	Mode            string
	MaxTotalSats    int64
	ExpiresAt       *time.Time
}

// FieldError is a malformed authorization document. Field names the
// offending field (for a 400 at run creation); Reason is the policy reason a
// priced call of such a run is denied with.
type FieldError struct {
	Field  string
	Msg    string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

func fieldErr(field, reason, format string, args ...any) *FieldError {
	return &FieldError{Field: "authorization." + field, Msg: fmt.Sprintf(format, args...), Reason: reason}
}

// ParseAuthorization decodes a run's authorization document. present=false
// when raw is empty or JSON null. A malformed document returns a *FieldError.
// The HTTP API can call it at run creation so that a bad document is a 400
// naming the field instead of a denial at the first priced call.
func ParseAuthorization(raw json.RawMessage) (Envelope, bool, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return Envelope{}, false, nil
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(raw, &doc); err != nil || doc == nil {
		return Envelope{}, true, &FieldError{Field: "authorization", Msg: "must be an object", Reason: store.SpendDeniedAuthorizationMissing}
	}
	present := func(k string) bool { v, ok := doc[k]; return ok && string(v) != "null" }
	var env Envelope

	if !present("authorization_id") {
		return env, true, fieldErr("authorization_id", store.SpendDeniedAuthorizationMissing, "is required")
	}
	if json.Unmarshal(doc["authorization_id"], &env.AuthorizationID) != nil ||
		env.AuthorizationID == "" || len(env.AuthorizationID) > store.MaxSpendIDLen {
		return env, true, fieldErr("authorization_id", store.SpendDeniedAuthorizationMissing, "must be a string of 1-%d bytes", store.MaxSpendIDLen)
	}

	if !present("mode") {
		return env, true, fieldErr("mode", store.SpendDeniedInvalidMode, "is required (%s or %s)", store.AuthModeDelegatedBudget, store.AuthModeDenyAll)
	}
	if json.Unmarshal(doc["mode"], &env.Mode) != nil || !store.ValidAuthMode(env.Mode) {
		return env, true, fieldErr("mode", store.SpendDeniedInvalidMode, "must be %s or %s", store.AuthModeDelegatedBudget, store.AuthModeDenyAll)
	}

	if present("max_total_sats") {
		if json.Unmarshal(doc["max_total_sats"], &env.MaxTotalSats) != nil || env.MaxTotalSats < 0 || env.MaxTotalSats > store.MaxSpendAmount {
			return env, true, fieldErr("max_total_sats", store.SpendDeniedAuthorizationMissing, "must be an integer between 0 and %d", store.MaxSpendAmount)
		}
	} else if env.Mode == store.AuthModeDelegatedBudget {
		return env, true, fieldErr("max_total_sats", store.SpendDeniedAuthorizationMissing, "is required for mode %s", store.AuthModeDelegatedBudget)
	}
	if env.Mode == store.AuthModeDenyAll {
		env.MaxTotalSats = 0
	}

	if present("expires_at") {
		var s string
		if json.Unmarshal(doc["expires_at"], &s) != nil {
			return env, true, fieldErr("expires_at", store.SpendDeniedAuthorizationMissing, "must be an RFC 3339 timestamp string")
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return env, true, fieldErr("expires_at", store.SpendDeniedAuthorizationMissing, "must be an RFC 3339 timestamp, got %q", s)
		}
		t = t.UTC().Truncate(time.Microsecond)
		env.ExpiresAt = &t
	}
	return env, true, nil
}
