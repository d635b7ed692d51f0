package agent

// Paths inside the guest that the host names in the OCI specs it sends.
const (
	// PodDir holds the pod's shared files, written by SetupPod.
	PodDir = "/run/hyperlet/pod"
	// PodHostsFile, PodResolvConf and PodHostnameFile are bind-mounted
	// into every container at /etc/hosts, /etc/resolv.conf and /etc/hostname.
	PodHostsFile    = PodDir + "/hosts"
	PodResolvConf   = PodDir + "/resolv.conf"
	PodHostnameFile = PodDir + "/hostname"
	// PodShmDir is the pod's shared /dev/shm (containers share IPC).
	PodShmDir = PodDir + "/shm"
	// SharedFSTag is the 9p mount tag of the pod's shared directory, which
	// SetupPod mounts at SharedDir. Volume mounts point into it.
	SharedFSTag = "hyperlet"
	SharedDir   = "/run/hyperlet/shared"
	// RuntimePath is where the guest image installs its OCI runtime (crun;
	// runc's command line works too, see guest/initrd).
	RuntimePath = "/usr/sbin/oci-runtime"
)
