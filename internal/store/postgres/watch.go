package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/oaruntime/oaruntime/internal/store"
)

const (
	// noticeBuffer absorbs bursts; beyond it the listener waits for the
	// consumer while PostgreSQL queues notifications server-side.
	noticeBuffer = 256
	// probeEvery bounds how long a silently dead connection (no RST, e.g. a
	// dropped NAT entry) can look healthy: after this much quiet the listener
	// round-trips a query.
	probeEvery = 30 * time.Second
	// connectTimeout bounds one connect+LISTEN attempt.
	connectTimeout = 10 * time.Second
)

// Watch implements store.Store. Each call owns a dedicated connection that
// LISTENs on the schema's channel, outside the pool. When the connection
// drops it reconnects with exponential backoff and, once listening again,
// delivers a Notice{Kind: "event", RunID: ""}: notifications sent while it
// was away are lost, so every subscriber must re-read. The channel closes
// when ctx ends or the store closes.
func (s *Store) Watch(ctx context.Context) (<-chan store.Notice, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errors.New("postgres: watch: store is closed")
	}
	s.loops.Add(1)
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()

	// The first connect is synchronous so that writes made after Watch
	// returns are seen by this watcher in the common case.
	conn, err := s.listen(ctx)
	if err != nil && ctx.Err() != nil {
		cancel()
		s.loops.Done()
		return nil, fmt.Errorf("postgres: watch: %w", ctx.Err())
	}
	s.watchers.Add(1)
	if err != nil {
		s.cfg.logger.Warn("postgres listener: connect failed, retrying", "schema", s.schema, "err", err)
	} else {
		s.connected.Add(1)
	}
	ch := make(chan store.Notice, noticeBuffer)
	go func() {
		defer s.loops.Done()
		s.watchLoop(ctx, cancel, ch, conn)
	}()
	return ch, nil
}

// ListenerUp implements store.Store: true while at least one Watch is active
// and every active Watch is connected and listening.
func (s *Store) ListenerUp() bool {
	w := s.watchers.Load()
	return w > 0 && s.connected.Load() == w
}

// listen opens a dedicated connection and subscribes it to the channel.
func (s *Store) listen(ctx context.Context) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, s.listenConfig)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if _, err := conn.Exec(cctx, "LISTEN "+pgx.Identifier{s.channel}.Sanitize()); err != nil {
		closeConn(conn)
		return nil, fmt.Errorf("listen %s: %w", s.channel, err)
	}
	return conn, nil
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

func (s *Store) watchLoop(ctx context.Context, cancel context.CancelFunc, ch chan<- store.Notice, conn *pgx.Conn) {
	defer func() {
		if conn != nil {
			closeConn(conn)
			s.connected.Add(-1)
		}
		s.watchers.Add(-1)
		close(ch)
		cancel()
	}()
	send := func(n store.Notice) bool {
		select {
		case ch <- n:
			return true
		case <-ctx.Done():
			return false
		}
	}
	delay := s.cfg.backoffMin
	for {
		if conn == nil {
			c, err := s.listen(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				s.cfg.logger.Warn("postgres listener: reconnect failed", "schema", s.schema, "retry_in", delay, "err", err)
				// Full jitter keeps replicas from reconnecting in lockstep
				// after a database restart.
				wait := delay/2 + rand.N(delay/2+1)
				delay = min(delay*2, s.cfg.backoffMax)
				select {
				case <-time.After(wait):
				case <-ctx.Done():
					return
				}
				continue
			}
			conn = c
			s.connected.Add(1)
			delay = s.cfg.backoffMin
			s.cfg.logger.Info("postgres listener: reconnected", "schema", s.schema)
			if !send(store.Notice{Kind: store.NoticeEvent}) {
				return
			}
		}

		wctx, wcancel := context.WithTimeout(ctx, probeEvery)
		n, err := conn.WaitForNotification(wctx)
		wcancel()
		if err == nil {
			for _, x := range parseNotices(n.Payload) {
				if !send(x) {
					return
				}
			}
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, context.DeadlineExceeded) && !conn.IsClosed() {
			pctx, pcancel := context.WithTimeout(ctx, connectTimeout)
			_, perr := conn.Exec(pctx, "SELECT 1")
			pcancel()
			if perr == nil {
				continue
			}
			err = perr
		}
		s.cfg.logger.Warn("postgres listener: connection lost", "schema", s.schema, "err", err)
		closeConn(conn)
		conn = nil
		s.connected.Add(-1)
	}
}

// parseNotices decodes a notification: a JSON array of notices (the
// notifier's batches) or one notice (worker writes, and nodes of earlier
// versions). Anything unreadable becomes a notice for every run, which is
// always safe because readers re-read.
func parseNotices(payload string) []store.Notice {
	everyone := []store.Notice{{Kind: store.NoticeEvent}}
	var ns []store.Notice
	if strings.HasPrefix(payload, "[") {
		if err := json.Unmarshal([]byte(payload), &ns); err != nil {
			return everyone
		}
	} else {
		var n store.Notice
		if err := json.Unmarshal([]byte(payload), &n); err != nil {
			return everyone
		}
		ns = []store.Notice{n}
	}
	for i, n := range ns {
		if n.Kind != store.NoticeEvent && n.Kind != store.NoticeFrame && n.Kind != store.NoticeWorker {
			ns[i] = store.Notice{Kind: store.NoticeEvent}
		}
	}
	return ns
}
