package stream

import (
	"errors"
	"fmt"
)

// maxCursorDigits bounds the accepted input before any arithmetic:
// the largest int64 has 19 digits; leading zeros beyond that are refused
// too, so that a hostile header cannot make us scan megabytes.
const maxCursorDigits = 19

// ErrCursor is wrapped by every cursor parse error.
var ErrCursor = errors.New("cursor")

// ParseCursor resolves the resume cursor of a stream from the `cursor` query
// value and the Last-Event-ID header value. An empty string means "absent"
// (an EventSource that never saw an id sends no header, and `?cursor=` is
// treated the same way). Each present value must be a plain decimal integer
// >= 0 (digits only: no sign, spaces or exponent) that fits in int64. When
// both are present they must denote the same number. Neither present gives 0,
// i.e. the whole log from the start. Error messages begin with "cursor: "
// and are safe to show to the client.
func ParseCursor(query, lastEventID string) (int64, error) {
	var (
		q, h       int64
		hasQ, hasH bool
		err        error
	)
	if query != "" {
		if q, err = parseSeq(query); err != nil {
			return 0, fmt.Errorf("%w: query parameter cursor %v", ErrCursor, err)
		}
		hasQ = true
	}
	if lastEventID != "" {
		if h, err = parseSeq(lastEventID); err != nil {
			return 0, fmt.Errorf("%w: Last-Event-ID header %v", ErrCursor, err)
		}
		hasH = true
	}
	switch {
	case hasQ && hasH && q != h:
		return 0, fmt.Errorf("%w: query parameter cursor (%d) and Last-Event-ID header (%d) must match", ErrCursor, q, h)
	case hasQ:
		return q, nil
	case hasH:
		return h, nil
	}
	return 0, nil
}

func parseSeq(s string) (int64, error) {
	if len(s) > maxCursorDigits {
		return 0, fmt.Errorf("must be an integer >= 0 of at most %d digits", maxCursorDigits)
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, errors.New("must be an integer >= 0")
		}
		d := int64(c - '0')
		if n > (1<<63-1-d)/10 {
			return 0, errors.New("is out of range")
		}
		n = n*10 + d
	}
	return n, nil
}
