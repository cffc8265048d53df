package runs

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestSanitizeString(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		// Redacted.
		{"bearer header", "Authorization: Bearer abc.def-123_xyz", "Authorization: Bearer [REDACTED]"},
		{"bearer lowercase", "bearer 0123456789abcdef", "bearer [REDACTED]"},
		{"bearer long word", "Bearer abcdefghijklmnopqrstuvwxyz", "Bearer [REDACTED]"},
		{"sk key", "key is sk-proj-abcdefghijklmnop1234", "key is [REDACTED]"},
		{"sk key at start", "sk-ABCDEFGHIJKLMNOPQRST", "[REDACTED]"},
		{"jwt", "tok eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U end",
			"tok [REDACTED] end"},
		{"email", "mail alice.smith+x@example.co.uk now", "mail [REDACTED_EMAIL] now"},
		{"us phone", "call 555-123-4567.", "call [REDACTED_PHONE]."},
		{"us phone parens", "call (555) 123-4567 today", "call [REDACTED_PHONE] today"},
		{"intl phone", "tel +1 415 555 2671", "tel [REDACTED_PHONE]"},
		{"e164 bare", "ring +14155552671", "ring [REDACTED_PHONE]"},
		{"uk phone", "+44 20 7946 0958", "[REDACTED_PHONE]"},
		{"french pairs", "01 23 45 67 89", "[REDACTED_PHONE]"},
		{"dotted phone", "555.123.4567", "[REDACTED_PHONE]"},
		{"query phone", "?phone=555-123-4567&x=1", "?phone=[REDACTED_PHONE]&x=1"},
		{"two phones", "555-123-4567 or 555-765-4321", "[REDACTED_PHONE] or [REDACTED_PHONE]"},

		// Kept: ids, timestamps, dates and other numbers the original mangled.
		{"date", "2026-02-19", "2026-02-19"},
		{"date in prose", "report of 2026-02-19 attached", "report of 2026-02-19 attached"},
		{"date dotted", "19.02.2026", "19.02.2026"},
		{"date slashed", "2026/02/19", "2026/02/19"},
		{"iso timestamp", "2026-02-19T10:11:12.123456Z", "2026-02-19T10:11:12.123456Z"},
		{"iso timestamp offset", "2026-02-19T10:11:12+01:00", "2026-02-19T10:11:12+01:00"},
		{"sql timestamp", "2026-02-19 10:11:12", "2026-02-19 10:11:12"},
		{"date range", "2026-02-19 - 2026-02-20", "2026-02-19 - 2026-02-20"},
		{"uuid", "0195f3a2-7c4e-7b1a-9f00-123456789012", "0195f3a2-7c4e-7b1a-9f00-123456789012"},
		{"digit uuid", "12345678-1234-1234-1234-123456789012", "12345678-1234-1234-1234-123456789012"},
		{"run id", "run_20260219_1234567", "run_20260219_1234567"},
		{"run id dashes", "run-555-123-4567", "run-555-123-4567"},
		{"numeric id", "1234567890123", "1234567890123"},
		{"epoch", "1771459200", "1771459200"},
		{"decimal", "3.14159265358", "3.14159265358"},
		{"ipv4", "192.168.100.200", "192.168.100.200"},
		{"list", "1 2 3 4 5 6 7 8", "1 2 3 4 5 6 7 8"},
		{"path", "/runs/555-123-4567/frames", "/runs/555-123-4567/frames"},
		{"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{"sha", "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
		{"task word", "task-abcdefghijklmnopqrstu", "task-abcdefghijklmnopqrstu"},
		{"bearer prose", "the bearer instrument", "the bearer instrument"},
		{"short text", "hi", "hi"},
		{"dotted words", "a.b.c", "a.b.c"},
		{"redaction is stable", "Bearer [REDACTED] [REDACTED_PHONE]", "Bearer [REDACTED] [REDACTED_PHONE]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := SanitizeString(tc.in); got != tc.want {
				t.Fatalf("SanitizeString(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestSanitizeKeys(t *testing.T) {
	tests := []struct {
		key  string
		val  any
		want any
	}{
		{"authorization", "Basic x", Redacted},
		{"Authorization", map[string]any{"a": 1}, Redacted},
		{"api-key", "abc", Redacted},
		{"X-Api-Key", "abc", Redacted},
		{"token", "t", Redacted},
		{"access_token", "t", Redacted},
		{"github_token", "t", Redacted},
		{"client_secret", "s", Redacted},
		{"db_password", "p", Redacted},
		{"password", []any{"a"}, Redacted},
		{"cookie", "c", Redacted},
		{"set-cookie", "c", Redacted},
		{"private_key", "k", Redacted},
		{"email", "nothing-like-an-email", RedactedEmail},
		{"phone", "12", RedactedPhone},
		{"ssn", "x", Redacted},
		{"address", "x", Redacted},
		{"token", nil, nil}, // nothing to hide
		// Not secrets.
		{"tokens", float64(12), float64(12)},
		{"input_tokens", float64(12), float64(12)},
		{"token_count", "5", "5"},
		{"run_id", "0195f3a2-7c4e-7b1a-9f00-123456789012", "0195f3a2-7c4e-7b1a-9f00-123456789012"},
		{"authorization_id", "auth_1", "auth_1"},
		{"created_at", "2026-02-19T10:11:12Z", "2026-02-19T10:11:12Z"},
		{"text", "hello", "hello"},
	}
	for _, tc := range tests {
		t.Run(tc.key, func(t *testing.T) {
			got := Sanitize(map[string]any{tc.key: tc.val}).(map[string]any)[tc.key]
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("%s: got %#v, want %#v", tc.key, got, tc.want)
			}
		})
	}
}

func TestSanitizeNestedDoesNotMutate(t *testing.T) {
	in := map[string]any{
		"headers": map[string]any{"Authorization": "Bearer secret-123456"},
		"items":   []any{"write to bob@example.com", map[string]any{"password": "p"}, json.Number("7")},
		"ok":      true,
	}
	out := Sanitize(in).(map[string]any)
	if in["headers"].(map[string]any)["Authorization"] != "Bearer secret-123456" {
		t.Fatal("input was mutated")
	}
	want := map[string]any{
		"headers": map[string]any{"Authorization": Redacted},
		"items":   []any{"write to " + RedactedEmail, map[string]any{"password": Redacted}, json.Number("7")},
		"ok":      true,
	}
	if !reflect.DeepEqual(out, want) {
		t.Fatalf("got %#v", out)
	}
}

func TestSanitizeJSON(t *testing.T) {
	tests := []struct {
		name, in, want string
		wantErr        bool
	}{
		{"empty", "", "{}", false},
		{"canonical and redacted", `{"b":1.50,"a":{"api_key":"k"},"at":"2026-02-19"}`, `{"a":{"api_key":"[REDACTED]"},"at":"2026-02-19","b":1.50}`, false},
		{"array", `["x@y.io"]`, `["[REDACTED_EMAIL]"]`, false},
		{"html kept", `{"t":"<a&b>"}`, `{"t":"<a&b>"}`, false},
		{"invalid", `{"a":`, "", true},
		{"trailing", `{} {}`, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SanitizeJSON([]byte(tc.in))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("want error, got %s", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got %s want %s", got, tc.want)
			}
		})
	}
}

func FuzzSanitizeString(f *testing.F) {
	for _, s := range []string{"2026-02-19", "555-123-4567", "Bearer abcdefgh1", "a@b.cd", "sk-aaaaaaaaaaaaaaaaaaaa", "+1 (555) 123-4567)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		once := SanitizeString(s)
		// Redaction is idempotent: markers are never re-redacted.
		if twice := SanitizeString(once); twice != once {
			t.Fatalf("not idempotent: %q -> %q -> %q", s, once, twice)
		}
		if !strings.Contains(s, "[") && !strings.ContainsAny(once, "[") && once != s {
			t.Fatalf("changed without a marker: %q -> %q", s, once)
		}
	})
}

// FuzzSanitizeStringPrefilter checks that skipping a rule whose required
// text is absent never changes a result.
//
//	go test -run '^$' -fuzz '^FuzzSanitizeStringPrefilter$' -fuzztime 60s ./internal/runs/
func FuzzSanitizeStringPrefilter(f *testing.F) {
	for _, s := range []string{"2026-02-19", "555-123-4567", "BeArEr abcdefgh1", "bearer\tabcdefgh1==", "a@b.cd",
		"x sk-aaaaaaaaaaaaaaaaaaaa", "eyJhbGciOi.eyJzdWIiOiIx.c2lnbmF0dXJl", "+1 (555) 123-4567)", "plain text", "ｂｅａｒｅｒ x", "gpt-4o-mini", "1234567", "123456", "1 2 3 4", "12.3-4(5)6\v7"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := sanitizeString(s, true), sanitizeString(s, false); got != want {
			t.Fatalf("prefilter changes %q: %q, every rule gives %q", s, got, want)
		}
	})
}
