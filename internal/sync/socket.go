package sync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/oaruntime/oaruntime/internal/httpapi"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/sync/token"
)

// Close reasons (the WebSocket close frame's reason text).
const (
	CloseTokenExpired   = "token_expired"
	CloseTokenRevoked   = "token_revoked"
	CloseTokenInvalid   = "token_invalid"
	CloseIdleTimeout    = "idle_timeout"
	CloseServerShutdown = "server_shutdown"
	CloseInternal       = "internal_error"
)

func isUpgrade(r *http.Request) bool {
	return headerHasToken(r.Header, "Connection", "upgrade") && headerHasToken(r.Header, "Upgrade", "websocket")
}

func headerHasToken(h http.Header, key, tok string) bool {
	for _, v := range h.Values(key) {
		for _, part := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), tok) {
				return true
			}
		}
	}
	return false
}

// serveSocket is GET /sync/v1: authentication answers 401 before any
// upgrade, so a client with a bad token never gets a socket.
func (s *Service) serveSocket(w http.ResponseWriter, r *http.Request) {
	if s.isStopped() {
		httpapi.WriteError(w, http.StatusServiceUnavailable, httpapi.CodeUnavailable, "sync delivery is shutting down")
		return
	}
	claims, raw, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	if !isUpgrade(r) {
		s.m.SyncAuth("ok", "authorized")
		w.Header().Set("Upgrade", "websocket")
		httpapi.WriteError(w, http.StatusUpgradeRequired, "upgrade_required",
			"GET /sync/v1 is a WebSocket endpoint: send Connection: Upgrade and Upgrade: websocket")
		return
	}
	opts := &websocket.AcceptOptions{OriginPatterns: s.cfg.OriginPatterns}
	if len(s.cfg.OriginPatterns) == 0 {
		opts.InsecureSkipVerify = true // see Config.OriginPatterns
	}
	conn, err := websocket.Accept(w, r, opts)
	if err != nil {
		// Accept answered the handshake error itself.
		s.log.InfoContext(r.Context(), "sync: websocket handshake failed", "error", err)
		return
	}
	s.m.SyncAuth("ok", "authorized")
	conn.SetReadLimit(maxClientMessage)

	// The request context must not be used after Accept (the connection
	// is hijacked); keep its values (trace, request id) only.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	stop := context.AfterFunc(s.base, cancel)
	defer stop()
	if !s.track() {
		_ = conn.Close(websocket.StatusGoingAway, CloseServerShutdown)
		return
	}
	defer s.conns.Done()
	defer s.sockets.Add(-1)

	s.m.SyncConnectionsAdd(1)
	defer s.m.SyncConnectionsAdd(-1)
	ss := &session{
		svc: s, conn: conn, claims: claims, raw: raw, sub: claims.Subject,
		cursors: map[string]int64{}, heads: map[string]int64{},
		log: s.log.With("sub", claims.Subject, "jti", claims.ID),
	}
	start := time.Now()
	code, reason := ss.run(ctx)
	ss.log.InfoContext(ctx, "sync: socket closed", "status", int(code), "reason", reason,
		"duration_ms", time.Since(start).Milliseconds())
}

// track registers a session unless the service is stopping.
func (s *Service) track() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	s.conns.Add(1)
	s.sockets.Add(1)
	s.Wake() // the heads were not read while no socket was open
	return true
}

// session is one socket. Only run's goroutine touches its maps and writes;
// a reader goroutine hands client messages over.
type session struct {
	svc    *Service
	conn   *websocket.Conn
	claims *token.Claims
	raw    string
	sub    string
	log    *slog.Logger

	topics  []string         // subscribed, in subscription order
	cursors map[string]int64 // topic -> delivered-through watermark
	heads   map[string]int64 // topic -> last head read
	seen    atomic.Int64     // unix nanos of the last client message
}

type inbound struct {
	typ  websocket.MessageType
	data []byte
}

// run serves the session until it ends and returns the close status sent.
func (ss *session) run(ctx context.Context) (websocket.StatusCode, string) {
	cfg := ss.svc.cfg
	// Reads use their own context: canceling a read context closes the
	// connection, which would keep our close frame from being sent.
	readCtx, stopRead := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRead()
	msgs := make(chan inbound)
	readErr := make(chan error, 1)
	ss.seen.Store(time.Now().UnixNano())
	go func() {
		for {
			typ, data, err := ss.conn.Read(readCtx)
			if err != nil {
				readErr <- err
				return
			}
			ss.seen.Store(time.Now().UnixNano())
			select {
			case msgs <- inbound{typ, data}:
			case <-readCtx.Done():
				return
			}
		}
	}()

	closeWith := func(code websocket.StatusCode, reason string) (websocket.StatusCode, string) {
		_ = ss.conn.Close(code, reason)
		return code, reason
	}
	heartbeat := time.NewTicker(cfg.Heartbeat)
	defer heartbeat.Stop()
	idle := time.NewTimer(cfg.IdleTimeout)
	defer idle.Stop()
	expiry := time.NewTimer(max(ss.claims.ExpiresAt.Sub(cfg.Now()), 0))
	defer expiry.Stop()

	for {
		heads, changed := ss.svc.snapshot()
		if behind := ss.behind(heads); len(behind) > 0 {
			if err := ss.deliver(ctx, behind, false); err != nil {
				return ss.failed(ctx, err, closeWith)
			}
		}
		select {
		case <-ctx.Done():
			return closeWith(websocket.StatusGoingAway, CloseServerShutdown)
		case err := <-readErr:
			_ = ss.conn.CloseNow()
			code := websocket.CloseStatus(err)
			if code == -1 {
				return websocket.StatusAbnormalClosure, "read: " + truncate(err.Error(), 100)
			}
			return code, "client closed"
		case in := <-msgs:
			if err := ss.handle(ctx, in); err != nil {
				return ss.failed(ctx, err, closeWith)
			}
		case <-changed:
		case <-heartbeat.C:
			if code, reason, ok := ss.recheckToken(ctx); !ok {
				return closeWith(code, reason)
			}
			if err := ss.send(ctx, ss.heartbeat()); err != nil {
				return ss.failed(ctx, err, closeWith)
			}
		case <-idle.C:
			quiet := time.Since(time.Unix(0, ss.seen.Load()))
			if quiet >= cfg.IdleTimeout {
				return closeWith(websocket.StatusPolicyViolation, CloseIdleTimeout)
			}
			idle.Reset(cfg.IdleTimeout - quiet)
		case <-expiry.C:
			if left := ss.claims.ExpiresAt.Sub(cfg.Now()); left > 0 {
				expiry.Reset(left) // the timer fired early against the configured clock
				continue
			}
			_ = ss.send(ctx, errMsg(CodeTokenExpired, "the sync token expired; reconnect with a fresh token and resume_after"))
			return closeWith(websocket.StatusPolicyViolation, CloseTokenExpired)
		}
	}
}

// failed ends a session after a write or store error.
func (ss *session) failed(ctx context.Context, err error, closeWith func(websocket.StatusCode, string) (websocket.StatusCode, string)) (websocket.StatusCode, string) {
	if ctx.Err() != nil {
		// Stop canceled a store read mid-delivery: a shutdown, not a failure.
		return closeWith(websocket.StatusGoingAway, CloseServerShutdown)
	}
	var se storeError
	if errors.As(err, &se) {
		ss.log.ErrorContext(ctx, "sync: store read failed; closing socket", "error", err)
		_ = ss.send(ctx, errMsg(CodeInternal, "reading the sync stream failed; reconnect and resume"))
		return closeWith(websocket.StatusInternalError, CloseInternal)
	}
	// A failed write: the client is gone or too slow.
	_ = ss.conn.CloseNow()
	return websocket.StatusAbnormalClosure, "write: " + truncate(err.Error(), 100)
}

// storeError marks store failures apart from socket write failures.
type storeError struct{ err error }

func (e storeError) Error() string { return e.err.Error() }
func (e storeError) Unwrap() error { return e.err }

// recheckToken verifies the token again (revocation, key removal) at each
// heartbeat. A failing revocation lookup keeps the session: it was
// authorized and a store hiccup is no reason to drop every socket.
func (ss *session) recheckToken(ctx context.Context) (websocket.StatusCode, string, bool) {
	_, err := ss.svc.v.Verify(ctx, ss.raw)
	if err == nil || errors.Is(err, token.ErrRevocationCheck) {
		return 0, "", true
	}
	code, reason := CodeTokenInvalid, CloseTokenInvalid
	switch token.ReasonOf(err) {
	case token.ReasonExpired:
		code, reason = CodeTokenExpired, CloseTokenExpired
	case token.ReasonRevoked:
		code, reason = CodeTokenRevoked, CloseTokenRevoked
	}
	_ = ss.send(ctx, errMsg(code, "the sync token is no longer valid (%s)", token.ReasonOf(err)))
	return websocket.StatusPolicyViolation, reason, false
}

func (ss *session) send(ctx context.Context, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %T: %w", v, err)
	}
	// Not canceled by Stop: a write cut short by cancellation would close
	// the connection without the 1001 close frame.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ss.svc.cfg.WriteTimeout)
	defer cancel()
	if err := ss.conn.Write(wctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

func (ss *session) heartbeat() Heartbeat {
	heads, _ := ss.svc.snapshot()
	hw := make(map[string]int64, len(ss.topics))
	for _, t := range ss.topics {
		hw[t] = max(heads[t], ss.heads[t])
	}
	return Heartbeat{Type: TypeHeartbeat, ResumeAfter: ss.positions(), HeadWatermarks: hw}
}

// positions are the cursors a client may resume from. A fresh topic not
// read yet (-1) is left out, so a client that reconnects before reaching
// it starts it fresh again.
func (ss *session) positions() map[string]int64 {
	out := make(map[string]int64, len(ss.cursors))
	for t, wm := range ss.cursors {
		if wm >= 0 {
			out[t] = wm
		}
	}
	return out
}

// behind lists the subscribed topics whose head moved past the cursor.
func (ss *session) behind(heads map[string]int64) []string {
	var out []string
	for _, t := range ss.topics {
		if heads[t] > ss.cursors[t] {
			out = append(out, t)
		}
	}
	return out
}

// handle processes one client message. Protocol errors are answered and
// the session goes on; only store and write failures return an error.
func (ss *session) handle(ctx context.Context, in inbound) error {
	if in.typ != websocket.MessageText {
		return ss.send(ctx, errMsg(CodeBadRequest, "message: must be a JSON text message"))
	}
	m, perr := parseClientMessage(in.data)
	if perr != nil {
		return ss.send(ctx, *perr)
	}
	switch m.Type {
	case TypeHeartbeat:
		return ss.send(ctx, ss.heartbeat())
	case TypeUnsubscribe:
		if len(m.Topics) == 0 {
			return ss.send(ctx, errMsg(CodeBadSubscription, "topics: must list at least one topic"))
		}
		ss.topics = slices.DeleteFunc(ss.topics, func(t string) bool { return slices.Contains(m.Topics, t) })
		for _, t := range m.Topics {
			delete(ss.cursors, t)
			delete(ss.heads, t)
		}
		return ss.send(ctx, Unsubscribed{Type: TypeUnsubscribed, Topics: slices.Clone(ss.topics)})
	default:
		return ss.subscribe(ctx, m)
	}
}

// subscribe replaces the subscription with m.Topics and replays each
// topic from its resume point: resume_after when given, else the position
// this socket already reached, else the retained floor (a fresh start).
// A stale resume point fails the whole request and changes nothing.
func (ss *session) subscribe(ctx context.Context, m ClientMessage) error {
	if e := checkTopics(m.Topics, ss.claims); e != nil {
		if e.Code == CodeForbiddenTopic {
			ss.svc.m.SyncAuth("error", "scope_denied")
		}
		return ss.send(ctx, *e)
	}
	for t, wm := range m.ResumeAfter {
		if !slices.Contains(m.Topics, t) {
			return ss.send(ctx, errMsg(CodeBadSubscription, "resume_after.%s: not one of the subscribed topics", truncate(t, 64)))
		}
		if wm < 0 {
			return ss.send(ctx, errMsg(CodeBadSubscription, "resume_after.%s: must be >= 0, got %d", t, wm))
		}
	}
	bounds, err := ss.svc.st.StreamBounds(ctx, m.Topics)
	if err != nil {
		return storeError{fmt.Errorf("stream bounds: %w", err)}
	}
	var stale []StaleTopic
	for _, t := range m.Topics {
		wm, ok := m.ResumeAfter[t]
		if !ok {
			continue
		}
		if b := bounds[t]; wm < b.Floor || wm > b.Head {
			stale = append(stale, StaleTopic{Topic: t, ResumeAfter: wm, RetentionFloor: b.Floor, HeadWatermark: b.Head})
		}
	}
	if len(stale) > 0 {
		return ss.sendStale(ctx, stale)
	}

	cursors := make(map[string]int64, len(m.Topics))
	for _, t := range m.Topics {
		switch wm, ok := m.ResumeAfter[t]; {
		case ok:
			cursors[t] = wm
		case slices.Contains(ss.topics, t):
			cursors[t] = ss.cursors[t]
		default:
			cursors[t] = -1 // fresh: from the retained floor
		}
		ss.heads[t] = bounds[t].Head
	}
	ss.topics = slices.Clone(m.Topics)
	ss.cursors = cursors
	for t := range ss.heads {
		if !slices.Contains(ss.topics, t) {
			delete(ss.heads, t)
		}
	}
	return ss.deliver(ctx, ss.topics, true)
}

func (ss *session) sendStale(ctx context.Context, stale []StaleTopic) error {
	ss.svc.m.SyncStaleCursor()
	names := make([]string, len(stale))
	for i, st := range stale {
		names[i] = st.Topic
	}
	e := errMsg(CodeStaleCursor, "cursor is older than retention (or ahead of the stream) for %s: resync in full, then subscribe without resume_after",
		strings.Join(names, ", "))
	e.FullResyncRequired = true
	e.StaleTopics = stale
	return ss.send(ctx, e)
}

// deliver sends every row of topics after the session's cursors in
// batches of at most BatchSize, the last one with replay_complete. A
// batch's resume_after is stamped when the batch is sealed, so it never
// covers rows of a later batch that might not arrive. Live deliveries
// (replay=false) that find only other owners' rows send nothing; a replay
// always ends with a batch, empty or not, so the client knows it caught up.
func (ss *session) deliver(ctx context.Context, topics []string, replay bool) error {
	size := ss.svc.cfg.BatchSize
	var (
		pending *UpdateBatch // a sealed full batch, held until we know whether another follows
		cur     []Update
		stale   []StaleTopic
	)
	seal := func(ups []Update) *UpdateBatch {
		return &UpdateBatch{Type: TypeUpdateBatch, Updates: ups, HeadWatermarks: clone(ss.heads), ResumeAfter: ss.positions()}
	}
	for _, t := range topics {
		for {
			if len(cur) == size {
				if pending != nil {
					if err := ss.send(ctx, pending); err != nil {
						return err
					}
				}
				pending, cur = seal(cur), nil
			}
			// A fresh topic (cursor -1) starts at the floor of the same
			// snapshot, so a prune racing the subscribe cannot make it stale.
			page, err := ss.svc.st.ReadOwnerStream(ctx, store.OwnerStreamQuery{
				Topic: t, OwnerSub: ss.sub, After: ss.cursors[t], Limit: size - len(cur),
			})
			if err != nil {
				return storeError{fmt.Errorf("read %s after %d: %w", t, ss.cursors[t], err)}
			}
			ss.heads[t] = max(ss.heads[t], page.Bounds.Head)
			if page.Bounds.Floor > page.After {
				// Pruned while this socket was behind: rows are gone.
				stale = append(stale, StaleTopic{Topic: t, ResumeAfter: page.After, RetentionFloor: page.Bounds.Floor, HeadWatermark: page.Bounds.Head})
				break
			}
			for _, r := range page.Rows {
				cur = append(cur, toUpdate(r))
			}
			ss.cursors[t] = page.Through
			if len(cur) < size {
				break // the page was short: this topic is caught up
			}
		}
	}
	var last *UpdateBatch
	switch {
	case len(cur) > 0:
		if pending != nil {
			if err := ss.send(ctx, pending); err != nil {
				return err
			}
		}
		last = seal(cur)
	case pending != nil:
		// Nothing followed it, so everything up to the cursors now read
		// is in it or before it.
		last = pending
		last.ResumeAfter, last.HeadWatermarks = ss.positions(), clone(ss.heads)
	case replay:
		last = seal([]Update{})
	}
	if last != nil {
		last.ReplayComplete = true
		if err := ss.send(ctx, last); err != nil {
			return err
		}
	}
	if len(stale) > 0 {
		for _, st := range stale {
			ss.topics = slices.DeleteFunc(ss.topics, func(t string) bool { return t == st.Topic })
			delete(ss.cursors, st.Topic)
			delete(ss.heads, st.Topic)
		}
		return ss.sendStale(ctx, stale)
	}
	return nil
}
