package runs

import (
	"fmt"
)

// ChainEvent is the part of a stored event that the hash chain covers.
// (runs does not import store; callers copy the fields.)
type ChainEvent struct {
	Seq       int64
	EventType string
	Payload   []byte // canonical JSON as stored
	PrevHash  string // "" for seq 1
	EventHash string
}

// VerifyResult is the outcome of a chain verification.
type VerifyResult struct {
	OK         bool   `json:"ok"`
	EventCount int    `json:"event_count"`
	HeadHash   string `json:"head_hash"`
	BrokenSeq  int64  `json:"broken_seq,omitempty"`
	Reason     string `json:"reason,omitempty"`
}

// Reasons of a broken chain.
const (
	BrokenSeqGap         = "seq gap"
	BrokenPrevHash       = "prev_hash mismatch"
	BrokenEventHash      = "event_hash mismatch"
	BrokenInvalidPayload = "payload is not valid JSON"
)

// VerifyChain recomputes every event hash of runID in order. events must be
// the run's events in seq order. floorPrevHash is the expected prev_hash of
// the first event: "" when the log starts at seq 1, or the hash of the last
// pruned event when retention removed the head of the log (then the first
// event may have any seq).
func VerifyChain(runID string, events []ChainEvent, floorPrevHash string) VerifyResult {
	c := NewChain(runID, floorPrevHash)
	for _, ev := range events {
		if !c.Add(ev) {
			break
		}
	}
	return c.Result()
}

// Chain verifies a run's events incrementally, so that a caller can page
// through a long log without holding it in memory.
type Chain struct {
	runID   string
	floor   string
	prev    string
	lastSeq int64
	count   int
	broken  bool
	result  VerifyResult
}

// NewChain starts a verification; see VerifyChain for floorPrevHash.
func NewChain(runID, floorPrevHash string) *Chain {
	return &Chain{runID: runID, floor: floorPrevHash, prev: floorPrevHash}
}

// Add checks the next event and reports whether the chain is still intact.
func (c *Chain) Add(ev ChainEvent) bool {
	if c.broken {
		return false
	}
	switch {
	case c.count == 0 && c.floor == "" && ev.Seq != 1:
		return c.fail(ev.Seq, fmt.Sprintf("%s: first event has seq %d, want 1", BrokenSeqGap, ev.Seq))
	case c.count > 0 && ev.Seq != c.lastSeq+1:
		return c.fail(ev.Seq, fmt.Sprintf("%s: seq %d follows %d", BrokenSeqGap, ev.Seq, c.lastSeq))
	case ev.PrevHash != c.prev:
		return c.fail(ev.Seq, BrokenPrevHash)
	}
	payload, err := CanonicalizeRaw(ev.Payload)
	if err != nil {
		return c.fail(ev.Seq, BrokenInvalidPayload)
	}
	if EventHash(c.runID, ev.Seq, ev.EventType, payload, ev.PrevHash) != ev.EventHash {
		return c.fail(ev.Seq, BrokenEventHash)
	}
	c.prev, c.lastSeq = ev.EventHash, ev.Seq
	c.count++
	return true
}

func (c *Chain) fail(seq int64, reason string) bool {
	c.broken = true
	c.result = VerifyResult{OK: false, EventCount: c.count, HeadHash: c.prev, BrokenSeq: seq, Reason: reason}
	return false
}

// Result returns the verification outcome so far. For an intact chain,
// HeadHash is the last event's hash (the floor hash when there are none).
func (c *Chain) Result() VerifyResult {
	if c.broken {
		return c.result
	}
	return VerifyResult{OK: true, EventCount: c.count, HeadHash: c.prev}
}
