// Package config holds the one Config struct of oaruntime: defaults in one
// place, each setting a flag with an environment variable.
package config

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Defaults.
const (
	DefaultAddr     = "127.0.0.1:4100"
	DefaultDataDir  = ".oaruntime"
	DefaultDBFile   = "runtime.db"
	DevSecretFile   = "dev-signature-secret"
	DevTokenKeyFile = "dev-sync-token-key"
)

// Config is the runtime configuration.
type Config struct {
	Addr            string
	DatabaseURL     string // postgres://... or sqlite:PATH
	SignatureSecret string
	DataDir         string

	SyncTokenKeyID         string
	SyncTokenSigningKey    string
	SyncTokenPreviousKeyID string
	SyncTokenPreviousKey   string
	KhalaSink              string // builtin | http
	KhalaURL               string
	KhalaAdminKey          string
	OTLPEndpoint           string
	LogLevel               string
	NodeID                 string

	LeaseTTL            time.Duration
	LeaseRenew          time.Duration
	JanitorInterval     time.Duration
	JanitorMaxAttempts  int
	ExecutorConcurrency int
	BreakerCooldown     time.Duration
	OperatorSubs        string // comma-separated principals allowed on operator routes
	SyncRetention       time.Duration
	ToolManifests       string // comma-separated files or directories of tool manifests
	EgressAllowlist     string // comma-separated hosts tools may reach (empty: any public host)
	OpenAIBaseURL       string
	OpenAIAPIKey        string
	OpenAIModel         string
	StreamIdle          time.Duration
	StreamHeartbeat     time.Duration
	ShutdownGrace       time.Duration
	// EnableFaults exposes the operator fault-injection endpoints used by
	// `oaruntime loadgen` and the alert tests. Off by default.
	EnableFaults bool
	// PprofAddr, when set, serves net/http/pprof on its own listener (keep
	// it on localhost: profiles reveal internals). Off by default.
	PprofAddr string
	// GCHeapFloorMB keeps the Go heap goal at least this many MiB (see
	// package gcfloor); 0 turns it off. GOGC in the environment wins.
	GCHeapFloorMB int
}

// env returns the environment value of key or def.
func env(key, def string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return def
}

func envDuration(key string, def time.Duration) time.Duration {
	if v := os.Getenv(key); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

// envInt returns the integer value of key, def when unset, and -1 when it
// is not an integer (Resolve refuses negative values by name).
func envInt(key string, def int) int {
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return -1
	}
	return n
}

// Register binds every setting to fs, defaulting from the environment.
func (c *Config) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.Addr, "addr", env("OA_RUNTIME_ADDR", DefaultAddr), "listen address (OA_RUNTIME_ADDR)")
	fs.StringVar(&c.DatabaseURL, "database-url", env("OA_RUNTIME_DATABASE_URL", ""), "postgres://... or sqlite:PATH (OA_RUNTIME_DATABASE_URL; default sqlite:./.oaruntime/runtime.db)")
	fs.StringVar(&c.SignatureSecret, "signature-secret", env("OA_RUNTIME_SIGNATURE_SECRET", ""), "HMAC secret of the internal API (OA_RUNTIME_SIGNATURE_SECRET)")
	fs.StringVar(&c.DataDir, "data-dir", env("OA_RUNTIME_DATA_DIR", DefaultDataDir), "directory for the embedded database and development secrets (OA_RUNTIME_DATA_DIR)")
	fs.StringVar(&c.SyncTokenKeyID, "sync-token-key-id", env("OA_SYNC_TOKEN_KEY_ID", ""), "kid of the sync token signing key (OA_SYNC_TOKEN_KEY_ID)")
	fs.StringVar(&c.SyncTokenSigningKey, "sync-token-signing-key", env("OA_SYNC_TOKEN_SIGNING_KEY", ""), "sync token HS256 key (OA_SYNC_TOKEN_SIGNING_KEY)")
	fs.StringVar(&c.SyncTokenPreviousKeyID, "sync-token-previous-key-id", env("OA_SYNC_TOKEN_PREVIOUS_KEY_ID", ""), "previous kid, accepted during rotation (OA_SYNC_TOKEN_PREVIOUS_KEY_ID)")
	fs.StringVar(&c.SyncTokenPreviousKey, "sync-token-previous-signing-key", env("OA_SYNC_TOKEN_PREVIOUS_SIGNING_KEY", ""), "previous key (OA_SYNC_TOKEN_PREVIOUS_SIGNING_KEY)")
	fs.StringVar(&c.KhalaSink, "khala-sink", env("OA_KHALA_SINK", "builtin"), "projection sink: builtin or http (OA_KHALA_SINK)")
	fs.StringVar(&c.KhalaURL, "khala-url", env("OA_KHALA_URL", ""), "external Khala base URL for the http sink (OA_KHALA_URL)")
	fs.StringVar(&c.KhalaAdminKey, "khala-admin-key", env("OA_KHALA_ADMIN_KEY", ""), "external Khala admin key (OA_KHALA_ADMIN_KEY)")
	fs.StringVar(&c.OTLPEndpoint, "otlp-endpoint", env("OTEL_EXPORTER_OTLP_ENDPOINT", ""), "OTLP/HTTP trace endpoint (OTEL_EXPORTER_OTLP_ENDPOINT)")
	fs.StringVar(&c.LogLevel, "log-level", env("OA_RUNTIME_LOG_LEVEL", "info"), "debug, info, warn, error (OA_RUNTIME_LOG_LEVEL)")
	fs.StringVar(&c.NodeID, "node-id", env("OA_RUNTIME_NODE_ID", ""), "executor identity in leases (OA_RUNTIME_NODE_ID; default hostname-pid-random)")
	fs.DurationVar(&c.LeaseTTL, "lease-ttl", envDuration("OA_RUNTIME_LEASE_TTL", 10*time.Second), "run lease TTL (OA_RUNTIME_LEASE_TTL)")
	fs.DurationVar(&c.LeaseRenew, "lease-renew", envDuration("OA_RUNTIME_LEASE_RENEW", 3*time.Second), "lease renewal interval (OA_RUNTIME_LEASE_RENEW)")
	fs.DurationVar(&c.JanitorInterval, "janitor-interval", envDuration("OA_RUNTIME_JANITOR_INTERVAL", 2*time.Second), "janitor scan interval (OA_RUNTIME_JANITOR_INTERVAL)")
	fs.IntVar(&c.JanitorMaxAttempts, "janitor-max-attempts", 3, "reclaims without progress before a run fails with executor_recovery_exhausted")
	fs.DurationVar(&c.BreakerCooldown, "breaker-cooldown", envDuration("OA_RUNTIME_BREAKER_COOLDOWN", 30*time.Second), "how long an open provider circuit breaker waits before one probe (OA_RUNTIME_BREAKER_COOLDOWN)")
	fs.DurationVar(&c.SyncRetention, "sync-retention", envDuration("OA_SYNC_RETENTION", 24*time.Hour), "how long sync stream rows are kept for resume (OA_SYNC_RETENTION)")
	fs.StringVar(&c.OperatorSubs, "operator-subs", env("OA_RUNTIME_OPERATOR_SUBS", ""), "comma-separated principals (sub) allowed on operator routes: drift, reproject, verify, faults (OA_RUNTIME_OPERATOR_SUBS; default user:operator, plus user:local with SQLite)")
	fs.StringVar(&c.ToolManifests, "tool-manifests", env("OA_RUNTIME_TOOL_MANIFESTS", ""), "comma-separated tool manifest files or directories (OA_RUNTIME_TOOL_MANIFESTS)")
	fs.StringVar(&c.EgressAllowlist, "egress-allowlist", env("OA_RUNTIME_EGRESS_ALLOWLIST", ""), "comma-separated hosts tools may reach; empty allows any public host (OA_RUNTIME_EGRESS_ALLOWLIST)")
	fs.StringVar(&c.OpenAIBaseURL, "openai-base-url", env("OA_OPENAI_BASE_URL", ""), "OpenAI-compatible API base URL for provider \"openai\" (OA_OPENAI_BASE_URL)")
	fs.StringVar(&c.OpenAIAPIKey, "openai-api-key", env("OA_OPENAI_API_KEY", ""), "API key for provider \"openai\" (OA_OPENAI_API_KEY)")
	fs.StringVar(&c.OpenAIModel, "openai-model", env("OA_OPENAI_MODEL", "gpt-4o-mini"), "default model for provider \"openai\" (OA_OPENAI_MODEL)")
	fs.IntVar(&c.ExecutorConcurrency, "executor-concurrency", 64, "runs executed at once by this node")
	fs.DurationVar(&c.StreamIdle, "stream-idle", envDuration("OA_RUNTIME_STREAM_IDLE", 60*time.Second), "SSE tail timeout without new events (OA_RUNTIME_STREAM_IDLE)")
	fs.DurationVar(&c.StreamHeartbeat, "stream-heartbeat", envDuration("OA_RUNTIME_STREAM_HEARTBEAT", 15*time.Second), "SSE heartbeat interval (OA_RUNTIME_STREAM_HEARTBEAT)")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", 10*time.Second, "time allowed for a clean shutdown")
	fs.StringVar(&c.PprofAddr, "pprof-addr", env("OA_RUNTIME_PPROF_ADDR", ""), "serve Go profiles (net/http/pprof) on this address, e.g. 127.0.0.1:6060 (OA_RUNTIME_PPROF_ADDR; off by default)")
	fs.IntVar(&c.GCHeapFloorMB, "gc-heap-floor-mb", envInt("OA_RUNTIME_GC_HEAP_FLOOR_MB", 256), "keep the Go heap goal at least this many MiB, so a small heap is not collected several times a second; 0 = off, and GOGC in the environment wins (OA_RUNTIME_GC_HEAP_FLOOR_MB)")
	fs.BoolVar(&c.EnableFaults, "enable-faults", env("OA_RUNTIME_ENABLE_FAULTS", "") == "1", "expose operator fault-injection endpoints (OA_RUNTIME_ENABLE_FAULTS=1); never in production")
}

// IsPostgres reports whether the database is PostgreSQL.
func (c *Config) IsPostgres() bool {
	return strings.HasPrefix(c.DatabaseURL, "postgres://") || strings.HasPrefix(c.DatabaseURL, "postgresql://")
}

// SQLitePath is the file of the embedded database.
func (c *Config) SQLitePath() string {
	if p, ok := strings.CutPrefix(c.DatabaseURL, "sqlite:"); ok && p != "" {
		return p
	}
	return filepath.Join(c.DataDir, DefaultDBFile)
}

// Resolve fills derived defaults and validates. With SQLite and no secret it
// creates (or reuses) a development secret in DataDir so that a newcomer
// needs no setup; with PostgreSQL a missing secret is an error.
func (c *Config) Resolve() error {
	if c.DatabaseURL == "" {
		c.DatabaseURL = "sqlite:" + filepath.Join(c.DataDir, DefaultDBFile)
	}
	if !c.IsPostgres() && !strings.HasPrefix(c.DatabaseURL, "sqlite:") {
		return fmt.Errorf("OA_RUNTIME_DATABASE_URL: want postgres://... or sqlite:PATH, got %q", c.DatabaseURL)
	}
	if c.GCHeapFloorMB < 0 {
		return errors.New("OA_RUNTIME_GC_HEAP_FLOOR_MB (--gc-heap-floor-mb): want a whole number of MiB, 0 or more")
	}
	if c.KhalaSink != "builtin" && c.KhalaSink != "http" {
		return fmt.Errorf("OA_KHALA_SINK: want builtin or http, got %q", c.KhalaSink)
	}
	if c.KhalaSink == "http" && c.KhalaURL == "" {
		return errors.New("OA_KHALA_URL is required when OA_KHALA_SINK=http")
	}
	if c.SignatureSecret == "" {
		if c.IsPostgres() {
			return errors.New("OA_RUNTIME_SIGNATURE_SECRET is required with PostgreSQL: set a random secret (32 or more characters; 16 at least) shared with the control plane")
		}
		s, err := devSecret(c.DataDir, DevSecretFile, true)
		if err != nil {
			return err
		}
		c.SignatureSecret = s
	}
	if len(c.SignatureSecret) < 16 {
		return errors.New("OA_RUNTIME_SIGNATURE_SECRET: at least 16 characters")
	}
	if c.SyncTokenSigningKey == "" && !c.IsPostgres() {
		k, err := devSecret(c.DataDir, DevTokenKeyFile, true)
		if err != nil {
			return err
		}
		c.SyncTokenSigningKey = k
		if c.SyncTokenKeyID == "" {
			c.SyncTokenKeyID = "dev"
		}
	}
	if c.OperatorSubs == "" {
		c.OperatorSubs = "user:operator"
		if !c.IsPostgres() {
			c.OperatorSubs += ",user:local" // the development client's default principal
		}
	}
	if c.NodeID == "" {
		h, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		c.NodeID = fmt.Sprintf("%s-%d-%s", h, os.Getpid(), hex.EncodeToString(b[:]))
	}
	if c.LeaseRenew <= 0 || c.LeaseRenew >= c.LeaseTTL {
		return fmt.Errorf("lease-renew (%s) must be positive and below lease-ttl (%s)", c.LeaseRenew, c.LeaseTTL)
	}
	return nil
}

// ReadDevSecret returns the development secret serve created, for the run client.
func ReadDevSecret(dataDir string) (string, error) {
	return devSecret(dataDir, DevSecretFile, false)
}

func devSecret(dir, name string, create bool) (string, error) {
	p := filepath.Join(dir, name)
	if b, err := os.ReadFile(p); err == nil {
		return strings.TrimSpace(string(b)), nil
	} else if !create {
		return "", fmt.Errorf("read development secret %s (start `oaruntime serve` first, or set OA_RUNTIME_SIGNATURE_SECRET): %w", p, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	s := hex.EncodeToString(b[:])
	if err := os.WriteFile(p, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write development secret: %w", err)
	}
	return s, nil
}

// OperatorSubList is OperatorSubs split.
func (c *Config) OperatorSubList() []string { return List(c.OperatorSubs) }

// List splits a comma-separated setting, dropping blanks.
func List(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
