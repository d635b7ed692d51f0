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
	newOp := op{Path: "c-0/mnt", ID: 23, Host: 13, src: "8:1:/flags"}
	// The host replaced its mount before a sync: the kernel tucks the new
	// copy under the old clone.
	hostOther := mi(14, 11, shared+"/c-0/mnt", "/other", "rw", "master:10")
	copyOther := mi(26, 21, "/share/c-0/mnt", "/other", "rw", "master:10")
	oldOnOther := mi(24, 26, "/share/c-0/mnt", "/flags", "rw,idmapped", "master:9")
	// A host mount with a submount: the clone carries it.
	hostSub := mi(15, 13, shared+"/c-0/mnt/sub", "/s", "rw", "master:11")
	copySub := mi(27, 23, "/share/c-0/mnt/sub", "/s", "rw", "master:11")
	clonedSub := mi(28, 24, "/share/c-0/mnt/sub", "/s", "rw,idmapped", "master:11")
	tests := []struct {
		name         string
		host, jail   []*mountinfo.Info
		attach, drop []op
	}{
		{name: "nothing propagated", host: hostBase, jail: jailBase},
		{name: "new host mount", host: append(hostBase, hostNew), jail: append(jailBase, copyNew),
			attach: []op{newOp}},
		{name: "already relayed", host: append(hostBase, hostNew), jail: append(jailBase, copyNew, relayed)},
		{name: "host mount gone, clone tucked", host: hostBase, jail: append(jailBase, tucked),
			drop: []op{{Path: "c-0/mnt", ID: 24}}},
		{name: "host mount gone, copy kept", host: hostBase, jail: append(jailBase, copyNew, relayed),
			drop: []op{{Path: "c-0/mnt", ID: 24}}},
		{name: "copy of another filesystem", host: append(hostBase, hostNew),
			jail: append(jailBase, &mountinfo.Info{ID: 23, Parent: 21, Major: 0, Minor: 40, Mountpoint: "/share/c-0/mnt", Root: "/", Options: "rw", Optional: "master:9"})},
		{name: "a mount the jail made itself", host: hostBase,
			jail: append(jailBase, mi(23, 21, "/share/c-0/mnt", "/flags", "rw", ""))},
		{name: "copy in another peer group", host: append(hostBase, hostNew),
			jail: append(jailBase, mi(23, 21, "/share/c-0/mnt", "/flags", "rw", "master:3"))},
		{name: "copy hidden by a mount over its parent", host: append(hostBase, hostNew),
			jail: append(jailBase, copyNew, mi(25, 21, "/share/c-0", "/x", "rw,idmapped", ""))},
		{name: "new host mount in a bidirectional volume", host: append(hostBase, mi(13, 11, shared+"/c-0/mnt", "/flags", "rw", "shared:9")),
			jail: append(jailBase, copyNew), attach: []op{{Path: "c-0/mnt", ID: 23, Host: 13, src: "8:1:/flags"}}},
		{name: "host mount replaced, old clone on the new copy", host: append(hostBase, hostOther),
			jail: append(jailBase, copyOther, oldOnOther), drop: []op{{Path: "c-0/mnt", ID: 24}}},
		{name: "host mount with a submount: one clone", host: append(hostBase, hostNew, hostSub),
			jail: append(jailBase, copySub, copyNew), attach: []op{newOp}},
		{name: "relayed clone with its submount", host: append(hostBase, hostNew, hostSub),
			jail: append(jailBase, copyNew, copySub, relayed, clonedSub)},
		{name: "clone of a mount stacked on a relayed clone, host mount gone", host: append(hostBase, hostNew),
			jail: append(jailBase, copyNew, relayed, mi(29, 24, "/share/c-0/mnt", "/t", "rw,idmapped", "")),
			drop: []op{{Path: "c-0/mnt", ID: 29}}},
		{name: "relayed clone of a bind stacked over a mount with a submount", host: append(hostBase, hostNew, hostSub, mi(16, 13, shared+"/c-0/mnt", "/top", "rw", "master:12")),
			jail: append(jailBase, copyNew, copySub, mi(30, 23, "/share/c-0/mnt", "/top", "rw", "master:12"), mi(31, 30, "/share/c-0/mnt", "/top", "rw,idmapped", "master:12"))},
		{name: "shared directory not in the jail", host: append(hostBase, hostNew), jail: []*mountinfo.Info{copyNew}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := plan(shared, tc.host, tc.jail)
			req.Attach = nested(req.Attach)
			if !reflect.DeepEqual(req.Attach, tc.attach) || !reflect.DeepEqual(req.Detach, tc.drop) {
				t.Errorf("plan = attach %v detach %v; want %v, %v", req.Attach, req.Detach, tc.attach, tc.drop)
			}
		})
	}
}
