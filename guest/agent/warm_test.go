package main

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// fill reaches the nested types the agent's JSON paths meet: a warm-up
// that left them nil would build none of their encoders or field tables.
func TestFillReachesNestedTypes(t *testing.T) {
	var s specs.Spec
	fill(reflect.ValueOf(s), 0) // not settable: nothing happens
	if s.Process != nil {
		t.Fatal("fill set a value it was not given addressably")
	}
	v := &specs.Spec{}
	warmJSON(v)
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"process.capabilities", v.Process != nil && v.Process.Capabilities != nil},
		{"process.rlimits", v.Process != nil && len(v.Process.Rlimits) == 1},
		{"linux.resources.memory", v.Linux != nil && v.Linux.Resources != nil && v.Linux.Resources.Memory != nil},
		{"linux.seccomp.syscalls.args", v.Linux != nil && v.Linux.Seccomp != nil && len(v.Linux.Seccomp.Syscalls) == 1 && len(v.Linux.Seccomp.Syscalls[0].Args) == 1},
		{"linux.sysctl", v.Linux != nil && len(v.Linux.Sysctl) == 1},
		{"mounts", len(v.Mounts) == 1},
	} {
		if !c.ok {
			t.Errorf("%s not filled", c.name)
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"seccomp"`) {
		t.Errorf("filled spec encodes without its seccomp section: %s", b)
	}
}

// warmUp covers every agent API message without failing on any.
func TestWarmUp(t *testing.T) {
	warmUp()
	warmed, missing := warmProto(agentapi.File_agent_proto.Messages())
	if missing != 0 || warmed < agentapi.File_agent_proto.Messages().Len() {
		t.Errorf("warm-up round-tripped %d agent API messages, %d without a Go type; want every top-level one (%d) and none missing",
			warmed, missing, agentapi.File_agent_proto.Messages().Len())
	}
}
