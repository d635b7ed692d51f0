package vm

import "testing"

func TestValidate(t *testing.T) {
	good := Config{ID: "a", Dir: "/run/x", Kernel: "k", Initrd: "i", VCPUs: 1, MemoryMiB: 128, Accel: AccelTCG}
	tests := []struct {
		name string
		mod  func(*Config)
		ok   bool
	}{
		{"good", func(*Config) {}, true},
		{"no id", func(c *Config) { c.ID = "" }, false},
		{"no dir", func(c *Config) { c.Dir = "" }, false},
		{"no kernel", func(c *Config) { c.Kernel = "" }, false},
		{"zero cpus", func(c *Config) { c.VCPUs = 0 }, false},
		{"tiny memory", func(c *Config) { c.MemoryMiB = 32 }, false},
		{"auto unresolved", func(c *Config) { c.Accel = AccelAuto }, false},
	}
	for _, tc := range tests {
		c := good
		tc.mod(&c)
		if err := c.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate = %v", tc.name, err)
		}
	}
}

func TestParseAccel(t *testing.T) {
	for in, want := range map[string]Accel{"": AccelAuto, "auto": AccelAuto, "kvm": AccelKVM, "tcg": AccelTCG} {
		if got, err := ParseAccel(in); err != nil || got != want {
			t.Errorf("ParseAccel(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseAccel("hvf"); err == nil {
		t.Error("ParseAccel(hvf) succeeded")
	}
}
