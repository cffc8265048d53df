package tools

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/oaruntime/oaruntime/internal/tools/egress"
)

// DefaultFetchMaxBody caps the body http.fetch returns.
const DefaultFetchMaxBody = 256 << 10

// fetchHeaders are the response headers http.fetch returns: enough to read
// the body and follow up, never cookies or auth challenges (which would end
// up in events).
func fetchHeaders() []string {
	return []string{"Content-Type", "Content-Length", "Content-Encoding", "Content-Language",
		"Last-Modified", "Etag", "Cache-Control", "Expires", "Location", "Retry-After"}
}

// HTTPFetch is the built-in http.fetch tool: a GET or HEAD through the
// egress guard, returning the status, a subset of headers and the body as
// text (capped).
type HTTPFetch struct {
	client  *egress.Client
	maxBody int64
	timeout time.Duration
}

// FetchOption configures HTTPFetch.
type FetchOption func(*HTTPFetch)

// WithFetchMaxBody caps the returned body (default DefaultFetchMaxBody).
func WithFetchMaxBody(n int64) FetchOption { return func(h *HTTPFetch) { h.maxBody = n } }

// WithFetchTimeout sets the tool timeout (default: the runner's DefaultTimeout).
func WithFetchTimeout(d time.Duration) FetchOption { return func(h *HTTPFetch) { h.timeout = d } }

// NewHTTPFetch returns the tool. c is the guarded client; nil builds one with
// the guard's defaults (loopback, private, metadata... all blocked).
func NewHTTPFetch(c *egress.Client, opts ...FetchOption) *HTTPFetch {
	if c == nil {
		c = egress.New(egress.Config{})
	}
	h := &HTTPFetch{client: c, maxBody: DefaultFetchMaxBody}
	for _, o := range opts {
		o(h)
	}
	if h.maxBody <= 0 {
		h.maxBody = DefaultFetchMaxBody
	}
	return h
}

// Name implements Tool.
func (*HTTPFetch) Name() string { return "http.fetch" }

// Timeout implements Tool.
func (h *HTTPFetch) Timeout() time.Duration { return h.timeout }

// Description implements Describer.
func (*HTTPFetch) Description() string {
	return "Fetch a public http(s) URL with GET or HEAD. Returns status, selected headers and the body as text (truncated)."
}

// InputSchema implements Describer.
func (*HTTPFetch) InputSchema() json.RawMessage {
	return json.RawMessage(`{"type":"object","properties":{"url":{"type":"string","description":"http or https URL"},"method":{"type":"string","enum":["GET","HEAD"]}},"required":["url"],"additionalProperties":false}`)
}

// FetchOutput is http.fetch's output.
type FetchOutput struct {
	Status    int               `json:"status"`
	Headers   map[string]string `json:"headers"`
	Body      string            `json:"body"`
	Truncated bool              `json:"truncated,omitempty"`
}

// Call implements Tool. A non-2xx answer is a successful fetch (the model
// reads the status); a refused or failed request is an error.
func (h *HTTPFetch) Call(ctx context.Context, input json.RawMessage) (json.RawMessage, error) {
	var in struct {
		URL    string `json:"url"`
		Method string `json:"method"`
	}
	dec := json.NewDecoder(bytes.NewReader(input))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return nil, &ClassError{Class: "invalid_input", Err: fmt.Errorf("input: %w", err)}
	}
	if in.URL == "" {
		return nil, &ClassError{Class: "invalid_input", Err: errors.New("url: required")}
	}
	method := strings.ToUpper(in.Method)
	switch method {
	case "":
		method = http.MethodGet
	case http.MethodGet, http.MethodHead:
	default:
		return nil, &ClassError{Class: "invalid_input", Err: fmt.Errorf("method: %q is not GET or HEAD", in.Method)}
	}
	req, err := http.NewRequestWithContext(ctx, method, in.URL, nil)
	if err != nil {
		// An unparsable URL is refused like any other bad URL, so it is
		// counted with the guard's blocks.
		return nil, &ClassError{Class: "ssrf_block." + egress.ReasonInvalidURL, Err: fmt.Errorf("url: %w", err)}
	}
	resp, err := h.client.Do(ctx, req)
	if err != nil {
		return nil, httpErr(ctx, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, h.maxBody+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &ClassError{Class: "tool_http_error", Err: fmt.Errorf("read body: %w", err)}
	}
	out := FetchOutput{Status: resp.StatusCode, Headers: map[string]string{}}
	if int64(len(body)) > h.maxBody {
		body, out.Truncated = body[:h.maxBody], true
	}
	// A cut may split a multi-byte character; invalid bytes become U+FFFD so
	// the body stays valid JSON text.
	out.Body = strings.ToValidUTF8(string(trimPartialRune(body)), "\uFFFD")
	for _, k := range fetchHeaders() {
		if v := resp.Header.Get(k); v != "" {
			out.Headers[strings.ToLower(k)] = v
		}
	}
	return json.Marshal(out)
}

// trimPartialRune drops an incomplete UTF-8 sequence at the end of b.
func trimPartialRune(b []byte) []byte {
	for i := 1; i <= utf8.UTFMax && i <= len(b); i++ {
		if utf8.RuneStart(b[len(b)-i]) {
			if !utf8.FullRune(b[len(b)-i:]) {
				return b[:len(b)-i]
			}
			break
		}
	}
	return b
}
