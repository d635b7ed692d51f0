package cni

import (
	"fmt"
	"os"
	"runtime"

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

// ConnectTap creates a tap device in the pod's namespace and redirects all
// traffic between it and the CNI interface both ways (tc ingress + mirred),
// so the VM's NIC stands in for the CNI interface. The tap is not
// persistent: it disappears when the last holder of its file (QEMU) exits.
func ConnectTap(nsPath string) (_ *Tap, retErr error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, err
	}
	defer orig.Close()
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return nil, fmt.Errorf("enter netns: %w", err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			runtime.UnlockOSThread() // leave a thread in the wrong namespace to die
			if retErr == nil {
				retErr = err
			}
		}
	}()

	eth, err := netlink.LinkByName(IfName)
	if err != nil {
		return nil, fmt.Errorf("CNI interface %s: %w", IfName, err)
	}
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
	defer func() {
		if retErr != nil {
			for _, f := range tap.Fds {
				f.Close()
			}
		}
	}()
	if err := netlink.LinkSetUp(tap); err != nil {
		return nil, fmt.Errorf("tap up: %w", err)
	}
	tapLink, err := netlink.LinkByName(TapName)
	if err != nil {
		return nil, err
	}
	if err := redirect(eth, tapLink); err != nil {
		return nil, err
	}
	if err := redirect(tapLink, eth); err != nil {
		return nil, err
	}
	return &Tap{File: tap.Fds[0], MAC: eth.Attrs().HardwareAddr.String(), MTU: eth.Attrs().MTU}, nil
}

// redirect sends everything arriving on from out of to.
func redirect(from, to netlink.Link) error {
	qdisc := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: from.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS,
	}}
	if err := netlink.QdiscAdd(qdisc); err != nil {
		return fmt.Errorf("ingress qdisc on %s: %w", from.Attrs().Name, err)
	}
	filter := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from.Attrs().Index, Parent: netlink.MakeHandle(0xffff, 0),
			Priority: 1, Protocol: unix.ETH_P_ALL,
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
