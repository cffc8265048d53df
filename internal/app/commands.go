package app

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/oaruntime/oaruntime/internal/config"
	"github.com/oaruntime/oaruntime/internal/loadgen"
	"github.com/oaruntime/oaruntime/internal/ops"
	"github.com/oaruntime/oaruntime/internal/projection"
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

func newKeyring(cfg *config.Config) (*token.Keyring, error) {
	return token.NewKeyring(token.KeyConfig{
		KeyID: cfg.SyncTokenKeyID, SigningKey: cfg.SyncTokenSigningKey,
		PreviousKeyID: cfg.SyncTokenPreviousKeyID, PreviousSigningKey: cfg.SyncTokenPreviousKey,
	})
}

func newMinter(cfg *config.Config, upstream ...func(context.Context) error) (*token.Minter, error) {
	kr, err := newKeyring(cfg)
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
	return ops.Command(ctx, args, stdout, stderr)
}

// khalaCmd runs `oaruntime khala reproject|verify` against the configured
// database; results are recorded in the store, from which the serving
// process exports them as metrics.
func khalaCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var cfg config.Config
	fs := flag.NewFlagSet("khala", flag.ContinueOnError)
	cfg.Register(fs)
	// Store flags come first; the rest is the khala subcommand and its flags.
	if err := parseFlags(fs, args, stderr); err != nil {
		return 2
	}
	if cfg.DatabaseURL == "" {
		cfg.DatabaseURL = "sqlite:" + dataPath(cfg.DataDir, config.DefaultDBFile)
	}
	st, err := openStore(ctx, &cfg)
	if err != nil {
		fmt.Fprintln(stderr, "oaruntime khala:", err)
		return 1
	}
	defer st.Close()
	if err := st.Migrate(ctx); err != nil {
		fmt.Fprintln(stderr, "oaruntime khala: migrate:", err)
		return 1
	}
	return projection.CommandWith(ctx, st, nil, projection.CommandConfig{Sink: newSink(&cfg, st)}, fs.Args(), stdout, stderr, isTerminal(stderr))
}

// loadgenCmd drives named workloads (and, with --fault, the operator fault
// endpoints of a server started with --enable-faults).
func loadgenCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	mk := clientFromEnv(fs)
	var profiles scopeList
	fs.Var(&profiles, "profile", "workload (repeatable): "+strings.Join(profileNames(), ", "))
	rate := fs.Float64("rate", 0, "runs (or mints) per second per profile; 0 keeps each profile's default")
	duration := fs.Duration("duration", 30*time.Second, "how long to drive load")
	var faults scopeList
	fs.Var(&faults, "fault", "set a fault before the load: http=RATE, executor=RATE, token-mint=on|off (repeatable; needs serve --enable-faults)")
	if err := parseFlags(fs, args, stderr); err != nil {
		return 2
	}
	c, err := mk()
	if err != nil {
		fmt.Fprintln(stderr, "oaruntime loadgen:", err)
		return 1
	}
	for _, f := range faults {
		kind, val, ok := strings.Cut(f, "=")
		if !ok {
			fmt.Fprintf(stderr, "oaruntime loadgen: --fault %q: want KIND=VALUE\n", f)
			return 2
		}
		body := map[string]any{}
		if kind == "token-mint" {
			body["fail"] = val == "on" || val == "true" || val == "1"
		} else {
			r, err := strconv.ParseFloat(val, 64)
			if err != nil {
				fmt.Fprintf(stderr, "oaruntime loadgen: --fault %s: %v\n", f, err)
				return 2
			}
			body["rate"] = r
		}
		if err := loadgen.SetFault(ctx, c, kind, body); err != nil {
			fmt.Fprintf(stderr, "oaruntime loadgen: --fault %s: %v\n", f, err)
			return 1
		}
		fmt.Fprintf(stdout, "fault %s set\n", f)
	}
	if len(profiles) == 0 {
		if len(faults) > 0 {
			return 0
		}
		profiles = scopeList{"healthy"}
	}
	all := loadgen.Profiles()
	g := loadgen.New(c)
	runCtx, cancel := context.WithTimeout(ctx, *duration)
	defer cancel()
	var wg sync.WaitGroup
	for _, name := range profiles {
		p, ok := all[name]
		if !ok {
			fmt.Fprintf(stderr, "oaruntime loadgen: unknown profile %q (have %s)\n", name, strings.Join(profileNames(), ", "))
			return 2
		}
		if *rate > 0 {
			p.Rate = *rate
		}
		wg.Add(1)
		go func() { defer wg.Done(); g.Run(runCtx, p) }()
	}
	wg.Wait()
	g.Wait()
	st := &g.Stats
	fmt.Fprintf(stdout, "loadgen: started %d, runs created %d, streams %d, mints %d (errors %d), failures %d, create-to-done p50 %s p99 %s\n",
		st.Started.Load(), st.Created.Load(), st.Streams.Load(), st.Mints.Load(), st.MintErrors.Load(), st.Failed.Load(),
		st.LatencyQuantile(0.5).Round(time.Millisecond), st.LatencyQuantile(0.99).Round(time.Millisecond))
	for msg, n := range st.Errors() {
		fmt.Fprintf(stdout, "  %5d x %s\n", n, msg)
	}
	if st.Failed.Load() > 0 {
		return 1
	}
	return 0
}

func profileNames() []string {
	var out []string
	for n := range loadgen.Profiles() {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
