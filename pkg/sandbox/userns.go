package sandbox

import (
	"fmt"
	"math"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// validateUserns checks a pod's user namespace request. NODE (or none)
// runs containers in the VM's own user namespace; POD gives the pod one
// user namespace with a single UID and a single GID mapping that maps
// container root, as kubelet sends. CONTAINER and TARGET are not modes a
// pod can have.
func validateUserns(u *runtime.UserNamespace) error {
	if u == nil {
		// NamespaceMode's zero value is POD: no options at all is NODE.
		return nil
	}
	switch u.GetMode() {
	case runtime.NamespaceMode_NODE:
		if len(u.GetUids()) > 0 || len(u.GetGids()) > 0 {
			return fmt.Errorf("%w: user namespace mode NODE takes no ID mappings", ErrInvalid)
		}
		return nil
	case runtime.NamespaceMode_POD:
	default:
		return fmt.Errorf("%w: user namespace mode %v: only NODE and POD are supported", ErrInvalid, u.GetMode())
	}
	for kind, maps := range map[string][]*runtime.IDMapping{"UID": u.GetUids(), "GID": u.GetGids()} {
		if len(maps) != 1 {
			return fmt.Errorf("%w: user namespace needs exactly one %s mapping, got %d", ErrInvalid, kind, len(maps))
		}
		m := maps[0]
		switch {
		case m.GetContainerId() != 0:
			return fmt.Errorf("%w: user namespace %s mapping must map container ID 0, maps from %d", ErrInvalid, kind, m.GetContainerId())
		case m.GetLength() == 0:
			return fmt.Errorf("%w: user namespace %s mapping has length 0", ErrInvalid, kind)
		case uint64(m.GetHostId())+uint64(m.GetLength()) > math.MaxUint32:
			return fmt.Errorf("%w: user namespace %s mapping %d+%d overflows", ErrInvalid, kind, m.GetHostId(), m.GetLength())
		}
	}
	return nil
}

func agentIDMaps(in []*runtime.IDMapping) []*agentapi.IDMapping {
	var out []*agentapi.IDMapping
	for _, m := range in {
		out = append(out, &agentapi.IDMapping{ContainerId: m.ContainerId, HostId: m.HostId, Size: m.Length})
	}
	return out
}
