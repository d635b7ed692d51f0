package propagate

import (
	"reflect"
	"testing"

	"github.com/moby/sys/mountinfo"
)

func TestPlan(t *testing.T) {
	const shared = "/var/lib/hyperlet/shared/pod"
	mi := func(id, parent int, point, root, opts, optional string) *mountinfo.Info {
		return &mountinfo.Info{ID: id, Parent: parent, Major: 8, Minor: 1, Mountpoint: point, Root: root, Options: opts, Optional: optional}
	}
	hostBase := []*mountinfo.Info{
		mi(10, 1, shared, "/var/lib/hyperlet/shared/pod", "rw", "shared:5"),
		mi(11, 10, shared+"/c-0", "/vol", "rw,idmapped", "master:7"),
		mi(12, 11, shared+"/c-0/old", "/sub", "rw,idmapped", "master:8"), // cloned with the volume
	}
	jailBase := []*mountinfo.Info{
		mi(20, 1, "/share", "/var/lib/hyperlet/shared/pod", "rw", "master:5"),
		mi(21, 20, "/share/c-0", "/vol", "rw,idmapped", "master:7"),
		mi(22, 21, "/share/c-0/old", "/sub", "rw,idmapped", "master:8"),
	}
	hostNew := mi(13, 11, shared+"/c-0/mnt", "/flags", "rw", "master:9")
	copyNew := mi(23, 21, "/share/c-0/mnt", "/flags", "rw", "master:9")
	relayed := mi(24, 23, "/share/c-0/mnt", "/flags", "rw,idmapped", "master:9")
	tucked := mi(24, 21, "/share/c-0/mnt", "/flags", "rw,idmapped", "")
	tests := []struct {
		name         string
		host, jail   []*mountinfo.Info
		attach, drop []op
	}{
		{name: "nothing propagated", host: hostBase, jail: jailBase},
		{name: "new host mount", host: append(hostBase, hostNew), jail: append(jailBase, copyNew),
			attach: []op{{"c-0/mnt", 23}}},
		{name: "already relayed", host: append(hostBase, hostNew), jail: append(jailBase, copyNew, relayed)},
		{name: "host mount gone, clone tucked", host: hostBase, jail: append(jailBase, tucked),
			drop: []op{{"c-0/mnt", 24}}},
		{name: "host mount gone, copy kept", host: hostBase, jail: append(jailBase, copyNew, relayed),
			drop: []op{{"c-0/mnt", 24}}},
		{name: "copy of another filesystem", host: append(hostBase, hostNew),
			jail: append(jailBase, &mountinfo.Info{ID: 23, Parent: 21, Major: 0, Minor: 40, Mountpoint: "/share/c-0/mnt", Root: "/", Options: "rw", Optional: "master:9"})},
		{name: "a mount the jail made itself", host: hostBase,
			jail: append(jailBase, mi(23, 21, "/share/c-0/mnt", "/flags", "rw", ""))},
		{name: "copy in another peer group", host: append(hostBase, hostNew),
			jail: append(jailBase, mi(23, 21, "/share/c-0/mnt", "/flags", "rw", "master:3"))},
		{name: "copy hidden by a mount over its parent", host: append(hostBase, hostNew),
			jail: append(jailBase, copyNew, mi(25, 21, "/share/c-0", "/x", "rw,idmapped", ""))},
		{name: "new host mount in a bidirectional volume", host: append(hostBase, mi(13, 11, shared+"/c-0/mnt", "/flags", "rw", "shared:9")),
			jail: append(jailBase, copyNew), attach: []op{{"c-0/mnt", 23}}},
		{name: "shared directory not in the jail", host: append(hostBase, hostNew), jail: []*mountinfo.Info{copyNew}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := plan(shared, tc.host, tc.jail)
			if !reflect.DeepEqual(req.Attach, tc.attach) || !reflect.DeepEqual(req.Detach, tc.drop) {
				t.Errorf("plan = attach %v detach %v; want %v, %v", req.Attach, req.Detach, tc.attach, tc.drop)
			}
		})
	}
}
