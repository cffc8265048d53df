package config

import (
	"flag"
	"io"
	"strings"
	"testing"
)

func TestGCHeapFloor(t *testing.T) {
	for _, tc := range []struct {
		name, env string
		args      []string
		want      int
		wantErr   string
	}{
		{name: "default", want: 256},
		{name: "env", env: "64", want: 64},
		{name: "off", args: []string{"--gc-heap-floor-mb", "0"}, want: 0},
		{name: "junk env", env: "lots", wantErr: "OA_RUNTIME_GC_HEAP_FLOOR_MB"},
		{name: "negative flag", args: []string{"--gc-heap-floor-mb", "-5"}, wantErr: "OA_RUNTIME_GC_HEAP_FLOOR_MB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("OA_RUNTIME_GC_HEAP_FLOOR_MB", tc.env)
			var c Config
			fs := flag.NewFlagSet("serve", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			c.Register(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			c.DataDir = t.TempDir()
			err := c.Resolve()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Resolve = %v, want an error naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.GCHeapFloorMB != tc.want {
				t.Fatalf("GCHeapFloorMB = %d, want %d", c.GCHeapFloorMB, tc.want)
			}
		})
	}
}
