//! Pure resource arithmetic, following kubelet: QoS class, pod- and container-level cgroup
//! values, oom_score_adj, and the cgroup v1 ↔ v2 value conversions.
//!
//! Inputs are k8s-openapi pod specs as the agent received them. Requests that are missing while
//! a limit is set default to the limit (the API server's defaulting; static pods get the same
//! treatment in kubelet), so callers need not pre-default.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

use keelson_apimachinery::quantity::{QuantityError, parse_quantity};

/// Minimum cpu.shares (kubelet `MinShares`).
pub const MIN_SHARES: u64 = 2;
/// Maximum cpu.shares (kubelet `MaxShares`).
pub const MAX_SHARES: u64 = 262_144;
/// cpu.shares per whole CPU.
pub const SHARES_PER_CPU: u64 = 1024;
/// Default CFS period in microseconds.
pub const DEFAULT_CFS_PERIOD_US: u64 = 100_000;
/// Smallest CFS quota kubelet writes (1 ms).
pub const MIN_QUOTA_US: i64 = 1000;
/// oom_score_adj of Guaranteed pods (and node-critical pods).
pub const GUARANTEED_OOM_SCORE_ADJ: i32 = -997;
/// oom_score_adj of BestEffort pods.
pub const BESTEFFORT_OOM_SCORE_ADJ: i32 = 1000;

/// A pod's quality-of-service class, as in `status.qosClass`: the API server's class
/// ([`keelson_apimachinery::qos::QosClass`]) plus where its cgroups go on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl From<keelson_apimachinery::qos::QosClass> for QosClass {
    fn from(q: keelson_apimachinery::qos::QosClass) -> Self {
        use keelson_apimachinery::qos::QosClass as Api;
        match q {
            Api::Guaranteed => QosClass::Guaranteed,
            Api::Burstable => QosClass::Burstable,
            Api::BestEffort => QosClass::BestEffort,
        }
    }
}

impl QosClass {
    /// The API spelling (`Guaranteed`, `Burstable`, `BestEffort`).
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// The tier directory under the keelson root; Guaranteed pods sit at the root itself, as in kubelet.
    pub fn tier_dir(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

/// A bad quantity in a pod spec, with the field path (`spec.containers[app].resources.limits.cpu`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {source}")]
pub struct ResourceError {
    pub field: String,
    #[source]
    pub source: QuantityError,
}

/// Values for one cgroup. `None` means unlimited (written as `-1`/`max`), so applying a config
/// always converges the cgroup to exactly these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceConfig {
    pub cpu_shares: u64,
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: u64,
    pub memory_limit_bytes: Option<i64>,
    pub pids_limit: Option<i64>,
}

impl Default for ResourceConfig {
    fn default() -> Self {
        ResourceConfig {
            cpu_shares: MIN_SHARES,
            cpu_quota_us: None,
            cpu_period_us: DEFAULT_CFS_PERIOD_US,
            memory_limit_bytes: None,
            pids_limit: None,
        }
    }
}

/// Container-level values for the OCI runtime spec (`linux.resources`, `process.oomScoreAdj`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerResources {
    pub cpu_shares: u64,
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: u64,
    pub memory_limit_bytes: Option<i64>,
    pub oom_score_adj: i32,
}

/// kubelet `MilliCPUToShares`: 0 → 2, else milli×1024/1000 clamped to [2, 262144].
pub fn milli_cpu_to_shares(milli: i64) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    let shares = (milli as u128 * SHARES_PER_CPU as u128 / 1000) as u64;
    shares.clamp(MIN_SHARES, MAX_SHARES)
}

/// kubelet `MilliCPUToQuota`: `None` (no quota) for 0, else milli×period/1000, at least 1 ms.
pub fn milli_cpu_to_quota(milli: i64, period_us: u64) -> Option<i64> {
    if milli <= 0 {
        return None;
    }
    let quota = (milli as i128 * period_us as i128 / 1000).min(i64::MAX as i128) as i64;
    Some(quota.max(MIN_QUOTA_US))
}

/// cgroup v2 `cpu.weight` from v1 shares (runc's mapping of [2, 262144] onto [1, 10000]).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + ((shares - 2) * 9999) / 262_142
}

/// v1 shares from a v2 `cpu.weight` (inverse of [`shares_to_weight`], up to rounding).
pub fn weight_to_shares(weight: u64) -> u64 {
    if weight == 0 {
        return 0;
    }
    let weight = weight.clamp(1, 10_000);
    2 + ((weight - 1) * 262_142).div_ceil(9999)
}

/// v2 `cpu.max` content: `"<quota> <period>"` or `"max <period>"`.
pub fn cpu_max(quota_us: Option<i64>, period_us: u64) -> String {
    match quota_us {
        Some(q) if q > 0 => format!("{q} {period_us}"),
        _ => format!("max {period_us}"),
    }
}

/// Parses v2 `cpu.max` back into (quota, period).
pub fn parse_cpu_max(s: &str) -> Option<(Option<i64>, u64)> {
    let mut it = s.split_whitespace();
    let quota = it.next()?;
    let period = it.next().map(str::parse).unwrap_or(Ok(DEFAULT_CFS_PERIOD_US)).ok()?;
    let quota = if quota == "max" { None } else { Some(quota.parse().ok()?) };
    Some((quota, period))
}

/// v1 `cpu.cfs_quota_us` content (`-1` = unlimited).
pub fn cfs_quota_v1(quota_us: Option<i64>) -> String {
    match quota_us {
        Some(q) if q > 0 => q.to_string(),
        _ => "-1".to_string(),
    }
}

/// v2 `memory.max` / `pids.max` content (`max` = unlimited).
pub fn max_or(value: Option<i64>) -> String {
    match value {
        Some(v) if v >= 0 => v.to_string(),
        _ => "max".to_string(),
    }
}

/// v1 `memory.limit_in_bytes` content (`-1` = unlimited).
pub fn memory_limit_v1(bytes: Option<i64>) -> String {
    match bytes {
        Some(b) if b >= 0 => b.to_string(),
        _ => "-1".to_string(),
    }
}

/// Parses `max`/`-1`/a number into an optional limit (`None` = unlimited).
pub fn parse_limit(s: &str) -> Option<Option<i64>> {
    match s.trim() {
        "max" | "-1" => Some(None),
        n => n.parse().ok().map(Some),
    }
}

/// cpu (millicores) and memory (bytes) of one container or a sum of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Amounts {
    cpu: Option<i64>,
    memory: Option<i64>,
}

impl Amounts {
    fn add(self, o: Amounts) -> Amounts {
        Amounts { cpu: add_opt(self.cpu, o.cpu), memory: add_opt(self.memory, o.memory) }
    }
    fn max(self, o: Amounts) -> Amounts {
        Amounts { cpu: max_opt(self.cpu, o.cpu), memory: max_opt(self.memory, o.memory) }
    }
}

fn add_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.saturating_add(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn parse_list(list: Option<&BTreeMap<String, K8sQuantity>>, field: &str) -> Result<Amounts, ResourceError> {
    let mut out = Amounts::default();
    let Some(list) = list else { return Ok(out) };
    for (name, q) in list {
        let parsed = parse_quantity(q).map_err(|source| ResourceError { field: format!("{field}.{name}"), source })?;
        match name.as_str() {
            "cpu" => out.cpu = Some(parsed.milli_value()),
            "memory" => out.memory = Some(parsed.value()),
            _ => {}
        }
    }
    Ok(out)
}

/// (requests, limits) of a container; a missing request defaults to the limit.
fn container_amounts(c: &Container, kind: &str) -> Result<(Amounts, Amounts), ResourceError> {
    let field = format!("spec.{kind}[{}].resources", c.name);
    let res = c.resources.as_ref();
    let limits = parse_list(res.and_then(|r| r.limits.as_ref()), &format!("{field}.limits"))?;
    let mut requests = parse_list(res.and_then(|r| r.requests.as_ref()), &format!("{field}.requests"))?;
    requests.cpu = requests.cpu.or(limits.cpu);
    requests.memory = requests.memory.or(limits.memory);
    Ok((requests, limits))
}

fn init_containers(spec: &PodSpec) -> &[Container] {
    spec.init_containers.as_deref().unwrap_or(&[])
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// Checks every cpu/memory quantity of the pod (containers, init containers, overhead), naming
/// the first bad field.
pub fn validate(spec: &PodSpec) -> Result<(), ResourceError> {
    for c in &spec.containers {
        container_amounts(c, "containers")?;
    }
    for c in init_containers(spec) {
        container_amounts(c, "initContainers")?;
    }
    parse_list(spec.overhead.as_ref(), "spec.overhead")?;
    Ok(())
}

/// The pod's QoS class ([`keelson_apimachinery::qos`], the API server's computation), after
/// checking every quantity so a malformed one is named rather than ignored.
pub fn qos_class(spec: &PodSpec) -> Result<QosClass, ResourceError> {
    validate(spec)?;
    Ok(keelson_apimachinery::qos::qos_class(keelson_apimachinery::qos::containers_of(spec)).into())
}

/// Effective pod totals like kubelet's `PodRequests`/`PodLimits`: the sum over app containers and
/// sidecars (restartable init containers), at least the largest init container plus the sidecars
/// started before it, plus pod overhead.
fn pod_totals(spec: &PodSpec, limits: bool) -> Result<Amounts, ResourceError> {
    let pick = |c: &Container, kind: &str| -> Result<Amounts, ResourceError> {
        let (req, lim) = container_amounts(c, kind)?;
        Ok(if limits { lim } else { req })
    };
    let mut total = Amounts::default();
    for c in &spec.containers {
        total = total.add(pick(c, "containers")?);
    }
    let mut sidecars = Amounts::default();
    let mut init_peak = Amounts::default();
    for c in init_containers(spec) {
        let own = pick(c, "initContainers")?;
        let during = if is_sidecar(c) {
            total = total.add(own);
            sidecars = sidecars.add(own);
            sidecars
        } else {
            own.add(sidecars)
        };
        init_peak = init_peak.max(during);
    }
    total = total.max(init_peak);
    let overhead = parse_list(spec.overhead.as_ref(), "spec.overhead")?;
    if limits {
        // Overhead raises only limits that exist.
        total.cpu = total.cpu.map(|v| v.saturating_add(overhead.cpu.unwrap_or(0)));
        total.memory = total.memory.map(|v| v.saturating_add(overhead.memory.unwrap_or(0)));
    } else {
        total = total.add(overhead);
    }
    Ok(total)
}

/// Pod-level cgroup values, as kubelet's `ResourceConfigForPod` (CFS quota enforced): shares from
/// the pod's requests; quota and memory limit only when *every* app container declares that
/// limit (always for Guaranteed); BestEffort gets minimum shares. `pids_limit` is the node's
/// configured per-pod pids limit.
pub fn pod_resource_config(spec: &PodSpec, pids_limit: Option<i64>) -> Result<ResourceConfig, ResourceError> {
    let qos = qos_class(spec)?;
    let requests = pod_totals(spec, false)?;
    let limits = pod_totals(spec, true)?;
    let mut cpu_declared = true;
    let mut mem_declared = true;
    for c in &spec.containers {
        let (_, lim) = container_amounts(c, "containers")?;
        cpu_declared &= lim.cpu.is_some_and(|v| v > 0);
        mem_declared &= lim.memory.is_some_and(|v| v > 0);
    }
    let period = DEFAULT_CFS_PERIOD_US;
    let mut cfg = ResourceConfig { pids_limit, ..ResourceConfig::default() };
    match qos {
        QosClass::Guaranteed | QosClass::Burstable => {
            cfg.cpu_shares = milli_cpu_to_shares(requests.cpu.unwrap_or(0));
            if qos == QosClass::Guaranteed || cpu_declared {
                cfg.cpu_quota_us = milli_cpu_to_quota(limits.cpu.unwrap_or(0), period);
            }
            if qos == QosClass::Guaranteed || mem_declared {
                cfg.memory_limit_bytes = limits.memory.filter(|m| *m > 0);
            }
        }
        QosClass::BestEffort => cfg.cpu_shares = MIN_SHARES,
    }
    Ok(cfg)
}

/// Container-level values for the OCI spec (kubelet's `generateLinuxContainerResources`): shares
/// from the cpu request (2 if none), quota from the cpu limit, memory limit, and oom_score_adj.
pub fn container_resources(
    spec: &PodSpec,
    container: &Container,
    memory_capacity_bytes: i64,
) -> Result<ContainerResources, ResourceError> {
    let kind = if spec.containers.iter().any(|c| c.name == container.name) { "containers" } else { "initContainers" };
    let (req, lim) = container_amounts(container, kind)?;
    Ok(ContainerResources {
        cpu_shares: milli_cpu_to_shares(req.cpu.unwrap_or(0)),
        cpu_quota_us: milli_cpu_to_quota(lim.cpu.unwrap_or(0), DEFAULT_CFS_PERIOD_US),
        cpu_period_us: DEFAULT_CFS_PERIOD_US,
        memory_limit_bytes: lim.memory.filter(|m| *m > 0),
        oom_score_adj: oom_score_adj(spec, container, memory_capacity_bytes)?,
    })
}

/// kubelet's `GetContainerOOMScoreAdjust`: node-critical and Guaranteed → −997, BestEffort →
/// 1000, Burstable → `1000 − 1000·memRequest/capacity` clamped to [3, 999] (3 = 1000 − 997, so a
/// burstable container always ranks above guaranteed ones; 999 keeps it below best-effort).
/// Sidecars get at most the score of the regular container with the smallest memory request.
pub fn oom_score_adj(spec: &PodSpec, container: &Container, memory_capacity_bytes: i64) -> Result<i32, ResourceError> {
    if spec.priority_class_name.as_deref() == Some("system-node-critical") {
        return Ok(GUARANTEED_OOM_SCORE_ADJ);
    }
    match qos_class(spec)? {
        QosClass::Guaranteed => return Ok(GUARANTEED_OOM_SCORE_ADJ),
        QosClass::BestEffort => return Ok(BESTEFFORT_OOM_SCORE_ADJ),
        QosClass::Burstable => {}
    }
    let capacity = memory_capacity_bytes.max(1) as i128;
    let score = |request: i64| 1000 - (1000 * request.max(0) as i128) / capacity;
    let (req, _) = container_amounts(container, "containers")?;
    let mut adj = score(req.memory.unwrap_or(0));
    let sidecar = is_sidecar(container) && init_containers(spec).iter().any(|c| c.name == container.name);
    if sidecar {
        let mut min_regular: Option<i64> = None;
        for c in &spec.containers {
            let (r, _) = container_amounts(c, "containers")?;
            let m = r.memory.unwrap_or(0);
            min_regular = Some(min_regular.map_or(m, |x| x.min(m)));
        }
        adj = adj.min(score(min_regular.unwrap_or(0)));
    }
    let floor = (1000 + GUARANTEED_OOM_SCORE_ADJ) as i128;
    if adj < floor {
        return Ok(floor as i32);
    }
    if adj == BESTEFFORT_OOM_SCORE_ADJ as i128 {
        return Ok(BESTEFFORT_OOM_SCORE_ADJ - 1);
    }
    Ok(adj as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceRequirements;

    const GI: i64 = 1 << 30;

    fn list(items: &[(&str, &str)]) -> Option<BTreeMap<String, K8sQuantity>> {
        if items.is_empty() {
            return None;
        }
        Some(items.iter().map(|(k, v)| (k.to_string(), K8sQuantity(v.to_string()))).collect())
    }

    fn ctr(name: &str, requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        Container {
            name: name.into(),
            resources: Some(ResourceRequirements {
                requests: list(requests),
                limits: list(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>, init: Vec<Container>) -> PodSpec {
        PodSpec { containers, init_containers: if init.is_empty() { None } else { Some(init) }, ..Default::default() }
    }

    #[test]
    fn shares_follow_kubelet() {
        assert_eq!(milli_cpu_to_shares(0), 2);
        assert_eq!(milli_cpu_to_shares(1), 2);
        assert_eq!(milli_cpu_to_shares(100), 102);
        assert_eq!(milli_cpu_to_shares(250), 256);
        assert_eq!(milli_cpu_to_shares(1000), 1024);
        assert_eq!(milli_cpu_to_shares(2500), 2560);
        assert_eq!(milli_cpu_to_shares(1_000_000), MAX_SHARES);
    }

    #[test]
    fn quota_follows_kubelet() {
        assert_eq!(milli_cpu_to_quota(0, 100_000), None);
        assert_eq!(milli_cpu_to_quota(200, 100_000), Some(20_000));
        assert_eq!(milli_cpu_to_quota(1500, 100_000), Some(150_000));
        assert_eq!(milli_cpu_to_quota(1, 100_000), Some(MIN_QUOTA_US));
    }

    #[test]
    fn v1_v2_conversions() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(MAX_SHARES), 10_000);
        assert_eq!(shares_to_weight(0), 0);
        for w in [1, 39, 100, 5000, 10_000] {
            assert_eq!(shares_to_weight(weight_to_shares(w)), w, "round trip of weight {w}");
        }
        assert_eq!(cpu_max(Some(20_000), 100_000), "20000 100000");
        assert_eq!(cpu_max(None, 100_000), "max 100000");
        assert_eq!(parse_cpu_max("20000 100000"), Some((Some(20_000), 100_000)));
        assert_eq!(parse_cpu_max("max 100000"), Some((None, 100_000)));
        assert_eq!(parse_cpu_max("bogus"), None);
        assert_eq!(cfs_quota_v1(None), "-1");
        assert_eq!(cfs_quota_v1(Some(5000)), "5000");
        assert_eq!(max_or(None), "max");
        assert_eq!(max_or(Some(64)), "64");
        assert_eq!(memory_limit_v1(None), "-1");
        assert_eq!(memory_limit_v1(Some(GI)), GI.to_string());
        assert_eq!(parse_limit("max"), Some(None));
        assert_eq!(parse_limit("-1"), Some(None));
        assert_eq!(parse_limit("42\n"), Some(Some(42)));
        assert_eq!(parse_limit("x"), None);
    }

    #[test]
    fn qos_classes() {
        let be = pod(vec![ctr("a", &[], &[])], vec![]);
        assert_eq!(qos_class(&be), Ok(QosClass::BestEffort));

        let g = pod(vec![ctr("a", &[("cpu", "1"), ("memory", "1Gi")], &[("cpu", "1"), ("memory", "1Gi")])], vec![]);
        assert_eq!(qos_class(&g), Ok(QosClass::Guaranteed));

        // Limits only: requests default to limits → Guaranteed.
        let g2 = pod(vec![ctr("a", &[], &[("cpu", "500m"), ("memory", "64Mi")])], vec![]);
        assert_eq!(qos_class(&g2), Ok(QosClass::Guaranteed));

        let b = pod(vec![ctr("a", &[("cpu", "100m")], &[])], vec![]);
        assert_eq!(qos_class(&b), Ok(QosClass::Burstable));

        // Requests below limits → Burstable.
        let b2 = pod(vec![ctr("a", &[("cpu", "100m"), ("memory", "1Gi")], &[("cpu", "1"), ("memory", "1Gi")])], vec![]);
        assert_eq!(qos_class(&b2), Ok(QosClass::Burstable));

        // One guaranteed container and one best-effort container → Burstable.
        let mixed = pod(vec![ctr("a", &[], &[("cpu", "1"), ("memory", "1Gi")]), ctr("b", &[], &[])], vec![]);
        assert_eq!(qos_class(&mixed), Ok(QosClass::Burstable));

        // An init container without limits breaks Guaranteed.
        let init = pod(vec![ctr("a", &[], &[("cpu", "1"), ("memory", "1Gi")])], vec![ctr("i", &[("cpu", "1")], &[])]);
        assert_eq!(qos_class(&init), Ok(QosClass::Burstable));

        // Only the init container has resources → not BestEffort.
        let init_only = pod(vec![ctr("a", &[], &[])], vec![ctr("i", &[("memory", "10Mi")], &[])]);
        assert_eq!(qos_class(&init_only), Ok(QosClass::Burstable));

        // Zero quantities do not count.
        let zero = pod(vec![ctr("a", &[("cpu", "0")], &[])], vec![]);
        assert_eq!(qos_class(&zero), Ok(QosClass::BestEffort));

        // Extended resources are ignored for QoS.
        let ext = pod(vec![ctr("a", &[("example.com/gpu", "1")], &[("example.com/gpu", "1")])], vec![]);
        assert_eq!(qos_class(&ext), Ok(QosClass::BestEffort));
    }

    #[test]
    fn bad_quantity_names_the_field() {
        let bad = pod(vec![ctr("web", &[], &[("cpu", "lots")])], vec![]);
        let err = qos_class(&bad).expect_err("bad cpu limit");
        assert_eq!(err.field, "spec.containers[web].resources.limits.cpu");
        assert!(validate(&bad).is_err());
        let good = pod(vec![ctr("web", &[("cpu", "1")], &[])], vec![]);
        assert!(validate(&good).is_ok());
    }

    #[test]
    fn pod_config_guaranteed() {
        let g = pod(
            vec![
                ctr("a", &[], &[("cpu", "500m"), ("memory", "128Mi")]),
                ctr("b", &[], &[("cpu", "250m"), ("memory", "64Mi")]),
            ],
            vec![],
        );
        let cfg = pod_resource_config(&g, Some(1024)).expect("config");
        assert_eq!(
            cfg,
            ResourceConfig {
                cpu_shares: 768,
                cpu_quota_us: Some(75_000),
                cpu_period_us: 100_000,
                memory_limit_bytes: Some(192 << 20),
                pids_limit: Some(1024),
            }
        );
    }

    #[test]
    fn pod_config_burstable_limits_only_when_all_declared() {
        let partial =
            pod(vec![ctr("a", &[("cpu", "100m")], &[("cpu", "200m")]), ctr("b", &[("memory", "10Mi")], &[])], vec![]);
        let cfg = pod_resource_config(&partial, None).expect("config");
        assert_eq!(cfg.cpu_shares, 102);
        assert_eq!(cfg.cpu_quota_us, None, "b has no cpu limit");
        assert_eq!(cfg.memory_limit_bytes, None, "a has no memory limit");

        let all = pod(vec![ctr("a", &[("cpu", "100m")], &[("cpu", "200m")])], vec![]);
        let cfg = pod_resource_config(&all, None).expect("config");
        assert_eq!(cfg.cpu_quota_us, Some(20_000));
        assert_eq!(cfg.memory_limit_bytes, None);
    }

    #[test]
    fn pod_config_best_effort() {
        let be = pod(vec![ctr("a", &[], &[])], vec![]);
        assert_eq!(
            pod_resource_config(&be, Some(64)).expect("config"),
            ResourceConfig { pids_limit: Some(64), ..Default::default() }
        );
    }

    #[test]
    fn pod_config_init_containers_take_the_max() {
        // App containers request 300m total; one init container requests 1 cpu → pod requests 1 cpu.
        let p = pod(
            vec![ctr("a", &[("cpu", "100m")], &[]), ctr("b", &[("cpu", "200m")], &[])],
            vec![ctr("i1", &[("cpu", "1")], &[]), ctr("i2", &[("cpu", "50m")], &[])],
        );
        assert_eq!(pod_resource_config(&p, None).expect("config").cpu_shares, 1024);

        // A sidecar (restartPolicy Always) adds to the app total and to later init containers.
        let mut sidecar = ctr("s", &[("cpu", "500m")], &[]);
        sidecar.restart_policy = Some("Always".into());
        let p = pod(vec![ctr("a", &[("cpu", "100m")], &[])], vec![sidecar, ctr("i", &[("cpu", "700m")], &[])]);
        // max(app 100 + sidecar 500, init 700 + sidecar 500) = 1200m.
        assert_eq!(pod_resource_config(&p, None).expect("config").cpu_shares, milli_cpu_to_shares(1200));
    }

    #[test]
    fn pod_config_adds_overhead() {
        let mut p = pod(vec![ctr("a", &[], &[("cpu", "1"), ("memory", "1Gi")])], vec![]);
        p.overhead = list(&[("cpu", "250m"), ("memory", "120Mi")]);
        let cfg = pod_resource_config(&p, None).expect("config");
        assert_eq!(cfg.cpu_shares, 1280);
        assert_eq!(cfg.cpu_quota_us, Some(125_000));
        assert_eq!(cfg.memory_limit_bytes, Some(GI + (120 << 20)));
    }

    #[test]
    fn container_level_values() {
        let c = ctr("a", &[("cpu", "250m"), ("memory", "64Mi")], &[("cpu", "500m"), ("memory", "128Mi")]);
        let p = pod(vec![c.clone()], vec![]);
        let r = container_resources(&p, &c, 4 * GI).expect("resources");
        assert_eq!(r.cpu_shares, 256);
        assert_eq!(r.cpu_quota_us, Some(50_000));
        assert_eq!(r.memory_limit_bytes, Some(128 << 20));
        assert_eq!(r.oom_score_adj, (1000 - (1000 * (64i64 << 20)) / (4 * GI)) as i32);

        let be = ctr("b", &[], &[]);
        let p = pod(vec![be.clone()], vec![]);
        let r = container_resources(&p, &be, 4 * GI).expect("resources");
        assert_eq!((r.cpu_shares, r.cpu_quota_us, r.memory_limit_bytes, r.oom_score_adj), (2, None, None, 1000));
    }

    #[test]
    fn oom_score_adj_per_qos() {
        let cap = 8 * GI;
        let g = ctr("g", &[], &[("cpu", "1"), ("memory", "1Gi")]);
        assert_eq!(oom_score_adj(&pod(vec![g.clone()], vec![]), &g, cap), Ok(-997));

        let be = ctr("be", &[], &[]);
        assert_eq!(oom_score_adj(&pod(vec![be.clone()], vec![]), &be, cap), Ok(1000));

        // 2 GiB of 8 GiB → 1000 - 250 = 750.
        let b = ctr("b", &[("memory", "2Gi")], &[]);
        assert_eq!(oom_score_adj(&pod(vec![b.clone()], vec![]), &b, cap), Ok(750));

        // Requesting (almost) all memory is clamped to 3, never as low as guaranteed.
        let big = ctr("big", &[("memory", "8Gi")], &[]);
        assert_eq!(oom_score_adj(&pod(vec![big.clone()], vec![]), &big, cap), Ok(3));

        // A burstable container without a memory request gets 999, not 1000.
        let cpu_only = ctr("c", &[("cpu", "100m")], &[]);
        assert_eq!(oom_score_adj(&pod(vec![cpu_only.clone()], vec![]), &cpu_only, cap), Ok(999));

        // Node-critical pods are protected like Guaranteed.
        let mut crit = pod(vec![be.clone()], vec![]);
        crit.priority_class_name = Some("system-node-critical".into());
        assert_eq!(oom_score_adj(&crit, &be, cap), Ok(-997));
    }

    #[test]
    fn sidecar_oom_score_not_above_regular_containers() {
        let cap = 8 * GI;
        let mut sidecar = ctr("s", &[("memory", "100Mi")], &[]);
        sidecar.restart_policy = Some("Always".into());
        let app = ctr("a", &[("memory", "4Gi")], &[]);
        let p = pod(vec![app.clone()], vec![sidecar.clone()]);
        let app_score = oom_score_adj(&p, &app, cap).expect("score");
        assert_eq!(app_score, 500);
        assert_eq!(oom_score_adj(&p, &sidecar, cap), Ok(500));
    }
}
