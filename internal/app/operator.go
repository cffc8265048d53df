package app

import (
	"errors"
	"net/http"
	"slices"

	"github.com/oaruntime/oaruntime/internal/auth"
	"github.com/oaruntime/oaruntime/internal/httpapi"
	"github.com/oaruntime/oaruntime/internal/projection"
	"github.com/oaruntime/oaruntime/internal/store"
)

// operatorRoutes guards the operator endpoints: drift, reproject, verify,
// token revocation and the fault knobs need an operator principal (OA_RUNTIME_OPERATOR_SUBS); a
// run's checkpoint is visible to the run's owner and to operators. Every
// other signed principal gets 403, so a control plane that proxies user
// requests cannot expose them.
func (s *Server) operatorRoutes(rs []httpapi.Route) []httpapi.Route {
	out := make([]httpapi.Route, 0, len(rs))
	for _, r := range rs {
		h := r.Handler
		if r.Pattern == projection.PatternCheckpoint {
			r.Handler = s.ownerOrOperator(h)
		} else {
			r.Handler = s.operatorOnly(h)
		}
		out = append(out, r)
	}
	return out
}

func (s *Server) isOperator(r *http.Request) bool {
	c, ok := auth.ClaimsFrom(r.Context())
	return ok && slices.Contains(s.Cfg.OperatorSubList(), c.Sub)
}

func (s *Server) operatorOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.isOperator(r) {
			httpapi.WriteError(w, http.StatusForbidden, httpapi.CodeForbidden, "sub: operator routes need an operator principal (OA_RUNTIME_OPERATOR_SUBS)")
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (s *Server) ownerOrOperator(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.isOperator(r) {
			h.ServeHTTP(w, r)
			return
		}
		run, err := s.Store.GetRun(r.Context(), r.PathValue("run_id"))
		c, _ := auth.ClaimsFrom(r.Context())
		switch {
		case errors.Is(err, store.ErrNotFound):
			httpapi.WriteError(w, http.StatusNotFound, httpapi.CodeNotFound, "run_id: run not found")
		case err != nil:
			httpapi.WriteError(w, http.StatusServiceUnavailable, "unavailable", "store unavailable")
		case run.OwnerSub != c.Sub:
			httpapi.WriteError(w, http.StatusForbidden, httpapi.CodeForbidden, "run_id: run belongs to another principal")
		default:
			h.ServeHTTP(w, r)
		}
	})
}
