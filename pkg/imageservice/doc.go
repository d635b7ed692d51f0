// Package imageservice will pull images from registries into a
// content-addressed store and turn each image into a read-only disk for pod
// VMs. Not yet implemented: the CRI ImageService answers Unimplemented.
package imageservice
