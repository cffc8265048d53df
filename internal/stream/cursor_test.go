package stream

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestParseCursor(t *testing.T) {
	tests := []struct {
		query, header string
		want          int64
		wantErr       string // substring; "" = no error
	}{
		{"", "", 0, ""},
		{"0", "", 0, ""},
		{"42", "", 42, ""},
		{"", "42", 42, ""},
		{"42", "42", 42, ""},
		{"007", "7", 7, ""}, // same number, different spelling
		{"9223372036854775807", "", 1<<63 - 1, ""},
		{"9223372036854775808", "", 0, "query parameter cursor is out of range"},
		{"", "99999999999999999999", 0, "Last-Event-ID header must be an integer >= 0 of at most 19 digits"},
		{"-1", "", 0, "query parameter cursor must be an integer >= 0"},
		{"+1", "", 0, "must be an integer"},
		{" 1", "", 0, "must be an integer"},
		{"1 ", "", 0, "must be an integer"},
		{"1e3", "", 0, "must be an integer"},
		{"0x10", "", 0, "must be an integer"},
		{"١", "", 0, "must be an integer"}, // Arabic-Indic digit one
		{"", "abc", 0, "Last-Event-ID header must be an integer"},
		{"1", "2", 0, "query parameter cursor (1) and Last-Event-ID header (2) must match"},
		{"bad", "2", 0, "query parameter cursor must be"}, // the first bad source is named
	}
	for _, tc := range tests {
		t.Run(tc.query+"|"+tc.header, func(t *testing.T) {
			got, err := ParseCursor(tc.query, tc.header)
			if tc.wantErr == "" {
				if err != nil || got != tc.want {
					t.Fatalf("ParseCursor = %d, %v; want %d", got, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseCursor = %d, nil; want error %q", got, tc.wantErr)
			}
			if !errors.Is(err, ErrCursor) || !strings.HasPrefix(err.Error(), "cursor: ") || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q, want ErrCursor with %q", err, tc.wantErr)
			}
		})
	}
}

// FuzzParseCursor checks ParseCursor's invariants on arbitrary input: no
// panic; success only for non-negative results that strconv agrees with;
// agreement between the two sources; errors that start with "cursor: ".
func FuzzParseCursor(f *testing.F) {
	for _, seed := range [][2]string{
		{"", ""}, {"0", ""}, {"", "17"}, {"5", "5"}, {"5", "6"}, {"-1", ""}, {"007", "7"},
		{"9223372036854775807", ""}, {"9223372036854775808", ""}, {"1e3", ""}, {" 1", ""},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, query, header string) {
		got, err := ParseCursor(query, header)
		if err != nil {
			if got != 0 {
				t.Fatalf("error %v with non-zero cursor %d", err, got)
			}
			if !errors.Is(err, ErrCursor) || !strings.HasPrefix(err.Error(), "cursor: ") {
				t.Fatalf("error %q lacks the cursor: prefix", err)
			}
			return
		}
		if got < 0 {
			t.Fatalf("negative cursor %d from %q, %q", got, query, header)
		}
		for _, src := range []string{query, header} {
			if src == "" {
				continue
			}
			if strings.Trim(src, "0123456789") != "" {
				t.Fatalf("accepted non-digit input %q", src)
			}
			n, perr := strconv.ParseInt(src, 10, 64)
			if perr != nil || n != got {
				t.Fatalf("ParseCursor(%q, %q) = %d, strconv says %d, %v", query, header, got, n, perr)
			}
		}
		if query == "" && header == "" && got != 0 {
			t.Fatalf("no cursor gave %d, want 0", got)
		}
		// Round trip: the canonical spelling parses to the same value from
		// either source.
		s := strconv.FormatInt(got, 10)
		if a, err := ParseCursor(s, s); err != nil || a != got {
			t.Fatalf("round trip of %d: %d, %v", got, a, err)
		}
	})
}
