package sandbox

import (
	"errors"
	"math"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestValidateUserns(t *testing.T) {
	m := func(c, h, l uint32) *runtime.IDMapping {
		return &runtime.IDMapping{ContainerId: c, HostId: h, Length: l}
	}
	one := []*runtime.IDMapping{m(0, 1000, 100000)}
	for _, tc := range []struct {
		name string
		u    *runtime.UserNamespace
		ok   bool
	}{
		{"none", nil, true},
		{"node", &runtime.UserNamespace{Mode: runtime.NamespaceMode_NODE}, true},
		{"node with mappings", &runtime.UserNamespace{Mode: runtime.NamespaceMode_NODE, Uids: one, Gids: one}, false},
		{"pod", &runtime.UserNamespace{Mode: runtime.NamespaceMode_POD, Uids: one, Gids: one}, true},
		{"pod without mappings", &runtime.UserNamespace{Mode: runtime.NamespaceMode_POD}, false},
		{"pod without gid mappings", &runtime.UserNamespace{Mode: runtime.NamespaceMode_POD, Uids: one}, false},
		{"two mappings", &runtime.UserNamespace{Mode: runtime.NamespaceMode_POD,
			Uids: []*runtime.IDMapping{m(0, 1000, 100000), m(0, 2000, 100000)}, Gids: one}, false},
		{"root unmapped", &runtime.UserNamespace{Mode: runtime.NamespaceMode_POD, Uids: []*runtime.IDMapping{m(1, 1000, 100000)}, Gids: one}, false},
		{"empty mapping", &runtime.UserNamespace{Mode: runtime.NamespaceMode_POD, Uids: one, Gids: []*runtime.IDMapping{m(0, 1000, 0)}}, false},
		{"overflowing mapping", &runtime.UserNamespace{Mode: runtime.NamespaceMode_POD, Uids: []*runtime.IDMapping{m(0, math.MaxUint32-10, 100)}, Gids: one}, false},
		{"container", &runtime.UserNamespace{Mode: runtime.NamespaceMode_CONTAINER}, false},
		{"target", &runtime.UserNamespace{Mode: runtime.NamespaceMode_TARGET}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateUserns(tc.u)
			if tc.ok != (err == nil) {
				t.Fatalf("validateUserns = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
		})
	}
}
