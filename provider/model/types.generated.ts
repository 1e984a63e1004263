/* eslint-disable */
// DO NOT EDIT: generated from schema/*.schema.json by scripts/gen-types.js (npm run gen).

/**
 * A Virtual System Environment (VSE): the software a job runs in, and the job itself. Built into a content-addressed image: the same definition reuses the cached image; a change to the job or contents builds a new one.
 */
export interface Environment {
  /**
   * Schema version of this document.
   */
  apiVersion: "vse.dev/v1";
  /**
   * Document kind.
   */
  kind: "Environment";
  metadata: Metadata;
  spec: {
    /**
     * What the image is built from. 'busybox': the host's Debian kernel (linux-image-amd64) and a busybox-static initramfs whose init runs the job; boots in seconds. 'debian': the host's kernel and a Debian root filesystem built by mmdebstrap from spec.debian (its release and packages), loaded whole as the initramfs; the VM needs memory for it (at least 512 MiB for a few small packages) and boots in tens of seconds under emulation.
     */
    base?: "busybox" | "debian";
    /**
     * The Debian system of a 'debian' image (required when base is 'debian', not allowed otherwise): a minimal root filesystem (mmdebstrap's 'essential' variant) plus the listed packages and their dependencies. A change to any of it builds a new image.
     */
    debian?: {
      /**
       * The Debian release (suite) the root filesystem is built from.
       */
      release?: "bookworm" | "trixie";
      /**
       * Debian packages installed on top of the essential set, by name; order and repetition do not matter (the list is sorted and de-duplicated).
       *
       * @maxItems 256
       *
       * Items: A Debian package name: a lower-case letter or digit, then 1 to 99 lower-case letters, digits or +.- characters.
       */
      packages?: string[];
      /**
       * The Debian mirror (archive URL) packages are downloaded from: http or https, a host name, an optional port and path.
       */
      mirror?: string;
    };
    /**
     * Warm launch: the guest boots once to the point where it waits for its identity, the node agent saves it to a snapshot in the host's store (per image, profile, kernel command line and QEMU version), and later VMs of this environment restore that snapshot and are handed their name and MAC instead of booting. Without a snapshot a VM boots cold (and makes one); each VM's output 'launch' says which. QEMU only; the guest's address then comes from its MAC, not from the kernel command line.
     */
    warm?: boolean;
    /**
     * Make the warm-launch snapshots at `pulumi up`, before any VM starts: the Environment resource boots one throw-away VM per snapshot its clusters will restore (per profile and network) into the controller's store, as `vse warm` does ahead of time, so that even the first VM comes up warm (on hosts of their own too: the snapshot is staged with the image). Costs one boot per snapshot in the up that makes it. Needs spec.warm.
     */
    warmAhead?: boolean;
    /**
     * Extra kernel command-line parameters, appended after the provider's own (console, panic).
     *
     * @maxItems 32
     *
     * Items: A kernel parameter: 1 to 128 letters, digits or _.,:/=+- characters.
     */
    kernelArgs?: string[];
    /**
     * The job the guest's init runs once it has booted.
     */
    job: {
      /**
       * The job's argument vector (argv), run as is (no shell unless you name one).
       *
       * @minItems 1
       * @maxItems 256
       */
      command: [string, ...string[]];
      /**
       * Environment variables for the job.
       */
      env?: {
        [k: string]: string;
      };
      /**
       * What the guest does when the job ends: 'stay-up' keeps it running (to inspect or update the cluster); 'power-off' ends the VM, as a batch job does.
       */
      afterJob?: "stay-up" | "power-off";
      /**
       * How long, in seconds from the VM's start, the provider waits for the job's result before it reports an error.
       */
      timeoutSeconds?: number;
    };
  };
}
/**
 * Identity of a definition.
 */
export interface Metadata {
  /**
   * A lowercase DNS label: letters, digits and '-', starting with a letter, at most 40 characters. Names become file names, QEMU -name values and Pulumi URNs, so they are restricted before use.
   */
  name: string;
  /**
   * Free text for reviewers.
   */
  description?: string;
}

/**
 * The shape of a virtual machine, independent of the hypervisor: switching hypervisor is a change of one field.
 */
export interface VmProfile {
  /**
   * Schema version of this document.
   */
  apiVersion: "vse.dev/v1";
  /**
   * Document kind.
   */
  kind: "VmProfile";
  metadata: Metadata;
  spec: {
    /**
     * The hypervisor that runs the VM; its config is rendered from templates/<hypervisor>/. Switching hypervisor is a change of this field only.
     */
    hypervisor?: "qemu" | "libvirt" | "xen" | "virtualbox" | "palacios";
    /**
     * Guest memory (unit: MiB when a bare number; bounds 16 MiB to 1 TiB).
     */
    memory?: number | string;
    /**
     * Number of virtual CPUs.
     */
    vcpus?: number;
    /**
     * QEMU machine type: 'pc' (default; PC-compatible, robust timers under TCG), 'q35', or 'microvm' (minimal; its timer calibration can hang a TCG guest on a loaded host).
     */
    machine?: "microvm" | "q35" | "pc";
    /**
     * Accelerator: 'tcg' (software emulation), 'kvm', or 'auto' (KVM only when a probe boot under KVM succeeds on this host, else TCG).
     */
    accel?: "auto" | "tcg" | "kvm";
  };
}

/**
 * A set of VMs, all of one environment and profile, spread over allocated hosts, each host driven by a node agent.
 */
export interface VirtualCluster {
  /**
   * Schema version of this document.
   */
  apiVersion: "vse.dev/v1";
  /**
   * Document kind.
   */
  kind: "VirtualCluster";
  metadata: Metadata;
  spec: {
    /**
     * A lowercase DNS label: letters, digits and '-', starting with a letter, at most 40 characters. Names become file names, QEMU -name values and Pulumi URNs, so they are restricted before use.
     */
    environment: string;
    /**
     * A lowercase DNS label: letters, digits and '-', starting with a letter, at most 40 characters. Names become file names, QEMU -name values and Pulumi URNs, so they are restricted before use.
     */
    profile: string;
    /**
     * Number of VMs. VM i is named '<cluster>-<i>' and placed on host i mod hosts.
     */
    nodes?: number;
    /**
     * Where the node agents run.
     */
    allocation?: {
      /**
       * 'local': agents are daemons on this machine, one per host, each on a unix socket in its private state directory. 'static': hosts declared by address (hosts: a list); each host's agent serves HTTPS on that address only, with a certificate from the cluster's own CA. 'slurm': the hosts are one Slurm job of `hosts` nodes (sbatch, settings in allocation.slurm); srun starts one agent per node, serving HTTPS on the node's address when it is an address of its own, else its unix socket; cancelling the job (scancel) powers the VMs off. 'ssh': hosts declared by address (hosts: a list), each host's agent started over SSH (settings in allocation.ssh: key authentication only, the host key pinned by allocation.ssh.knownHostsFile) and then served over HTTPS as for 'static'. 'gridengine', 'torque', 'alps': the hosts are one batch job of `hosts` tasks (qsub; a Grid Engine job array or parallel environment, a Torque/PBS job of nodes=hosts:ppn=1 started with pbsdsh, or aprun -n hosts -N 1 inside a PBS allocation), one agent per task; settings in allocation.gridengine, allocation.torque, allocation.alps.
       */
      manager?: "local" | "static" | "slurm" | "ssh" | "gridengine" | "torque" | "alps";
      /**
       * The hosts, hence the node agents: a number of hosts for 'local'; for 'static', the list of declared hosts (host i is the list's i-th).
       */
      hosts?:
        | number
        | [
            {
              /**
               * The host's IPv4 address: its agent listens there (never on 0.0.0.0) and its certificate names it.
               */
              address: string;
              /**
               * A namespace host on this machine (vse-<tag>-h<n>, made by the multi-host demo or tests): the agent is started inside that network namespace. Without it the address must be one of this machine's.
               */
              netns?: string;
            },
            ...{
              /**
               * The host's IPv4 address: its agent listens there (never on 0.0.0.0) and its certificate names it.
               */
              address: string;
              /**
               * A namespace host on this machine (vse-<tag>-h<n>, made by the multi-host demo or tests): the agent is started inside that network namespace. Without it the address must be one of this machine's.
               */
              netns?: string;
            }[]
          ];
      /**
       * The TCP port the agents of declared hosts serve on (each host on its own address).
       */
      port?: number;
      /**
       * Settings of manager 'slurm': what the allocation job asks Slurm for. Without a field, Slurm's own default (the default partition, the partition's time limit, the user's default account).
       */
      slurm?: {
        /**
         * The Slurm partition (sbatch --partition).
         */
        partition?: string;
        /**
         * The allocation's time limit in minutes (sbatch --time); when it passes, Slurm ends the job and the agents power their VMs off.
         */
        timeLimit?: number;
        /**
         * The Slurm account charged for the allocation (sbatch --account).
         */
        account?: string;
      };
      /**
       * Settings of manager 'ssh': how agents are started on the declared hosts. Key authentication only (BatchMode, no password), with the host keys pinned by knownHostsFile (StrictHostKeyChecking=yes, never accept-new).
       */
      ssh?: {
        /**
         * The user agents run as on the hosts (a POSIX user name).
         */
        user: string;
        /**
         * sshd's port on every host.
         */
        port?: number;
        /**
         * The private key to authenticate with (absolute path on this machine).
         */
        identityFile: string;
        /**
         * The only known-hosts file consulted (absolute path): it pins every host's key; a host whose key differs, or is absent, is refused before anything runs on it.
         */
        knownHostsFile: string;
        /**
         * Where the agents keep their state on the hosts (absolute path on the hosts).
         */
        stateDir?: string;
        /**
         * How long ssh waits for a host's sshd.
         */
        connectTimeoutSeconds?: number;
      };
      /**
       * Settings of manager 'gridengine': what the batch job asks for. Without a field, the server's default.
       */
      gridengine?: {
        /**
         * The queue the job is submitted to (qsub -q).
         */
        queue?: string;
        /**
         * The job's wall-clock limit as HH:MM:SS (hours up to 9999).
         */
        walltime?: string;
        /**
         * The account or project charged (qsub -A, or -P for Grid Engine).
         */
        account?: string;
        /**
         * A directory on the filesystem the job's hosts share with this machine, where the job script, its output and the agents' state go (absolute path). Default: the cluster's directory.
         */
        spoolDir?: string;
        /**
         * A parallel environment of hosts slots (qsub -pe <name> <hosts>): one job whose tasks start one agent per host. Without it, a job array of hosts tasks (qsub -t 1-<hosts>), as seed 003 launches VMs.
         */
        parallelEnvironment?: string;
      };
      /**
       * Settings of manager 'torque': what the batch job asks for. Without a field, the server's default.
       */
      torque?: {
        /**
         * The queue the job is submitted to (qsub -q).
         */
        queue?: string;
        /**
         * The job's wall-clock limit as HH:MM:SS (hours up to 9999).
         */
        walltime?: string;
        /**
         * The account or project charged (qsub -A, or -P for Grid Engine).
         */
        account?: string;
        /**
         * A directory on the filesystem the job's hosts share with this machine, where the job script, its output and the agents' state go (absolute path). Default: the cluster's directory.
         */
        spoolDir?: string;
      };
      /**
       * Settings of manager 'alps': what the batch job asks for. Without a field, the server's default.
       */
      alps?: {
        /**
         * The queue the job is submitted to (qsub -q).
         */
        queue?: string;
        /**
         * The job's wall-clock limit as HH:MM:SS (hours up to 9999).
         */
        walltime?: string;
        /**
         * The account or project charged (qsub -A, or -P for Grid Engine).
         */
        account?: string;
        /**
         * A directory on the filesystem the job's hosts share with this machine, where the job script, its output and the agents' state go (absolute path). Default: the cluster's directory.
         */
        spoolDir?: string;
      };
      /**
       * k of the k-ary tree the agents of declared hosts are started over (issue 9): the controller starts host 0's agent, each agent starts the next k, each link with a handshake and a timer.
       */
      fanout?: number;
    };
    /**
     * Whether the cluster's VMs run or are paused (vCPUs stopped, memory kept); overrides[].state sets it per VM. Changing it is in place: the same hypervisor processes are paused or resumed.
     */
    vmState?: "running" | "paused";
    /**
     * Per-VM changes to the profile and placement, by VM index.
     *
     * @maxItems 256
     */
    overrides?: {
      /**
       * Index of the VM (0-based).
       */
      vm: number;
      /**
       * Guest memory for this VM (unit: MiB when a bare number; bounds 16 MiB to 1 TiB).
       */
      memory?: number | string;
      /**
       * Virtual CPUs for this VM.
       */
      vcpus?: number;
      /**
       * The host (node agent index, 0-based, below allocation.hosts) this VM runs on, instead of its index mod hosts. Changing it live-migrates a running QEMU VM to the other host's agent.
       */
      host?: number;
      /**
       * Whether this VM runs or is paused (its vCPUs stopped, its memory kept), instead of spec.vmState. Changing it is in place: the same hypervisor process is paused or resumed.
       */
      state?: "running" | "paused";
    }[];
    /**
     * The cluster's private network. 'none' (default): the VMs have no NIC. 'private': every VM gets one virtio NIC with a deterministic, locally administered MAC, on a network that only this cluster's VMs share (QEMU's socket backend in multicast mode, bound to 127.0.0.1: every host of the cluster must be this machine, as with manager 'local'); VM i has the address 10.77.x.y/16 with x.y = i+1 (given to the guest as vse.ip=... on its kernel command line) and no route outside the cluster.
     */
    network?: "none" | "private";
    /**
     * What the cluster does when failure detection (heartbeats between the agents of declared hosts) finds a host lost. 'none' (default): the loss is recorded and shown by refresh; the next `pulumi up` restarts the lost agent. 'terminate': the coordinator tells every surviving agent to stop its VMs cleanly and end; nothing of the cluster is left running. 'restart': the lost host's running VMs are started again on surviving hosts from the specs their agents replicated. Under terminate or restart a host cut off from every peer it watches stops its own VMs (fencing). Changing it is in place. `pulumi refresh` shows what happened per VM and on the cluster.
     */
    recovery?: "none" | "terminate" | "restart";
  };
}

/**
 * Rules written by the site's administrators and merged with users' definitions (seed 004): defaults fill fields users left unset, then limits and allow-lists are checked against the effective definition. At most one SitePolicy applies to a set of definitions.
 */
export interface SitePolicy {
  /**
   * Schema version of this document.
   */
  apiVersion: "vse.dev/v1";
  /**
   * Document kind.
   */
  kind: "SitePolicy";
  metadata: Metadata;
  spec: {
    /**
     * Values used where a user's definition leaves a field unset, before the schema's own defaults. Unset here means the schema default applies.
     */
    defaults?: {
      /**
       * Defaults for VmProfile spec fields.
       */
      profile?: {
        /**
         * Default hypervisor (as VmProfile spec.hypervisor).
         */
        hypervisor?: "qemu" | "libvirt" | "xen" | "virtualbox" | "palacios";
        /**
         * Default guest memory (unit: MiB when a bare number; bounds 16 MiB to 1 TiB).
         */
        memory?: number | string;
        /**
         * Default number of virtual CPUs.
         */
        vcpus?: number;
        /**
         * Default machine type (as VmProfile spec.machine).
         */
        machine?: "microvm" | "q35" | "pc";
        /**
         * Default accelerator (as VmProfile spec.accel).
         */
        accel?: "auto" | "tcg" | "kvm";
      };
      /**
       * Defaults for Environment spec fields.
       */
      environment?: {
        /**
         * Default extra kernel parameters, used when an Environment sets none.
         *
         * @maxItems 32
         *
         * Items: A kernel parameter: 1 to 128 letters, digits or _.,:/=+- characters.
         */
        kernelArgs?: string[];
        /**
         * Default job timeout (unit: seconds).
         */
        timeoutSeconds?: number;
        /**
         * Default for what the guest does when the job ends.
         */
        afterJob?: "stay-up" | "power-off";
      };
      /**
       * Defaults for VirtualCluster spec fields.
       */
      cluster?: {
        /**
         * Default number of VMs per cluster.
         */
        nodes?: number;
        /**
         * Default number of hosts (node agents) per cluster.
         */
        hosts?: number;
      };
    };
    /**
     * Upper bounds checked against the effective definition (after defaults and per-VM overrides). Unset means no limit beyond the schema's bounds.
     */
    limits?: {
      /**
       * Largest guest memory of any one VM (unit: MiB when a bare number; bounds 16 MiB to 1 TiB).
       */
      maxMemory?: number | string;
      /**
       * Most virtual CPUs of any one VM.
       */
      maxVcpus?: number;
      /**
       * Most VMs in one VirtualCluster (unit: VMs).
       */
      maxNodesPerCluster?: number;
      /**
       * Most VMs one node agent runs at once, across all its clusters' requests (unit: VMs).
       */
      maxVmsPerAgent?: number;
      /**
       * Total guest memory one node agent runs at once, across all its VMs (unit: MiB when a bare number; bounds 16 MiB to 64 TiB).
       */
      maxMemoryPerAgent?: number | string;
    };
    /**
     * Hypervisors VMs may use (VmProfile spec.hypervisor). Unset means any the schema accepts.
     *
     * @minItems 1
     * @maxItems 64
     *
     * Items: A hypervisor name: lowercase letters, digits and '-', starting with a letter.
     */
    allowedHypervisors?: [string, ...string[]];
    /**
     * Glob patterns ('*' any run of characters, '?' one character) for the package sources images may be built from (Environment spec.base). Unset means any.
     *
     * @minItems 1
     * @maxItems 64
     */
    allowedBases?: [string, ...string[]];
    /**
     * Glob patterns for the kernel releases guests may boot (e.g. "6.1.*-amd64"); checked where the kernel is known (render and plan). Unset means any.
     *
     * @minItems 1
     * @maxItems 64
     */
    allowedKernels?: [string, ...string[]];
    /**
     * Glob patterns of kernel parameters users may not pass (Environment spec.kernelArgs), e.g. "init=*" or "nokaslr".
     *
     * @maxItems 64
     */
    forbiddenKernelArgs?: string[];
    /**
     * Glob patterns for the Debian mirrors images may be built from (Environment spec.debian.mirror, e.g. "http://deb.debian.org/*" or a site mirror). Unset means any.
     *
     * @minItems 1
     * @maxItems 64
     */
    allowedMirrors?: [string, ...string[]];
  };
}
