package sync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/oaruntime/oaruntime/internal/httpapi"
	"github.com/oaruntime/oaruntime/internal/notify"
	"github.com/oaruntime/oaruntime/internal/projection"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/store/postgres"
	"github.com/oaruntime/oaruntime/internal/store/sqlite"
	"github.com/oaruntime/oaruntime/internal/sync/token"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// testStore is what the harness needs of a driver.
type testStore interface {
	store.Store
	store.ProjectionStore
	store.SyncStore
}

const (
	testKID    = "k1"
	testSecret = "0123456789abcdef0123456789abcdef-sync-tests"
	userA      = "user:alice"
	userB      = "user:bob"
)

// clock is a settable store clock (SQLite only): it lets a test write
// rows "hours ago" without sleeping.
type clock struct {
	mu  gosync.Mutex
	off time.Duration
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off += d
}

func openSQLite(t *testing.T, c *clock) testStore {
	t.Helper()
	opts := []sqlite.Option{sqlite.WithMigrate(), sqlite.WithSynchronous("NORMAL")}
	if c != nil {
		opts = append(opts, sqlite.WithClock(c.now))
	}
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "runtime.db"), opts...)
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func openPostgres(t *testing.T, dbURL string) testStore {
	t.Helper()
	ctx := context.Background()
	schema := fmt.Sprintf("oasync_%d_%06x", time.Now().UnixNano()%1e9, rand.N(1<<24))
	s, err := postgres.Open(ctx, dbURL, postgres.WithSchema(schema), postgres.WithMigrate())
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	t.Cleanup(func() {
		_ = s.Close()
		conn, err := pgx.Connect(ctx, strings.Split(dbURL, "?schema=")[0])
		if err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return s
}

type driver struct {
	name string
	open func(t *testing.T) testStore
}

// drivers returns SQLite always and PostgreSQL when OA_TEST_DATABASE_URL is
// set; in CI an unset URL is a failure, locally a loud skip of that half.
func drivers(t *testing.T) []driver {
	ds := []driver{{name: "sqlite", open: func(t *testing.T) testStore { return openSQLite(t, nil) }}}
	switch u := os.Getenv("OA_TEST_DATABASE_URL"); {
	case u != "":
		ds = append(ds, driver{name: "postgres", open: func(t *testing.T) testStore { return openPostgres(t, u) }})
	case os.Getenv("CI") != "":
		t.Fatal("OA_TEST_DATABASE_URL is unset but CI is set: sync delivery tests must run on PostgreSQL too")
	default:
		t.Log("SKIPPING the PostgreSQL half of the sync delivery tests: set OA_TEST_DATABASE_URL=postgres://... to run it")
	}
	return ds
}

func forEachDriver(t *testing.T, fn func(t *testing.T, st testStore)) {
	for _, d := range drivers(t) {
		t.Run(d.name, func(t *testing.T) { fn(t, d.open(t)) })
	}
}

// env is a running delivery stack: store, hub, projector, service and an
// HTTP server with the real API middleware.
type env struct {
	t    *testing.T
	st   testStore
	hub  *notify.Hub
	svc  *Service
	proj *projection.Projector
	srv  *httptest.Server
	reg  *prometheus.Registry
	rev  *token.MemoryRevocations
	kr   *token.Keyring
	mint *token.Minter
}

type envOpt func(*Config)

func newEnv(t *testing.T, st testStore, opts ...envOpt) *env {
	t.Helper()
	kr, err := token.NewKeyring(token.KeyConfig{KeyID: testKID, SigningKey: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := telemetry.NewMetrics(reg, telemetry.BuildInfo{Version: "test", Revision: "test", SchemaVersion: "40"})
	rev := token.NewMemoryRevocations()
	v := token.NewVerifier(token.VerifierConfig{Keyring: kr, Revocations: rev})
	hub := notify.NewHub()
	cfg := Config{PollInterval: 200 * time.Millisecond}
	for _, o := range opts {
		o(&cfg)
	}
	svc := New(st, v, hub, m, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	hubDone := make(chan struct{})
	go func() { defer close(hubDone); _ = hub.Run(ctx, st) }()
	proj := projection.New(st, svc.WakeOnWrite(projection.BuiltinSink{Store: st}), hub, nil,
		projection.Config{PollInterval: 50 * time.Millisecond, Serving: true})
	if err := proj.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	api := httpapi.New(httpapi.Deps{Store: st, Metrics: m, Routes: svc.Routes()})
	srv := httptest.NewServer(api)
	e := &env{t: t, st: st, hub: hub, svc: svc, proj: proj, srv: srv, reg: reg, rev: rev, kr: kr,
		mint: token.NewMinter(token.MinterConfig{Keyring: kr})}
	t.Cleanup(func() {
		svc.Stop()
		srv.Close()
		proj.Stop()
		cancel()
		<-hubDone
	})
	return e
}

func withConfig(f func(*Config)) envOpt { return f }

// token mints a real token for sub with scopes (nil: all topics).
func (e *env) token(sub string, scopes ...string) string {
	e.t.Helper()
	if scopes == nil {
		scopes = token.Topics()
	}
	m, err := e.mint.Mint(context.Background(), token.MintRequest{Subject: sub, Scopes: scopes})
	if err != nil {
		e.t.Fatalf("mint: %v", err)
	}
	return m.Token
}

// handToken signs a token with the given times (the minter refuses short
// or past lifetimes, which the expiry tests need).
func (e *env) handToken(sub string, iat, exp time.Time) (raw, jti string) {
	e.t.Helper()
	jti = fmt.Sprintf("%016x", rand.Uint64())
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"iss": token.DefaultIssuer, "aud": []string{token.DefaultAudience}, "sub": sub,
		"iat": iat.Unix(), "nbf": iat.Unix(), "exp": exp.Unix(), "jti": jti,
		"oa_org_id": sub, "oa_sync_scopes": token.Topics(), "oa_claims_version": token.ClaimsVersion,
	})
	tok.Header["kid"] = testKID
	s, err := tok.SignedString([]byte(testSecret))
	if err != nil {
		e.t.Fatal(err)
	}
	return s, jti
}

func (e *env) wsURL(query string) string {
	u := "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/sync/v1"
	if query != "" {
		u += "?" + query
	}
	return u
}

// dial opens a socket with the token in the Authorization header.
func (e *env) dial(tok string) *client {
	e.t.Helper()
	c, resp, err := e.tryDial(tok)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		e.t.Fatalf("dial: %v (HTTP %d)", err, status)
	}
	return c
}

func (e *env) tryDial(tok string) (*client, *http.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h := http.Header{}
	if tok != "" {
		h.Set("Authorization", "Bearer "+tok)
	}
	conn, resp, err := websocket.Dial(ctx, e.wsURL(""), &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		return nil, resp, err
	}
	conn.SetReadLimit(16 << 20)
	c := &client{t: e.t, conn: conn}
	e.t.Cleanup(func() { _ = conn.CloseNow() })
	return c, resp, nil
}

// serverMsg is any server message.
type serverMsg struct {
	Type               string           `json:"type"`
	Updates            []Update         `json:"updates"`
	HeadWatermarks     map[string]int64 `json:"head_watermarks"`
	ResumeAfter        map[string]int64 `json:"resume_after"`
	ReplayComplete     bool             `json:"replay_complete"`
	Code               string           `json:"code"`
	Message            string           `json:"message"`
	FullResyncRequired bool             `json:"full_resync_required"`
	StaleTopics        []StaleTopic     `json:"stale_topics"`
	ForbiddenTopics    []string         `json:"forbidden_topics"`
	Topics             []string         `json:"topics"`
}

type client struct {
	t    *testing.T
	conn *websocket.Conn
}

func (c *client) sendRaw(s string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		c.t.Fatalf("write %s: %v", s, err)
	}
}

func (c *client) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(string(b))
}

func (c *client) subscribe(resume map[string]int64, topics ...string) {
	c.t.Helper()
	c.send(ClientMessage{Type: TypeSubscribe, Topics: topics, ResumeAfter: resume})
}

// read returns the next message, failing after d.
func (c *client) read(d time.Duration) serverMsg {
	c.t.Helper()
	m, err := c.tryRead(d)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

func (c *client) tryRead(d time.Duration) (serverMsg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	typ, data, err := c.conn.Read(ctx)
	if err != nil {
		return serverMsg{}, err
	}
	if typ != websocket.MessageText {
		return serverMsg{}, fmt.Errorf("message type %v, want text", typ)
	}
	var m serverMsg
	if err := json.Unmarshal(data, &m); err != nil {
		return serverMsg{}, fmt.Errorf("decode %s: %w", data, err)
	}
	return m, nil
}

// next skips heartbeats and returns the next message of another type.
func (c *client) next() serverMsg {
	c.t.Helper()
	for {
		m := c.read(15 * time.Second)
		if m.Type != TypeHeartbeat {
			return m
		}
	}
}

// replay reads batches until one has replay_complete.
func (c *client) replay() []serverMsg {
	c.t.Helper()
	var out []serverMsg
	for {
		m := c.next()
		if m.Type != TypeUpdateBatch {
			c.t.Fatalf("during replay got %+v, want update_batch", m)
		}
		out = append(out, m)
		if m.ReplayComplete {
			return out
		}
	}
}

// closeStatus reads until the socket closes and returns its close error.
func (c *client) closeStatus(d time.Duration) (websocket.CloseError, []serverMsg) {
	c.t.Helper()
	var msgs []serverMsg
	deadline := time.Now().Add(d)
	for {
		m, err := c.tryRead(time.Until(deadline))
		if err == nil {
			msgs = append(msgs, m)
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			c.t.Fatalf("socket ended with %v, want a close frame (messages %+v)", err, msgs)
		}
		return ce, msgs
	}
}

func updatesOf(batches []serverMsg) []Update {
	var out []Update
	for _, b := range batches {
		out = append(out, b.Updates...)
	}
	return out
}

// createRuns creates n runs of owner named prefix-0.. and waits for the
// projector to write their summaries.
func (e *env) createRuns(owner, prefix string, n int) []string {
	e.t.Helper()
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("%s-%04d", prefix, i)
		if _, _, err := e.st.CreateRun(context.Background(), store.CreateRunInput{RunID: ids[i], ThreadID: "t", OwnerSub: owner}); err != nil {
			e.t.Fatalf("create run: %v", err)
		}
	}
	e.waitProjected(ids...)
	return ids
}

// appendEvent appends a run.started-style event and waits for its summary.
func (e *env) appendEvent(runID, eventType string) store.Event {
	e.t.Helper()
	ev, _, err := e.st.AppendEvent(context.Background(), store.AppendInput{RunID: runID, EventType: eventType, Payload: json.RawMessage(`{}`)})
	if err != nil {
		e.t.Fatalf("append %s to %s: %v", eventType, runID, err)
	}
	return ev
}

// waitProjected waits until each run's checkpoint matches its log.
func (e *env) waitProjected(ids ...string) {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for _, id := range ids {
		for {
			run, err := e.st.GetRun(context.Background(), id)
			if err != nil {
				e.t.Fatal(err)
			}
			cp, err := e.st.GetCheckpoint(context.Background(), store.ProjectionRun, id)
			if err == nil && cp.LastSeq == run.LatestSeq {
				break
			}
			if time.Now().After(deadline) {
				e.t.Fatalf("run %s not projected in time (checkpoint %+v, err %v, latest %d)", id, cp, err, run.LatestSeq)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func (e *env) head(topic string) int64 {
	e.t.Helper()
	b, err := e.st.StreamBounds(context.Background(), []string{topic})
	if err != nil {
		e.t.Fatal(err)
	}
	return b[topic].Head
}

// metric sums the samples of name whose labels include want.
func (e *env) metric(name string, want map[string]string) float64 {
	e.t.Helper()
	fams, err := e.reg.Gather()
	if err != nil {
		e.t.Fatalf("gather: %v", err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if !labelsMatch(m, want) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// get performs a polling request with an optional Bearer token.
func (e *env) get(path, tok string) (int, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.srv.URL+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, b
}
