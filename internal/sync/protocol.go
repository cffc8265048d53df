package sync

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/oaruntime/oaruntime/internal/store"
	"github.com/oaruntime/oaruntime/internal/sync/token"
)

// Message types (the "type" field of every JSON text message).
const (
	TypeSubscribe    = "subscribe"    // client
	TypeUnsubscribe  = "unsubscribe"  // client
	TypeHeartbeat    = "heartbeat"    // both ways
	TypeUpdateBatch  = "update_batch" // server
	TypeUnsubscribed = "unsubscribed" // server, answering unsubscribe
	TypeError        = "error"        // server
)

// Error codes of error messages (and of the polling endpoint's envelope).
const (
	CodeBadRequest      = "bad_request"      // malformed message; the field is named
	CodeBadSubscription = "bad_subscription" // well-formed but unusable topics or cursors
	CodeForbiddenTopic  = "forbidden_topic"  // a topic the token does not grant (or no such topic)
	CodeStaleCursor     = "stale_cursor"     // resume point below retention: full resync required
	CodeTokenExpired    = "token_expired"    // the socket closes (1008) right after
	CodeTokenRevoked    = "token_revoked"    // the socket closes (1008) right after
	CodeTokenInvalid    = "token_invalid"    // the socket closes (1008) right after
	CodeInternal        = "internal"         // a store failure; the socket closes (1011)
)

// ClientMessage is what clients send. Unknown fields are refused so that a
// typo (resumeAfter) is an error rather than a silent full replay.
type ClientMessage struct {
	Type        string           `json:"type"`
	Topics      []string         `json:"topics,omitempty"`
	ResumeAfter map[string]int64 `json:"resume_after,omitempty"`
}

// Update is one delivered stream row. The owner is the subscriber itself,
// so it is not repeated.
type Update struct {
	Topic       string          `json:"topic"`
	Watermark   int64           `json:"watermark"`
	DocKey      string          `json:"doc_key"`
	DocVersion  int64           `json:"doc_version"`
	Payload     json.RawMessage `json:"payload"`
	PayloadHash string          `json:"payload_hash"`
}

func toUpdate(r store.StreamRow) Update {
	return Update{Topic: r.Topic, Watermark: r.Watermark, DocKey: r.DocKey, DocVersion: r.DocVersion,
		Payload: r.Payload, PayloadHash: r.PayloadHash}
}

// UpdateBatch carries at most MaxBatch updates in watermark order per
// topic.
type UpdateBatch struct {
	Type    string   `json:"type"`
	Updates []Update `json:"updates"`
	// HeadWatermarks are the topics' heads as last read: the topic
	// watermarks, including rows of other owners this subscriber never sees.
	HeadWatermarks map[string]int64 `json:"head_watermarks"`
	// ResumeAfter is, per subscribed topic, the position everything up to
	// which has now been delivered (other owners' rows skipped): what to
	// send back as resume_after after a reconnect. It can be ahead of the
	// last update's watermark.
	ResumeAfter map[string]int64 `json:"resume_after"`
	// ReplayComplete is true on the last batch of a replay (the subscriber
	// is caught up with the heads it read) and on live batches that reach
	// the head.
	ReplayComplete bool `json:"replay_complete"`
}

// Heartbeat is the server's heartbeat (every Config.Heartbeat, and the
// answer to a client heartbeat).
type Heartbeat struct {
	Type           string           `json:"type"`
	ResumeAfter    map[string]int64 `json:"resume_after"`
	HeadWatermarks map[string]int64 `json:"head_watermarks"`
}

// Unsubscribed answers an unsubscribe with the topics still subscribed.
type Unsubscribed struct {
	Type   string   `json:"type"`
	Topics []string `json:"topics"`
}

// StaleTopic explains one stale cursor.
type StaleTopic struct {
	Topic          string `json:"topic"`
	ResumeAfter    int64  `json:"resume_after"`
	RetentionFloor int64  `json:"retention_floor"`
	HeadWatermark  int64  `json:"head_watermark"`
}

// ErrorMessage is an error. The socket stays open unless the code says
// otherwise (token_*, internal).
type ErrorMessage struct {
	Type               string       `json:"type"`
	Code               string       `json:"code"`
	Message            string       `json:"message"`
	FullResyncRequired bool         `json:"full_resync_required,omitempty"`
	StaleTopics        []StaleTopic `json:"stale_topics,omitempty"`
	ForbiddenTopics    []string     `json:"forbidden_topics,omitempty"`
}

func errMsg(code, format string, args ...any) ErrorMessage {
	return ErrorMessage{Type: TypeError, Code: code, Message: fmt.Sprintf(format, args...)}
}

// parseClientMessage decodes one client message strictly; the error is an
// ErrorMessage naming the field at fault.
func parseClientMessage(data []byte) (ClientMessage, *ErrorMessage) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m ClientMessage
	if err := dec.Decode(&m); err != nil {
		e := errMsg(CodeBadRequest, "%s", describeDecodeError(err))
		return m, &e
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		e := errMsg(CodeBadRequest, "message: trailing data after the JSON object")
		return m, &e
	}
	switch m.Type {
	case TypeSubscribe:
	case TypeUnsubscribe, TypeHeartbeat:
		if m.ResumeAfter != nil {
			e := errMsg(CodeBadRequest, "resume_after: only allowed on subscribe")
			return m, &e
		}
		if m.Type == TypeHeartbeat && m.Topics != nil {
			e := errMsg(CodeBadRequest, "topics: not allowed on heartbeat")
			return m, &e
		}
	case "":
		e := errMsg(CodeBadRequest, "type: required (subscribe, unsubscribe or heartbeat)")
		return m, &e
	default:
		e := errMsg(CodeBadRequest, "type: unknown message type %q (want subscribe, unsubscribe or heartbeat)", truncate(m.Type, 64))
		return m, &e
	}
	return m, nil
}

func describeDecodeError(err error) string {
	var (
		te *json.UnmarshalTypeError
		se *json.SyntaxError
	)
	switch {
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			field = "message"
		}
		return fmt.Sprintf("%s: must be %s, got %s", field, jsonKind(te.Type.Kind().String()), te.Value)
	case errors.As(err, &se):
		return fmt.Sprintf("message: invalid JSON at byte %d", se.Offset)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "message: empty or truncated JSON"
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return strings.Trim(f, `"`) + ": unknown field"
	}
	return "message: " + truncate(msg, 200)
}

func jsonKind(k string) string {
	switch k {
	case "slice":
		return "an array"
	case "map", "struct":
		return "an object"
	case "int64", "int":
		return "an integer"
	}
	return "a " + k
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// checkTopics validates a topic list: non-empty, no duplicates, every
// topic known and granted. The error is an ErrorMessage.
func checkTopics(topics []string, c *token.Claims) *ErrorMessage {
	if len(topics) == 0 {
		e := errMsg(CodeBadSubscription, "topics: must list at least one topic")
		return &e
	}
	var forbidden []string
	for i, t := range topics {
		if slices.Contains(topics[:i], t) {
			e := errMsg(CodeBadSubscription, "topics[%d]: duplicate topic %q", i, truncate(t, 64))
			return &e
		}
		if !token.IsTopic(t) || !c.HasScope(t) {
			forbidden = append(forbidden, truncate(t, 64))
		}
	}
	if len(forbidden) > 0 {
		e := errMsg(CodeForbiddenTopic, "topics: not granted by the sync token: %s", strings.Join(forbidden, ", "))
		e.ForbiddenTopics = forbidden
		return &e
	}
	return nil
}
