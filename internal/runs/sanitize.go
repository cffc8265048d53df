package runs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

// Redaction markers written in place of secrets and PII.
const (
	Redacted      = "[REDACTED]"
	RedactedEmail = "[REDACTED_EMAIL]"
	RedactedPhone = "[REDACTED_PHONE]"
)

// Sanitize returns a copy of payload with secret and PII values redacted. It
// walks map[string]any and []any (the shapes encoding/json produces); other
// values are returned as they are. Two kinds of rules apply:
//
//   - key rules: the value of a key naming a secret (authorization, api_key,
//     token, password, cookie, ... and keys ending in _token, _secret, ...) or
//     PII (email, phone, ssn, address, ...) is replaced whole, whatever its type;
//   - string rules: inside every string, bearer credentials, sk- keys, JWTs,
//     email addresses and phone numbers are replaced.
//
// The string rules are deliberately narrower than the original's: an id
// (UUIDs, run_ids, numeric ids), an ISO timestamp, a date such as 2026-02-19,
// a decimal, a version or an IPv4 address is never taken for a phone number,
// and a phone number must stand alone rather than be part of a longer token.
func Sanitize(payload any) any {
	switch v := payload.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, val := range v {
			if marker, ok := keyMarker(k); ok && val != nil {
				out[k] = marker
				continue
			}
			out[k] = Sanitize(val)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = Sanitize(e)
		}
		return out
	case string:
		return SanitizeString(v)
	default:
		return payload
	}
}

// SanitizeJSON sanitizes a JSON document and returns it as canonical JSON
// (see Canonical), ready to be hashed. Numbers keep their written form.
// Empty input is the empty object.
func SanitizeJSON(raw []byte) ([]byte, error) {
	// Most payloads are canonical and hold nothing to redact: one scan,
	// no decode.
	if isSanitizedCanonical(raw) {
		return bytes.Clone(raw), nil
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return []byte("{}"), nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("sanitize json: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("sanitize json: trailing data")
	}
	var buf bytes.Buffer
	if err := writeCanonical(&buf, Sanitize(v)); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

var (
	secretKeys = map[string]bool{
		"authorization": true, "proxy_authorization": true, "cookie": true, "set_cookie": true,
		"password": true, "passphrase": true, "passwd": true, "secret": true, "client_secret": true,
		"private_key": true, "api_key": true, "admin_key": true, "apikey": true, "x_api_key": true,
		"access_token": true, "refresh_token": true, "id_token": true, "token": true,
		"x_oa_runtime_signature": true, "signing_key": true,
	}
	secretSuffixes = []string{"_token", "_secret", "_password", "_api_key", "_apikey", "_admin_key", "_private_key", "_signing_key"}
	piiKeys        = map[string]string{
		"email": RedactedEmail, "e_mail": RedactedEmail, "email_address": RedactedEmail,
		"phone": RedactedPhone, "phone_number": RedactedPhone, "mobile": RedactedPhone,
		"ssn": Redacted, "address": Redacted, "street": Redacted, "postal_code": Redacted, "zip": Redacted,
	}
)

// keyUnderscores reads "-" and spaces in a key as "_".
var keyUnderscores = strings.NewReplacer("-", "_", " ", "_")

// keyMarker reports whether key names a secret or PII and the marker for it.
// Keys are compared lowercased, trimmed, with "-" and spaces read as "_".
func keyMarker(key string) (string, bool) {
	k := keyUnderscores.Replace(strings.ToLower(strings.TrimSpace(key)))
	if secretKeys[k] {
		return Redacted, true
	}
	if m, ok := piiKeys[k]; ok {
		return m, true
	}
	for _, s := range secretSuffixes {
		if strings.HasSuffix(k, s) {
			return Redacted, true
		}
	}
	return "", false
}

// The string rules. Go's regexp has no look-behind, so a rule that must not
// start inside a longer word matches a boundary group first and keeps it.
var (
	bearerRe = regexp.MustCompile(`(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{8,}=*`)
	skKeyRe  = regexp.MustCompile(`(^|[^A-Za-z0-9_\-])(sk-[A-Za-z0-9_\-]{16,})`)
	// A JWT's header is base64url JSON, so it starts with "eyJ" ('{"').
	jwtRe   = regexp.MustCompile(`\beyJ[A-Za-z0-9_\-]{7,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}`)
	emailRe = regexp.MustCompile(`[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}`)
	// phoneCandRe finds runs of digits and phone separators; isPhone decides.
	phoneCandRe = regexp.MustCompile(`\+?\(?\d[\d\-\s().]{5,}\d\)?`)
	dateRe      = regexp.MustCompile(`\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}`)
	ipv4Re      = regexp.MustCompile(`^\d{1,3}(\.\d{1,3}){3}$`)
)

// SanitizeString applies the string rules to s. Each rule runs only when s
// holds what every match of it must contain (most strings hold none), which
// changes no result (FuzzSanitizeStringPrefilter) and skips most regexp
// work.
func SanitizeString(s string) string {
	return sanitizeString(s, true)
}

// Its prefilters and mayNeedRedaction must ask for the same things.
func sanitizeString(s string, prefilter bool) string {
	if s == "" {
		return s
	}
	may := func(need bool) bool { return !prefilter || need }
	if may(containsFoldASCII(s, "bearer")) {
		s = redactBearer(s)
	}
	if may(strings.Contains(s, "sk-")) {
		s = skKeyRe.ReplaceAllString(s, "${1}"+Redacted)
	}
	if may(strings.Contains(s, "eyJ")) {
		s = jwtRe.ReplaceAllString(s, Redacted)
	}
	if may(strings.IndexByte(s, '@') >= 0) {
		s = emailRe.ReplaceAllString(s, RedactedEmail)
	}
	if may(mayHavePhone(s)) {
		s = redactPhones(s)
	}
	return s
}

// mayNeedRedaction reports whether SanitizeString could change s: whether
// s holds what one of its rules needs (the prefilters of sanitizeString).
func mayNeedRedaction(s []byte) bool {
	return containsFoldASCII(s, "bearer") || bytes.Contains(s, []byte("sk-")) ||
		bytes.Contains(s, []byte("eyJ")) || bytes.IndexByte(s, '@') >= 0 || mayHavePhone(s)
}

// mayHavePhone reports whether phoneCandRe can match in s: whether a run of
// the characters of [\d\-\s().] holds two digits six or more apart (the
// pattern's core is \d[\d\-\s().]{5,}\d). Ids, counts and model names
// ("gpt-4o", "run_42") have none, so most strings skip the regexp.
func mayHavePhone[T string | []byte](s T) bool {
	first, last := -1, -1
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			if first < 0 {
				first = i
			}
			last = i
			if last-first >= 6 {
				return true
			}
		case c == '-' || c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r' || c == '(' || c == ')' || c == '.':
		default:
			first, last = -1, -1
		}
	}
	return false
}

// containsFoldASCII reports whether s contains word (ASCII letters without
// non-ASCII case variants, as "bearer") in any case.
func containsFoldASCII[T string | []byte](s T, word string) bool {
	for i := 0; i+len(word) <= len(s); i++ {
		if strings.EqualFold(string(s[i:i+len(word)]), word) {
			return true
		}
	}
	return false
}

func redactBearer(s string) string {
	return bearerRe.ReplaceAllStringFunc(s, func(m string) string {
		i := strings.IndexAny(m, " \t\r\n")
		if !tokenLike(strings.TrimLeft(m[i:], " \t\r\n")) {
			return m // prose: "the bearer instrument"
		}
		return m[:i] + " " + Redacted
	})
}

func redactPhones(s string) string {
	locs := phoneCandRe.FindAllStringIndex(s, -1)
	if locs == nil {
		return s
	}
	var b strings.Builder
	last := 0
	for _, loc := range locs {
		start, end := loc[0], loc[1]
		// The candidate may have swallowed trailing spaces, dots or a
		// parenthesis that belong to the sentence.
		for end > start && strings.IndexByte(" \t\r\n.()", s[end-1]) >= 0 && !(s[end-1] == ')' && strings.Contains(s[start:end-1], "(")) {
			end--
		}
		if !isPhone(s, start, end) {
			continue
		}
		b.WriteString(s[last:start])
		b.WriteString(RedactedPhone)
		last = end
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

// isPhone decides whether s[start:end] is a phone number.
func isPhone(s string, start, end int) bool {
	cand := s[start:end]
	// Standing alone: not glued to letters, digits or id punctuation, which
	// is what protects UUIDs, run_ids, timestamps and paths.
	if start > 0 && gluing(s[start-1]) {
		return false
	}
	if end < len(s) && (gluing(s[end]) || (s[end] == '.' || s[end] == ',') && end+1 < len(s) && isAlnum(s[end+1])) {
		return false
	}
	digits, seps, dots := 0, 0, 0
	var groups []int // lengths of the digit groups
	run := 0
	for i := 0; i <= len(cand); i++ {
		if i < len(cand) && cand[i] >= '0' && cand[i] <= '9' {
			digits++
			run++
			continue
		}
		if run > 0 {
			groups = append(groups, run)
			run = 0
		}
		if i == len(cand) {
			break
		}
		switch cand[i] {
		case '.':
			dots++
			seps++
		case '+':
		default:
			seps++
		}
	}
	// E.164 numbers have at most 15 digits; 7 is the shortest local number.
	if digits < 7 || digits > 15 {
		return false
	}
	// A bare digit run is as likely a numeric id, an epoch time or a counter:
	// only a leading + or separators make it a phone number.
	if seps == 0 && cand[0] != '+' {
		return false
	}
	longest := 0
	for _, g := range groups {
		longest = max(longest, g)
	}
	switch {
	case longest <= 1:
		return false // "1 2 3 4 5 6 7": a list, not a number
	case longest == 2 && (len(groups) != 5 || digits != 10):
		return false // pairs only make a phone number as 5 pairs (01 23 45 67 89)
	}
	if dots > 0 && dots == seps && (dots == 1 || ipv4Re.MatchString(cand)) {
		return false // decimal number or IPv4 address
	}
	if dateRe.MatchString(cand) {
		return false
	}
	return true
}

// tokenLike tells a credential from a word: long, or mixing in digits or
// token punctuation.
func tokenLike(t string) bool {
	if len(t) >= 20 {
		return true
	}
	return strings.ContainsAny(t, "0123456789-._~+/=")
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// gluing reports whether c, next to a digit run, makes it part of a larger
// token (id, timestamp, path, version, key) rather than a standalone number.
func gluing(c byte) bool {
	return isAlnum(c) || c >= 0x80 || strings.IndexByte("_-:/+#@%~", c) >= 0
}
