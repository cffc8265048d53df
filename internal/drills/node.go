package drills

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/oaruntime/oaruntime/internal/client"
)

// Node is one `oaruntime serve` process, restartable on the same address
// and database.
type Node struct {
	Name    string // for logs: "sqlite-node", "replica-a"
	Addr    string // host:port, kept across restarts so clients reconnect
	env     []string
	logPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	starts int
	nodeID string
	exit   string // how the last process ended, e.g. "exit status 0"
}

// freeAddr returns a loopback address nothing listens on right now.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr, nil
}

// serveEnv is the process environment of a node: the parent's, without any
// OA_* or OTEL_* setting that could leak a developer's configuration into
// the drill, plus the drill's settings.
func serveEnv(settings map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "OA_") || strings.HasPrefix(kv, "OTEL_") {
			continue
		}
		env = append(env, kv)
	}
	for k, v := range settings {
		env = append(env, k+"="+v)
	}
	return env
}

// newNode prepares a node; Start launches it.
func (d *Driver) newNode(name string, settings map[string]string) (*Node, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	s := map[string]string{
		"OA_RUNTIME_ADDR":             addr,
		"OA_RUNTIME_SIGNATURE_SECRET": d.secret,
		"OA_RUNTIME_LEASE_TTL":        d.cfg.LeaseTTL.String(),
		"OA_RUNTIME_LEASE_RENEW":      d.cfg.LeaseRenew.String(),
		"OA_RUNTIME_JANITOR_INTERVAL": d.cfg.JanitorInterval.String(),
		"OA_RUNTIME_LOG_LEVEL":        "info",
		"OA_SYNC_TOKEN_KEY_ID":        d.syncKeyID,
		"OA_SYNC_TOKEN_SIGNING_KEY":   d.syncKey,
	}
	for k, v := range settings {
		s[k] = v
	}
	return &Node{Name: name, Addr: addr, env: serveEnv(s), logPath: d.logPath(name)}, nil
}

// NodeID is the lease owner identity of the current (or last) process.
func (n *Node) NodeID() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.nodeID
}

// Start launches `serve` under nodeID and waits until /readyz answers 200.
func (n *Node) Start(ctx context.Context, bin, nodeID string) error {
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("node %s: open log: %w", n.Name, err)
	}
	fmt.Fprintf(logf, "\n=== drill: start %s as %s on %s at %s ===\n", n.Name, nodeID, n.Addr, time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(bin, "serve")
	cmd.Env = append(append([]string(nil), n.env...), "OA_RUNTIME_NODE_ID="+nodeID)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a signal meant for the drill runner (Ctrl-C)
	// must not reach the node, whose death the drill controls.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("node %s: start %s serve: %w", n.Name, bin, err)
	}
	exited := make(chan struct{})
	go func() {
		err := cmd.Wait()
		_ = logf.Close()
		state := "exited"
		if cmd.ProcessState != nil {
			state = cmd.ProcessState.String()
		} else if err != nil {
			state = err.Error()
		}
		n.mu.Lock()
		n.exit = state
		n.mu.Unlock()
		close(exited)
	}()
	n.mu.Lock()
	n.cmd, n.exited, n.nodeID = cmd, exited, nodeID
	n.starts++
	n.mu.Unlock()
	if err := n.waitReady(ctx, 90*time.Second, exited); err != nil {
		n.Kill()
		return err
	}
	return nil
}

func (n *Node) waitReady(ctx context.Context, timeout time.Duration, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		code, _, err := readyz(ctx, hc, n.Addr)
		if err == nil && code == http.StatusOK {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("node %s exited before it was ready: %s", n.Name, tail(n.logPath, 600))
		case <-ctx.Done():
			return fmt.Errorf("node %s not ready after %s (last: %d %v): %s", n.Name, timeout, code, err, tail(n.logPath, 600))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Kill sends SIGKILL and waits for the process to be gone: no shutdown
// hook runs, leases stay held, streams break mid-message.
func (n *Node) Kill() time.Time {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	at := time.Now()
	if cmd == nil || cmd.Process == nil {
		return at
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	return at
}

// Stop ends the node cleanly (SIGTERM), killing it when it does not stop
// within 20 s. Used for cleanup only.
func (n *Node) Stop() {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}
}

// ExitState says how the last process ended ("" while it runs). A node
// that ended with "exit status 0" without the drill stopping it received
// SIGTERM or SIGINT from outside the drill (serve shuts down cleanly on
// those): something else on the machine is killing oaruntime processes.
func (n *Node) ExitState() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.exit
}

// Alive reports whether the process runs.
func (n *Node) Alive() bool {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// Client is a signed API client for this node.
func (d *Driver) client(n *Node) *client.Client {
	c := client.New("http://"+n.Addr, []byte(d.secret), drillSub)
	c.HTTP.Timeout = 10 * time.Second
	return c
}

// readyzBody is the part of /readyz the drills read.
type readyzBody struct {
	Status string            `json:"status"`
	Failed string            `json:"failed"`
	Checks map[string]string `json:"checks"`
}

func readyz(ctx context.Context, hc *http.Client, addr string) (int, readyzBody, error) {
	var body readyzBody
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
	if err != nil {
		return 0, body, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, body, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err := json.Unmarshal(raw, &body); err != nil {
		return resp.StatusCode, body, fmt.Errorf("readyz body: %w", err)
	}
	return resp.StatusCode, body, nil
}

// tail returns the last n bytes of a file, for error messages.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "(log: " + err.Error() + ")"
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return "(log: " + err.Error() + ")"
	}
	return "log tail: " + strings.TrimSpace(string(b))
}

// requireAlive records a failure for every node that is not running at the
// end of a drill (the drill restarts what it kills, so none should be down).
func requireAlive(r *rec, nodes ...*Node) {
	for _, n := range nodes {
		if !n.Alive() {
			r.failf("node %s ended (%s) during the drill: %s", n.Name, n.ExitState(), tail(n.logPath, 300))
		}
	}
}
