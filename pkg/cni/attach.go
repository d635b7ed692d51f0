package cni

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Attachment is a pod's network as its VM sees it: the CNI result the guest
// configures and the tap its NIC uses.
type Attachment struct {
	Result *Result
	Tap    *Tap
}

// Attach gives the pod its network: it creates the namespace named netns,
// runs CNI ADD in it and connects a tap (a new one, or hostTap, a warm VM's;
// see ConnectTap). On error the caller runs Detach, which undoes whatever
// part was done.
func (m *Manager) Attach(ctx context.Context, p Pod, netns, hostTap string) (*Attachment, error) {
	nsPath, err := NewNetNS(netns)
	if err != nil {
		return nil, err
	}
	p.NetNS = nsPath
	res, err := m.Add(ctx, p)
	if err != nil {
		return nil, err
	}
	tap, err := ConnectTap(nsPath, hostTap)
	if err != nil {
		return nil, err
	}
	return &Attachment{Result: res, Tap: tap}, nil
}

// Detach runs CNI DEL and deletes the namespace named netns. It is
// idempotent: with no namespace there is nothing left to undo (CNI ADD
// runs in the namespace, and the namespace goes only after DEL succeeded).
func (m *Manager) Detach(ctx context.Context, p Pod, netns string) error {
	p.NetNS = filepath.Join(netnsDir, netns)
	if _, err := os.Stat(p.NetNS); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := m.Del(ctx, p); err != nil {
		return err
	}
	if err := DeleteNetNS(netns); err != nil {
		return fmt.Errorf("pod %s: %w", p.ID, err)
	}
	return nil
}
