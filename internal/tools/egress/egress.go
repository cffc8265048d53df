// Package egress is the guarded outbound HTTP client used by http.fetch and manifest tools.
//
// Every hop (the first request and each redirect) is checked before any byte leaves:
// scheme, metadata host names, the optional host allowlist, then the host is resolved ONCE
// and every answer is checked against the blocked ranges. The connection is then dialled to
// the checked address itself; the transport never sees a name it could resolve again, so a
// DNS answer that changes between check and dial (rebinding) cannot redirect the request.
// TLS still verifies the certificate against the URL's host name.
//
// The original runtime resolved and checked but then let the transport resolve again; this
// package closes that gap.
package egress

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"go.opentelemetry.io/otel/propagation"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Defaults follow the original guard (10 s request and connect timeouts, 2 redirects).
const (
	DefaultTimeout        = 10 * time.Second
	DefaultConnectTimeout = 10 * time.Second
	DefaultMaxRedirects   = 2
)

// Resolver looks up the addresses of a host; *net.Resolver satisfies it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Dialer opens connections; *net.Dialer satisfies it. The address it receives is always an
// IP literal with a port, never a host name.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config configures a Client. The zero value is a safe default.
type Config struct {
	// AllowedHosts, when non-empty, limits requests to these hosts. Entries are exact host
	// names (or IP literals) or "*.suffix", which matches the suffix and any subdomain.
	AllowedHosts []string
	// MaxRedirects caps followed redirects; 0 means DefaultMaxRedirects, negative means none.
	MaxRedirects int
	// Timeout bounds one Do call including redirects and reading the body; 0 means DefaultTimeout.
	Timeout time.Duration
	// ConnectTimeout bounds each dial of the default dialer; 0 means DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// Resolver defaults to a fresh *net.Resolver.
	Resolver Resolver
	// Dialer defaults to a *net.Dialer that also refuses blocked addresses at connect time.
	Dialer Dialer
	// TLSConfig is cloned per request (for example to trust a test CA). Its ServerName is
	// ignored: the name verified is always the URL's host.
	TLSConfig *tls.Config
	// AllowLoopbackForTests lets tests reach httptest servers on 127.0.0.1/::1. Every other
	// block stays in force. Never set it in production configuration.
	AllowLoopbackForTests bool
}

// BlockedError is returned when a request is refused by the guard. Callers report it as a
// failed tool result with reason ReasonClass().
type BlockedError struct {
	Reason string // one of the Reason* constants
	Host   string // host of the refused hop
	URL    string // refused URL without userinfo, query or fragment
}

func (e *BlockedError) Error() string {
	return fmt.Sprintf("egress blocked (%s): %s", e.Reason, e.URL)
}

// ReasonClass is the reason as reported in tool results and parity metrics.
func (e *BlockedError) ReasonClass() string { return "ssrf_block." + e.Reason }

// Client is the guarded HTTP client. It is safe for concurrent use.
type Client struct {
	cfg      Config
	resolver Resolver
	dialer   Dialer
	allowed  []string
}

// New builds a Client, filling defaults.
func New(cfg Config) *Client {
	if cfg.MaxRedirects == 0 {
		cfg.MaxRedirects = DefaultMaxRedirects
	}
	if cfg.MaxRedirects < 0 {
		cfg.MaxRedirects = 0
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	c := &Client{cfg: cfg, resolver: cfg.Resolver, dialer: cfg.Dialer}
	if c.resolver == nil {
		c.resolver = &net.Resolver{}
	}
	if c.dialer == nil {
		c.dialer = &net.Dialer{Timeout: cfg.ConnectTimeout, Control: c.controlDial}
	}
	for _, h := range cfg.AllowedHosts {
		if h = normalizeHost(h); h != "" {
			c.allowed = append(c.allowed, h)
		}
	}
	return c
}

// controlDial re-checks the address the kernel is about to connect to. With the pinned dial
// it never sees a blocked address; it is here so a future change that lets a name through
// still cannot reach an internal address.
func (c *Client) controlDial(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("egress: unexpected dial address %q: %w", address, err)
	}
	if reason := c.addrReason(ap.Addr()); reason != "" {
		return &BlockedError{Reason: reason, Host: ap.Addr().String(), URL: address}
	}
	return nil
}

func (c *Client) addrReason(a netip.Addr) string {
	reason := CheckAddr(a)
	if reason == ReasonLoopback && c.cfg.AllowLoopbackForTests {
		return ""
	}
	return reason
}

func normalizeHost(h string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".")
}

func (c *Client) hostAllowed(host string) bool {
	if len(c.allowed) == 0 {
		return true
	}
	for _, entry := range c.allowed {
		if suffix, ok := strings.CutPrefix(entry, "*."); ok {
			if host == suffix || strings.HasSuffix(host, "."+suffix) {
				return true
			}
			continue
		}
		if host == entry {
			return true
		}
	}
	return false
}

func redactURL(u *url.URL) string {
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}
	return r.String()
}

// Check validates one URL and returns the single address the request must be dialled to.
// It resolves the host exactly once.
func (c *Client) Check(ctx context.Context, u *url.URL) (netip.Addr, error) {
	block := func(reason string) (netip.Addr, error) {
		return netip.Addr{}, &BlockedError{Reason: reason, Host: u.Hostname(), URL: redactURL(u)}
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
	default:
		return block(ReasonSchemeNotAllowed)
	}
	host := normalizeHost(u.Hostname())
	if host == "" {
		return block(ReasonInvalidURL)
	}
	if metadataHost(host) {
		return block(ReasonMetadata)
	}
	// The allowlist is checked before resolving so a refused host costs no DNS query.
	if !c.hostAllowed(host) {
		return block(ReasonHostNotAllowed)
	}
	var addrs []netip.Addr
	if lit, err := netip.ParseAddr(host); err == nil {
		if lit.Zone() != "" {
			return block(ReasonInvalidURL)
		}
		addrs = []netip.Addr{lit}
	} else {
		found, err := c.resolver.LookupNetIP(ctx, "ip", host)
		if ctxErr := ctx.Err(); err != nil && ctxErr != nil {
			// A timeout or cancellation is not evidence about the host; do not call it a DNS failure.
			return netip.Addr{}, fmt.Errorf("egress: resolve %s: %w", host, ctxErr)
		}
		if err != nil || len(found) == 0 {
			return block(ReasonDNSFailure)
		}
		addrs = found
	}
	// Every answer must pass: an attacker controlling DNS could otherwise mix a public
	// address with an internal one and win whichever the dialer would have picked.
	for _, a := range addrs {
		if reason := c.addrReason(a); reason != "" {
			return block(reason)
		}
	}
	return addrs[0].Unmap(), nil
}

// Get is a convenience for a guarded GET.
func (c *Client) Get(ctx context.Context, rawURL string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, &BlockedError{Reason: ReasonInvalidURL, URL: "(unparseable)"}
	}
	return c.Do(ctx, req)
}

// Do sends req through the guard, following at most MaxRedirects redirects, each checked
// like the first hop. The returned body must be closed; closing it releases the timeout.
func (c *Client) Do(ctx context.Context, req *http.Request) (*http.Response, error) {
	if req == nil || req.URL == nil {
		return nil, &BlockedError{Reason: ReasonInvalidURL, URL: "(missing)"}
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	cur := req.Clone(ctx)
	// The tool call's trace continues at the endpoint (W3C trace context).
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(cur.Header))
	for hop := 0; ; hop++ {
		pinned, err := c.Check(ctx, cur.URL)
		if err != nil {
			cancel()
			return nil, err
		}
		resp, tr, err := c.roundTrip(cur, pinned)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("egress: request to %s: %w", redactURL(cur.URL), err)
		}
		next, follow, err := c.redirectRequest(ctx, cur, resp)
		if err != nil || !follow {
			if err != nil {
				closeQuietly(resp.Body)
				tr.CloseIdleConnections()
				cancel()
				return nil, err
			}
			resp.Body = &releaseBody{ReadCloser: resp.Body, release: func() { tr.CloseIdleConnections(); cancel() }}
			return resp, nil
		}
		closeQuietly(resp.Body)
		tr.CloseIdleConnections()
		if hop >= c.cfg.MaxRedirects {
			cancel()
			return nil, &BlockedError{Reason: ReasonTooManyRedirects, Host: next.URL.Hostname(), URL: redactURL(next.URL)}
		}
		cur = next
	}
}

// roundTrip sends one hop over a transport whose only way to reach the network is a dial to
// the pinned address. Keep-alives are off: a pooled connection would be keyed by host name
// and could outlive the pin.
func (c *Client) roundTrip(req *http.Request, pinned netip.Addr) (*http.Response, *http.Transport, error) {
	var tlsCfg *tls.Config
	if c.cfg.TLSConfig != nil {
		tlsCfg = c.cfg.TLSConfig.Clone()
		tlsCfg.ServerName = "" // the transport then verifies against the URL host
	}
	tr := &http.Transport{
		Proxy: nil, // a proxy would resolve the name itself and bypass the pin
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, fmt.Errorf("egress: dial address %q: %w", addr, err)
			}
			return c.dialer.DialContext(ctx, network, net.JoinHostPort(pinned.String(), port))
		},
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: c.cfg.ConnectTimeout,
		DisableKeepAlives:   true,
		ForceAttemptHTTP2:   true,
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		tr.CloseIdleConnections()
		return nil, nil, err
	}
	return resp, tr, nil
}

func isRedirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// redirectRequest builds the next hop, following net/http's method rules: 301/302/303 turn
// a non-GET/HEAD into a GET without body, 307/308 keep method and body (when replayable).
// follow is false when the response should be returned to the caller as is.
func (c *Client) redirectRequest(ctx context.Context, cur *http.Request, resp *http.Response) (*http.Request, bool, error) {
	if !isRedirect(resp.StatusCode) {
		return nil, false, nil
	}
	loc := resp.Header.Get("Location")
	if loc == "" {
		return nil, false, nil
	}
	target, err := cur.URL.Parse(loc)
	if err != nil {
		return nil, false, &BlockedError{Reason: ReasonInvalidURL, Host: cur.URL.Hostname(), URL: redactURL(cur.URL)}
	}
	method := cur.Method
	var body io.ReadCloser
	var getBody func() (io.ReadCloser, error)
	switch resp.StatusCode {
	case http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		if cur.Body != nil && cur.Body != http.NoBody {
			if cur.GetBody == nil {
				return nil, false, nil // body cannot be replayed: hand the redirect back
			}
			if body, err = cur.GetBody(); err != nil {
				return nil, false, fmt.Errorf("egress: replay body for redirect: %w", err)
			}
			getBody = cur.GetBody
		}
	default:
		if method != http.MethodGet && method != http.MethodHead {
			method = http.MethodGet
		}
	}
	next, err := http.NewRequestWithContext(ctx, method, target.String(), body)
	if err != nil {
		return nil, false, &BlockedError{Reason: ReasonInvalidURL, Host: target.Hostname(), URL: redactURL(target)}
	}
	next.GetBody = getBody
	if getBody != nil {
		next.ContentLength = cur.ContentLength
	}
	sameHost := strings.EqualFold(target.Hostname(), cur.URL.Hostname())
	for k, v := range cur.Header {
		switch http.CanonicalHeaderKey(k) {
		case "Authorization", "Proxy-Authorization", "Cookie", "Www-Authenticate":
			if !sameHost {
				continue // credentials never follow a redirect to another host
			}
		case "Content-Length", "Content-Type":
			if body == nil {
				continue
			}
		}
		next.Header[k] = append([]string(nil), v...)
	}
	return next, true, nil
}

type releaseBody struct {
	io.ReadCloser
	release func()
}

func (b *releaseBody) Close() error {
	err := b.ReadCloser.Close()
	b.release()
	return err
}

func closeQuietly(rc io.ReadCloser) {
	// Drain a little so the server sees a clean close; the connection is not reused anyway.
	_, _ = io.CopyN(io.Discard, rc, 4<<10)
	_ = rc.Close()
}

// IsBlocked returns the BlockedError inside err, if any.
func IsBlocked(err error) (*BlockedError, bool) {
	var b *BlockedError
	if errors.As(err, &b) {
		return b, true
	}
	return nil, false
}
