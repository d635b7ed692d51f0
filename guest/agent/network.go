package main

import (
	"errors"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// setupNetwork brings up lo and configures the pod's NICs and routes. It is
// idempotent: existing addresses and routes are kept.
func setupNetwork(ifaces []*agentapi.Interface, routes []*agentapi.Route) error {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return status.Errorf(codes.Internal, "loopback: %v", err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return status.Errorf(codes.Internal, "list links: %v", err)
	}
	for _, ifc := range ifaces {
		mac, err := net.ParseMAC(ifc.Mac)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "MAC %q: %v", ifc.Mac, err)
		}
		// A clone of a VM template finds its NIC under the template's MAC.
		find := mac
		if ifc.CurrentMac != "" {
			if find, err = net.ParseMAC(ifc.CurrentMac); err != nil {
				return status.Errorf(codes.InvalidArgument, "current MAC %q: %v", ifc.CurrentMac, err)
			}
		}
		var link netlink.Link
		for _, l := range links {
			if a := l.Attrs().HardwareAddr.String(); a == find.String() || a == mac.String() {
				link = l
			}
		}
		if link == nil {
			return status.Errorf(codes.NotFound, "no NIC with MAC %s", find)
		}
		if link.Attrs().HardwareAddr.String() != mac.String() {
			if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
				return status.Errorf(codes.Internal, "set MAC of %s: %v", link.Attrs().Name, err)
			}
		}
		if ifc.Mtu > 0 && link.Attrs().MTU != int(ifc.Mtu) {
			if err := netlink.LinkSetMTU(link, int(ifc.Mtu)); err != nil {
				return status.Errorf(codes.Internal, "MTU of %s: %v", link.Attrs().Name, err)
			}
		}
		for _, a := range ifc.Addresses {
			addr, err := netlink.ParseAddr(a)
			if err != nil {
				return status.Errorf(codes.InvalidArgument, "address %q: %v", a, err)
			}
			// The address is usable at once: no duplicate detection delay.
			addr.Flags |= unix.IFA_F_NODAD
			if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
				return status.Errorf(codes.Internal, "add %s to %s: %v", a, link.Attrs().Name, err)
			}
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return status.Errorf(codes.Internal, "bring up %s: %v", link.Attrs().Name, err)
		}
	}
	for _, r := range routes {
		_, dst, err := net.ParseCIDR(r.Dest)
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "route %q: %v", r.Dest, err)
		}
		route := &netlink.Route{Dst: dst, Gw: net.ParseIP(r.Gateway)}
		if ones, _ := dst.Mask.Size(); ones == 0 {
			route.Dst = nil
		}
		if err := netlink.RouteAdd(route); err != nil && !errors.Is(err, unix.EEXIST) {
			return status.Errorf(codes.Internal, "route %s via %s: %v", r.Dest, r.Gateway, err)
		}
	}
	return nil
}
