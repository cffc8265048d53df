package app

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/oaruntime/oaruntime/internal/httpapi"
)

// faultRoutes are operator endpoints that inject faults through the real
// runtime, for `oaruntime loadgen` and the alert tests. They are mounted only
// with --enable-faults and are signed like every internal route.
func (s *Server) faultRoutes() []httpapi.Route {
	if !s.Cfg.EnableFaults {
		return nil
	}
	return []httpapi.Route{
		{Pattern: "POST /internal/v1/ops/faults/token-mint", Handler: http.HandlerFunc(s.faultTokenMint)},
		{Pattern: "POST /internal/v1/ops/faults/http", Handler: http.HandlerFunc(s.faultHTTP)},
		{Pattern: "POST /internal/v1/ops/faults/executor", Handler: http.HandlerFunc(s.faultExecutor)},
	}
}

type faultToggle struct {
	Fail *bool `json:"fail"`
}

func decodeFault(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		w.Header().Set("content-type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": "invalid_request", "message": "body: " + err.Error()}})
		return false
	}
	return true
}

func (s *Server) faultTokenMint(w http.ResponseWriter, r *http.Request) {
	var f faultToggle
	if !decodeFault(w, r, &f) {
		return
	}
	on := f.Fail != nil && *f.Fail
	if on {
		s.Minter.SetFault(func() error { return errors.New("injected signing fault") })
	} else {
		s.Minter.SetFault(nil)
	}
	w.Header().Set("content-type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"token_mint_fault": on})
}

// faultState holds the fault knobs of the HTTP layer.
type faultState struct {
	httpErrorPPM atomic.Int64 // injected 500s, parts per million of signed API requests
}

// httpFault answers a fraction of signed API requests (not the fault
// endpoints themselves) with an injected 500.
func (s *Server) httpFault(r *http.Request) error {
	p := s.faults.httpErrorPPM.Load()
	if p == 0 || strings.HasPrefix(r.URL.Path, "/internal/v1/ops/") {
		return nil
	}
	if rand.Int64N(1e6) < p {
		return errors.New("fault injection: HTTP error")
	}
	return nil
}

type rateFault struct {
	Rate *float64 `json:"rate"`
}

func (f rateFault) ppm(w http.ResponseWriter) (int64, bool) {
	if f.Rate == nil || *f.Rate < 0 || *f.Rate > 1 {
		w.Header().Set("content-type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": "invalid_request", "message": "rate: required, 0..1"}})
		return 0, false
	}
	return int64(*f.Rate * 1e6), true
}

func (s *Server) faultHTTP(w http.ResponseWriter, r *http.Request) {
	var f rateFault
	if !decodeFault(w, r, &f) {
		return
	}
	p, ok := f.ppm(w)
	if !ok {
		return
	}
	s.faults.httpErrorPPM.Store(p)
	w.Header().Set("content-type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"http_error_rate": *f.Rate})
}

func (s *Server) faultExecutor(w http.ResponseWriter, r *http.Request) {
	var f rateFault
	if !decodeFault(w, r, &f) {
		return
	}
	if _, ok := f.ppm(w); !ok {
		return
	}
	s.Exec.SetAbandonRate(*f.Rate)
	w.Header().Set("content-type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"executor_abandon_rate": *f.Rate})
}
