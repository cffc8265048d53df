// Package sseclient is a small Server-Sent Events client that follows the
// WHATWG EventSource processing model (fields, comments, id persistence,
// retry) and reconnects with Last-Event-ID the way a browser does, but stops
// for good at the runtime's `data: [DONE]` message, at 204 No Content, at a
// 4xx answer or when the callback fails. Tests, the `oaruntime run` command
// and the chaos drills use it against the run stream.
package sseclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// DoneData is the data of the runtime's end-of-stream message.
const DoneData = "[DONE]"

// Event is one dispatched SSE message.
type Event struct {
	// ID is the stream's last event id when the message was dispatched (an
	// `id:` field persists for the following messages, as in EventSource).
	ID string
	// Event is the event type: the `event:` field, "message" when absent.
	Event string
	// Data is the `data:` lines joined with "\n".
	Data string
}

// Done reports whether e is the runtime's `[DONE]` message.
func (e Event) Done() bool { return e.Data == DoneData }

// HTTPError is a non-retryable answer (any 4xx, or a 2xx that is not an
// event stream). Code and Message come from the runtime's error envelope
// when the body holds one.
type HTTPError struct {
	StatusCode int
	Code       string
	Message    string
}

func (e *HTTPError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("sse: HTTP %d %s: %s", e.StatusCode, e.Code, e.Message)
	}
	return fmt.Sprintf("sse: HTTP %d: %s", e.StatusCode, e.Message)
}

// Defaults of Client.
const (
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
	maxLineBytes      = 16 << 20
)

// Client holds reconnect settings. The zero value is ready to use.
type Client struct {
	// HTTP sends the requests; nil uses a client without a timeout (a
	// stream is long-lived; bound it with the context).
	HTTP *http.Client
	// Prepare, when set, is called on every request before it is sent,
	// e.g. to add a fresh X-OA-RUNTIME-SIGNATURE (its nonce is single use,
	// so a reconnect cannot reuse the first request's header).
	Prepare func(*http.Request) error
	// MinBackoff and MaxBackoff bound the reconnect delay, which doubles
	// (with jitter) after each attempt that delivered no message and resets
	// after one that did. A server `retry:` field raises the minimum.
	MinBackoff, MaxBackoff time.Duration
	// MaxAttempts gives up after this many consecutive attempts that
	// delivered no message; 0 retries until ctx ends.
	MaxAttempts int
	// OnComment, when set, receives comment lines (such as `: heartbeat`)
	// without the leading colon and optional space.
	OnComment func(string)
	// OnReconnect, when set, is told about every reconnect: the attempt
	// number (1 for the first retry), the id it resumes from and why.
	OnReconnect func(attempt int, lastEventID string, cause error)
}

// Stream is (&Client{}).Stream.
func Stream(ctx context.Context, url string, header http.Header, lastEventID string, onEvent func(Event) error) error {
	return (&Client{}).Stream(ctx, url, header, lastEventID, onEvent)
}

// errEndedEarly: the server closed the stream before [DONE] (tail timeout,
// shutdown, network): the client resumes from the last id.
var errEndedEarly = errors.New("sse: stream ended before [DONE]")

// Stream GETs url with header (and Last-Event-ID when lastEventID is not
// empty) and calls onEvent for every message, in order, including the final
// `[DONE]` message. It returns nil after [DONE] or a 204 No Content answer;
// the onEvent error (wrapped) when onEvent fails; an *HTTPError for a 4xx;
// ctx's error when ctx ends. On a network error, a 5xx, or a stream that
// ends without [DONE], it reconnects from the last id it received.
func (c *Client) Stream(ctx context.Context, url string, header http.Header, lastEventID string, onEvent func(Event) error) error {
	minB := c.MinBackoff
	if minB <= 0 {
		minB = DefaultMinBackoff
	}
	maxB := max(c.MaxBackoff, minB)
	if c.MaxBackoff <= 0 {
		maxB = max(DefaultMaxBackoff, minB)
	}
	delay := minB
	failures := 0
	for attempt := 0; ; attempt++ {
		st := attemptState{lastID: lastEventID}
		err := c.once(ctx, url, header, &st, onEvent)
		lastEventID = st.lastID
		if err == nil || st.fatal {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if st.retry > 0 {
			minB = max(st.retry, minB)
			maxB = max(maxB, minB)
		}
		if st.delivered > 0 {
			failures = 0
			delay = minB
		} else {
			failures++
			if c.MaxAttempts > 0 && failures >= c.MaxAttempts {
				return fmt.Errorf("sse: giving up after %d attempts without a message: %w", failures, err)
			}
		}
		if c.OnReconnect != nil {
			c.OnReconnect(attempt+1, lastEventID, err)
		}
		wait := delay + time.Duration(rand.Int64N(int64(delay)/4+1))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if st.delivered == 0 {
			delay = min(delay*2, maxB)
		}
	}
}

type attemptState struct {
	lastID    string
	delivered int
	retry     time.Duration
	fatal     bool // do not reconnect; return the error as is
}

func (c *Client) once(ctx context.Context, url string, header http.Header, st *attemptState, onEvent func(Event) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		st.fatal = true
		return fmt.Errorf("sse: new request: %w", err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	if st.lastID != "" {
		req.Header.Set("Last-Event-ID", st.lastID)
	}
	if c.Prepare != nil {
		if err := c.Prepare(req); err != nil {
			st.fatal = true
			return fmt.Errorf("sse: prepare request: %w", err)
		}
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("sse: connect: %w", err)
	}
	defer resp.Body.Close()

	switch {
	case resp.StatusCode == http.StatusNoContent:
		return nil // the server says nothing will ever follow
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return readHTTPError(resp)
	case resp.StatusCode != http.StatusOK:
		st.fatal = true
		return readHTTPError(resp)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		st.fatal = true
		e := &HTTPError{StatusCode: resp.StatusCode}
		e.Message = "not an event stream (content-type " + resp.Header.Get("Content-Type") + ")"
		return e
	}

	p := NewParser(resp.Body)
	for {
		ev, err := p.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errEndedEarly
			}
			if ctx.Err() != nil {
				st.fatal = true
				return ctx.Err()
			}
			return fmt.Errorf("sse: read: %w", err)
		}
		for _, cm := range p.Comments() {
			if c.OnComment != nil {
				c.OnComment(cm)
			}
		}
		if ev == nil {
			continue
		}
		st.lastID = p.LastEventID()
		st.retry = p.Retry()
		st.delivered++
		if err := onEvent(*ev); err != nil {
			st.fatal = true
			return fmt.Errorf("sse: onEvent: %w", err)
		}
		if ev.Done() {
			return nil
		}
	}
}

func readHTTPError(resp *http.Response) *HTTPError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &HTTPError{StatusCode: resp.StatusCode}
	var env struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &env) == nil && env.Error.Code != "" {
		e.Code, e.Message = env.Error.Code, env.Error.Message
	} else {
		e.Message = strings.TrimSpace(string(body))
	}
	return e
}

// Parser decodes an event stream per the WHATWG "interpreting an event
// stream" rules: lines end in CRLF, LF or CR; a leading BOM is skipped;
// `:` lines are comments; fields are data, event, id (ignored when it holds
// NUL) and retry (digits only); a blank line dispatches, unless no data
// line was seen; an unterminated message at EOF is discarded.
type Parser struct {
	sc       *bufio.Scanner
	first    bool
	lastID   string
	retry    time.Duration
	comments []string
}

// NewParser reads an event stream from r.
func NewParser(r io.Reader) *Parser {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLineBytes)
	sc.Split(scanLines)
	return &Parser{sc: sc, first: true}
}

// LastEventID is the stream's last event id so far.
func (p *Parser) LastEventID() string { return p.lastID }

// Retry is the last `retry:` value so far (0 when none).
func (p *Parser) Retry() time.Duration { return p.retry }

// Comments returns, and forgets, the comment lines read since the last
// call, without the leading colon and optional space.
func (p *Parser) Comments() []string {
	c := p.comments
	p.comments = nil
	return c
}

// Next returns the next message, or (nil, nil) after a comment so that the
// caller can observe heartbeats, or (nil, io.EOF) at the end of the stream.
func (p *Parser) Next() (*Event, error) {
	var (
		data    strings.Builder
		hasData bool
		evType  string
	)
	for p.sc.Scan() {
		line := p.sc.Text()
		if p.first {
			line = strings.TrimPrefix(line, "\uFEFF")
			p.first = false
		}
		if line == "" {
			if !hasData {
				evType = ""
				continue
			}
			if evType == "" {
				evType = "message"
			}
			return &Event{ID: p.lastID, Event: evType, Data: data.String()}, nil
		}
		field, value, found := strings.Cut(line, ":")
		if field == "" && found {
			p.comments = append(p.comments, strings.TrimPrefix(value, " "))
			if !hasData && evType == "" {
				return nil, nil
			}
			continue
		}
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "data":
			if hasData {
				data.WriteByte('\n')
			}
			data.WriteString(value)
			hasData = true
		case "event":
			evType = value
		case "id":
			if !strings.ContainsRune(value, 0) {
				p.lastID = value
			}
		case "retry":
			if ms, err := strconv.ParseUint(value, 10, 31); err == nil {
				p.retry = time.Duration(ms) * time.Millisecond
			}
		}
	}
	if err := p.sc.Err(); err != nil {
		return nil, err
	}
	return nil, io.EOF
}

// scanLines splits on CRLF, LF or CR.
func scanLines(data []byte, atEOF bool) (int, []byte, error) {
	if atEOF && len(data) == 0 {
		return 0, nil, nil
	}
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		if data[i] == '\n' {
			return i + 1, data[:i], nil
		}
		if i+1 < len(data) {
			if data[i+1] == '\n' {
				return i + 2, data[:i], nil
			}
			return i + 1, data[:i], nil
		}
		if atEOF {
			return i + 1, data[:i], nil
		}
		return 0, nil, nil // a CR at the buffer's end: wait to see if LF follows
	}
	if atEOF {
		// An unterminated last line: hand it over; it cannot complete a
		// message (that needs a blank line), so it is discarded.
		return len(data), data, nil
	}
	return 0, nil, nil
}
