package sandbox

import (
	"context"

	"github.com/hyperlet/hyperlet/pkg/agent"
)

// ContainerStats reads a container's usage from its cgroup in the VM.
func (m *Manager) ContainerStats(ctx context.Context, id string) (*agent.ContainerStats, error) {
	c, err := m.Container(id)
	if err != nil {
		return nil, err
	}
	client, err := c.pod.client()
	if err != nil {
		return nil, err
	}
	return client.Stats(ctx, c.ID())
}

// PodContainers lists a pod's containers.
func (m *Manager) PodContainers(podID string) []*Container { return m.podContainers(podID) }
