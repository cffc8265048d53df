package app

import (
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

func (s *Server) faultTokenMint(w http.ResponseWriter, r *http.Request) {
	var f struct {
		Fail *bool `json:"fail"`
	}
	if aerr := httpapi.DecodeJSON(r, &f, false); aerr != nil {
		httpapi.WriteError(w, aerr.Status, aerr.Code, aerr.Message)
		return
	}
	on := f.Fail != nil && *f.Fail
	if on {
		s.Minter.SetFault(func() error { return errors.New("injected signing fault") })
	} else {
		s.Minter.SetFault(nil)
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"token_mint_fault": on})
}

// decodeRate reads {"rate": 0..1}.
func decodeRate(w http.ResponseWriter, r *http.Request) (float64, bool) {
	var f struct {
		Rate *float64 `json:"rate"`
	}
	if aerr := httpapi.DecodeJSON(r, &f, false); aerr != nil {
		httpapi.WriteError(w, aerr.Status, aerr.Code, aerr.Message)
		return 0, false
	}
	if f.Rate == nil || *f.Rate < 0 || *f.Rate > 1 {
		httpapi.WriteError(w, http.StatusBadRequest, httpapi.CodeInvalidRequest, "rate: required, 0..1")
		return 0, false
	}
	return *f.Rate, true
}

func (s *Server) faultHTTP(w http.ResponseWriter, r *http.Request) {
	rate, ok := decodeRate(w, r)
	if !ok {
		return
	}
	s.faults.httpErrorPPM.Store(int64(rate * 1e6))
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"http_error_rate": rate})
}

func (s *Server) faultExecutor(w http.ResponseWriter, r *http.Request) {
	rate, ok := decodeRate(w, r)
	if !ok {
		return
	}
	s.Exec.SetAbandonRate(rate)
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"executor_abandon_rate": rate})
}
