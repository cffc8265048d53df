package sync

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/oaruntime/oaruntime/internal/httpapi"
	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/sync/token"
)

// Polling limits (the original Rust port's numbers).
const (
	DefaultPollLimit = 100
	MaxPollLimit     = MaxBatch
)

// PollResponse is the polling endpoint's answer.
type PollResponse struct {
	Messages []Update `json:"messages"`
	// NextCursor is the after_seq of the next poll: everything of the
	// caller's up to it has been delivered (other owners' rows skipped).
	NextCursor     int64 `json:"next_cursor"`
	HeadWatermark  int64 `json:"head_watermark"`
	RetentionFloor int64 `json:"retention_floor"`
}

// StaleResponse is the 410 body: the error envelope plus what a client
// needs to resync.
type StaleResponse struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	FullResyncRequired bool         `json:"full_resync_required"`
	StaleTopics        []StaleTopic `json:"stale_topics"`
}

var pollParams = map[string]bool{"after_seq": true, "limit": true, "token": true}

// servePoll is GET /internal/v1/khala/topics/{topic}/messages. after_seq
// absent means a fresh read from the retained floor; an explicit after_seq
// below the floor (or above the head) is 410 stale_cursor.
func (s *Service) servePoll(w http.ResponseWriter, r *http.Request) {
	if s.isStopped() {
		httpapi.WriteError(w, http.StatusServiceUnavailable, httpapi.CodeUnavailable, "sync delivery is shutting down")
		return
	}
	claims, _, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	topic := r.PathValue("topic")
	if !token.IsTopic(topic) {
		s.m.SyncAuth("ok", "authorized")
		httpapi.WriteError(w, http.StatusNotFound, httpapi.CodeNotFound, fmt.Sprintf("topic: unknown topic %q", truncate(topic, 64)))
		return
	}
	if !claims.HasScope(topic) {
		s.m.SyncAuth("error", "scope_denied")
		httpapi.WriteError(w, http.StatusForbidden, CodeForbiddenTopic, fmt.Sprintf("topic: %s is not granted by the sync token", topic))
		return
	}
	s.m.SyncAuth("ok", "authorized")

	q := r.URL.Query()
	for name := range q {
		if !pollParams[name] {
			httpapi.WriteError(w, http.StatusBadRequest, httpapi.CodeInvalidRequest, truncate(name, 64)+": unknown query parameter (want after_seq, limit)")
			return
		}
	}
	after := int64(-1) // fresh: from the floor
	if _, given := q["after_seq"]; given {
		v, aerr := httpapi.ParseQueryInt(r, "after_seq", 0, 0)
		if aerr != nil {
			httpapi.WriteError(w, aerr.Status, aerr.Code, aerr.Message)
			return
		}
		after = v
	}
	limit, aerr := httpapi.ParseQueryInt(r, "limit", DefaultPollLimit, MaxPollLimit)
	if aerr != nil {
		httpapi.WriteError(w, aerr.Status, aerr.Code, aerr.Message)
		return
	}
	if limit < 1 {
		httpapi.WriteError(w, http.StatusBadRequest, httpapi.CodeInvalidRequest, "limit: must be between 1 and "+strconv.Itoa(MaxPollLimit))
		return
	}

	page, err := s.st.ReadOwnerStream(r.Context(), store.OwnerStreamQuery{
		Topic: topic, OwnerSub: claims.Subject, After: after, Limit: int(limit),
	})
	if err != nil {
		s.log.ErrorContext(r.Context(), "sync: poll read failed", "topic", topic, "error", err)
		httpapi.WriteError(w, http.StatusServiceUnavailable, httpapi.CodeUnavailable, "reading the sync stream failed; retry")
		return
	}
	b := page.Bounds
	if page.After < b.Floor || page.After > b.Head {
		s.m.SyncStaleCursor()
		var body StaleResponse
		body.Error.Code = CodeStaleCursor
		body.Error.Message = fmt.Sprintf("after_seq: %d is outside the retained stream (%d..%d): resync in full, then poll without after_seq",
			page.After, b.Floor, b.Head)
		body.FullResyncRequired = true
		body.StaleTopics = []StaleTopic{{Topic: topic, ResumeAfter: page.After, RetentionFloor: b.Floor, HeadWatermark: b.Head}}
		httpapi.WriteJSON(w, http.StatusGone, body)
		return
	}
	out := PollResponse{Messages: make([]Update, 0, len(page.Rows)), NextCursor: page.Through, HeadWatermark: b.Head, RetentionFloor: b.Floor}
	for _, row := range page.Rows {
		out.Messages = append(out.Messages, toUpdate(row))
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, out)
}
