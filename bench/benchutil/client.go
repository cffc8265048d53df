package benchutil

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Sign returns a fresh X-OA-RUNTIME-SIGNATURE value for sub (v1 format:
// base64url claims, HMAC-SHA256 over them), valid for a minute.
func Sign(secret []byte, sub string) string {
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(), "nonce": hex.EncodeToString(nonce[:]), "sub": sub})
	seg := base64.RawURLEncoding.EncodeToString(claims)
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(seg))
	return "v1." + seg + "." + base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}

// Client is a signed client of one server, acting as one subject.
type Client struct {
	Base   string // http://host:port
	Secret []byte
	Sub    string
	HC     *http.Client
}

// NewClient keeps up to maxIdle connections to addr, so that concurrent
// submitters reuse them.
func NewClient(addr string, secret []byte, sub string, maxIdle int) *Client {
	tr := &http.Transport{MaxIdleConns: maxIdle, MaxIdleConnsPerHost: maxIdle, IdleConnTimeout: 90 * time.Second,
		DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext}
	return &Client{Base: "http://" + addr, Secret: secret, Sub: sub, HC: &http.Client{Transport: tr, Timeout: 60 * time.Second}}
}

// APIError is a non-2xx answer.
type APIError struct {
	Status int
	Body   string
}

func (e *APIError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.Status, e.Body) }

// Do sends a signed request with body (JSON, when not nil) and decodes the
// answer into out (when not nil).
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, r)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("content-type", "application/json")
	}
	req.Header.Set("X-OA-RUNTIME-SIGNATURE", Sign(c.Secret, c.Sub))
	resp, err := c.HC.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return &APIError{Status: resp.StatusCode, Body: strings.TrimSpace(string(raw))}
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}
