package config

import (
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	tests := []struct {
		name    string
		file    *string // nil: no file
		check   func(Config) bool
		wantErr string
	}{
		{name: "missing file means defaults", check: func(c Config) bool {
			return c.VM.Accel == "auto" && c.VM.MemoryMiB == 256 && c.VM.MaxParallelStarts == goruntime.NumCPU() && c.VM.MaxParallelContainerStarts == goruntime.NumCPU()
		}},
		{name: "start bounds", file: ptr("[vm]\nmax_parallel_starts = -1\nmax_parallel_container_starts = 3\n"),
			check: func(c Config) bool { return c.VM.MaxParallelStarts == -1 && c.VM.MaxParallelContainerStarts == 3 }},
		{name: "bad start bound", file: ptr("[vm]\nmax_parallel_starts = -2\n"), wantErr: "max_parallel_starts"},
		{name: "overrides", file: ptr("[vm]\naccel = \"tcg\"\nmemory_mib = 512\nkernel_args = [\"hyperlet.v=2\"]\n"),
			check: func(c Config) bool {
				return c.VM.Accel == "tcg" && c.VM.MemoryMiB == 512 && c.VM.VCPUs == 1 && c.VM.KernelArgs[0] == "hyperlet.v=2"
			}},
		{name: "unknown key", file: ptr("[vm]\nacel = \"tcg\"\n"), wantErr: "unknown keys"},
		{name: "bad accel", file: ptr("[vm]\naccel = \"hvf\"\n"), wantErr: "vm.accel"},
		{name: "bad memory", file: ptr("[vm]\nmemory_mib = 16\n"), wantErr: "memory_mib"},
		{name: "bad handler name", file: ptr("[vm]\nhandlers = [\"Kata_VM\"]\n"), wantErr: "vm.handlers"},
		{name: "handler in both runtimes", file: ptr("[vm]\nhandlers = [\"runc\"]\n"), wantErr: "also a host_runtime handler"},
		{name: "syntax", file: ptr("[vm\n"), wantErr: "config"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.toml")
			if tc.file != nil {
				os.WriteFile(path, []byte(*tc.file), 0o644)
			}
			cfg, err := Load(path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !tc.check(cfg) {
				t.Fatalf("Load = %+v, %v", cfg, err)
			}
		})
	}
}

func ptr(s string) *string { return &s }
