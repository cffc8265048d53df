package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
)

// Provider error classes (the reason_class of a failed model call).
const (
	ClassTimeout     = "provider_timeout"
	ClassRateLimited = "provider_rate_limited"
	ClassAuth        = "provider_auth"
	Class5xx         = "provider_5xx"
	ClassBadRequest  = "provider_bad_request"
	ClassError       = "provider_error"
)

// OpenAI defaults.
const (
	DefaultOpenAIBaseURL = "https://api.openai.com/v1/"
	DefaultOpenAITimeout = 60 * time.Second
)

// OpenAIConfig configures an OpenAI-compatible chat-completions provider.
type OpenAIConfig struct {
	// Name is the provider (and breaker) name; default "openai".
	Name string
	// BaseURL of the API, e.g. http://localhost:8000/v1/; default
	// DefaultOpenAIBaseURL.
	BaseURL string
	APIKey  string
	Model   string
	// HTTPClient defaults to a fresh client with no timeout of its own (the
	// per-call Timeout bounds each call).
	HTTPClient *http.Client
	// Timeout bounds one model call; default DefaultOpenAITimeout.
	Timeout time.Duration
}

// OpenAI is a Provider over the OpenAI-compatible chat-completions API,
// spoken through the official SDK so that any compatible server works.
type OpenAI struct {
	name    string
	model   string
	timeout time.Duration
	svc     openai.ChatCompletionService
}

// NewOpenAI returns an OpenAI provider.
func NewOpenAI(cfg OpenAIConfig) *OpenAI {
	if cfg.Name == "" {
		cfg.Name = "openai"
	}
	if cfg.BaseURL == "" {
		cfg.BaseURL = DefaultOpenAIBaseURL
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultOpenAITimeout
	}
	opts := []option.RequestOption{
		option.WithBaseURL(cfg.BaseURL),
		option.WithHTTPClient(cfg.HTTPClient),
		// Retries belong to the breaker layer: an SDK retry would hide
		// failures from it and multiply the latency of a failing provider.
		option.WithMaxRetries(0),
	}
	if cfg.APIKey != "" {
		opts = append(opts, option.WithAPIKey(cfg.APIKey))
	}
	// The service is built directly rather than through openai.NewClient,
	// which would also read OPENAI_* environment variables: configuration
	// comes only from cfg (no ambient global state).
	return &OpenAI{
		name:    cfg.Name,
		model:   cfg.Model,
		timeout: cfg.Timeout,
		svc:     openai.NewChatCompletionService(opts...),
	}
}

// Name implements Provider.
func (o *OpenAI) Name() string { return o.name }

// Complete implements Provider: one non-streaming chat completion.
func (o *OpenAI) Complete(ctx context.Context, req Request) (Response, error) {
	names := newToolNames()
	params, err := o.params(req, names)
	if err != nil {
		return Response{}, &Error{Class: ClassBadRequest, Err: err}
	}
	callCtx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	var httpResp *http.Response
	cc, err := o.svc.New(callCtx, params, option.WithResponseInto(&httpResp))
	if err != nil {
		return Response{}, o.classify(ctx, callCtx, httpResp, err)
	}
	return o.response(cc, names)
}

func (o *OpenAI) params(req Request, names *toolNames) (openai.ChatCompletionNewParams, error) {
	p := openai.ChatCompletionNewParams{Model: shared.ChatModel(o.model)}
	for _, t := range req.Tools {
		fn := shared.FunctionDefinitionParam{Name: names.wire(t.Name)}
		if t.Description != "" {
			fn.Description = openai.String(t.Description)
		}
		schema := map[string]any{"type": "object", "properties": map[string]any{}}
		if len(t.InputSchema) > 0 {
			if err := json.Unmarshal(t.InputSchema, &schema); err != nil {
				return p, fmt.Errorf("tools[%s].input_schema: %w", t.Name, err)
			}
		}
		fn.Parameters = shared.FunctionParameters(schema)
		p.Tools = append(p.Tools, openai.ChatCompletionFunctionTool(fn))
	}
	for i, m := range req.Messages {
		switch m.Role {
		case "system":
			p.Messages = append(p.Messages, openai.SystemMessage(m.Content))
		case "user":
			p.Messages = append(p.Messages, openai.UserMessage(m.Content))
		case "assistant":
			a := openai.ChatCompletionAssistantMessageParam{}
			if m.Content != "" {
				a.Content.OfString = openai.String(m.Content)
			}
			for _, tc := range m.ToolCalls {
				args := string(tc.Input)
				if args == "" {
					args = "{}"
				}
				a.ToolCalls = append(a.ToolCalls, openai.ChatCompletionMessageToolCallUnionParam{
					OfFunction: &openai.ChatCompletionMessageFunctionToolCallParam{
						ID:       tc.ID,
						Function: openai.ChatCompletionMessageFunctionToolCallFunctionParam{Name: names.wire(tc.Name), Arguments: args},
					},
				})
			}
			p.Messages = append(p.Messages, openai.ChatCompletionMessageParamUnion{OfAssistant: &a})
		case "tool":
			if m.ToolCallID == "" {
				return p, fmt.Errorf("messages[%d].tool_call_id: required for a tool message", i)
			}
			p.Messages = append(p.Messages, openai.ToolMessage(m.Content, m.ToolCallID))
		default:
			return p, fmt.Errorf("messages[%d].role: %q is not system, user, assistant or tool", i, m.Role)
		}
	}
	if len(p.Messages) == 0 {
		return p, errors.New("messages: at least one message is required")
	}
	return p, nil
}

func (o *OpenAI) response(cc *openai.ChatCompletion, names *toolNames) (Response, error) {
	if cc == nil || len(cc.Choices) == 0 {
		return Response{}, &Error{Class: ClassError, Err: errors.New("openai: response has no choices")}
	}
	msg := cc.Choices[0].Message
	content := msg.Content
	if content == "" {
		content = msg.Refusal
	}
	var resp Response
	for _, tc := range msg.ToolCalls {
		if tc.Type != "" && tc.Type != "function" {
			return Response{}, &Error{Class: ClassError, Err: fmt.Errorf("openai: unsupported tool call type %q", tc.Type)}
		}
		resp.ToolCalls = append(resp.ToolCalls, ToolCall{
			ID:    tc.ID,
			Name:  names.local(tc.Function.Name),
			Input: argumentsJSON(tc.Function.Arguments),
		})
	}
	if len(resp.ToolCalls) > 0 {
		// Text before tool calls is said, not the turn's answer.
		if content != "" {
			resp.Deltas = []string{content}
		}
		return resp, nil
	}
	resp.Answer = content
	return resp, nil
}

// argumentsJSON returns a tool call's arguments as JSON. Models sometimes
// emit arguments that are not JSON; they are passed on as a JSON string so
// that the tool's input validation rejects them and the model sees why,
// instead of the run failing on an unencodable event.
func argumentsJSON(args string) json.RawMessage {
	if strings.TrimSpace(args) == "" {
		return json.RawMessage("{}")
	}
	if json.Valid([]byte(args)) {
		return json.RawMessage(args)
	}
	b, _ := json.Marshal(args)
	return b
}

// classify maps a failed call to a provider error class. A caller's own
// cancellation is returned as is: it is not the provider's failure.
func (o *OpenAI) classify(parent, callCtx context.Context, httpResp *http.Response, err error) error {
	if perr := parent.Err(); perr != nil {
		return fmt.Errorf("openai: %w", perr)
	}
	if errors.Is(callCtx.Err(), context.DeadlineExceeded) {
		return &Error{Class: ClassTimeout, Err: fmt.Errorf("openai: no answer within %s", o.timeout)}
	}
	status := 0
	msg := err.Error()
	var apiErr *openai.Error
	if errors.As(err, &apiErr) {
		status = apiErr.StatusCode
		if apiErr.Message != "" {
			msg = apiErr.Message
		}
	} else if httpResp != nil {
		// An error body that is not the API's JSON error object still has
		// a status worth classifying.
		status = httpResp.StatusCode
	}
	if status != 0 {
		return &Error{Class: statusClass(status), Err: fmt.Errorf("openai: status %d: %s", status, msg)}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &Error{Class: ClassTimeout, Err: fmt.Errorf("openai: %w", err)}
	}
	return &Error{Class: ClassError, Err: fmt.Errorf("openai: %w", err)}
}

func statusClass(status int) string {
	switch {
	case status == http.StatusTooManyRequests:
		return ClassRateLimited
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return ClassAuth
	case status == http.StatusBadRequest:
		return ClassBadRequest
	case status == http.StatusRequestTimeout || status == http.StatusGatewayTimeout:
		return ClassTimeout
	case status >= 500:
		return Class5xx
	default:
		return ClassError
	}
}

// toolNames maps tool names to names the API accepts (^[a-zA-Z0-9_-]{1,64}$)
// and back, per request: built-in names such as http.fetch contain a dot.
type toolNames struct {
	toWire   map[string]string
	fromWire map[string]string
}

func newToolNames() *toolNames {
	return &toolNames{toWire: map[string]string{}, fromWire: map[string]string{}}
}

var wireNameInvalid = regexp.MustCompile(`[^a-zA-Z0-9_-]`)

func (n *toolNames) wire(name string) string {
	if w, ok := n.toWire[name]; ok {
		return w
	}
	base := wireNameInvalid.ReplaceAllString(name, "_")
	if base == "" {
		base = "tool"
	}
	if len(base) > 64 {
		base = base[:64]
	}
	w := base
	for i := 2; ; i++ {
		if _, taken := n.fromWire[w]; !taken {
			break
		}
		suffix := "_" + strconv.Itoa(i)
		w = base[:min(len(base), 64-len(suffix))] + suffix
	}
	n.toWire[name] = w
	n.fromWire[w] = name
	return w
}

// local maps a wire name back; a name the model invented is kept as is and
// fails later as an unknown tool.
func (n *toolNames) local(w string) string {
	if name, ok := n.fromWire[w]; ok {
		return name
	}
	return w
}
