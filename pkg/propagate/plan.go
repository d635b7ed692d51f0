// Package propagate carries the mounts the host makes inside a pod's
// propagating volumes (HostToContainer, Bidirectional) on into the pod VM's
// jail, idmapped.
//
// A volume reaches the jailed QEMU as an idmapped clone of its host mount,
// made a slave of it, so a mount the host makes in the volume later reaches
// the jail by propagation. But the propagated copy is not idmapped: the
// unprivileged QEMU sees its files as owned by nobody and cannot read a
// root-owned 0700 directory. A Relay watches the jail's mount table and puts
// an idmapped clone over each such copy, in the jail's mount namespace only
// (so the host can still unmount and remove its mount point), and takes the
// clone away once the host's mount is gone or changed.
//
// Only mounts the host made are relayed, and only from the host's side: the
// clone is made from the host's own copy (checked by mount ID against the
// host's mount table) and reaches the jail by propagation from a staging
// entry of the shared directory, so the kernel locks its flags and
// submounts there; a helper in the jail's mount namespace clones that
// staged copy over the jail's copy, which it checks by mount ID, having
// opened both without following symlinks.
package propagate

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// op is one mount in the jail to relay (attach an idmapped clone of the
// host's copy on top of it) or to detach (a relayed clone whose host mount
// is gone or was replaced). Path is relative to the shared directory, the
// same on the host and in the jail.
type op struct {
	Path string `json:"path"`
	// ID is the jail's mount at Path.
	ID int `json:"id"`
	// Host is the host's copy at Path to clone (attach only); src names
	// its filesystem and root.
	Host int    `json:"-"`
	src  string `json:"-"`
	// Stage is the entry of the shared directory where the clone waits
	// for the jail to take it (attach only).
	Stage string `json:"stage,omitempty"`
}

// table is one mount namespace's mounts below a directory (the shared
// directory, as that namespace sees it).
type table struct {
	dir     string
	ms      []*mountinfo.Info
	byID    map[int]*mountinfo.Info
	covered map[int]bool // mounts another is stacked on
}

func newTable(dir string, ms []*mountinfo.Info) *table {
	t := &table{dir: dir, ms: ms, byID: map[int]*mountinfo.Info{}, covered: map[int]bool{}}
	for _, m := range ms {
		t.byID[m.ID] = m
	}
	for _, m := range ms {
		if p := t.byID[m.Parent]; p != nil && p.Mountpoint == m.Mountpoint {
			t.covered[p.ID] = true
		}
	}
	return t
}

// rel is m's path below an entry of the directory ("entry/sub..."), ok
// only for such mounts (not the directory nor an entry itself).
func (t *table) rel(m *mountinfo.Info) (string, bool) {
	rel, ok := below(t.dir, m.Mountpoint)
	return rel, ok && strings.Contains(rel, "/")
}

// visible says whether a path lookup reaches m: nothing is stacked on it
// and its parents are reachable (the mount it is stacked on does not
// count).
func (t *table) visible(m *mountinfo.Info) bool {
	if t.covered[m.ID] {
		return false
	}
	for depth := 0; depth < 64; depth++ {
		p := t.byID[m.Parent]
		if p == nil || m.Mountpoint == t.dir {
			return true
		}
		if _, ok := below(t.dir, p.Mountpoint); !ok && p.Mountpoint != t.dir {
			return true
		}
		if p.Mountpoint != m.Mountpoint && t.covered[p.ID] {
			return false
		}
		m = p
	}
	return true
}

// under says whether m hangs (at any depth) below mount id.
func (t *table) under(m *mountinfo.Info, id int) bool {
	for depth := 0; depth < 64 && m != nil; depth++ {
		if m.Parent == id {
			return true
		}
		m = t.byID[m.Parent]
	}
	return false
}

// subtree is the paths of the mounts hanging below mount id (what a
// recursive clone of it carries).
func (t *table) subtree(id int) map[string]bool {
	out := map[string]bool{}
	for _, m := range t.ms {
		if rel, ok := t.rel(m); ok && t.under(m, id) {
			out[rel] = true
		}
	}
	return out
}

// plan compares the host's mounts under the pod's shared directory with
// the jail's and says what to attach and what to detach.
func plan(shared string, host, jail []*mountinfo.Info) (req request) {
	shared = filepath.Clean(shared)
	var top *mountinfo.Info
	for _, h := range host {
		if h.Mountpoint == shared {
			top = h
		}
	}
	if top == nil {
		return req
	}
	// The jail's view of the shared directory: the same directory of the
	// same filesystem.
	inside := ""
	for _, j := range jail {
		if same(j, top) {
			inside = j.Mountpoint
			break
		}
	}
	if inside == "" {
		return req
	}
	req.Share = inside
	ht, jt := newTable(shared, host), newTable(inside, jail)
	// What the host shows at each path below an entry: a copy the kernel
	// propagated, or a submount the volume had when cloned (idmapped).
	hostAt := map[string]*mountinfo.Info{}
	for _, h := range host {
		if rel, ok := ht.rel(h); ok && ht.visible(h) {
			hostAt[rel] = h
		}
	}
	propagated := func(rel string) *mountinfo.Info {
		if h := hostAt[rel]; h != nil && !idmapped(h) && (peer(h, "shared") != "" || peer(h, "master") != "") {
			return h
		}
		return nil
	}
	for _, j := range jail {
		rel, ok := jt.rel(j)
		if !ok || !jt.visible(j) {
			continue
		}
		h := propagated(rel)
		if !idmapped(j) {
			if h != nil && same(j, h) && fromHost(j, h) {
				req.Attach = append(req.Attach, op{Path: rel, ID: j.ID, Host: h.ID, src: src(h)})
			}
			continue
		}
		// An idmapped mount: a relayed clone on the copy it covers, one
		// left when the copy under it was unmounted or replaced, part of
		// a relayed clone (the host's submounts it was cloned with), or a
		// submount the volume had when cloned.
		p := jt.byID[j.Parent]
		onCopy := p != nil && p.Mountpoint == j.Mountpoint && !idmapped(p)
		switch {
		case onCopy:
			// A clone does not follow the host's later submounts: one
			// whose submounts differ from the host's is made again.
			if h == nil || !same(j, h) || !same(p, h) || !fromHost(p, h) || !maps.Equal(jt.subtree(j.ID), ht.subtree(h.ID)) {
				req.Detach = append(req.Detach, op{Path: rel, ID: j.ID})
			}
		case inClone(j, jt):
		case hostAt[rel] == nil || !idmapped(hostAt[rel]):
			req.Detach = append(req.Detach, op{Path: rel, ID: j.ID})
		}
	}
	return req
}

// same says whether two mounts show the same directory of one filesystem.
func same(a, b *mountinfo.Info) bool {
	return a.Major == b.Major && a.Minor == b.Minor && a.Root == b.Root
}

func src(m *mountinfo.Info) string { return fmt.Sprintf("%d:%d:%s", m.Major, m.Minor, m.Root) }

// nested drops the attaches below another one in the list (whose clone
// carries the host's submounts with it).
func nested(attach []op) []op {
	all := slices.Clone(attach)
	return slices.DeleteFunc(attach, func(o op) bool {
		for _, a := range all {
			if _, ok := below(a.Path, o.Path); ok {
				return true
			}
		}
		return false
	})
}

// inClone says whether mount j hangs below a relayed clone (an idmapped
// mount stacked on a copy), as the host submounts cloned with it do.
func inClone(j *mountinfo.Info, t *table) bool {
	for depth := 0; depth < 64; depth++ {
		p := t.byID[j.Parent]
		if p == nil || p.Mountpoint == t.dir {
			return false
		}
		if _, ok := below(t.dir, p.Mountpoint); !ok || p.Mountpoint == j.Mountpoint {
			return false // stacked on its parent: not a submount of it
		}
		if pp := t.byID[p.Parent]; idmapped(p) && pp != nil && pp.Mountpoint == p.Mountpoint && !idmapped(pp) {
			return true
		}
		j = p
	}
	return false
}

// below gives p relative to dir, if p is strictly below it.
func below(dir, p string) (string, bool) {
	if dir == "/" {
		return strings.TrimPrefix(p, "/"), p != "/" && strings.HasPrefix(p, "/")
	}
	rel, ok := strings.CutPrefix(p, dir+"/")
	return rel, ok && rel != ""
}

func idmapped(m *mountinfo.Info) bool {
	for _, o := range strings.Split(m.Options, ",") {
		if o == "idmapped" {
			return true
		}
	}
	return false
}

// peer is the mount's peer group of the kind ("shared": its own, "master":
// the one it receives from), "" for none.
func peer(m *mountinfo.Info, kind string) string {
	for _, f := range strings.Fields(m.Optional) {
		if g, ok := strings.CutPrefix(f, kind+":"); ok {
			return g
		}
	}
	return ""
}

// fromHost says whether the jail's mount j is a copy the kernel propagated
// from the host's h: it receives from h's peer group or h's master.
func fromHost(j, h *mountinfo.Info) bool {
	g := peer(j, "master")
	return g != "" && (g == peer(h, "shared") || g == peer(h, "master"))
}
