// Package client is the Go client of the internal API: every request signed
// with a fresh X-OA-RUNTIME-SIGNATURE. The `run` command, the load generator,
// the drills and the end-to-end tests use it.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/oaruntime/oaruntime/internal/auth"
)

// Client talks to one runtime.
type Client struct {
	BaseURL string
	Secret  []byte
	Sub     string // principal, e.g. "user:1"
	HTTP    *http.Client
	// Header is added to every request (x-request-id, traceparent...).
	Header http.Header
}

// New returns a client for baseURL signing as sub.
func New(baseURL string, secret []byte, sub string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Secret: secret, Sub: sub, HTTP: &http.Client{Timeout: 30 * time.Second}}
}

// APIError is a non-2xx answer.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Message)
}

// Sign returns a fresh signature header value.
func (c *Client) Sign() string {
	return auth.Sign(c.Secret, auth.NewClaims(time.Now(), c.Sub, time.Minute))
}

// NewRequest builds a signed request.
func (c *Client) NewRequest(ctx context.Context, method, path string, body any) (*http.Request, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, r)
	if err != nil {
		return nil, err
	}
	for k, vs := range c.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if body != nil {
		req.Header.Set("content-type", "application/json")
	}
	req.Header.Set("X-OA-RUNTIME-SIGNATURE", c.Sign())
	return req, nil
}

// Do sends a signed JSON request and decodes a 2xx body into out.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) (int, error) {
	req, err := c.NewRequest(ctx, method, path, body)
	if err != nil {
		return 0, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode >= 300 {
		var env struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		_ = json.Unmarshal(raw, &env)
		return resp.StatusCode, &APIError{Status: resp.StatusCode, Code: env.Error.Code, Message: env.Error.Message}
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode %s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// Run is the subset of the run document clients use.
type Run struct {
	RunID               string `json:"run_id"`
	ThreadID            string `json:"thread_id"`
	Status              string `json:"status"`
	LatestSeq           int64  `json:"latest_seq"`
	TerminalReasonClass string `json:"terminal_reason_class"`
	TerminalReason      string `json:"terminal_reason"`
}

// CreateRun creates a run; body fields as in the API.
func (c *Client) CreateRun(ctx context.Context, body map[string]any) (Run, error) {
	var out struct {
		Run Run `json:"run"`
	}
	_, err := c.Do(ctx, http.MethodPost, "/internal/v1/runs", body, &out)
	return out.Run, err
}

// GetRun fetches a run.
func (c *Client) GetRun(ctx context.Context, runID string) (Run, error) {
	var out struct {
		Run Run `json:"run"`
	}
	_, err := c.Do(ctx, http.MethodGet, "/internal/v1/runs/"+url.PathEscape(runID), nil, &out)
	return out.Run, err
}

// SendFrame posts a frame.
func (c *Client) SendFrame(ctx context.Context, runID, frameID, typ string, payload any) (int, error) {
	return c.Do(ctx, http.MethodPost, "/internal/v1/runs/"+url.PathEscape(runID)+"/frames",
		map[string]any{"frame_id": frameID, "type": typ, "payload": payload}, nil)
}

// Cancel requests cancellation.
func (c *Client) Cancel(ctx context.Context, runID, reason string) (int, error) {
	return c.Do(ctx, http.MethodPost, "/internal/v1/runs/"+url.PathEscape(runID)+"/cancel", map[string]any{"reason": reason}, nil)
}

// Event is a run event as listed by the API.
type Event struct {
	Seq       int64           `json:"seq"`
	EventType string          `json:"event_type"`
	Payload   json.RawMessage `json:"payload"`
	EventHash string          `json:"event_hash"`
	PrevHash  string          `json:"prev_hash"`
}

// Events lists all events after afterSeq.
func (c *Client) Events(ctx context.Context, runID string, afterSeq int64) ([]Event, error) {
	var all []Event
	for {
		var out struct {
			Events     []Event `json:"events"`
			NextCursor *int64  `json:"next_cursor"`
		}
		_, err := c.Do(ctx, http.MethodGet, fmt.Sprintf("/internal/v1/runs/%s/events?after_seq=%d&limit=1000", url.PathEscape(runID), afterSeq), nil, &out)
		if err != nil {
			return all, err
		}
		all = append(all, out.Events...)
		if len(out.Events) == 0 || out.NextCursor == nil {
			return all, nil
		}
		afterSeq = *out.NextCursor
	}
}

// WaitTerminal polls until the run is terminal or ctx ends.
func (c *Client) WaitTerminal(ctx context.Context, runID string, every time.Duration) (Run, error) {
	for {
		r, err := c.GetRun(ctx, runID)
		if err == nil && (r.Status == "succeeded" || r.Status == "failed" || r.Status == "canceled") {
			return r, nil
		}
		select {
		case <-ctx.Done():
			return r, fmt.Errorf("run %s not terminal (status %q): %w", runID, r.Status, ctx.Err())
		case <-time.After(every):
		}
	}
}
