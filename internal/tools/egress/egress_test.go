package egress

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeResolver answers from a table. A host with several answers returns them in turn, one
// per call (the last one repeats), which is how a rebinding DNS server behaves.
type fakeResolver struct {
	mu      sync.Mutex
	answers map[string][][]netip.Addr
	calls   map[string]int
}

func newResolver(table map[string][]string) *fakeResolver {
	r := &fakeResolver{answers: map[string][][]netip.Addr{}, calls: map[string]int{}}
	for host, addrs := range table {
		var set []netip.Addr
		for _, a := range addrs {
			set = append(set, netip.MustParseAddr(a))
		}
		r.answers[host] = append(r.answers[host], set)
	}
	return r
}

// sequence makes host answer first, then second on every later call.
func (r *fakeResolver) sequence(host string, first, second string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answers[host] = [][]netip.Addr{{netip.MustParseAddr(first)}, {netip.MustParseAddr(second)}}
}

func (r *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.calls[host]
	r.calls[host]++
	seq, ok := r.answers[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	if n >= len(seq) {
		n = len(seq) - 1
	}
	return seq[n], nil
}

func (r *fakeResolver) callCount(host string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[host]
}

// recordingDialer records every address it is asked to dial. When redirectTo is set it then
// connects there instead, standing in for "the network routed this IP to that server".
type recordingDialer struct {
	mu         sync.Mutex
	addrs      []string
	redirectTo string
}

func (d *recordingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, addr)
	d.mu.Unlock()
	target := addr
	if d.redirectTo != "" {
		target = d.redirectTo
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, target)
}

func (d *recordingDialer) dialed() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.addrs...)
}

func wantBlocked(t *testing.T, err error, reason string) {
	t.Helper()
	b, ok := IsBlocked(err)
	if !ok {
		t.Fatalf("want BlockedError %s, got %v", reason, err)
	}
	if b.Reason != reason {
		t.Fatalf("reason = %s, want %s (err %v)", b.Reason, reason, err)
	}
	if b.ReasonClass() != "ssrf_block."+reason {
		t.Fatalf("ReasonClass = %s", b.ReasonClass())
	}
}

func TestCheckAddrTable(t *testing.T) {
	tests := []struct {
		addr, reason string
	}{
		{"127.0.0.1", ReasonLoopback},
		{"127.255.255.254", ReasonLoopback},
		{"::1", ReasonLoopback},
		{"::ffff:127.0.0.1", ReasonLoopback},
		{"::127.0.0.1", ReasonLoopback},     // IPv4-compatible
		{"64:ff9b::7f00:1", ReasonLoopback}, // NAT64
		{"2002:7f00:1::1", ReasonLoopback},  // 6to4
		{"10.1.2.3", ReasonPrivate},
		{"172.16.0.1", ReasonPrivate},
		{"172.31.255.255", ReasonPrivate},
		{"192.168.1.1", ReasonPrivate},
		{"fc00::1", ReasonPrivate},
		{"fd12:3456::1", ReasonPrivate},
		{"::ffff:10.0.0.1", ReasonPrivate},
		{"::ffff:192.168.0.1", ReasonPrivate},
		{"::ffff:172.20.0.1", ReasonPrivate},
		{"169.254.1.1", ReasonLinkLocal},
		{"fe80::1", ReasonLinkLocal},
		{"fe80::1%eth0", ReasonLinkLocal},
		{"::ffff:169.254.1.1", ReasonLinkLocal},
		{"100.64.0.1", ReasonCGNAT},
		{"100.127.255.255", ReasonCGNAT},
		{"::ffff:100.64.0.1", ReasonCGNAT},
		{"169.254.169.254", ReasonMetadata},
		{"::ffff:169.254.169.254", ReasonMetadata},
		{"::ffff:a9fe:a9fe", ReasonMetadata}, // same, hex spelling
		{"fd00:ec2::254", ReasonMetadata},
		{"100.100.100.200", ReasonMetadata},
		{"0.0.0.0", ReasonUnspecified},
		{"0.1.2.3", ReasonUnspecified},
		{"::", ReasonUnspecified},
		{"::ffff:0.0.0.0", ReasonUnspecified},
		{"224.0.0.1", ReasonMulticast},
		{"239.255.255.250", ReasonMulticast},
		{"ff02::1", ReasonMulticast},
		{"::ffff:224.0.0.1", ReasonMulticast},
		{"255.255.255.255", ReasonReserved},
		{"240.0.0.1", ReasonReserved},
		// Public addresses pass.
		{"8.8.8.8", ""},
		{"1.1.1.1", ""},
		{"172.32.0.1", ""},
		{"100.128.0.1", ""},
		{"203.0.113.10", ""},
		{"2606:4700:4700::1111", ""},
		{"::ffff:8.8.8.8", ""},
		{"2002:808:808::1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			if got := CheckAddr(netip.MustParseAddr(tt.addr)); got != tt.reason {
				t.Fatalf("CheckAddr(%s) = %q, want %q", tt.addr, got, tt.reason)
			}
		})
	}
}

func TestCheckURLTable(t *testing.T) {
	res := newResolver(map[string][]string{
		"localhost":       {"127.0.0.1"},
		"public.test":     {"203.0.113.10", "2001:db8::1"},
		"mixed.test":      {"203.0.113.10", "10.0.0.1"},
		"mapped.test":     {"::ffff:192.168.1.1"},
		"rebind.test":     {"203.0.113.10"},
		"api.github.com":  {"203.0.113.20"},
		"example.com":     {"203.0.113.30"},
		"a.b.example.com": {"203.0.113.31"},
		"badexample.com":  {"203.0.113.32"},
	})
	open := New(Config{Resolver: res})
	allow := New(Config{Resolver: res, AllowedHosts: []string{"api.github.com", "*.Example.com."}})
	tests := []struct {
		name   string
		c      *Client
		url    string
		reason string
		pinned string
	}{
		{"ftp", open, "ftp://public.test/x", ReasonSchemeNotAllowed, ""},
		{"file", open, "file:///etc/passwd", ReasonSchemeNotAllowed, ""},
		{"gopher", open, "gopher://public.test/", ReasonSchemeNotAllowed, ""},
		{"no host", open, "http:///path", ReasonInvalidURL, ""},
		{"metadata name", open, "http://metadata.google.internal/computeMetadata/v1/", ReasonMetadata, ""},
		{"metadata name trailing dot upper", open, "http://METADATA.google.internal./", ReasonMetadata, ""},
		{"metadata ip", open, "http://169.254.169.254/latest/meta-data", ReasonMetadata, ""},
		{"metadata ipv6", open, "http://[fd00:ec2::254]/", ReasonMetadata, ""},
		{"loopback literal", open, "http://127.0.0.1:8080/", ReasonLoopback, ""},
		{"loopback v6 literal", open, "http://[::1]:8080/", ReasonLoopback, ""},
		{"mapped loopback literal", open, "http://[::ffff:127.0.0.1]/", ReasonLoopback, ""},
		{"localhost name", open, "http://localhost/", ReasonLoopback, ""},
		{"private literal", open, "https://10.0.0.1/", ReasonPrivate, ""},
		{"mapped private via dns", open, "http://mapped.test/", ReasonPrivate, ""},
		{"one bad answer blocks", open, "http://mixed.test/", ReasonPrivate, ""},
		{"cgnat literal", open, "http://100.64.1.1/", ReasonCGNAT, ""},
		{"link local literal", open, "http://[fe80::1]/", ReasonLinkLocal, ""},
		{"unspecified literal", open, "http://0.0.0.0:9000/", ReasonUnspecified, ""},
		{"multicast literal", open, "http://224.0.0.251/", ReasonMulticast, ""},
		{"nxdomain", open, "http://nxdomain.test/", ReasonDNSFailure, ""},
		{"public pins first answer", open, "https://public.test/", "", "203.0.113.10"},
		{"public literal", open, "http://8.8.8.8/", "", "8.8.8.8"},
		{"allowlist exact", allow, "https://api.github.com/repos", "", "203.0.113.20"},
		{"allowlist suffix bare", allow, "https://example.com/", "", "203.0.113.30"},
		{"allowlist suffix sub", allow, "https://a.b.example.com/", "", "203.0.113.31"},
		{"allowlist not suffix", allow, "https://badexample.com/", ReasonHostNotAllowed, ""},
		{"allowlist other", allow, "https://public.test/", ReasonHostNotAllowed, ""},
		{"allowlist still blocks metadata", allow, "http://metadata/", ReasonMetadata, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := url.Parse(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			pinned, err := tt.c.Check(context.Background(), u)
			if tt.reason != "" {
				wantBlocked(t, err, tt.reason)
				return
			}
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if pinned.String() != tt.pinned {
				t.Fatalf("pinned %s, want %s", pinned, tt.pinned)
			}
		})
	}
	// The allowlist is consulted before DNS: a refused host costs no lookup.
	if n := res.callCount("badexample.com"); n != 0 {
		t.Errorf("refused host was resolved %d times", n)
	}
}

func TestBlockedErrorRedactsURL(t *testing.T) {
	c := New(Config{})
	_, err := c.Get(context.Background(), "http://user:secret@127.0.0.1/p?token=abc#frag")
	b, ok := IsBlocked(err)
	if !ok {
		t.Fatalf("want block, got %v", err)
	}
	if strings.Contains(b.URL, "secret") || strings.Contains(b.URL, "token") || strings.Contains(err.Error(), "abc") {
		t.Fatalf("URL not redacted: %q / %v", b.URL, err)
	}
}

type hitCounter struct{ n atomic.Int64 }

func (h *hitCounter) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.n.Add(1)
		next.ServeHTTP(w, r)
	})
}

func TestDefaultConfigBlocksLoopbackServer(t *testing.T) {
	var hits hitCounter
	srv := httptest.NewServer(hits.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})))
	defer srv.Close()
	_, err := New(Config{}).Get(context.Background(), srv.URL)
	wantBlocked(t, err, ReasonLoopback)
	if hits.n.Load() != 0 {
		t.Fatalf("server was reached %d times", hits.n.Load())
	}
}

func TestFetchThroughPinnedDial(t *testing.T) {
	var gotHost string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotHost = r.Host
		_, _ = io.WriteString(w, "hello")
	}))
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	res := newResolver(map[string][]string{"svc.test": {"127.0.0.1"}})
	c := New(Config{Resolver: res, AllowLoopbackForTests: true})
	resp, err := c.Get(context.Background(), fmt.Sprintf("http://svc.test:%d/x", port))
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(body) != "hello" || resp.StatusCode != 200 {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
	if gotHost != fmt.Sprintf("svc.test:%d", port) {
		t.Fatalf("Host header %q, want the name, not the pinned IP", gotHost)
	}
	// Loopback allowance does not open anything else.
	_, err = c.Get(context.Background(), "http://10.0.0.1/")
	wantBlocked(t, err, ReasonPrivate)
}

// TestRebindingDialUsesCheckedAddress: the resolver answers a public address first and
// 127.0.0.1 afterwards. The dialer must receive the checked first answer as an IP literal.
// A client that handed the name to the transport (which resolves again) would dial
// "rebind.test:port" or 127.0.0.1, and the resolver would be called twice.
func TestRebindingDialUsesCheckedAddress(t *testing.T) {
	var gotHost string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotHost = r.Host
		_, _ = io.WriteString(w, "ok")
	}))
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	res := newResolver(nil)
	res.sequence("rebind.test", "203.0.113.10", "127.0.0.1")
	dialer := &recordingDialer{redirectTo: srv.Listener.Addr().String()}
	c := New(Config{Resolver: res, Dialer: dialer}) // loopback NOT allowed
	resp, err := c.Get(context.Background(), fmt.Sprintf("http://rebind.test:%d/", port))
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	_ = resp.Body.Close()
	want := fmt.Sprintf("203.0.113.10:%d", port)
	if d := dialer.dialed(); len(d) != 1 || d[0] != want {
		t.Fatalf("dialed %v, want exactly [%s]", d, want)
	}
	if n := res.callCount("rebind.test"); n != 1 {
		t.Fatalf("resolver called %d times, want 1", n)
	}
	if gotHost != fmt.Sprintf("rebind.test:%d", port) {
		t.Fatalf("Host header %q", gotHost)
	}
}

// TestRebindingRealDialerNeverReachesLoopback uses the real dialer: the checked answer is an
// unroutable documentation address, the second answer is the loopback test server. Only a
// client that resolves again at dial time could reach the server.
func TestRebindingRealDialerNeverReachesLoopback(t *testing.T) {
	var hits hitCounter
	srv := httptest.NewServer(hits.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})))
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	res := newResolver(nil)
	res.sequence("rebind.test", "203.0.113.10", "127.0.0.1")
	c := New(Config{Resolver: res, ConnectTimeout: 300 * time.Millisecond, Timeout: 2 * time.Second})
	resp, err := c.Get(context.Background(), fmt.Sprintf("http://rebind.test:%d/", port))
	if err == nil {
		_ = resp.Body.Close()
		t.Fatal("request to an unroutable pinned address succeeded")
	}
	if hits.n.Load() != 0 {
		t.Fatalf("loopback server reached %d times: dial was not pinned", hits.n.Load())
	}
	if n := res.callCount("rebind.test"); n != 1 {
		t.Fatalf("resolver called %d times, want 1", n)
	}
}

func TestRebindingFirstAnswerBlocked(t *testing.T) {
	res := newResolver(nil)
	res.sequence("rebind.test", "127.0.0.1", "203.0.113.10")
	dialer := &recordingDialer{}
	_, err := New(Config{Resolver: res, Dialer: dialer}).Get(context.Background(), "http://rebind.test/")
	wantBlocked(t, err, ReasonLoopback)
	if d := dialer.dialed(); len(d) != 0 {
		t.Fatalf("dialed %v after a block", d)
	}
}

func TestTLSVerifiesHostNameNotPinnedIP(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "secure")
	}))
	defer srv.Close()
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate()) // valid for example.com, 127.0.0.1 and ::1
	tlsCfg := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	tlsCfg.RootCAs = pool
	tlsCfg.ServerName = "example.com" // must be ignored
	res := newResolver(map[string][]string{"example.com": {"127.0.0.1"}, "other.test": {"127.0.0.1"}})
	c := New(Config{Resolver: res, AllowLoopbackForTests: true, TLSConfig: tlsCfg})

	resp, err := c.Get(context.Background(), fmt.Sprintf("https://example.com:%d/", port))
	if err != nil {
		t.Fatalf("Get example.com: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(body) != "secure" {
		t.Fatalf("body %q", body)
	}
	// The certificate also covers 127.0.0.1: had the client verified the pinned IP (or the
	// configured ServerName) this would succeed. It must fail on the name.
	_, err = c.Get(context.Background(), fmt.Sprintf("https://other.test:%d/", port))
	var certErr *tls.CertificateVerificationError
	if !errors.As(err, &certErr) {
		t.Fatalf("want certificate verification error for other.test, got %v", err)
	}
}

func redirectServer(t *testing.T, hits *hitCounter, routes map[string]string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(hits.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/chain" || strings.HasPrefix(r.URL.Path, "/chain/") {
			// /chain/N redirects to /chain/N-1; /chain/0 answers.
			var n int
			_, _ = fmt.Sscanf(strings.TrimPrefix(r.URL.Path, "/chain/"), "%d", &n)
			if n > 0 {
				http.Redirect(w, r, fmt.Sprintf("/chain/%d", n-1), http.StatusFound)
				return
			}
			_, _ = io.WriteString(w, "end")
			return
		}
		if loc, ok := routes[r.URL.Path]; ok {
			http.Redirect(w, r, loc, http.StatusFound)
			return
		}
		w.Header().Set("X-Method", r.Method)
		w.Header().Set("X-Auth", r.Header.Get("Authorization"))
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(b)
	})))
	t.Cleanup(srv.Close)
	return srv
}

func TestRedirectLimit(t *testing.T) {
	var hits hitCounter
	srv := redirectServer(t, &hits, nil)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	res := newResolver(map[string][]string{"svc.test": {"127.0.0.1"}})
	c := New(Config{Resolver: res, AllowLoopbackForTests: true})
	base := fmt.Sprintf("http://svc.test:%d", port)

	resp, err := c.Get(context.Background(), base+"/chain/2")
	if err != nil {
		t.Fatalf("2 redirects must be followed: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(body) != "end" {
		t.Fatalf("body %q", body)
	}
	if n := res.callCount("svc.test"); n != 3 {
		t.Fatalf("each hop is checked: resolver calls %d, want 3", n)
	}

	hits.n.Store(0)
	_, err = c.Get(context.Background(), base+"/chain/3")
	wantBlocked(t, err, ReasonTooManyRedirects)
	if hits.n.Load() != 3 {
		t.Fatalf("server hits %d, want 3 (the 4th hop must not be sent)", hits.n.Load())
	}

	none := New(Config{Resolver: res, AllowLoopbackForTests: true, MaxRedirects: -1})
	_, err = none.Get(context.Background(), base+"/chain/1")
	wantBlocked(t, err, ReasonTooManyRedirects)
}

func TestRedirectTargetsAreChecked(t *testing.T) {
	var hits hitCounter
	srv := redirectServer(t, &hits, map[string]string{
		"/to-private":  "http://10.0.0.5/admin",
		"/to-metadata": "http://169.254.169.254/latest/meta-data/iam",
		"/to-name":     "http://internal.test/",
		"/to-ftp":      "ftp://public.test/file",
		"/to-mapped":   "http://[::ffff:192.168.0.1]/",
	})
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	res := newResolver(map[string][]string{"svc.test": {"127.0.0.1"}, "internal.test": {"192.168.1.10"}})
	dialer := &recordingDialer{}
	c := New(Config{Resolver: res, Dialer: dialer, AllowLoopbackForTests: true})
	for path, reason := range map[string]string{
		"/to-private":  ReasonPrivate,
		"/to-metadata": ReasonMetadata,
		"/to-name":     ReasonPrivate,
		"/to-ftp":      ReasonSchemeNotAllowed,
		"/to-mapped":   ReasonPrivate,
	} {
		t.Run(path, func(t *testing.T) {
			_, err := c.Get(context.Background(), fmt.Sprintf("http://svc.test:%d%s", port, path))
			wantBlocked(t, err, reason)
		})
	}
	for _, d := range dialer.dialed() {
		if !strings.HasPrefix(d, "127.0.0.1:") {
			t.Fatalf("dialed blocked target %s", d)
		}
	}
}

func TestRedirectMethodsAndCredentials(t *testing.T) {
	var port int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/307":
			http.Redirect(w, r, "/echo", http.StatusTemporaryRedirect)
		case "/303":
			http.Redirect(w, r, "/echo", http.StatusSeeOther)
		case "/cross":
			http.Redirect(w, r, fmt.Sprintf("http://other.test:%d/echo", port), http.StatusTemporaryRedirect)
		default:
			w.Header().Set("X-Method", r.Method)
			w.Header().Set("X-Auth", r.Header.Get("Authorization"))
			b, _ := io.ReadAll(r.Body)
			_, _ = w.Write(b)
		}
	}))
	defer srv.Close()
	port = srv.Listener.Addr().(*net.TCPAddr).Port
	res := newResolver(map[string][]string{"svc.test": {"127.0.0.1"}, "other.test": {"127.0.0.1"}})
	c := New(Config{Resolver: res, AllowLoopbackForTests: true})
	base := fmt.Sprintf("http://svc.test:%d", port)
	do := func(path string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, base+path, strings.NewReader("payload"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer s3cret")
		resp, err := c.Do(context.Background(), req)
		if err != nil {
			t.Fatalf("Do %s: %v", path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		return resp, string(b)
	}
	resp, body := do("/307")
	if resp.Header.Get("X-Method") != "POST" || body != "payload" || resp.Header.Get("X-Auth") != "Bearer s3cret" {
		t.Fatalf("307: method %s body %q auth %q", resp.Header.Get("X-Method"), body, resp.Header.Get("X-Auth"))
	}
	resp, body = do("/303")
	if resp.Header.Get("X-Method") != "GET" || body != "" {
		t.Fatalf("303: method %s body %q", resp.Header.Get("X-Method"), body)
	}
	resp, body = do("/cross")
	if resp.Header.Get("X-Auth") != "" || body != "payload" {
		t.Fatalf("cross-host: auth %q leaked or body %q lost", resp.Header.Get("X-Auth"), body)
	}
}

func TestTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	res := newResolver(map[string][]string{"slow.test": {"127.0.0.1"}})
	c := New(Config{Resolver: res, AllowLoopbackForTests: true, Timeout: 100 * time.Millisecond})
	_, err := c.Get(context.Background(), fmt.Sprintf("http://slow.test:%d/", port))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want deadline exceeded, got %v", err)
	}
	if _, blocked := IsBlocked(err); blocked {
		t.Fatal("a timeout is not a block")
	}
}

func TestCanceledContextIsNotDNSFailure(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c := New(Config{Resolver: ctxResolver{}})
	_, err := c.Get(ctx, "http://any.test/")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
}

type ctxResolver struct{}

func (ctxResolver) LookupNetIP(ctx context.Context, _, _ string) ([]netip.Addr, error) {
	return nil, ctx.Err()
}

func TestDefaultDialerControlRefusesBlockedAddress(t *testing.T) {
	c := New(Config{})
	err := c.controlDial("tcp", "10.0.0.1:80", nil)
	wantBlocked(t, err, ReasonPrivate)
	if err := c.controlDial("tcp", "8.8.8.8:443", nil); err != nil {
		t.Fatalf("public address refused: %v", err)
	}
}

// Every reason a rule or check can produce must be listed by Reasons.
func TestReasonsCoverRules(t *testing.T) {
	listed := map[string]bool{}
	for _, r := range Reasons() {
		listed[r] = true
	}
	for _, rule := range blockRules() {
		if !listed[rule.reason] {
			t.Errorf("rule reason %s missing from Reasons()", rule.reason)
		}
	}
	for _, r := range []string{ReasonSchemeNotAllowed, ReasonHostNotAllowed, ReasonTooManyRedirects, ReasonDNSFailure, ReasonInvalidURL} {
		if !listed[r] {
			t.Errorf("%s missing from Reasons()", r)
		}
	}
}
