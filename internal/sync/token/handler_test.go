package token

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// counterValue sums the samples of metric whose labels include want.
func counterValue(t *testing.T, reg *prometheus.Registry, metric string, want map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != metric {
			continue
		}
	samples:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue samples
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

func principalFromHeader(r *http.Request) (string, bool) {
	sub := r.Header.Get("X-Test-Principal")
	return sub, sub != ""
}

type errBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

type okBody struct {
	Data struct {
		Token     string   `json:"token"`
		TokenType string   `json:"token_type"`
		ExpiresIn int64    `json:"expires_in"`
		ExpiresAt string   `json:"expires_at"`
		KeyID     string   `json:"kid"`
		Scopes    []string `json:"scopes"`
	} `json:"data"`
}

func TestHandler(t *testing.T) {
	good := keyringOne(t)
	upErr := errors.New("ping: connection refused")
	tests := []struct {
		name       string
		method     string
		sub        string // "" = no principal
		body       string
		minter     MinterConfig // Keyring defaults to good
		wantStatus int
		wantCode   string   // error code; "" for 200
		wantMsg    []string // substrings of the error message
		wantClass  FailureClass
		wantScopes []string
		wantTTL    int64
	}{
		{name: "empty body, user defaults", sub: "user:42", body: "",
			wantStatus: 200, wantClass: ClassNone, wantScopes: Topics(), wantTTL: 300},
		{name: "empty object", sub: "user:42", body: "{}",
			wantStatus: 200, wantClass: ClassNone, wantScopes: Topics(), wantTTL: 300},
		{name: "null body", sub: "user:42", body: "null",
			wantStatus: 200, wantClass: ClassNone, wantScopes: Topics(), wantTTL: 300},
		{name: "scopes and ttl", sub: "user:42", body: `{"scopes":["runtime.codex_worker_events"],"ttl_seconds":120}`,
			wantStatus: 200, wantClass: ClassNone, wantScopes: []string{TopicCodexWorkerEvents}, wantTTL: 120},
		{name: "null fields mean defaults", sub: "user:42", body: `{"scopes":null,"ttl_seconds":null}`,
			wantStatus: 200, wantClass: ClassNone, wantScopes: Topics(), wantTTL: 300},
		{name: "guest default", sub: "guest:s1", body: `{}`,
			wantStatus: 200, wantClass: ClassNone, wantScopes: []string{TopicRunSummaries}, wantTTL: 300},

		{name: "no principal", sub: "", body: `{}`,
			wantStatus: 401, wantCode: "unauthorized", wantClass: ClassAuthzDenied},
		{name: "malformed principal", sub: "root", body: `{}`,
			wantStatus: 403, wantCode: "forbidden", wantMsg: []string{"sub"}, wantClass: ClassAuthzDenied},
		{name: "guest asks for worker events", sub: "guest:s1", body: `{"scopes":["runtime.codex_worker_events"]}`,
			wantStatus: 403, wantCode: "forbidden", wantMsg: []string{"scopes"}, wantClass: ClassAuthzDenied},
		{name: "GET", method: "GET", sub: "user:42",
			wantStatus: 405, wantCode: "method_not_allowed", wantClass: ClassInvalidRequest},

		{name: "unknown field", sub: "user:42", body: `{"scope":["runtime.run_summaries"]}`,
			wantStatus: 400, wantCode: "invalid_request", wantMsg: []string{`"scope"`, "unknown field"}, wantClass: ClassInvalidRequest},
		{name: "field name in another case", sub: "user:42", body: `{"TTL_SECONDS":300}`,
			wantStatus: 400, wantCode: "invalid_request", wantMsg: []string{`"TTL_SECONDS"`}, wantClass: ClassInvalidRequest},
		{name: "ttl below bound", sub: "user:42", body: `{"ttl_seconds":59}`,
			wantStatus: 400, wantCode: "invalid_request", wantMsg: []string{"ttl_seconds", "60", "900"}, wantClass: ClassInvalidRequest},
		{name: "ttl above bound", sub: "user:42", body: `{"ttl_seconds":901}`,
			wantStatus: 400, wantCode: "invalid_request", wantMsg: []string{"ttl_seconds"}, wantClass: ClassInvalidRequest},
		{name: "ttl as string", sub: "user:42", body: `{"ttl_seconds":"300"}`,
			wantStatus: 400, wantCode: "invalid_request", wantMsg: []string{"ttl_seconds"}, wantClass: ClassInvalidRequest},
		{name: "ttl fractional", sub: "user:42", body: `{"ttl_seconds":300.5}`,
			wantStatus: 400, wantCode: "invalid_request", wantMsg: []string{"ttl_seconds"}, wantClass: ClassInvalidRequest},
		{name: "ttl overflows int64", sub: "user:42", body: `{"ttl_seconds":99999999999999999999999}`,
			wantStatus: 400, wantCode: "invalid_request", wantMsg: []string{"ttl_seconds"}, wantClass: ClassInvalidRequest},
		{name: "scopes as string", sub: "user:42", body: `{"scopes":"runtime.run_summaries"}`,
			wantStatus: 400, wantCode: "invalid_request", wantMsg: []string{"scopes"}, wantClass: ClassInvalidRequest},
		{name: "scopes with a number", sub: "user:42", body: `{"scopes":[1]}`,
			wantStatus: 400, wantCode: "invalid_request", wantMsg: []string{"scopes"}, wantClass: ClassInvalidRequest},
		{name: "unknown scope", sub: "user:42", body: `{"scopes":["runtime.everything"]}`,
			wantStatus: 400, wantCode: "invalid_request", wantMsg: []string{"scopes", "runtime.everything"}, wantClass: ClassInvalidRequest},
		{name: "empty scopes", sub: "user:42", body: `{"scopes":[]}`,
			wantStatus: 400, wantCode: "invalid_request", wantMsg: []string{"scopes"}, wantClass: ClassInvalidRequest},
		{name: "not JSON", sub: "user:42", body: `{"scopes":`,
			wantStatus: 400, wantCode: "invalid_request", wantMsg: []string{"JSON"}, wantClass: ClassInvalidRequest},
		{name: "array body", sub: "user:42", body: `[]`,
			wantStatus: 400, wantCode: "invalid_request", wantMsg: []string{"JSON object"}, wantClass: ClassInvalidRequest},
		{name: "trailing data", sub: "user:42", body: `{} {}`,
			wantStatus: 400, wantCode: "invalid_request", wantMsg: []string{"after the JSON object"}, wantClass: ClassInvalidRequest},
		{name: "body too large", sub: "user:42", body: `{"scopes":["` + strings.Repeat("a", MaxBodyBytes) + `"]}`,
			wantStatus: 413, wantCode: "body_too_large", wantClass: ClassInvalidRequest},

		{name: "no signing key", sub: "user:42", body: `{}`, minter: MinterConfig{Keyring: mustKeyring(t, KeyConfig{})},
			wantStatus: 503, wantCode: "sync_token_unavailable", wantClass: ClassSigningError},
		{name: "fault injected", sub: "user:42", body: `{}`,
			minter:     MinterConfig{Keyring: good, Fault: func() error { return errors.New("drill") }},
			wantStatus: 503, wantCode: "sync_token_unavailable", wantClass: ClassSigningError},
		{name: "upstream down", sub: "user:42", body: `{}`,
			minter:     MinterConfig{Keyring: good, Upstream: func(context.Context) error { return upErr }},
			wantStatus: 503, wantCode: "upstream_unavailable", wantClass: ClassUpstreamUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			metrics := telemetry.NewMetrics(reg, telemetry.BuildInfo{Version: "test"})
			cfg := tt.minter
			if cfg.Keyring == nil {
				cfg.Keyring = good
			}
			cfg.Now = fixedNow
			h := NewHandler(NewMinter(cfg), principalFromHeader, metrics, nil)

			method := tt.method
			if method == "" {
				method = http.MethodPost
			}
			req := httptest.NewRequest(method, "/api/khala/token", strings.NewReader(tt.body))
			if tt.sub != "" {
				req.Header.Set("X-Test-Principal", tt.sub)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)

			if rec.Code != tt.wantStatus {
				t.Fatalf("status = %d, want %d; body %s", rec.Code, tt.wantStatus, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			if tt.wantCode != "" {
				checkErrorBody(t, rec.Body.Bytes(), tt.wantCode, tt.wantMsg)
				if strings.Contains(rec.Body.String(), "connection refused") || strings.Contains(rec.Body.String(), "drill") {
					t.Errorf("error body leaks the cause: %s", rec.Body)
				}
			} else {
				checkOKBody(t, rec, good, tt.wantScopes, tt.wantTTL)
			}

			result := "error"
			if tt.wantClass == ClassNone {
				result = "ok"
			}
			if got := counterValue(t, reg, telemetry.KhalaTokenMint, map[string]string{"result": result, "failure_class": string(tt.wantClass)}); got != 1 {
				t.Errorf("token_mint{result=%s,failure_class=%s} = %v, want 1", result, tt.wantClass, got)
			}
			if got := counterValue(t, reg, telemetry.KhalaTokenMint, nil); got != 1 {
				t.Errorf("token_mint total = %v, want exactly one recording", got)
			}
			if got := counterValue(t, reg, telemetry.MetricLabelOverflow, nil); got != 0 {
				t.Errorf("label overflow = %v: a failure class is outside telemetry's closed set", got)
			}
		})
	}
}

func checkErrorBody(t *testing.T, body []byte, code string, msgs []string) {
	t.Helper()
	var raw map[string]map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatalf("error body %s: %v", body, err)
	}
	if len(raw) != 1 || len(raw["error"]) != 2 {
		t.Errorf("error body is not exactly {error:{code,message}}: %s", body)
	}
	var eb errBody
	_ = json.Unmarshal(body, &eb)
	if eb.Error.Code != code {
		t.Errorf("code = %q, want %q", eb.Error.Code, code)
	}
	if eb.Error.Message == "" {
		t.Error("empty error message")
	}
	for _, m := range msgs {
		if !strings.Contains(eb.Error.Message, m) {
			t.Errorf("message %q does not contain %q", eb.Error.Message, m)
		}
	}
}

func checkOKBody(t *testing.T, rec *httptest.ResponseRecorder, k *Keyring, scopes []string, ttl int64) {
	t.Helper()
	if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	var raw map[string]map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for key := range raw["data"] {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	if want := []string{"expires_at", "expires_in", "kid", "scopes", "token", "token_type"}; !slices.Equal(keys, want) {
		t.Errorf("data keys = %v, want %v", keys, want)
	}
	var ok okBody
	if err := json.Unmarshal(rec.Body.Bytes(), &ok); err != nil {
		t.Fatal(err)
	}
	d := ok.Data
	if d.TokenType != "Bearer" || d.KeyID != "k1" || d.ExpiresIn != ttl || !slices.Equal(d.Scopes, scopes) {
		t.Errorf("data = %+v", d)
	}
	if want := testNow().Add(time.Duration(ttl) * time.Second).Format(time.RFC3339); d.ExpiresAt != want {
		t.Errorf("expires_at = %q, want %q", d.ExpiresAt, want)
	}
	c, err := newTestVerifier(k, nil).Verify(context.Background(), d.Token)
	if err != nil {
		t.Fatalf("minted token does not verify: %v", err)
	}
	if !slices.Equal(c.Scopes, scopes) || c.ExpiresAt.Unix() != testNow().Unix()+ttl {
		t.Errorf("token claims %+v disagree with the response", c)
	}
}

// The handler must work with a nil *Metrics and a nil principal func.
func TestHandlerNilDependencies(t *testing.T) {
	h := NewHandler(newTestMinter(t, keyringOne(t)), nil, nil, nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/api/khala/token", strings.NewReader("{}")))
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("status = %d, want 401", rec.Code)
	}
	h = NewHandler(newTestMinter(t, keyringOne(t)), principalFromHeader, nil, nil)
	req := httptest.NewRequest("POST", "/api/khala/token", nil)
	req.Header.Set("X-Test-Principal", "user:1")
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Errorf("status = %d, want 200: %s", rec.Code, rec.Body)
	}
}

// The fault hook toggled while serving flips the outcome and the metric, as
// the end-to-end alert test will through the operator endpoint.
func TestHandlerFaultToggle(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics := telemetry.NewMetrics(reg, telemetry.BuildInfo{})
	m := newTestMinter(t, keyringOne(t))
	h := NewHandler(m, principalFromHeader, metrics, nil)
	do := func() int {
		req := httptest.NewRequest("POST", "/api/khala/token", strings.NewReader("{}"))
		req.Header.Set("X-Test-Principal", "user:1")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		_, _ = io.Copy(io.Discard, rec.Body)
		return rec.Code
	}
	if c := do(); c != 200 {
		t.Fatalf("before fault: %d", c)
	}
	m.SetFault(func() error { return errors.New("drill") })
	for range 3 {
		if c := do(); c != 503 {
			t.Fatalf("with fault: %d", c)
		}
	}
	m.SetFault(nil)
	if c := do(); c != 200 {
		t.Fatalf("after fault: %d", c)
	}
	if ok := counterValue(t, reg, telemetry.KhalaTokenMint, map[string]string{"result": "ok"}); ok != 2 {
		t.Errorf("ok = %v, want 2", ok)
	}
	if se := counterValue(t, reg, telemetry.KhalaTokenMint, map[string]string{"result": "error", "failure_class": "signing_error"}); se != 3 {
		t.Errorf("signing_error = %v, want 3", se)
	}
}
