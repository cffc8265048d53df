// Package stream serves a run's event log as Server-Sent Events (DESIGN
// section 6): resumable from any cursor, woken by store notices through the
// notify hub, and always re-reading the log so that a lost notice only delays
// an event.
//
// Request parameters (see Service.Serve):
//
//	?cursor=N / Last-Event-ID: N   resume after seq N (digits only, >= 0; equal when both given; default 0)
//	?tail_ms=N                      idle window for this session in ms (integer >= 1), clamped to
//	                                [Config.MinTail, Config.MaxTail] (defaults 1 s, 10 min); without it
//	                                Config.IdleTimeout (default 60 s). Unlike the original runtime, whose
//	                                tail_ms was a fixed session length, the window restarts after every
//	                                event, so a busy run is never cut off.
package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oaruntime/oaruntime/internal/notify"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/telemetry"
)

// Session outcomes: label values of openagents_runtime_stream_sessions_total.
const (
	OutcomeFinished       = "finished"        // run.finished and [DONE] were written
	OutcomeClientClosed   = "client_closed"   // write failed or the request context ended
	OutcomeTailTimeout    = "tail_timeout"    // no new event for the idle window
	OutcomeServerShutdown = "server_shutdown" // the server is stopping
	// OutcomeStaleCursor: retention pruned events this session had not yet
	// sent. The stream ends so that the client's reconnect gets the 410.
	OutcomeStaleCursor = "stale_cursor"
	// OutcomeError: an event could not be mapped (never for stored, valid
	// JSON payloads); the stream ends rather than skip an id.
	OutcomeError = "error"
)

// Emit outcomes: label values of openagents_runtime_stream_emits_total.
const (
	EmitOK     = "ok"
	EmitClosed = "closed"
)

// Defaults of Config.
const (
	DefaultHeartbeat    = 15 * time.Second
	DefaultIdleTimeout  = 60 * time.Second
	DefaultMinTail      = time.Second
	DefaultMaxTail      = 10 * time.Minute
	DefaultPollMin      = 50 * time.Millisecond
	DefaultPollMax      = time.Second
	DefaultBatchSize    = 256
	DefaultWriteTimeout = 10 * time.Second
)

// Config tunes the service; zero fields take the defaults above.
type Config struct {
	// Heartbeat is the interval of `: heartbeat` comment lines, which keep
	// proxies from closing a quiet stream.
	Heartbeat time.Duration
	// IdleTimeout ends a session as tail_timeout when no new event was
	// written for this long. A request may choose its own window with
	// `tail_ms` (a positive integer of milliseconds), clamped to
	// [MinTail, MaxTail].
	IdleTimeout      time.Duration
	MinTail, MaxTail time.Duration
	// PollMin and PollMax bound the re-read backoff: the stream re-reads the
	// log after a wake-up or after a poll delay that starts at PollMin,
	// doubles (with up to 25 % jitter) after each empty read up to PollMax,
	// and resets after an emit or a wake-up.
	PollMin, PollMax time.Duration
	// BatchSize is the number of events read per ListEvents call.
	BatchSize int
	// WriteTimeout bounds each chunk write, so that a client that stops
	// reading ends as client_closed instead of pinning the session. It also
	// lifts the http.Server's WriteTimeout for the stream's lifetime.
	WriteTimeout time.Duration
	// Shutdown, when closed, ends every session promptly as server_shutdown.
	// Service.Shutdown does the same; http.Server.Shutdown does not cancel
	// running handlers, so wire one of them (e.g. RegisterOnShutdown).
	Shutdown <-chan struct{}
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Heartbeat, DefaultHeartbeat)
	def(&c.IdleTimeout, DefaultIdleTimeout)
	def(&c.MinTail, DefaultMinTail)
	def(&c.MaxTail, DefaultMaxTail)
	def(&c.PollMin, DefaultPollMin)
	def(&c.PollMax, DefaultPollMax)
	def(&c.WriteTimeout, DefaultWriteTimeout)
	if c.MaxTail < c.MinTail {
		c.MaxTail = c.MinTail
	}
	if c.PollMax < c.PollMin {
		c.PollMax = c.PollMin
	}
	if c.BatchSize <= 0 {
		c.BatchSize = DefaultBatchSize
	}
	return c
}

// EventReader is the part of store.Store the stream reads.
type EventReader interface {
	GetRun(ctx context.Context, runID string) (store.Run, error)
	ListEvents(ctx context.Context, runID string, afterSeq int64, limit int) ([]store.Event, error)
}

// Service serves SSE sessions. It is safe for concurrent use.
type Service struct {
	cfg     Config
	st      EventReader
	hub     *notify.Hub
	metrics *telemetry.Metrics
	log     *slog.Logger

	closeOnce sync.Once
	closed    chan struct{}
	active    atomic.Int64

	// onSessionEnd, when set (by tests), receives every session's summary.
	onSessionEnd func(sessionSummary)
}

// New returns a Service. hub may be nil (the stream then relies on polling
// alone), m may be nil, log may be nil.
func New(cfg Config, st EventReader, hub *notify.Hub, m *telemetry.Metrics, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{
		cfg:     cfg.withDefaults(),
		st:      st,
		hub:     hub,
		metrics: m,
		log:     log,
		closed:  make(chan struct{}),
	}
}

// Shutdown ends every running and future session with server_shutdown. It
// returns at once; sessions finish writing their last chunk and return.
// Safe to call more than once.
func (s *Service) Shutdown() {
	s.closeOnce.Do(func() { close(s.closed) })
}

func (s *Service) shuttingDown() bool {
	select {
	case <-s.closed:
		return true
	case <-s.cfg.Shutdown:
		return true
	default:
		return false
	}
}

// Active returns the number of sessions currently streaming.
func (s *Service) Active() int { return int(s.active.Load()) }

var errShutdown = errors.New("server shutdown")

type sessionSummary struct {
	Outcome                    string
	InitialCursor, Cursor      int64
	Events, Chunks             int
	Wakeups, Polls, Heartbeats int
}

// Serve streams run's events after the request's cursor. The caller has
// authenticated the request and loaded run. Responses:
//
//	400 invalid_request  bad cursor, Last-Event-ID or tail_ms (message names it)
//	410 stale_cursor     cursor below run.RetentionFloorSeq (those events were pruned)
//	204 No Content       run is terminal and the cursor is at or past its last
//	                     event: nothing will ever follow (and, per the SSE spec,
//	                     an EventSource stops reconnecting)
//	503 unavailable      the service is shutting down (retryable)
//	200 text/event-stream otherwise, until one of the session outcomes
//
// Only 200 responses count as sessions in the metrics.
func (s *Service) Serve(w http.ResponseWriter, r *http.Request, run store.Run) {
	q := r.URL.Query()
	if len(q["cursor"]) > 1 {
		writeError(w, http.StatusBadRequest, "invalid_request", "cursor: query parameter cursor given more than once")
		return
	}
	if len(r.Header.Values("Last-Event-ID")) > 1 {
		writeError(w, http.StatusBadRequest, "invalid_request", "cursor: Last-Event-ID header given more than once")
		return
	}
	cursor, err := ParseCursor(q.Get("cursor"), r.Header.Get("Last-Event-ID"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	idle, err := s.idleWindow(q)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", err.Error())
		return
	}
	if cursor < run.RetentionFloorSeq {
		writeError(w, http.StatusGone, "stale_cursor", fmt.Sprintf(
			"cursor: %d is below the retention floor %d; events up to %d were pruned, resume from %d or later",
			cursor, run.RetentionFloorSeq, run.RetentionFloorSeq, run.RetentionFloorSeq))
		return
	}
	if store.Terminal(run.Status) && cursor >= run.LatestSeq {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if s.shuttingDown() {
		// A retryable status: the client resumes on another replica or
		// after the restart.
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "unavailable", "server is shutting down; retry with Last-Event-ID")
		return
	}

	// Deferred first so that it runs last: Active()==0 means every session
	// has also released its hub subscription.
	s.active.Add(1)
	defer s.active.Add(-1)

	// Subscribe before the first read so that no notice can fall between
	// the read and the wait.
	var wake <-chan struct{}
	if s.hub != nil {
		ch, cancel := s.hub.Subscribe(run.RunID)
		defer cancel()
		wake = ch
	}

	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	go func() {
		select {
		case <-ctx.Done():
		case <-s.cfg.Shutdown:
			cancel(errShutdown)
		case <-s.closed:
			cancel(errShutdown)
		}
	}()

	start := time.Now()
	ss := &session{
		svc:  s,
		w:    w,
		rc:   http.NewResponseController(w),
		run:  run,
		wake: wake,
		idle: idle,
		sum:  sessionSummary{InitialCursor: cursor, Cursor: cursor},
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	h.Del("Content-Length")
	w.WriteHeader(http.StatusOK)
	outcome := ss.loop(ctx)
	// The server writes the final chunk terminator after we return; give it
	// a fresh deadline in case the last one lapsed while the stream was idle.
	_ = ss.rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))

	ss.sum.Outcome = outcome
	s.metrics.StreamSession(outcome)
	s.log.LogAttrs(r.Context(), slog.LevelInfo, "stream session ended",
		slog.String("run_id", run.RunID),
		slog.String("outcome", outcome),
		slog.Int64("initial_cursor", ss.sum.InitialCursor),
		slog.Int64("final_cursor", ss.sum.Cursor),
		slog.Int("emitted_events", ss.sum.Events),
		slog.Int("emitted_chunks", ss.sum.Chunks),
		slog.Int("wakeups", ss.sum.Wakeups),
		slog.Int("polls", ss.sum.Polls),
		slog.Int64("duration_ms", time.Since(start).Milliseconds()),
	)
	if s.onSessionEnd != nil {
		s.onSessionEnd(ss.sum)
	}
}

// idleWindow resolves the session's idle window from tail_ms.
func (s *Service) idleWindow(q map[string][]string) (time.Duration, error) {
	vals := q["tail_ms"]
	switch {
	case len(vals) == 0:
		return s.cfg.IdleTimeout, nil
	case len(vals) > 1:
		return 0, errors.New("tail_ms: given more than once")
	}
	ms, err := parseSeq(vals[0])
	if err != nil || ms < 1 || vals[0] == "" {
		return 0, errors.New("tail_ms: must be a positive integer of milliseconds")
	}
	if ms >= s.cfg.MaxTail.Milliseconds() {
		return s.cfg.MaxTail, nil
	}
	return max(time.Duration(ms)*time.Millisecond, s.cfg.MinTail), nil
}

type session struct {
	svc  *Service
	w    http.ResponseWriter
	rc   *http.ResponseController
	run  store.Run
	wake <-chan struct{}
	idle time.Duration
	sum  sessionSummary
	buf  []byte
}

var (
	errStale    = errors.New("cursor fell below the retention floor")
	errMapEvent = errors.New("cannot map event")
)

func (ss *session) loop(ctx context.Context) string {
	cfg := ss.svc.cfg
	// Flush the headers now: a client must see the 200 even when the log
	// has nothing to send yet.
	if err := ss.flush(); err != nil {
		return ss.outcome(ctx, err)
	}
	idle := time.NewTimer(ss.idle)
	defer idle.Stop()
	hb := time.NewTicker(cfg.Heartbeat)
	defer hb.Stop()
	poll := time.NewTimer(time.Hour)
	defer poll.Stop()
	backoff := cfg.PollMin

	for {
		n, finished, err := ss.drain(ctx)
		if err != nil {
			return ss.outcome(ctx, err)
		}
		if finished {
			return OutcomeFinished
		}
		if n > 0 {
			idle.Reset(ss.idle)
			backoff = cfg.PollMin
		}
		poll.Reset(jitter(backoff))
	wait:
		for {
			select {
			case <-ctx.Done():
				return ss.outcome(ctx, ctx.Err())
			case <-hb.C:
				ss.sum.Heartbeats++
				if err := ss.write([]byte(": heartbeat\n\n")); err != nil {
					return ss.outcome(ctx, err)
				}
			case <-ss.wake:
				ss.sum.Wakeups++
				backoff = cfg.PollMin
				break wait
			case <-poll.C:
				ss.sum.Polls++
				backoff = min(backoff*2, cfg.PollMax)
				break wait
			case <-idle.C:
				// A notice may have been lost just before the window closed:
				// read once more, and keep going if something arrived.
				n, finished, err := ss.drain(ctx)
				if err != nil {
					return ss.outcome(ctx, err)
				}
				if finished {
					return OutcomeFinished
				}
				if n == 0 {
					return OutcomeTailTimeout
				}
				idle.Reset(ss.idle)
				backoff = cfg.PollMin
				poll.Reset(jitter(backoff))
			}
		}
	}
}

// outcome classifies the error that ended a session.
func (ss *session) outcome(ctx context.Context, err error) string {
	switch {
	case errors.Is(err, errStale):
		return OutcomeStaleCursor
	case errors.Is(err, errMapEvent):
		return OutcomeError
	case errors.Is(context.Cause(ctx), errShutdown):
		return OutcomeServerShutdown
	default:
		return OutcomeClientClosed
	}
}

// drain writes every event after the cursor, reading in batches. It returns
// the number of events written and whether run.finished was among them.
// A store error that is not caused by the session's end is logged and
// treated as an empty read: the next poll retries.
func (ss *session) drain(ctx context.Context) (int, bool, error) {
	svc := ss.svc
	written := 0
	for {
		evs, err := svc.st.ListEvents(ctx, ss.run.RunID, ss.sum.Cursor, svc.cfg.BatchSize)
		if err != nil {
			if ctx.Err() != nil {
				return written, false, ctx.Err()
			}
			svc.log.LogAttrs(ctx, slog.LevelWarn, "stream: list events failed; will retry",
				slog.String("run_id", ss.run.RunID), slog.Int64("cursor", ss.sum.Cursor), slog.Any("error", err))
			return written, false, nil
		}
		for _, ev := range evs {
			if ev.Seq <= ss.sum.Cursor {
				continue // never send an id twice, whatever the store returns
			}
			if ev.Seq != ss.sum.Cursor+1 {
				// Seqs are gap-free, so a gap means retention pruned
				// events this client has not seen yet.
				if run, err := svc.st.GetRun(ctx, ss.run.RunID); err == nil && ss.sum.Cursor < run.RetentionFloorSeq {
					return written, false, errStale
				}
			}
			msgs, err := MapEvent(ev)
			if err != nil {
				// Unreachable for stored (valid JSON) payloads; skipping
				// would silently lose an event, so end the session and
				// let the client retry.
				svc.log.LogAttrs(ctx, slog.LevelError, "stream: cannot map event",
					slog.String("run_id", ss.run.RunID), slog.Int64("seq", ev.Seq), slog.Any("error", err))
				return written, false, errMapEvent
			}
			for _, m := range msgs {
				ss.buf = appendWire(ss.buf[:0], m)
				if err := ss.write(ss.buf); err != nil {
					svc.metrics.StreamEmit(ev.EventType, EmitClosed)
					return written, false, err
				}
				ss.sum.Chunks++
			}
			svc.metrics.StreamEmit(ev.EventType, EmitOK)
			ss.sum.Events++
			ss.sum.Cursor = ev.Seq
			written++
			if ev.EventType == "run.finished" {
				return written, true, nil
			}
		}
		if len(evs) < svc.cfg.BatchSize {
			return written, false, nil
		}
	}
}

func (ss *session) write(b []byte) error {
	// ErrNotSupported only means the writer has no deadline control.
	_ = ss.rc.SetWriteDeadline(time.Now().Add(ss.svc.cfg.WriteTimeout))
	if _, err := ss.w.Write(b); err != nil {
		return fmt.Errorf("write chunk: %w", err)
	}
	return ss.flush()
}

func (ss *session) flush() error {
	if err := ss.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return fmt.Errorf("flush chunk: %w", err)
	}
	return nil
}

// jitter adds up to 25 % so that many idle streams do not poll in lockstep.
func jitter(d time.Duration) time.Duration {
	if q := int64(d) / 4; q > 0 {
		return d + time.Duration(rand.Int64N(q))
	}
	return d
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	body, _ := json.Marshal(map[string]map[string]string{"error": {"code": code, "message": msg}})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
