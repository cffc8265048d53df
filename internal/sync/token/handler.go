package token

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// MaxBodyBytes bounds the request body (DESIGN §4: 1 MiB).
const MaxBodyBytes = 1 << 20

// PrincipalFunc returns the authenticated principal ("user:<id>" or
// "guest:<scope>") that the HTTP layer put on the request after verifying its
// signature; ok=false when there is none.
type PrincipalFunc func(*http.Request) (sub string, ok bool)

// mintRecorder is the one metric the handler records.
type mintRecorder interface {
	TokenMint(result, failureClass string)
}

type handler struct {
	minter    *Minter
	principal PrincipalFunc
	metrics   mintRecorder
	log       *slog.Logger
}

// NewHandler serves POST /api/khala/token. principal supplies the caller's
// verified subject; m may be nil (unit tests); log may be nil.
func NewHandler(minter *Minter, principal PrincipalFunc, m *telemetry.Metrics, log *slog.Logger) http.Handler {
	return newHandler(minter, principal, m, log)
}

func newHandler(minter *Minter, principal PrincipalFunc, rec mintRecorder, log *slog.Logger) *handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &handler{minter: minter, principal: principal, metrics: rec, log: log}
}

// mintBody is the decoded request.
type mintBody struct {
	Scopes     []string
	TTLSeconds *int64
}

type mintResponse struct {
	Data mintData `json:"data"`
}

type mintData struct {
	Token     string   `json:"token"`
	TokenType string   `json:"token_type"`
	ExpiresIn int64    `json:"expires_in"`
	ExpiresAt string   `json:"expires_at"`
	KeyID     string   `json:"kid"`
	Scopes    []string `json:"scopes"`
}

// requestError is a failure detected before Mint is called.
type requestError struct {
	status int
	code   string
	class  FailureClass
	msg    string
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.fail(w, r, "", &requestError{http.StatusMethodNotAllowed, "method_not_allowed", ClassInvalidRequest,
			"method " + r.Method + " not allowed, use POST"}, nil)
		return
	}
	var sub string
	ok := false
	if h.principal != nil {
		sub, ok = h.principal(r)
	}
	if !ok || sub == "" {
		h.fail(w, r, "", &requestError{http.StatusUnauthorized, "unauthorized", ClassAuthzDenied,
			"request is not authenticated"}, nil)
		return
	}
	body, rerr := decodeBody(w, r)
	if rerr != nil {
		h.fail(w, r, sub, rerr, nil)
		return
	}

	minted, err := h.minter.Mint(r.Context(), MintRequest{Subject: sub, Scopes: body.Scopes, TTLSeconds: body.TTLSeconds})
	if err != nil {
		h.fail(w, r, sub, mintFailure(err), err)
		return
	}

	h.record("ok", ClassNone)
	h.log.InfoContext(r.Context(), "sync token minted",
		slog.String("sub", sub), slog.String("kid", minted.KeyID), slog.String("jti", minted.ID),
		slog.Any("scopes", minted.Scopes), slog.Int64("ttl_seconds", int64(minted.TTL/time.Second)))
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, mintResponse{Data: mintData{
		Token:     minted.Token,
		TokenType: "Bearer",
		ExpiresIn: int64(minted.TTL / time.Second),
		ExpiresAt: minted.ExpiresAt.UTC().Format(time.RFC3339),
		KeyID:     minted.KeyID,
		Scopes:    minted.Scopes,
	}})
}

// mintFailure maps a Mint error to its HTTP answer.
func mintFailure(err error) *requestError {
	var me *MintError
	if !errors.As(err, &me) {
		return &requestError{http.StatusServiceUnavailable, "sync_token_unavailable", ClassSigningError,
			"sync token signing unavailable"}
	}
	switch {
	case errors.Is(err, ErrInvalidRequest):
		return &requestError{http.StatusBadRequest, "invalid_request", ClassInvalidRequest, me.Message}
	case errors.Is(err, ErrForbidden):
		return &requestError{http.StatusForbidden, "forbidden", ClassAuthzDenied, me.Message}
	case errors.Is(err, ErrUpstream):
		return &requestError{http.StatusServiceUnavailable, "upstream_unavailable", ClassUpstreamUnavailable, me.Message}
	default:
		return &requestError{http.StatusServiceUnavailable, "sync_token_unavailable", ClassSigningError, me.Message}
	}
}

func (h *handler) fail(w http.ResponseWriter, r *http.Request, sub string, re *requestError, cause error) {
	h.record("error", re.class)
	level := slog.LevelInfo
	if re.status >= 500 {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.Int("status", re.status),
		slog.String("failure_class", string(re.class)),
		slog.String("message", re.msg),
	}
	if sub != "" {
		attrs = append(attrs, slog.String("sub", sub))
	}
	if cause != nil {
		attrs = append(attrs, slog.String("error", cause.Error()))
	}
	h.log.LogAttrs(r.Context(), level, "sync token mint failed", attrs...)
	writeJSON(w, re.status, map[string]any{"error": map[string]string{"code": re.code, "message": re.msg}})
}

func (h *handler) record(result string, class FailureClass) {
	if h.metrics != nil {
		h.metrics.TokenMint(result, string(class))
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func badRequest(msg string) *requestError {
	return &requestError{http.StatusBadRequest, "invalid_request", ClassInvalidRequest, msg}
}

// decodeBody parses {scopes?, ttl_seconds?} strictly: exact key names (the
// standard decoder would match keys case-insensitively), no unknown fields, no
// trailing data. An empty body means all defaults.
func decodeBody(w http.ResponseWriter, r *http.Request) (mintBody, *requestError) {
	var out mintBody
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return out, &requestError{http.StatusRequestEntityTooLarge, "body_too_large", ClassInvalidRequest,
				fmt.Sprintf("request body exceeds %d bytes", MaxBodyBytes)}
		}
		return out, badRequest("request body could not be read")
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return out, nil
	}

	dec := json.NewDecoder(bytes.NewReader(raw))
	var fields map[string]json.RawMessage
	if err := dec.Decode(&fields); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return out, badRequest("request body must be a JSON object")
		}
		return out, badRequest("request body is not valid JSON")
	}
	if _, err := dec.Token(); err != io.EOF {
		return out, badRequest("request body has data after the JSON object")
	}

	var unknown []string
	for k := range fields {
		if k != "scopes" && k != "ttl_seconds" {
			unknown = append(unknown, fmt.Sprintf("%q", truncate(k, maxEchoLen)))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		if len(unknown) > 5 {
			unknown = append(unknown[:5], "...")
		}
		return out, badRequest("unknown field " + strings.Join(unknown, ", ") + " (allowed: scopes, ttl_seconds)")
	}
	if v, ok := fields["scopes"]; ok {
		if err := json.Unmarshal(v, &out.Scopes); err != nil {
			return out, badRequest("scopes must be an array of topic strings")
		}
		if !isNull(v) && out.Scopes == nil {
			out.Scopes = []string{}
		}
	}
	if v, ok := fields["ttl_seconds"]; ok {
		if err := json.Unmarshal(v, &out.TTLSeconds); err != nil {
			return out, badRequest("ttl_seconds must be an integer number of seconds")
		}
	}
	return out, nil
}

func isNull(v json.RawMessage) bool { return string(bytes.TrimSpace(v)) == "null" }
