package cni

import (
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TapName is the tap device created next to the CNI interface.
const TapName = "tap0"

// Tap is the pod VM's end of the network.
type Tap struct {
	File *os.File // the tap queue, handed to the hypervisor
	MAC  string   // the CNI interface's MAC, which the guest NIC takes over
	MTU  int
}

// ConnectTap connects a tap device in the pod's namespace to the CNI
// interface: all traffic is redirected between them both ways (tc ingress +
// mirred), so the VM's NIC stands in for the CNI interface. With hostTap
// empty a new tap is created there and its queue returned in Tap.File;
// otherwise hostTap names a tap NewTap made in this namespace for a VM that
// is already running (a warm VM), which is moved into the pod's namespace.
// Taps are not persistent: one disappears when the last holder of its queue
// (QEMU) exits.
func ConnectTap(nsPath, hostTap string) (*Tap, error) {
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer target.Close()
	if hostTap != "" {
		link, err := netlink.LinkByName(hostTap)
		if err != nil {
			return nil, fmt.Errorf("warm VM tap %s: %w", hostTap, err)
		}
		if err := netlink.LinkSetNsFd(link, int(target)); err != nil {
			return nil, fmt.Errorf("move tap %s into pod netns: %w", hostTap, err)
		}
	}
	var tap *Tap
	err = onThread(func() error {
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("enter netns: %w", err)
		}
		var err error
		tap, err = connectTap(hostTap)
		return err
	})
	if err != nil {
		if tap != nil && tap.File != nil {
			tap.File.Close()
		}
		return nil, err
	}
	return tap, nil
}

// connectTap does ConnectTap's work inside the pod's namespace. On error
// the returned Tap, if any, holds a queue the caller closes.
func connectTap(hostTap string) (*Tap, error) {
	eth, err := netlink.LinkByName(IfName)
	if err != nil {
		return nil, fmt.Errorf("CNI interface %s: %w", IfName, err)
	}
	t := &Tap{MAC: eth.Attrs().HardwareAddr.String(), MTU: eth.Attrs().MTU}
	if hostTap == "" {
		tap := &netlink.Tuntap{
			LinkAttrs:  netlink.LinkAttrs{Name: TapName, MTU: eth.Attrs().MTU},
			Mode:       netlink.TUNTAP_MODE_TAP,
			Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE,
			Queues:     1,
			NonPersist: true,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return nil, fmt.Errorf("create tap: %w", err)
		}
		t.File = tap.Fds[0]
	} else {
		link, err := netlink.LinkByName(hostTap)
		if err == nil {
			err = netlink.LinkSetName(link, TapName)
		}
		if err == nil {
			err = netlink.LinkSetMTU(link, eth.Attrs().MTU)
		}
		if err != nil {
			return nil, fmt.Errorf("tap %s in pod netns: %w", hostTap, err)
		}
	}
	tapLink, err := netlink.LinkByName(TapName)
	if err != nil {
		return t, err
	}
	if err := netlink.LinkSetUp(tapLink); err != nil {
		return t, fmt.Errorf("tap up: %w", err)
	}
	if err := redirect(eth, tapLink); err != nil {
		return t, err
	}
	if err := redirect(tapLink, eth, unix.ETH_P_RARP); err != nil {
		return t, err
	}
	return t, nil
}

// NewTap creates a tap device in the caller's network namespace for a VM
// started before its pod exists; ConnectTap later moves it into the pod's.
// The tap goes away when the last holder of the returned queue closes it.
func NewTap(name string) (*os.File, error) {
	tap := &netlink.Tuntap{
		LinkAttrs:  netlink.LinkAttrs{Name: name},
		Mode:       netlink.TUNTAP_MODE_TAP,
		Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_ONE_QUEUE,
		Queues:     1,
		NonPersist: true,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return nil, fmt.Errorf("create tap %s: %w", name, err)
	}
	return tap.Fds[0], nil
}

// redirect sends everything arriving on from out of to, except frames of
// the drop protocols. Those stop at a filter of their own, without an
// action (tc's drop action is a module many kernels lack): they go on to
// the pod namespace's own stack, which has no address and no handler for
// them, and discards them.
//
// The VM's side drops RARP: QEMU announces a NIC with five RARP
// broadcasts after restoring a VM (for switches after a live migration),
// so every template clone would broadcast them to the node's pod network,
// where each pod VM takes each one in its guest: ~0.18 ms of a host CPU per
// broadcast and VM under TCG (docs/performance.md), 0.1 s per clone with
// 100 pods up. Nothing in a pod network answers or needs RARP.
func redirect(from, to netlink.Link, drop ...uint16) error {
	qdisc := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: from.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS,
	}}
	if err := netlink.QdiscAdd(qdisc); err != nil {
		return fmt.Errorf("ingress qdisc on %s: %w", from.Attrs().Name, err)
	}
	// One priority per protocol (tc keeps one protocol per priority); the
	// redirect comes after them all.
	for i, proto := range drop {
		filter := &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: from.Attrs().Index, Parent: netlink.MakeHandle(0xffff, 0),
				Priority: uint16(1 + i), Protocol: proto,
			},
			ClassId: netlink.MakeHandle(1, 1),
		}
		if err := netlink.FilterAdd(filter); err != nil {
			return fmt.Errorf("drop protocol %#04x on %s: %w", proto, from.Attrs().Name, err)
		}
	}
	filter := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from.Attrs().Index, Parent: netlink.MakeHandle(0xffff, 0),
			Priority: uint16(1 + len(drop)), Protocol: unix.ETH_P_ALL,
		},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to.Attrs().Index,
		}},
	}
	if err := netlink.FilterAdd(filter); err != nil {
		return fmt.Errorf("redirect %s to %s: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	return nil
}
