package app

import (
	"encoding/json"
	"errors"
	"net/http"

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
