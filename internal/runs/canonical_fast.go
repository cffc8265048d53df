package runs

import (
	"bytes"
	"unicode/utf8"
)

// maxFastDepth bounds the nesting isCanonical follows; deeper documents
// take the slow path, which applies encoding/json's own limit.
const maxFastDepth = 512

// isCanonical reports whether b is exactly what canonicalizeSlow would make
// of it, judged conservatively: true only for a value without whitespace,
// with object keys in strictly increasing byte order, and with strings that
// need no escaping and hold no escape (so their bytes are their text). A
// false answer only means "take the slow path"; FuzzCanonicalFastPath checks
// that every true answer agrees with it.
func isCanonical(b []byte) bool {
	sc := canonScanner{b: b}
	return sc.value(0) && sc.i == len(b)
}

type canonScanner struct {
	b []byte
	i int
	// clean, when set, also requires every object key and string value to
	// be one Sanitize leaves alone (see isSanitizedCanonical).
	clean bool
}

// isSanitizedCanonical reports whether b is canonical (as isCanonical) and
// Sanitize would change nothing in it: no key names a secret or PII and no
// string value holds what a string rule looks for. Conservative like
// isCanonical; FuzzSanitizeJSONFastPath checks it against the slow path.
func isSanitizedCanonical(b []byte) bool {
	sc := canonScanner{b: b, clean: true}
	return sc.value(0) && sc.i == len(b)
}

func (s *canonScanner) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *canonScanner) value(depth int) bool {
	if s.i >= len(s.b) || depth > maxFastDepth {
		return false
	}
	switch s.b[s.i] {
	case '{':
		return s.object(depth + 1)
	case '[':
		return s.array(depth + 1)
	case '"':
		v, ok := s.str()
		return ok && (!s.clean || !mayNeedRedaction(v))
	case 't':
		return s.lit("true")
	case 'f':
		return s.lit("false")
	case 'n':
		return s.lit("null")
	default:
		return s.number()
	}
}

func (s *canonScanner) object(depth int) bool {
	s.i++ // {
	if s.eat('}') {
		return true
	}
	var prev []byte
	for first := true; ; first = false {
		k, ok := s.str()
		// Strictly increasing: a repeated key (which the slow path
		// collapses) is left to the slow path too.
		if !ok || (!first && bytes.Compare(prev, k) >= 0) || !s.eat(':') || !s.value(depth) {
			return false
		}
		if s.clean {
			if _, secret := keyMarker(string(k)); secret {
				return false
			}
		}
		prev = k
		if s.eat('}') {
			return true
		}
		if !s.eat(',') {
			return false
		}
	}
}

func (s *canonScanner) array(depth int) bool {
	s.i++ // [
	if s.eat(']') {
		return true
	}
	for {
		if !s.value(depth) {
			return false
		}
		if s.eat(']') {
			return true
		}
		if !s.eat(',') {
			return false
		}
	}
}

// str scans a string that encodes as itself and returns its contents:
// no escapes, no control characters, valid UTF-8, and neither U+2028 nor
// U+2029 (which encoding/json escapes).
func (s *canonScanner) str() ([]byte, bool) {
	if !s.eat('"') {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return s.b[start : s.i-1], true
		case c == '\\' || c < 0x20:
			return nil, false
		case c < utf8.RuneSelf:
			s.i++
		default:
			r, n := utf8.DecodeRune(s.b[s.i:])
			if r == utf8.RuneError || r == '\u2028' || r == '\u2029' {
				return nil, false
			}
			s.i += n
		}
	}
	return nil, false
}

func (s *canonScanner) lit(word string) bool {
	if bytes.HasPrefix(s.b[s.i:], []byte(word)) {
		s.i += len(word)
		return true
	}
	return false
}

// number scans a JSON number (RFC 8259 grammar); canonical JSON keeps
// numbers as written.
func (s *canonScanner) number() bool {
	s.eat('-')
	switch {
	case s.eat('0'):
	case s.digits() == 0:
		return false
	}
	if s.eat('.') && s.digits() == 0 {
		return false
	}
	if s.eat('e') || s.eat('E') {
		if !s.eat('+') {
			s.eat('-')
		}
		if s.digits() == 0 {
			return false
		}
	}
	return true
}

func (s *canonScanner) digits() int {
	n := 0
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
		n++
	}
	return n
}

// DropMember returns canonical JSON object doc without its top-level member
// key (doc itself when it has none): the canonical encoding of the object
// minus that member. ok=false when doc is not canonical JSON as isCanonical
// judges it, or not an object: decode and re-encode instead.
func DropMember(doc []byte, key string) ([]byte, bool) {
	if len(doc) == 0 || doc[0] != '{' || !isCanonical(doc) {
		return nil, false
	}
	s := canonScanner{b: doc, i: 1}
	for s.i < len(doc) && doc[s.i] != '}' {
		start := s.i
		k, _ := s.str()
		s.i++ // :
		s.value(1)
		end := s.i
		if string(k) == key {
			// Take the comma after the member, or else the one before it.
			switch {
			case doc[end] == ',':
				end++
			case start > 1:
				start--
			}
			return append(append(make([]byte, 0, len(doc)-(end-start)), doc[:start]...), doc[end:]...), true
		}
		s.eat(',')
	}
	return doc, true
}

// stringMembers reads the top-level members named keys (lowercase) of a
// JSON object into vals, as json.Unmarshal into string fields with those
// names would, without decoding the document: an absent member or a null
// leaves "". ok=false when that cannot be done by a scan: doc is not an
// object isCanonical accepts, or a wanted member is not a string, or some
// key matches a wanted one only case-insensitively (json.Unmarshal's
// matching). Then decode instead.
func stringMembers(doc []byte, keys []string, vals []string) (ok bool) {
	if len(doc) == 0 || doc[0] != '{' || !isCanonical(doc) {
		return false
	}
	s := canonScanner{b: doc, i: 1}
	for s.i < len(doc) && doc[s.i] != '}' {
		k, _ := s.str()
		s.i++ // :
		start := s.i
		s.value(1)
		v := doc[start:s.i]
		for j, want := range keys {
			switch {
			case string(k) == want:
				switch {
				case v[0] == '"':
					vals[j] = string(v[1 : len(v)-1])
				case string(v) != "null":
					return false
				}
			case bytes.EqualFold(k, []byte(want)): // also "ſtatus", as json.Unmarshal
				return false
			}
		}
		s.eat(',')
	}
	return true
}
