// Package app implements the oaruntime subcommands: it builds the
// configuration and wires the services of internal/ together.
package app

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Version and Revision are stamped at build time (-ldflags -X).
var (
	Version  = "dev"
	Revision = "unknown"
)

const usage = `oaruntime: durable runtime for agent runs

Commands:
  serve                         run the service (default 127.0.0.1:4100, SQLite under ./.oaruntime/)
  run [--prompt TEXT] [--script FILE]
                                create a run, send a frame, print its events; exit 0 on succeeded
  migrate [--status]            apply (or list) database migrations
  khala reproject --all | --run-id ID | --worker-id ID [--dry-run]
  khala verify [--sample N]     parity audit of the sync store against the run log
  token mint --sub user:ID --scope TOPIC...
  ops generate | ops check      write / verify deploy/monitoring/
  ops rules [--time-divisor N]  print the alert rules (windows divided by N, for drills)
  tools policy-check --cases FILE
  loadgen [--profile NAME]... [--rate R] [--duration D] [--fault KIND=VALUE]...
                                drive load and faults against a running server

Configuration: flags, each with an environment variable (see --help of each command).
`

// Main runs one subcommand and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "serve":
		err = serveCmd(ctx, rest, stdout, stderr)
	case "run":
		return runCmd(ctx, rest, stdout, stderr)
	case "migrate":
		err = migrateCmd(ctx, rest, stdout, stderr)
	case "ops":
		return opsCmd(ctx, rest, stdout, stderr)
	case "tools":
		return toolsCmd(ctx, rest, stdout, stderr)
	case "token":
		return tokenCmd(ctx, rest, stdout, stderr)
	case "khala":
		return khalaCmd(ctx, rest, stdout, stderr)
	case "loadgen":
		return loadgenCmd(ctx, rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "oaruntime: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		fmt.Fprintf(stderr, "oaruntime %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

// parseFlags parses a subcommand's flags, printing errors to stderr.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	return fs.Parse(args)
}

// isTerminal reports whether w is an interactive terminal (for progress bars).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// dataPath joins the data dir, keeping absolute paths.
func dataPath(dir, name string) string {
	if filepath.IsAbs(name) || strings.HasPrefix(name, ".") {
		return name
	}
	return filepath.Join(dir, name)
}
