package app

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/oaruntime/oaruntime/internal/config"
	"github.com/oaruntime/oaruntime/internal/sync/token"
	"github.com/oaruntime/oaruntime/internal/tools/policy"
)

// toolsCmd: `oaruntime tools policy-check --cases FILE`.
func toolsCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "policy-check" {
		fmt.Fprintln(stderr, "usage: oaruntime tools policy-check --cases FILE")
		return 2
	}
	fs := flag.NewFlagSet("tools policy-check", flag.ContinueOnError)
	cases := fs.String("cases", "", "tool-policy parity cases JSON (e.g. openclaw_tool_policy_parity_cases.json)")
	if err := parseFlags(fs, args[1:], stderr); err != nil {
		return 2
	}
	if *cases == "" {
		fmt.Fprintln(stderr, "oaruntime tools policy-check: --cases is required")
		return 2
	}
	drift, err := policy.PolicyCheck(ctx, *cases, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "oaruntime tools policy-check:", err)
		return 1
	}
	if drift > 0 {
		return 1
	}
	return 0
}

type scopeList []string

func (s *scopeList) String() string     { return strings.Join(*s, ",") }
func (s *scopeList) Set(v string) error { *s = append(*s, v); return nil }

// tokenCmd: `oaruntime token mint --sub user:ID --scope TOPIC...`, signed with
// the configured keyring (operator tool; no server needed).
func tokenCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "mint" {
		fmt.Fprintln(stderr, "usage: oaruntime token mint --sub user:ID --scope TOPIC [--scope TOPIC...] [--ttl 5m]")
		return 2
	}
	var cfg config.Config
	fs := flag.NewFlagSet("token mint", flag.ContinueOnError)
	cfg.Register(fs)
	sub := fs.String("sub", "", "subject: user:ID or guest:SCOPE")
	var scopes scopeList
	fs.Var(&scopes, "scope", "topic the token may read (repeatable)")
	ttl := fs.Duration("ttl", 5*time.Minute, "token lifetime (60s..900s)")
	if err := parseFlags(fs, args[1:], stderr); err != nil {
		return 2
	}
	if err := cfg.Resolve(); err != nil {
		fmt.Fprintln(stderr, "oaruntime token mint:", err)
		return 1
	}
	minter, err := newMinter(&cfg)
	if err != nil {
		fmt.Fprintln(stderr, "oaruntime token mint:", err)
		return 1
	}
	secs := int64(ttl.Seconds())
	var sc []string
	if len(scopes) > 0 {
		sc = scopes
	}
	tok, err := minter.Mint(ctx, token.MintRequest{Subject: *sub, Scopes: sc, TTLSeconds: &secs})
	if err != nil {
		fmt.Fprintln(stderr, "oaruntime token mint:", err)
		return 1
	}
	fmt.Fprintln(stdout, tok.Token)
	return 0
}

func newMinter(cfg *config.Config, upstream ...func(context.Context) error) (*token.Minter, error) {
	kr, err := token.NewKeyring(token.KeyConfig{
		KeyID: cfg.SyncTokenKeyID, SigningKey: cfg.SyncTokenSigningKey,
		PreviousKeyID: cfg.SyncTokenPreviousKeyID, PreviousSigningKey: cfg.SyncTokenPreviousKey,
	})
	if err != nil {
		return nil, err
	}
	mc := token.MinterConfig{Keyring: kr}
	if len(upstream) > 0 {
		mc.Upstream = upstream[0]
	}
	return token.NewMinter(mc), nil
}

func opsCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return notYet("ops", stderr)
}

func khalaCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return notYet("khala", stderr)
}

func loadgenCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return notYet("loadgen", stderr)
}

func notYet(cmd string, stderr io.Writer) int {
	fmt.Fprintf(stderr, "oaruntime %s: not available in this build yet\n", cmd)
	return 2
}
