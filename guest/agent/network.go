package main

import (
	"errors"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentapi "github.com/hyperlet/hyperlet/api/agent/v1"
)

// setupNetwork brings up lo and configures the pod's NICs and routes. It is
// idempotent: existing addresses and routes are kept.
//
// A NIC marked prepare is only brought up: a warm VM does it before any pod
// is known, so that the pod's setup pays for no link start (under TCG the
// kernel's link-up work, run on a NIC's first up, delayed the route that
// followed by 50-100 ms). A prepared NIC gets no IPv6 link-local address:
// the warm VM's MAC is not the pod's, and clones of one template share it,
// so on one bridge their link-locals would collide. The pod's setup, after
// its MAC, addresses and routes, turns address generation back on, and the
// kernel makes the link-local from the pod's MAC.
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
	var configured []string // the pod's NICs, configured now
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
		name := link.Attrs().Name
		if ifc.Prepare && link.Attrs().Flags&net.FlagUp == 0 {
			if err := setAddrGenMode(name, addrGenNone); err != nil {
				return status.Errorf(codes.Internal, "IPv6 address generation of %s: %v", name, err)
			}
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return status.Errorf(codes.Internal, "bring up %s: %v", name, err)
		}
		if !ifc.Prepare {
			configured = append(configured, name)
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
	// Last, since making the link-local (and its duplicate detection)
	// holds the lock the routes above need.
	for _, name := range configured {
		if err := setAddrGenMode(name, addrGenEUI64); err != nil {
			return status.Errorf(codes.Internal, "IPv6 address generation of %s: %v", name, err)
		}
	}
	return nil
}

// IPv6 address generation modes (net.ipv6.conf.IF.addr_gen_mode).
const (
	addrGenEUI64 = "0" // link-local from the MAC: the kernel's default
	addrGenNone  = "1"
)

// setAddrGenMode sets how the kernel makes the NIC's IPv6 link-local
// address; a change on an up NIC makes it anew. Without IPv6 it does
// nothing.
func setAddrGenMode(ifname, mode string) error {
	f := "/proc/sys/net/ipv6/conf/" + ifname + "/addr_gen_mode"
	cur, err := os.ReadFile(f)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil || strings.TrimSpace(string(cur)) == mode {
		return err
	}
	return os.WriteFile(f, []byte(mode), 0)
}
