package app

import (
	"errors"
	"log/slog"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/propagation"

	"github.com/oaruntime/oaruntime/internal/config"
	"github.com/oaruntime/oaruntime/internal/executor"
	"github.com/oaruntime/oaruntime/internal/provider"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
	"github.com/oaruntime/oaruntime/internal/tools"
	"github.com/oaruntime/oaruntime/internal/tools/egress"
)

// buildTools registers the built-in tools and the configured manifest tools.
// A rejected manifest is logged and counted as a `manifest` parity failure;
// it does not stop the node.
func buildTools(cfg *config.Config, m *telemetry.Metrics, log *slog.Logger) *tools.Registry {
	guard := egress.New(egress.Config{AllowedHosts: config.List(cfg.EgressAllowlist), Timeout: tools.MaxManifestTimeout})
	ts := []tools.Tool{tools.Echo{}, tools.Sleep{Max: 5 * time.Minute}, tools.NewHTTPFetch(guard)}
	if paths := config.List(cfg.ToolManifests); len(paths) > 0 {
		mts, errs := tools.LoadManifests(paths, tools.WithEgress(guard))
		for _, err := range errs {
			reason := "invalid_manifest"
			var me *tools.ManifestError
			if errors.As(err, &me) {
				reason = me.ReasonClass()
			}
			log.Warn("tool manifest rejected", "error", err, "reason_class", reason)
			m.ParityFailure("manifest", reason, "tools.manifest")
		}
		for _, mt := range mts {
			ts = append(ts, mt)
			m.AllowProviders(mt.Provider())
		}
	}
	reg := tools.NewRegistry(ts...)
	m.AllowTools(reg.Names()...)
	return reg
}

// providers resolves provider names: the scripted family and, when
// configured, "openai".
func providers(cfg *config.Config) executor.ProviderFunc {
	hc := &http.Client{Transport: traceTransport{http.DefaultTransport}}
	return func(run store.Run, name string) (provider.Provider, error) {
		if name == "openai" {
			if cfg.OpenAIBaseURL == "" && cfg.OpenAIAPIKey == "" {
				return nil, &provider.Error{Class: "provider_unavailable", Err: errors.New("provider openai is not configured (OA_OPENAI_BASE_URL, OA_OPENAI_API_KEY)")}
			}
			spec, err := executor.ParseProviderSpec(run.Provider)
			if err != nil {
				return nil, err
			}
			model := spec.Model
			if model == "" {
				model = cfg.OpenAIModel
			}
			return provider.NewOpenAI(provider.OpenAIConfig{BaseURL: cfg.OpenAIBaseURL, APIKey: cfg.OpenAIAPIKey, Model: model, HTTPClient: hc}), nil
		}
		return executor.DefaultProviders(run, name)
	}
}

// traceTransport adds the W3C trace context of the model call to outbound
// provider requests, so a model server's own tracing joins the run's trace.
type traceTransport struct{ next http.RoundTripper }

func (t traceTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	propagation.TraceContext{}.Inject(r.Context(), propagation.HeaderCarrier(r.Header))
	return t.next.RoundTrip(r)
}
