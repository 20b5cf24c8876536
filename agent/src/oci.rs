//! OCI runtime specs for the pod sandbox (pause) and for app/init containers.
//!
//! Pure functions from (pod, container, image config, node facts) to the runtime-spec JSON runc
//! receives. Kubernetes semantics implemented here: command/args over entrypoint/cmd with `$(VAR)`
//! expansion, env (values, downward-API field and resource refs), working dir, user/group, the
//! security context (runAsNonRoot, read-only rootfs, privileged, capabilities add/drop), a default
//! capability set and seccomp profile modelled on containerd's defaults, and the namespaces an app
//! container shares with its sandbox (net, ipc, uts; pid with `shareProcessNamespace`).

use crate::runtime::ImageConfig;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use keelson_apimachinery::quantity;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// Why a container spec could not be built (kubelet's `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

fn spec_err(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), reason: reason.into() }
}

/// containerd's default capability set for unprivileged containers.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the kernel knows (for `privileged` and `add: [ALL]`).
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Syscalls refused (EPERM) by the default profile. containerd's default is an allow-list; this
/// deny-list blocks the same dangerous families (kernel modules, kexec, reboot, clock, swap, bpf,
/// perf, keyrings, namespaces/mount tricks, ptrace-like introspection of other processes) while
/// staying robust to new harmless syscalls.
const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "personality",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "_sysctl",
    "syslog",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

fn default_seccomp() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    })
}

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

fn base_mounts(sys_ro: bool) -> Vec<Value> {
    let ro = if sys_ro { "ro" } else { "rw" };
    vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", ro]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", ro]}),
    ]
}

fn device_rules(privileged: bool) -> Value {
    if privileged {
        return json!([{"allow": true, "access": "rwm"}]);
    }
    let mut rules = vec![json!({"allow": false, "access": "rwm"})];
    for (maj, min) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2)] {
        rules.push(json!({"allow": true, "type": "c", "major": maj, "minor": min, "access": "rwm"}));
    }
    rules.push(json!({"allow": true, "type": "c", "major": 136, "access": "rwm"}));
    json!(rules)
}

/// Cgroup and OOM settings for one container, computed by the caller (see `cgroups`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
    pub oom_score_adj: i32,
}

fn resources_json(r: &Resources, privileged: bool) -> Value {
    let mut cpu = serde_json::Map::new();
    if let Some(s) = r.cpu_shares {
        cpu.insert("shares".into(), json!(s));
    }
    if let Some(q) = r.cpu_quota {
        cpu.insert("quota".into(), json!(q));
        cpu.insert("period".into(), json!(r.cpu_period.unwrap_or(100_000)));
    }
    let mut out = json!({"devices": device_rules(privileged), "cpu": cpu});
    if let Some(m) = r.memory_limit {
        out["memory"] = json!({"limit": m, "swap": m});
    }
    if let Some(p) = r.pids_limit {
        out["pids"] = json!({"limit": p});
    }
    out
}

/// Node and sandbox facts the specs need.
#[derive(Debug, Clone)]
pub struct PodContext<'a> {
    pub pod: &'a Pod,
    pub node_name: &'a str,
    pub host_ip: &'a str,
    pub pod_ip: &'a str,
    /// Pod network namespace (bind-mounted file).
    pub netns: &'a Path,
    /// Files the agent manages for the pod: `hosts`, `resolv.conf`, `hostname`.
    pub etc_hosts: &'a Path,
    pub resolv_conf: &'a Path,
    pub hostname_file: &'a Path,
}

fn hostname(pod: &Pod) -> String {
    let s = pod.spec.as_ref();
    let h = s.and_then(|s| s.hostname.clone()).or_else(|| pod.metadata.name.clone()).unwrap_or_default();
    // Hostnames are at most 63 characters (kubelet truncates the same way).
    h.chars().take(63).collect::<String>().trim_end_matches(['-', '.']).to_string()
}

/// The pause container: holds the pod's namespaces (net from the agent-created netns; new ipc, uts
/// and — when the pod shares its process namespace — pid, in which pause is PID 1 and reaps).
pub fn sandbox_spec(ctx: &PodContext<'_>, image: &ImageConfig, cgroups_path: &str, res: &Resources) -> Value {
    let mut args = image.entrypoint.clone();
    args.extend(image.cmd.iter().cloned());
    if args.is_empty() {
        args.push("/pause".into());
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 65535, "gid": 65535},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": [], "effective": [], "permitted": []},
            "noNewPrivileges": true,
            "oomScoreAdj": res.oom_score_adj,
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": hostname(ctx.pod),
        "mounts": base_mounts(true),
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network", "path": ctx.netns.to_string_lossy()},
            ],
            "cgroupsPath": cgroups_path,
            "resources": resources_json(res, false),
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": default_seccomp(),
        },
    })
}

/// Expands `$(VAR)` references like Kubernetes: defined names are replaced, undefined references
/// stay as written, `$$` escapes to a literal `$`.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&s[i..i + 3 + end]),
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn field_ref(path: &str, ctx: &PodContext<'_>) -> Result<String, String> {
    let md = &ctx.pod.metadata;
    Ok(match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "spec.nodeName" => ctx.node_name.to_string(),
        "spec.serviceAccountName" => {
            ctx.pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default()
        }
        "status.podIP" | "status.podIPs" => ctx.pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => ctx.host_ip.to_string(),
        p if p.starts_with("metadata.labels['") && p.ends_with("']") => {
            let k = &p["metadata.labels['".len()..p.len() - 2];
            md.labels.as_ref().and_then(|l| l.get(k).cloned()).unwrap_or_default()
        }
        p if p.starts_with("metadata.annotations['") && p.ends_with("']") => {
            let k = &p["metadata.annotations['".len()..p.len() - 2];
            md.annotations.as_ref().and_then(|l| l.get(k).cloned()).unwrap_or_default()
        }
        other => return Err(format!("unsupported fieldRef {other:?}")),
    })
}

fn resource_ref(c: &Container, resource: &str, divisor: Option<&str>) -> Result<String, String> {
    let res = c.resources.as_ref();
    let (kind, name) = resource.split_once('.').ok_or_else(|| format!("bad resource {resource:?}"))?;
    let map = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("bad resource {resource:?}")),
    };
    let q = map.and_then(|m| m.get(name));
    let Some(q) = q else {
        // Kubernetes reports node allocatable for an unset limit; we report 0 for an unset request
        // and refuse an unset limit rather than inventing a node capacity.
        return if kind == "requests" { Ok("0".into()) } else { Err(format!("{resource} is not set")) };
    };
    let div = divisor.unwrap_or("1");
    if name == "cpu" {
        let v = quantity::to_milli(q).map_err(|e| e.to_string())?;
        let d = quantity::to_milli(&k8s_openapi::apimachinery::pkg::api::resource::Quantity(div.into()))
            .map_err(|e| e.to_string())?
            .max(1);
        Ok(((v + d - 1) / d).to_string())
    } else {
        let v = quantity::to_bytes(q).map_err(|e| e.to_string())?;
        let d = quantity::to_bytes(&k8s_openapi::apimachinery::pkg::api::resource::Quantity(div.into()))
            .map_err(|e| e.to_string())?
            .max(1);
        Ok(((v + d - 1) / d).to_string())
    }
}

/// Resolves the container's environment: image env, then the container's `env` in order, each
/// value able to reference earlier ones with `$(VAR)`. Returns ordered (name, value) pairs.
pub fn resolve_env(
    c: &Container,
    image: &ImageConfig,
    ctx: &PodContext<'_>,
    field: &str,
) -> Result<Vec<(String, String)>, SpecError> {
    let mut order: Vec<String> = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let set = |k: String, v: String, order: &mut Vec<String>, vars: &mut BTreeMap<String, String>| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(k.to_string(), v.to_string(), &mut order, &mut vars);
    }
    for (i, EnvVar { name, value, value_from }) in c.env.iter().flatten().enumerate() {
        let f = format!("{field}.env[{i}]");
        let v = match (value, value_from) {
            (Some(v), _) => expand(v, &vars),
            (None, Some(src)) => {
                if let Some(fr) = &src.field_ref {
                    field_ref(&fr.field_path, ctx).map_err(|r| spec_err(format!("{f}.valueFrom.fieldRef"), r))?
                } else if let Some(rr) = &src.resource_field_ref {
                    if rr.container_name.as_deref().is_some_and(|n| n != c.name) {
                        return Err(spec_err(
                            format!("{f}.valueFrom.resourceFieldRef.containerName"),
                            "only the container's own resources can be referenced",
                        ));
                    }
                    resource_ref(c, &rr.resource, rr.divisor.as_ref().map(|d| d.0.as_str()))
                        .map_err(|r| spec_err(format!("{f}.valueFrom.resourceFieldRef"), r))?
                } else {
                    return Err(spec_err(
                        format!("{f}.valueFrom"),
                        "configMapKeyRef/secretKeyRef need the API server, which this agent is not connected to",
                    ));
                }
            }
            (None, None) => String::new(),
        };
        set(name.clone(), v, &mut order, &mut vars);
    }
    Ok(order.into_iter().map(|k| (k.clone(), vars.get(&k).cloned().unwrap_or_default())).collect())
}

/// The process argv per Kubernetes: command replaces the entrypoint, args replace cmd.
pub fn resolve_argv(c: &Container, image: &ImageConfig, env: &[(String, String)]) -> Vec<String> {
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    let x = |v: &Vec<String>| v.iter().map(|s| expand(s, &vars)).collect::<Vec<_>>();
    match (&c.command, &c.args) {
        (Some(cmd), Some(args)) => [x(cmd), x(args)].concat(),
        (Some(cmd), None) => x(cmd),
        (None, Some(args)) => [image.entrypoint.clone(), x(args)].concat(),
        (None, None) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
    }
}

fn cap_name(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") { up } else { format!("CAP_{up}") }
}

/// An app or init container joined to the sandbox whose pause process is `pause_pid`.
pub fn container_spec(
    ctx: &PodContext<'_>,
    c: &Container,
    field: &str,
    image: &ImageConfig,
    pause_pid: u32,
    cgroups_path: &str,
    res: &Resources,
) -> Result<Value, SpecError> {
    let pod_spec = ctx.pod.spec.as_ref();
    let psc = pod_spec.and_then(|s| s.security_context.as_ref());
    let sc = c.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);

    let env = resolve_env(c, image, ctx, field)?;
    let argv = resolve_argv(c, image, &env);
    if argv.is_empty() {
        return Err(spec_err(
            format!("{field}.command"),
            "no command specified and the image has no entrypoint or cmd",
        ));
    }

    // User: container securityContext, then pod securityContext, then the image's USER.
    let (img_uid, img_gid) = parse_image_user(&image.user);
    let uid = sc.and_then(|s| s.run_as_user).or(psc.and_then(|s| s.run_as_user));
    let uid = match (uid, img_uid) {
        (Some(u), _) => u,
        (None, Ok(u)) => u,
        (None, Err(name)) => {
            return Err(spec_err(
                format!("{field}.securityContext.runAsUser"),
                format!("image user {name:?} is not numeric; set runAsUser"),
            ));
        }
    };
    let gid = sc.and_then(|s| s.run_as_group).or(psc.and_then(|s| s.run_as_group)).or(img_gid).unwrap_or(0);
    let non_root = sc.and_then(|s| s.run_as_non_root).or(psc.and_then(|s| s.run_as_non_root)).unwrap_or(false);
    if non_root && uid == 0 {
        return Err(spec_err(
            format!("{field}.securityContext.runAsNonRoot"),
            "container has runAsNonRoot and would run as root (uid 0)",
        ));
    }
    let mut additional: Vec<i64> = psc.and_then(|s| s.supplemental_groups.clone()).unwrap_or_default();
    if let Some(fs) = psc.and_then(|s| s.fs_group) {
        additional.push(fs);
    }

    // Capabilities.
    let mut caps: Vec<String> = if privileged {
        ALL_CAPS.iter().map(|s| s.to_string()).collect()
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    };
    if !privileged && let Some(cs) = sc.and_then(|s| s.capabilities.as_ref()) {
        for a in cs.add.iter().flatten() {
            if a.eq_ignore_ascii_case("ALL") {
                caps = ALL_CAPS.iter().map(|s| s.to_string()).collect();
            } else {
                let n = cap_name(a);
                if !ALL_CAPS.contains(&n.as_str()) {
                    return Err(spec_err(
                        format!("{field}.securityContext.capabilities.add"),
                        format!("unknown capability {a:?}"),
                    ));
                }
                if !caps.contains(&n) {
                    caps.push(n);
                }
            }
        }
        for d in cs.drop.iter().flatten() {
            if d.eq_ignore_ascii_case("ALL") {
                caps.clear();
            } else {
                let n = cap_name(d);
                caps.retain(|c| *c != n);
            }
        }
    }
    // Like Docker/containerd, a non-root user gets capabilities only in the bounding set.
    let eff = if uid == 0 { caps.clone() } else { Vec::new() };

    let seccomp = {
        let profile = sc
            .and_then(|s| s.seccomp_profile.as_ref())
            .or(psc.and_then(|s| s.seccomp_profile.as_ref()))
            .map(|p| p.type_.as_str());
        match profile {
            _ if privileged => None,
            Some("Unconfined") => None,
            None | Some("RuntimeDefault") => Some(default_seccomp()),
            Some(other) => {
                return Err(spec_err(
                    format!("{field}.securityContext.seccompProfile.type"),
                    format!("unsupported {other:?}"),
                ));
            }
        }
    };

    let mut mounts = base_mounts(!privileged);
    for (dest, src) in
        [("/etc/hosts", ctx.etc_hosts), ("/etc/resolv.conf", ctx.resolv_conf), ("/etc/hostname", ctx.hostname_file)]
    {
        mounts.push(
            json!({"destination": dest, "type": "bind", "source": src.to_string_lossy(), "options": ["rbind", "rw"]}),
        );
    }
    // Each container gets its own /dev/shm tmpfs. (Kubernetes shares one per pod; a pod-wide shm
    // mount owned by the agent is future work.)
    mounts.push(json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}));

    let share_pid = pod_spec.and_then(|s| s.share_process_namespace).unwrap_or(false);
    let mut namespaces = vec![
        json!({"type": "network", "path": ctx.netns.to_string_lossy()}),
        json!({"type": "ipc", "path": format!("/proc/{pause_pid}/ns/ipc")}),
        json!({"type": "uts", "path": format!("/proc/{pause_pid}/ns/uts")}),
        json!({"type": "mount"}),
    ];
    namespaces.push(if share_pid {
        json!({"type": "pid", "path": format!("/proc/{pause_pid}/ns/pid")})
    } else {
        json!({"type": "pid"})
    });

    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| if image.working_dir.is_empty() { "/".into() } else { image.working_dir.clone() });
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": cgroups_path,
        "resources": resources_json(res, privileged),
    });
    if !privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    if let Some(s) = seccomp {
        linux["seccomp"] = s;
    }
    let no_new_privs = !privileged && sc.and_then(|s| s.allow_privilege_escalation) != Some(true);
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid, "additionalGids": additional},
            "args": argv,
            "env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": eff, "permitted": eff},
            "noNewPrivileges": no_new_privs,
            "oomScoreAdj": res.oom_score_adj,
        },
        "root": {"path": "rootfs", "readonly": sc.and_then(|s| s.read_only_root_filesystem).unwrap_or(false)},
        "hostname": hostname(ctx.pod),
        "mounts": mounts,
        "linux": linux,
    }))
}

/// Parses an image `USER` ("uid", "uid:gid", "", or a name). Names cannot be resolved without
/// reading the image's /etc/passwd, so they are returned as `Err(name)` (except `root`).
fn parse_image_user(u: &str) -> (Result<i64, String>, Option<i64>) {
    let (user, group) = u.split_once(':').map(|(a, b)| (a, Some(b))).unwrap_or((u, None));
    let gid = group.and_then(|g| g.parse().ok());
    match user {
        "" | "root" => (Ok(0), gid),
        n => (n.parse::<i64>().map_err(|_| n.to_string()), gid),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ctx_pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: ns, uid: u-1, labels: {app: web}}
spec:
  containers:
  - name: c
    image: img
    env:
    - {name: A, value: one}
    - {name: B, value: "$(A)-two-$$(A)-$(MISSING)"}
    - {name: NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}}
    args: ["$(B)", "$(NAME)"]
    resources: {limits: {memory: 64Mi, cpu: 250m}}
"#;

    fn with_ctx<T>(pod: &Pod, f: impl FnOnce(&PodContext<'_>) -> T) -> T {
        let ctx = PodContext {
            pod,
            node_name: "node1",
            host_ip: "192.168.1.2",
            pod_ip: "10.1.0.5",
            netns: Path::new("/run/keelson/netns/x"),
            etc_hosts: Path::new("/p/hosts"),
            resolv_conf: Path::new("/p/resolv.conf"),
            hostname_file: Path::new("/p/hostname"),
        };
        f(&ctx)
    }

    fn img() -> ImageConfig {
        ImageConfig {
            name: "img".into(),
            entrypoint: vec!["/ep".into()],
            cmd: vec!["cmd1".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            ..Default::default()
        }
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let mut v = BTreeMap::new();
        v.insert("X".to_string(), "1".to_string());
        assert_eq!(expand("a$(X)b", &v), "a1b");
        assert_eq!(expand("$$(X)", &v), "$(X)");
        assert_eq!(expand("$(Y)", &v), "$(Y)");
        assert_eq!(expand("$(X", &v), "$(X");
        assert_eq!(expand("ünï$(X)", &v), "ünï1");
    }

    #[test]
    fn env_and_args_resolve() {
        let pod = ctx_pod(POD);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        with_ctx(&pod, |ctx| {
            let env = resolve_env(c, &img(), ctx, "spec.containers[0]").unwrap();
            let m: BTreeMap<_, _> = env.iter().cloned().collect();
            assert_eq!(m["A"], "one");
            assert_eq!(m["B"], "one-two-$(A)-$(MISSING)");
            assert_eq!(m["NAME"], "p");
            assert_eq!(m["IP"], "10.1.0.5");
            assert_eq!(m["APP"], "web");
            assert_eq!(m["MEM"], "64");
            assert_eq!(m["CPU"], "250");
            assert_eq!(env[0].0, "PATH", "image env keeps its order");
            let argv = resolve_argv(c, &img(), &env);
            assert_eq!(argv, vec!["/ep", "one-two-$(A)-$(MISSING)", "p"]);
        });
    }

    #[test]
    fn command_args_matrix() {
        let mut c = Container { name: "c".into(), ..Default::default() };
        assert_eq!(resolve_argv(&c, &img(), &[]), vec!["/ep", "cmd1"]);
        c.command = Some(vec!["/x".into()]);
        assert_eq!(resolve_argv(&c, &img(), &[]), vec!["/x"]);
        c.args = Some(vec!["y".into()]);
        assert_eq!(resolve_argv(&c, &img(), &[]), vec!["/x", "y"]);
        c.command = None;
        assert_eq!(resolve_argv(&c, &img(), &[]), vec!["/ep", "y"]);
    }

    fn build(yaml_sc: &str) -> Result<Value, SpecError> {
        let pod = ctx_pod(&POD.replace("    args:", &format!("    securityContext: {yaml_sc}\n    args:")));
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        with_ctx(&pod, |ctx| {
            container_spec(ctx, &c, "spec.containers[0]", &img(), 42, "/keelson/pod/c", &Resources::default())
        })
    }

    #[test]
    fn security_context_is_applied() {
        let s = build("{runAsUser: 1000, runAsGroup: 2000, readOnlyRootFilesystem: true, capabilities: {add: [NET_ADMIN], drop: [KILL]}}").unwrap();
        assert_eq!(s["process"]["user"]["uid"], 1000);
        assert_eq!(s["process"]["user"]["gid"], 2000);
        assert_eq!(s["root"]["readonly"], true);
        let bounding: Vec<String> = serde_json::from_value(s["process"]["capabilities"]["bounding"].clone()).unwrap();
        assert!(bounding.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!bounding.contains(&"CAP_KILL".to_string()));
        assert_eq!(s["process"]["capabilities"]["effective"], json!([]), "non-root gets no effective caps");
        assert!(s["linux"]["seccomp"].is_object());
        assert_eq!(s["linux"]["namespaces"][1]["path"], "/proc/42/ns/ipc");
        assert_eq!(s["linux"]["namespaces"][4], json!({"type": "pid"}));
    }

    #[test]
    fn run_as_non_root_refuses_root() {
        let e = build("{runAsNonRoot: true}").unwrap_err();
        assert_eq!(e.field, "spec.containers[0].securityContext.runAsNonRoot");
        assert!(build("{runAsNonRoot: true, runAsUser: 5}").is_ok());
    }

    #[test]
    fn privileged_gets_everything_and_no_seccomp() {
        let s = build("{privileged: true}").unwrap();
        assert_eq!(s["process"]["capabilities"]["bounding"].as_array().unwrap().len(), ALL_CAPS.len());
        assert!(s["linux"].get("seccomp").is_none());
        assert!(s["linux"].get("maskedPaths").is_none());
        assert_eq!(s["linux"]["resources"]["devices"], json!([{"allow": true, "access": "rwm"}]));
    }

    #[test]
    fn unknown_capability_is_an_error() {
        assert!(build("{capabilities: {add: [NOT_A_CAP]}}").is_err());
    }

    #[test]
    fn shared_pid_namespace_joins_pause() {
        let pod = ctx_pod(&POD.replace("spec:\n", "spec:\n  shareProcessNamespace: true\n"));
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        let s = with_ctx(&pod, |ctx| container_spec(ctx, &c, "f", &img(), 7, "/k", &Resources::default())).unwrap();
        assert_eq!(s["linux"]["namespaces"][4]["path"], "/proc/7/ns/pid");
    }

    #[test]
    fn image_user_parsing() {
        assert_eq!(parse_image_user(""), (Ok(0), None));
        assert_eq!(parse_image_user("65535:65535"), (Ok(65535), Some(65535)));
        assert_eq!(parse_image_user("nginx"), (Err("nginx".into()), None));
    }
}
