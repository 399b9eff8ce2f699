"""VEs: the container runtime (config, root file system, cgroups, network, lifecycle)."""
