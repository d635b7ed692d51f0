// Package cni will set up pod networking with CNI (libcni) in a network
// namespace per pod and wire it into the pod VM's tap device. Not yet
// implemented: pods have no network.
package cni
