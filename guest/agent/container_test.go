package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestResolveUser(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\ndefault-user:x:1000:1000::/home/default-user:/bin/sh\n",
		"etc/group":  "root:x:0:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name   string
		user   string
		add    []uint32
		strict bool
		want   specs.User
		home   string
	}{
		{name: "empty is root", user: "", want: specs.User{UID: 0, GID: 0, AdditionalGids: []uint32{0}}, home: "/root"},
		{name: "merge adds image groups", user: "1000", add: []uint32{1234},
			want: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{1000, 1234, 50000}}, home: "/home/default-user"},
		{name: "strict leaves image groups out", user: "1000", add: []uint32{1234}, strict: true,
			want: specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{1000, 1234}}, home: "/home/default-user"},
		{name: "merge keeps image groups under an explicit group", user: "1000:2000",
			want: specs.User{UID: 1000, GID: 2000, AdditionalGids: []uint32{2000, 50000}}, home: "/home/default-user"},
		{name: "strict with an explicit group", user: "1000:2000", strict: true,
			want: specs.User{UID: 1000, GID: 2000, AdditionalGids: []uint32{2000}}, home: "/home/default-user"},
		{name: "unknown uid gets its uid as group", user: "4321", add: []uint32{7},
			want: specs.User{UID: 4321, GID: 0, AdditionalGids: []uint32{0, 7}}, home: "/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := &specs.Spec{Process: &specs.Process{User: specs.User{AdditionalGids: tc.add}}}
			if err := resolveUser(spec, root, tc.user, tc.strict); err != nil {
				t.Fatal(err)
			}
			got := spec.Process.User
			slices.Sort(got.AdditionalGids)
			if got.UID != tc.want.UID || got.GID != tc.want.GID || !slices.Equal(got.AdditionalGids, tc.want.AdditionalGids) {
				t.Errorf("user = %+v, want %+v", got, tc.want)
			}
			if h := envValue(spec.Process.Env, "HOME"); h != tc.home {
				t.Errorf("HOME = %q, want %q", h, tc.home)
			}
		})
	}
	if err := resolveUser(&specs.Spec{Process: &specs.Process{}}, root, "nobody-here", false); err == nil {
		t.Error("an unknown user name resolved")
	}
}
