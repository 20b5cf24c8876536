//! cgroup management (filled by the cgroups work).
