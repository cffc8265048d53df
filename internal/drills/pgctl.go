package drills

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// withSchema adds the store's schema parameter to a PostgreSQL URL, so that
// each drill works in a schema of its own.
func withSchema(dbURL, schema string) (string, error) {
	u, err := url.Parse(dbURL)
	if err != nil {
		return "", fmt.Errorf("OA_TEST_DATABASE_URL: %w", err)
	}
	q := u.Query()
	q.Set("schema", schema)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// dropSchema removes a drill's schema after a passing drill (a failing one
// keeps it for inspection).
func dropSchema(ctx context.Context, dbURL, schema string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("connect to drop schema %s: %w", schema, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		return fmt.Errorf("drop schema %s: %w", schema, err)
	}
	return nil
}

// PGControl stops and starts the PostgreSQL server the drills use, with
// pg_ctl, as the postgres user when running as root (PostgreSQL refuses to
// run as root).
type PGControl struct {
	Bin  string // directory holding pg_ctl (OA_TEST_PG_BIN)
	Data string // the cluster's data directory (OA_TEST_PG_DATA)
}

// plainArg is what may appear in a server option or path we pass through a
// shell: the options the test clusters use have no spaces or quotes.
var plainArg = regexp.MustCompile(`^[A-Za-z0-9_./=:,+@%-]+$`)

// parsePostmasterOpts returns the server options of a postmaster.opts file
// (the command line the running server was started with), without the
// binary and its -D argument, so that a stopped server can be started again
// exactly as it was (same port, socket directory, settings).
func parsePostmasterOpts(content string) ([]string, error) {
	content = strings.TrimSpace(content)
	if content == "" {
		return nil, errors.New("postmaster.opts is empty")
	}
	// The first word is the binary (unquoted); every argument is "quoted".
	sp := strings.IndexByte(content, ' ')
	if sp < 0 {
		return nil, nil
	}
	rest := content[sp+1:]
	var args []string
	for rest = strings.TrimSpace(rest); rest != ""; rest = strings.TrimSpace(rest) {
		if rest[0] != '"' {
			return nil, fmt.Errorf("postmaster.opts: unquoted argument at %q", rest)
		}
		end := strings.IndexByte(rest[1:], '"')
		if end < 0 {
			return nil, fmt.Errorf("postmaster.opts: unterminated quote at %q", rest)
		}
		args = append(args, rest[1:1+end])
		rest = rest[end+2:]
	}
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == "-D" {
			i++ // the data directory is given to pg_ctl separately
			continue
		}
		if !plainArg.MatchString(args[i]) {
			return nil, fmt.Errorf("postmaster.opts: argument %q needs quoting; the drill only restarts servers with plain options", args[i])
		}
		out = append(out, args[i])
	}
	return out, nil
}

// Options reads the running server's options.
func (p PGControl) Options() ([]string, error) {
	b, err := os.ReadFile(filepath.Join(p.Data, "postmaster.opts"))
	if err != nil {
		return nil, fmt.Errorf("read postmaster.opts (is OA_TEST_PG_DATA the running cluster?): %w", err)
	}
	return parsePostmasterOpts(string(b))
}

func (p PGControl) pgctl(ctx context.Context, args string) ([]byte, error) {
	if !plainArg.MatchString(p.Data) || !plainArg.MatchString(p.Bin) {
		return nil, fmt.Errorf("OA_TEST_PG_BIN %q / OA_TEST_PG_DATA %q: only plain paths are supported", p.Bin, p.Data)
	}
	line := filepath.Join(p.Bin, "pg_ctl") + " -D " + p.Data + " " + args
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.CommandContext(ctx, "su", "postgres", "-s", "/bin/sh", "-c", line)
	} else {
		cmd = exec.CommandContext(ctx, "/bin/sh", "-c", line)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", line, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Stop modes of pg_ctl.
const (
	StopImmediate = "immediate" // a crash: no checkpoint, recovery from WAL on start
	StopFast      = "fast"      // a clean restart: sessions dropped, checkpoint written
)

// Stop stops the server in mode, dropping every connection.
func (p PGControl) Stop(ctx context.Context, mode string) error {
	if mode != StopImmediate && mode != StopFast {
		return fmt.Errorf("pg_ctl stop mode %q: want immediate or fast", mode)
	}
	_, err := p.pgctl(ctx, "-m "+mode+" -w -t 60 stop")
	return err
}

// stopMode picks how database_restart stops the server: a crash
// (immediate) when the server acknowledges commits only once they are
// durable, a fast stop when synchronous_commit is off. With asynchronous
// commit a crash loses transactions the server already acknowledged (the
// test clusters run that way for speed): the drill would then measure
// PostgreSQL's configuration, not the runtime. override (OA_DRILL_PG_STOP_MODE)
// forces a mode.
func stopMode(ctx context.Context, dbURL, override string) (mode, why string, err error) {
	if override != "" {
		return override, "forced by OA_DRILL_PG_STOP_MODE", nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return "", "", fmt.Errorf("connect to read synchronous_commit: %w", err)
	}
	defer conn.Close(ctx)
	var sc string
	if err := conn.QueryRow(ctx, "SHOW synchronous_commit").Scan(&sc); err != nil {
		return "", "", fmt.Errorf("show synchronous_commit: %w", err)
	}
	if sc == "off" {
		return StopFast, "synchronous_commit=off: a crash would lose acknowledged commits, so the server is stopped fast (clean) instead", nil
	}
	return StopImmediate, "synchronous_commit=" + sc + ": the server is crashed (immediate stop, WAL recovery on start)", nil
}

// Start starts the server with opts (from Options, read while it ran).
func (p PGControl) Start(ctx context.Context, opts []string) error {
	_, err := p.pgctl(ctx, `-l `+filepath.Join(p.Data, "drill-restart.log")+` -w -t 60 -o "`+strings.Join(opts, " ")+`" start`)
	return err
}

// Running reports whether pg_ctl sees the server up.
func (p PGControl) Running(ctx context.Context) bool {
	_, err := p.pgctl(ctx, "status")
	return err == nil
}
