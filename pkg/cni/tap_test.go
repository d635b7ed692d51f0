package cni

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestConnectTapFrames sends frames from the VM's side of a connected tap
// and checks which of them leave by the CNI interface: RARP (QEMU's
// announce after a restore) must not, everything else must.
func TestConnectTapFrames(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (network namespaces, tc); the test suite runs as root")
	}
	name := "hyperlet-test-" + filepath.Base(t.TempDir())
	path, err := NewNetNS(name)
	if err != nil {
		t.Fatal(err)
	}
	defer DeleteNetNS(name)
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	// The CNI interface, and a peer standing for the pod network.
	var peer int
	err = onThread(func() error {
		if err := netns.Set(ns); err != nil {
			return err
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: IfName}, PeerName: "peer0"}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		for _, n := range []string{IfName, "peer0"} {
			l, err := netlink.LinkByName(n)
			if err == nil {
				err = netlink.LinkSetUp(l)
			}
			if err != nil {
				return err
			}
		}
		l, err := netlink.LinkByName("peer0")
		if err != nil {
			return err
		}
		if peer, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL))); err != nil {
			return err
		}
		return unix.Bind(peer, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: l.Attrs().Index})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(peer)
	unix.SetsockoptTimeval(peer, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200_000})
	tap, err := ConnectTap(path, "")
	if err != nil {
		t.Fatal(err)
	}
	defer tap.File.Close()

	for _, tc := range []struct {
		name  string
		proto uint16
		want  bool
	}{
		{"RARP is dropped", unix.ETH_P_RARP, false},
		{"ARP passes", unix.ETH_P_ARP, true},
		{"IPv4 passes", unix.ETH_P_IP, true},
		{"IPv6 passes", unix.ETH_P_IPV6, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frame := make([]byte, 60)
			copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1})
			binary.BigEndian.PutUint16(frame[12:], tc.proto)
			copy(frame[14:], tc.name) // marks this frame among others
			if _, err := tap.File.Write(frame); err != nil {
				t.Fatal(err)
			}
			got := false
			buf := make([]byte, 2048)
			for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
				n, _, err := unix.Recvfrom(peer, buf, 0)
				if err == nil && n >= 14 && bytes.Contains(buf[14:n], []byte(tc.name)) {
					got = true
					break
				}
			}
			if got != tc.want {
				t.Fatalf("frame of protocol %#04x reached the pod network: %v, want %v", tc.proto, got, tc.want)
			}
		})
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
