package runs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"
	"unicode/utf16"
)

// FuzzCanonical checks the properties event hashes rely on. For any input
// CanonicalizeRaw accepts:
//   - the input was one valid JSON value (or blank, which encodes as {});
//   - the output is valid JSON, holds the same value, and is a fixed point
//     (canonicalizing it again changes nothing);
//   - every other spelling of the same value (other key order, whitespace,
//     \u escapes, HTML escaping) gives exactly the same bytes;
//   - Canonical of the input as a json.RawMessage agrees.
//
// Numbers are compared as written, not by numeric value: canonical JSON
// keeps "1.0" and "1" apart, as the published hash vectors require.
//
//	go test -run '^$' -fuzz '^FuzzCanonical$' -fuzztime 60s -fuzzminimizetime 2s ./internal/runs/
//
// (The default minimization budget, 60 s per new input, is most of a short
// run's time: progress shows 0 execs/sec while it minimizes.)
func FuzzCanonical(f *testing.F) {
	for _, s := range []string{
		``, `  `, `{}`, `[]`, `null`, `true`, `0`, `-0`, `1E400`, `0.10`, `-1.5e-7`, `""`,
		`{"b":1,"a":[1,2,{"d":null,"c":true}]}`,
		`{"a":1,"a":2}`,
		`{"html":"<a href=\"x\">&amp;</a>","ls":"\u2028\u2029"}`,
		`{"esc":"\u0041\n\t\"\\\/","ctl":"\u0000\u001f"}`,
		`{"lone":"\ud800","pair":"\ud83d\ude00","emoji":"😀"}`,
		"{\"bad\":\"\xff\xfe\"}",
		"{\"\xc3\x28\":1}",
		`{"é":1,"e":2,"E":3,"":4}`,
		"\n{ \"k\" :\t[ 1 , 2 ] }\r\n",
		`[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]`,
		`{}]`, `[1]]`, `1 2`, `{"a":}`, `{"a" 1}`, `[1,]`, `01`, `NaN`, `"\x"`,
	} {
		f.Add([]byte(s))
	}
	// The published vectors, so mutations start from real payloads.
	if raw, err := os.ReadFile("testdata/khala_payload_hash_vectors.v1.json"); err == nil {
		var vf struct {
			Vectors []struct {
				Payload json.RawMessage `json:"payload"`
			} `json:"vectors"`
		}
		if err := json.Unmarshal(raw, &vf); err != nil {
			f.Fatalf("hash vectors: %v", err)
		}
		for _, v := range vf.Vectors {
			f.Add([]byte(v.Payload))
		}
	}

	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := CanonicalizeRaw(in)
		blank := len(bytes.TrimSpace(in)) == 0
		if err != nil {
			if json.Valid(in) {
				t.Fatalf("rejected valid JSON %q: %v", in, err)
			}
			return
		}
		if !blank && !json.Valid(in) {
			t.Fatalf("accepted invalid JSON %q as %q", in, out)
		}
		if !json.Valid(out) {
			t.Fatalf("output is not valid JSON: %q -> %q", in, out)
		}
		if again, err := CanonicalizeRaw(out); err != nil || !bytes.Equal(again, out) {
			t.Fatalf("not a fixed point: %q -> %q -> %q (%v)", in, out, again, err)
		}
		if blank {
			if string(out) != "{}" {
				t.Fatalf("blank input gave %q, want {}", out)
			}
			return
		}
		want := decodeNumbers(t, in)
		if got := decodeNumbers(t, out); !reflect.DeepEqual(got, want) {
			t.Fatalf("value changed: %q (%#v) -> %q (%#v)", in, want, out, got)
		}
		for _, style := range []respell{{}, {reverse: true, space: true}, {escapeAll: true}, {reverse: true, escapeAll: true, space: true}} {
			var b bytes.Buffer
			style.write(&b, want)
			other, err := CanonicalizeRaw(b.Bytes())
			if err != nil {
				t.Fatalf("respelled %+v %q of %q rejected: %v", style, b.Bytes(), in, err)
			}
			if !bytes.Equal(other, out) {
				t.Fatalf("equal values, different bytes:\n in  %q -> %q\n %+v %q -> %q", in, out, style, b.Bytes(), other)
			}
		}
		viaMarshal, err := Canonical(json.RawMessage(in))
		if err != nil || !bytes.Equal(viaMarshal, out) {
			t.Fatalf("Canonical(RawMessage) = %q (%v), CanonicalizeRaw = %q", viaMarshal, err, out)
		}
	})
}

// decodeNumbers decodes one JSON value keeping numbers as written.
func decodeNumbers(t *testing.T, raw []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %q: %v", raw, err)
	}
	return v
}

// respell writes a value decoded with UseNumber as JSON in another spelling
// of the same value.
type respell struct {
	reverse   bool // object keys in reverse byte order
	space     bool // whitespace around every token
	escapeAll bool // every string character as \uXXXX (surrogate pairs above U+FFFF)
}

func (r respell) write(b *bytes.Buffer, v any) {
	ws := func() {
		if r.space {
			b.WriteString(" \n\t")
		}
	}
	ws()
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		fmt.Fprint(b, x)
	case json.Number:
		b.WriteString(x.String())
	case string:
		r.str(b, x)
	case []any:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			r.write(b, e)
		}
		ws()
		b.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if r.reverse {
			for i, j := 0, len(keys)-1; i < j; i, j = i+1, j-1 {
				keys[i], keys[j] = keys[j], keys[i]
			}
		}
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			ws()
			r.str(b, k)
			ws()
			b.WriteByte(':')
			r.write(b, x[k])
		}
		ws()
		b.WriteByte('}')
	default:
		panic(fmt.Sprintf("unexpected %T", v))
	}
	ws()
}

func (r respell) str(b *bytes.Buffer, s string) {
	if !r.escapeAll {
		// encoding/json's own spelling: HTML-escaped, U+2028/9 escaped.
		raw, _ := json.Marshal(s)
		b.Write(raw)
		return
	}
	var sb strings.Builder
	sb.WriteByte('"')
	for _, c := range s { // decoded strings are valid UTF-8
		for _, u := range utf16.Encode([]rune{c}) {
			fmt.Fprintf(&sb, `\u%04x`, u)
		}
	}
	sb.WriteByte('"')
	b.WriteString(sb.String())
}

// FuzzCanonicalFastPath checks CanonicalizeRaw's shortcut against the
// definition: whenever isCanonical accepts an input, re-encoding it gives
// the same bytes; and the shortcut is not vacuous: every canonical output
// without escapes (which it declines by design) is accepted.
//
//	go test -run '^$' -fuzz '^FuzzCanonicalFastPath$' -fuzztime 60s -fuzzminimizetime 2s ./internal/runs/
func FuzzCanonicalFastPath(f *testing.F) {
	for _, s := range []string{
		`{}`, `[]`, `null`, `true`, `false`, `0`, `-0`, `1E400`, `0.10`, `-1.5e-7`, `""`, `"é😀"`,
		`{"a":1,"b":[1,2,{"c":true,"d":null}]}`, `{"a":1,"a":2}`, `{"b":1,"a":2}`, `{"":1,"E":2,"e":3,"é":4}`,
		`{"html":"<a>&</a>"}`, `{"ls":"` + "\u2028" + `"}`, `"\ufffd"`, "\"\xef\xbf\xbd\"", "\"\xff\"",
		`[1,]`, `01`, `-`, `1.`, `1e`, `1e+`, `{"a" :1}`, ` {}`, `{} `, `[[[[[[[[1]]]]]]]]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if isCanonical(in) {
			slow, err := canonicalizeSlow(in)
			if err != nil || !bytes.Equal(slow, in) {
				t.Fatalf("fast path accepted %q, slow path gives %q (%v)", in, slow, err)
			}
		}
		out, err := canonicalizeSlow(in)
		if err != nil {
			return
		}
		if !bytes.ContainsAny(out, "\\\ufffd") && !isCanonical(out) && depth(out) <= maxFastDepth {
			t.Fatalf("fast path declines the canonical %q (from %q)", out, in)
		}
		if got, err := CanonicalizeRaw(in); err != nil || !bytes.Equal(got, out) {
			t.Fatalf("CanonicalizeRaw(%q) = %q (%v), slow path %q", in, got, err, out)
		}
	})
}

// depth is the deepest nesting of brackets in b outside strings (b is valid
// JSON).
func depth(b []byte) int {
	d, most, inStr := 0, 0, false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case inStr && c == '\\':
			i++
		case c == '"':
			inStr = !inStr
		case !inStr && (c == '{' || c == '['):
			d++
			most = max(most, d)
		case !inStr && (c == '}' || c == ']'):
			d--
		}
	}
	return most
}

// FuzzSanitizeJSONFastPath: whatever SanitizeJSON's fast path passes
// through unchanged, the decode/sanitize/re-encode path leaves unchanged.
func FuzzSanitizeJSONFastPath(f *testing.F) {
	for _, s := range []string{
		`{}`, `[]`, `null`, `"x"`, `{"text":"hi"}`, `{"a":{"b":["c",1.5,true,null]}}`,
		`{"api_key":"x"}`, `{"Api-Key":null}`, `{"x_token":1}`, `{"EMAIL":"a"}`, `{" password ":"p"}`,
		`{"t":"Bearer abcdefghijkl"}`, `{"t":"sk-0123456789abcdefXYZ"}`, `{"t":"mail a@b.co"}`,
		`{"t":"call +1 (415) 555-0100"}`, `{"t":"eyJhbGciOi.eyJzdWIiOiIx.c2lnbmF0dXJlX3g"}`,
		`{"b":1,"a":2}`, `{"t":"a\"b"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if !isSanitizedCanonical(in) {
			return
		}
		dec := json.NewDecoder(bytes.NewReader(in))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("fast path accepted %q, which does not decode: %v", in, err)
		}
		var buf bytes.Buffer
		if err := writeCanonical(&buf, Sanitize(v)); err != nil || !bytes.Equal(buf.Bytes(), in) {
			t.Fatalf("fast path passes %q through, the slow path gives %q (%v)", in, buf.Bytes(), err)
		}
		if got, err := SanitizeJSON(in); err != nil || !bytes.Equal(got, in) {
			t.Fatalf("SanitizeJSON(%q) = %q, %v", in, got, err)
		}
	})
}

// FuzzStringMembers: whenever stringMembers reads a run.finished payload,
// json.Unmarshal into Transition's struct reads the same.
func FuzzStringMembers(f *testing.F) {
	for _, s := range []string{
		`{"reason":"answered","reason_class":"completed","status":"succeeded"}`, `{}`, `{"status":null}`,
		`{"Status":"failed"}`, `{"STATUS":"x","status":"y"}`, `{"status":1}`, `{"status":"a\"b"}`, `[]`, `"x"`,
		`{"a":{"status":"no"},"status":"yes"}`, `{"reason":["x"],"status":"failed"}`, `{"status":"é"}`, `{"ſtatus":"x"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		vals := make([]string, len(finishedKeys))
		if !stringMembers(in, finishedKeys, vals) {
			return
		}
		var p struct {
			Status      string `json:"status"`
			ReasonClass string `json:"reason_class"`
			Reason      string `json:"reason"`
		}
		if err := json.Unmarshal(in, &p); err != nil {
			t.Fatalf("scan read %q as %q, json.Unmarshal fails: %v", in, vals, err)
		}
		if got := []string{p.Status, p.ReasonClass, p.Reason}; !reflect.DeepEqual(got, vals) {
			t.Fatalf("scan read %q as %q, json.Unmarshal as %q", in, vals, got)
		}
	})
}
