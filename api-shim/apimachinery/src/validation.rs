//! Kind-specific validation beyond names, labels and the shapes checked in [`crate::objects`]:
//! the rules kube-apiserver enforces on pod specs, workloads, CronJob schedules, Services,
//! EndpointSlices, Leases, Nodes and Events, with the same field paths and messages, so that a
//! manifest the real API rejects is rejected here too (and tools that parse `causes` work).
//!
//! Every check takes the already schema-checked JSON (types are right; values are not yet) and
//! appends [`Cause`]s; nothing here fails fast, so one response names every problem.

use serde_json::Value;

use crate::error::Cause;
use crate::objects::{is_dns_label, is_qualified_name};
use crate::resources::ResourceDef;

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn arr<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = (usize, &'a Value)> {
    v.get(key).and_then(Value::as_array).into_iter().flatten().enumerate()
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn non_negative(v: &Value, key: &str, path: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = v.get(key).and_then(Value::as_i64)
        && n < 0
    {
        causes.push(Cause::invalid(join(path, key), n, "must be greater than or equal to 0"));
    }
}

fn one_of(v: &Value, key: &str, path: &str, allowed: &[&str], causes: &mut Vec<Cause>) {
    if let Some(x) = s(v, key)
        && !allowed.contains(&x)
    {
        causes.push(Cause::unsupported(join(path, key), x, allowed));
    }
}

/// Entry point, called by [`crate::objects::validate`] after the common checks.
pub fn validate_kind(res: &ResourceDef, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match res.kind {
        "Pod" => pod_spec(spec, "spec", None, causes),
        "Deployment" => {
            pod_spec(template_spec(spec), "spec.template.spec", Some(&["Always"]), causes);
            deployment(spec, causes);
        }
        "ReplicaSet" | "ReplicationController" | "DaemonSet" => {
            pod_spec(template_spec(spec), "spec.template.spec", Some(&["Always"]), causes);
            non_negative(spec, "minReadySeconds", "spec", causes);
            if res.kind == "DaemonSet" {
                update_strategy(spec, causes);
            }
        }
        "StatefulSet" => {
            pod_spec(template_spec(spec), "spec.template.spec", Some(&["Always"]), causes);
            one_of(spec, "podManagementPolicy", "spec", &["OrderedReady", "Parallel"], causes);
            update_strategy(spec, causes);
            non_negative(spec, "minReadySeconds", "spec", causes);
            if let Some(old) = old {
                statefulset_update(spec, old.get("spec").unwrap_or(&Value::Null), causes);
            }
        }
        "Job" => {
            pod_spec(template_spec(spec), "spec.template.spec", Some(&["OnFailure", "Never"]), causes);
            job(spec, "spec", causes);
            if let Some(old) = old {
                job_update(spec, old.get("spec").unwrap_or(&Value::Null), causes);
            }
        }
        "CronJob" => cronjob(spec, causes),
        "Service" => service(spec, causes),
        "EndpointSlice" => endpoint_slice(obj, old, causes),
        "Lease" => {
            if let Some(d) = spec.get("leaseDurationSeconds").and_then(Value::as_i64)
                && d <= 0
            {
                causes.push(Cause::invalid("spec.leaseDurationSeconds", d, "must be greater than 0"));
            }
            non_negative(spec, "leaseTransitions", "spec", causes);
        }
        "Node" => node(spec, causes),
        "Event" => event(obj, causes),
        _ => {}
    }
}

/// DaemonSet and StatefulSet `spec.updateStrategy.type`.
fn update_strategy(spec: &Value, causes: &mut Vec<Cause>) {
    let strategy = spec.get("updateStrategy").unwrap_or(&Value::Null);
    one_of(strategy, "type", "spec.updateStrategy", &["OnDelete", "RollingUpdate"], causes);
}

fn template_spec(spec: &Value) -> &Value {
    spec.pointer("/template/spec").unwrap_or(&Value::Null)
}

// ------------------------------------------------------------------------- quantities

/// A resource quantity's value (`500m` → 0.5, `1Gi` → 1073741824); None if malformed.
pub fn quantity_value(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-'))).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    Some(n * mult)
}

// ------------------------------------------------------------------------- pod spec

/// IANA service name: at most 15 characters, lowercase alphanumerics and '-', at least one
/// letter, no leading/trailing or double '-' (container and service port names).
fn is_iana_svc_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.bytes().any(|b| b.is_ascii_lowercase())
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

/// A port number that may be left 0 (unset, or allocated by the server).
fn optional_port(v: &Value, key: &str, path: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = v.get(key).and_then(Value::as_i64)
        && n != 0
        && !(1..=65535).contains(&n)
    {
        causes.push(Cause::invalid(join(path, key), n, "must be between 1 and 65535, inclusive"));
    }
}

/// Port names (container or Service ports under `path`): optional, valid per `valid`, unique.
fn port_names(owner: &Value, path: &str, valid: fn(&str) -> bool, invalid: &str, causes: &mut Vec<Cause>) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in arr(owner, "ports") {
        let Some(name) = s(p, "name").filter(|n| !n.is_empty()) else { continue };
        if !valid(name) {
            causes.push(Cause::invalid(format!("{path}.ports[{i}].name"), name, invalid));
        } else if !seen.insert(name) {
            causes.push(Cause::duplicate(format!("{path}.ports[{i}].name"), name));
        }
    }
}

fn probe(p: &Value, path: &str, liveness_or_startup: bool, causes: &mut Vec<Cause>) {
    let handlers = ["exec", "httpGet", "tcpSocket", "grpc"].iter().filter(|h| p.get(**h).is_some()).count();
    match handlers {
        0 => causes.push(Cause::required(path.to_string())),
        1 => {}
        _ => causes.push(Cause::forbidden(path.to_string(), "may not specify more than 1 handler type")),
    }
    for f in ["initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold"] {
        non_negative(p, f, path, causes);
    }
    if liveness_or_startup
        && let Some(n) = p.get("successThreshold").and_then(Value::as_i64)
        && n != 1
    {
        causes.push(Cause::invalid(format!("{path}.successThreshold"), n, "must be 1"));
    }
    if let Some(port) = p.pointer("/httpGet/port").or_else(|| p.pointer("/tcpSocket/port")) {
        let ok = match port {
            Value::Number(n) => n.as_i64().is_some_and(|n| (1..=65535).contains(&n)),
            Value::String(name) => is_iana_svc_name(name),
            _ => false,
        };
        if !ok {
            let which = if p.get("httpGet").is_some() { "httpGet" } else { "tcpSocket" };
            causes.push(Cause::invalid(
                format!("{path}.{which}.port"),
                port.as_str().map(str::to_string).unwrap_or_else(|| port.to_string()),
                "must be between 1 and 65535, inclusive, or an IANA service name",
            ));
        }
    }
}

fn container(c: &Value, cp: &str, volumes: &[&str], is_init: bool, causes: &mut Vec<Cause>) {
    one_of(c, "imagePullPolicy", cp, &["Always", "IfNotPresent", "Never"], causes);
    one_of(c, "terminationMessagePolicy", cp, &["File", "FallbackToLogsOnError"], causes);
    for (i, e) in arr(c, "env") {
        let name = s(e, "name").unwrap_or_default();
        if name.is_empty() {
            causes.push(Cause::required(format!("{cp}.env[{i}].name")));
        } else if name.contains('=') || !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            causes.push(Cause::invalid(
                format!("{cp}.env[{i}].name"),
                name,
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
        if e.get("value").is_some_and(|v| !v.as_str().unwrap_or_default().is_empty()) && e.get("valueFrom").is_some() {
            causes.push(Cause::invalid(
                format!("{cp}.env[{i}].valueFrom"),
                "",
                "may not be specified when `value` is not empty",
            ));
        }
    }
    port_names(
        c,
        cp,
        is_iana_svc_name,
        "must be no more than 15 characters, contain only lowercase alphanumerics and '-', and at least one letter",
        causes,
    );
    for (j, p) in arr(c, "ports") {
        optional_port(p, "hostPort", &format!("{cp}.ports[{j}]"), causes);
    }
    let mut mount_paths = std::collections::BTreeSet::new();
    for (j, m) in arr(c, "volumeMounts") {
        let name = s(m, "name").unwrap_or_default();
        if name.is_empty() {
            causes.push(Cause::required(format!("{cp}.volumeMounts[{j}].name")));
        } else if !volumes.contains(&name) {
            causes.push(Cause {
                reason: "FieldValueNotFound",
                field: format!("{cp}.volumeMounts[{j}].name"),
                message: format!("Not found: \"{name}\""),
            });
        }
        let mp = s(m, "mountPath").unwrap_or_default();
        if mp.is_empty() {
            causes.push(Cause::required(format!("{cp}.volumeMounts[{j}].mountPath")));
        } else if !mount_paths.insert(mp) {
            causes.push(Cause::invalid(format!("{cp}.volumeMounts[{j}].mountPath"), mp, "must be unique"));
        }
    }
    // requests <= limits, per resource.
    if let (Some(req), Some(lim)) = (
        c.pointer("/resources/requests").and_then(Value::as_object),
        c.pointer("/resources/limits").and_then(Value::as_object),
    ) {
        for (name, r) in req {
            let (Some(rq), Some(l)) = (r.as_str().and_then(quantity_value), lim.get(name).and_then(Value::as_str))
            else {
                continue;
            };
            if let Some(lv) = quantity_value(l)
                && rq > lv
            {
                causes.push(Cause::invalid(
                    format!("{cp}.resources.requests"),
                    r.as_str().unwrap_or_default(),
                    format!("must be less than or equal to {name} limit of {l}"),
                ));
            }
        }
    }
    let restart = s(c, "restartPolicy");
    if let Some(rp) = restart {
        if !is_init {
            causes.push(Cause::forbidden(format!("{cp}.restartPolicy"), "may not be set for non-init containers"));
        } else if rp != "Always" {
            causes.push(Cause::unsupported(format!("{cp}.restartPolicy"), rp, &["Always"]));
        }
    }
    let sidecar = is_init && restart == Some("Always");
    for (key, live) in [("livenessProbe", true), ("readinessProbe", false), ("startupProbe", true)] {
        if let Some(p) = c.get(key) {
            if is_init && !sidecar {
                causes.push(Cause::forbidden(
                    format!("{cp}.{key}"),
                    "may not be set for init containers without restartPolicy=Always",
                ));
            } else {
                probe(p, &format!("{cp}.{key}"), live, causes);
            }
        }
    }
}

/// The pod spec checks beyond names and images (those are in `objects`). `restart` limits the
/// pod's restartPolicy for controllers (Deployments need Always, Jobs OnFailure/Never).
pub fn pod_spec(spec: &Value, path: &str, restart: Option<&[&str]>, causes: &mut Vec<Cause>) {
    if !spec.is_object() {
        return;
    }
    let volumes: Vec<&str> = arr(spec, "volumes").filter_map(|(_, v)| s(v, "name")).collect();
    for (i, v) in arr(spec, "volumes") {
        let sources = v.as_object().map_or(0, |m| m.keys().filter(|k| k.as_str() != "name").count());
        if sources == 0 {
            causes.push(Cause::required(format!("{path}.volumes[{i}]")));
        } else if sources > 1 {
            causes.push(Cause::forbidden(format!("{path}.volumes[{i}]"), "may not specify more than 1 volume type"));
        }
    }
    for (key, init) in [("initContainers", true), ("containers", false)] {
        for (i, c) in arr(spec, key) {
            container(c, &format!("{path}.{key}[{i}]"), &volumes, init, causes);
        }
    }
    if let Some(allowed) = restart {
        let rp = s(spec, "restartPolicy").unwrap_or("Always");
        if !allowed.contains(&rp) {
            causes.push(Cause::unsupported(format!("{path}.restartPolicy"), rp, allowed));
        }
    }
    one_of(spec, "dnsPolicy", path, &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"], causes);
    if s(spec, "dnsPolicy") == Some("None") && spec.get("dnsConfig").is_none() {
        causes.push(Cause::required(format!("{path}.dnsConfig")));
    }
    non_negative(spec, "terminationGracePeriodSeconds", path, causes);
    if let Some(a) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64)
        && a <= 0
    {
        causes.push(Cause::invalid(format!("{path}.activeDeadlineSeconds"), a, "must be greater than 0"));
    }
    if let Some(Value::Object(sel)) = spec.get("nodeSelector") {
        for k in sel.keys() {
            if !is_qualified_name(k) {
                causes.push(Cause::invalid(format!("{path}.nodeSelector"), k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
        }
    }
    if let Some(h) = s(spec, "hostname")
        && !is_dns_label(h)
    {
        causes.push(Cause::invalid(
            format!("{path}.hostname"),
            h,
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
        ));
    }
    for (i, t) in arr(spec, "tolerations") {
        one_of(t, "operator", &format!("{path}.tolerations[{i}]"), &["Equal", "Exists"], causes);
        one_of(
            t,
            "effect",
            &format!("{path}.tolerations[{i}]"),
            &["NoExecute", "NoSchedule", "PreferNoSchedule"],
            causes,
        );
        if s(t, "operator") == Some("Exists") && s(t, "value").is_some_and(|v| !v.is_empty()) {
            causes.push(Cause::invalid(
                format!("{path}.tolerations[{i}].operator"),
                "Exists",
                "value must be empty when `operator` is 'Exists'",
            ));
        }
    }
}

// ------------------------------------------------------------------------- workloads

fn int_or_percent_is_zero(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Number(n)) => n.as_i64() == Some(0),
        Some(Value::String(s)) => s.trim_end_matches('%').parse::<i64>() == Ok(0),
        _ => false,
    }
}

fn deployment(spec: &Value, causes: &mut Vec<Cause>) {
    for f in ["minReadySeconds", "revisionHistoryLimit"] {
        non_negative(spec, f, "spec", causes);
    }
    let strategy = spec.get("strategy").unwrap_or(&Value::Null);
    one_of(strategy, "type", "spec.strategy", &["Recreate", "RollingUpdate"], causes);
    if s(strategy, "type") == Some("Recreate") && strategy.get("rollingUpdate").is_some() {
        causes.push(Cause::forbidden(
            "spec.strategy.rollingUpdate",
            "may not be specified when strategy `type` is 'Recreate'",
        ));
    }
    if let Some(ru) = strategy.get("rollingUpdate")
        && int_or_percent_is_zero(ru.get("maxUnavailable"))
        && int_or_percent_is_zero(ru.get("maxSurge"))
    {
        causes.push(Cause::invalid(
            "spec.strategy.rollingUpdate.maxUnavailable",
            ru.get("maxUnavailable").map(|v| v.to_string().trim_matches('"').to_string()).unwrap_or_default(),
            "may not be 0 when `maxSurge` is 0",
        ));
    }
    if let (Some(p), m) = (
        spec.get("progressDeadlineSeconds").and_then(Value::as_i64),
        spec.get("minReadySeconds").and_then(Value::as_i64).unwrap_or(0),
    ) && p <= m
    {
        causes.push(Cause::invalid("spec.progressDeadlineSeconds", p, "must be greater than minReadySeconds"));
    }
}

fn statefulset_update(new: &Value, old: &Value, causes: &mut Vec<Cause>) {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Value::Object(m) = &mut v {
            for k in [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ] {
                m.remove(k);
            }
        }
        v
    };
    if strip(new) != strip(old) {
        causes.push(Cause::forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        ));
    }
}

fn job(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    for f in ["parallelism", "completions", "backoffLimit", "ttlSecondsAfterFinished"] {
        non_negative(spec, f, path, causes);
    }
    if let Some(a) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64)
        && a <= 0
    {
        causes.push(Cause::invalid(format!("{path}.activeDeadlineSeconds"), a, "must be greater than 0"));
    }
    one_of(spec, "completionMode", path, &["Indexed", "NonIndexed"], causes);
    if s(spec, "completionMode") == Some("Indexed") && spec.get("completions").is_none_or(Value::is_null) {
        causes.push(Cause::required(format!("{path}.completions")));
    }
}

fn job_update(new: &Value, old: &Value, causes: &mut Vec<Cause>) {
    if new.get("completions") != old.get("completions") && s(new, "completionMode") != Some("Indexed") {
        causes.push(Cause::immutable("spec.completions"));
    }
    let template = |v: &Value| {
        let mut t = v.get("template").cloned().unwrap_or(Value::Null);
        // Scheduling directives may change while a job is suspended; labels/annotations are
        // tracked by the job controller. Everything else in the template is fixed.
        if let Some(Value::Object(m)) = t.get_mut("metadata") {
            m.remove("labels");
            m.remove("annotations");
        }
        if let Some(Value::Object(m)) = t.get_mut("spec") {
            for k in ["nodeSelector", "tolerations", "affinity", "schedulingGates"] {
                m.remove(k);
            }
        }
        t
    };
    if template(new) != template(old) {
        causes.push(Cause::immutable("spec.template"));
    }
}

// ------------------------------------------------------------------------- cron schedules

/// Parses one cron field (`*`, `?`, `a`, `a-b`, `*/n`, `a-b/n`, lists, month/day names).
fn cron_field(f: &str, min: u32, max: u32, names: &[&str]) -> Result<(), String> {
    let value = |t: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(t)) {
            return Ok(i as u32 + min);
        }
        let n: u32 = t.parse().map_err(|_| format!("failed to parse int from {t}"))?;
        if n < min || n > max {
            return Err(format!("{n} out of range [{min}, {max}]"));
        }
        Ok(n)
    };
    for part in f.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u32 = st.parse().map_err(|_| format!("failed to parse int from {st}"))?;
                if st == 0 {
                    return Err(format!("step of range should be a positive number: {part}"));
                }
                (r, Some(st))
            }
            None => (part, None),
        };
        match range {
            "*" | "?" => {}
            r => {
                let (a, b) = match r.split_once('-') {
                    Some((a, b)) => (value(a)?, value(b)?),
                    None => {
                        let v = value(r)?;
                        (v, if step.is_some() { max } else { v })
                    }
                };
                if a > b {
                    return Err(format!("beginning of range ({a}) beyond end of range ({b}): {r}"));
                }
            }
        }
    }
    Ok(())
}

/// Validates a CronJob schedule the way the standard 5-field cron parser upstream uses does.
pub fn cron_schedule(sched: &str) -> Result<(), String> {
    let sched = sched.trim();
    if sched.starts_with("TZ=") || sched.starts_with("CRON_TZ=") {
        return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    if let Some(d) = sched.strip_prefix('@') {
        return match d {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly" => Ok(()),
            every if every.starts_with("every ") => Ok(()),
            other => Err(format!("unrecognized descriptor: @{other}")),
        };
    }
    let fields: Vec<&str> = sched.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!("expected exactly 5 fields, found {}: {sched}", fields.len()));
    }
    const MONTHS: &[&str] = &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    cron_field(fields[0], 0, 59, &[])?;
    cron_field(fields[1], 0, 23, &[])?;
    cron_field(fields[2], 1, 31, &[])?;
    cron_field(fields[3], 1, 12, MONTHS)?;
    cron_field(fields[4], 0, 6, DAYS)
}

fn cronjob(spec: &Value, causes: &mut Vec<Cause>) {
    if let Some(sched) = s(spec, "schedule")
        && !sched.is_empty()
        && let Err(e) = cron_schedule(sched)
    {
        causes.push(Cause::invalid("spec.schedule", sched, format!("unparseable schedule: {e}")));
    }
    if let Some(tz) = s(spec, "timeZone") {
        let well_formed = !tz.is_empty()
            && !tz.starts_with('/')
            && !tz.contains("..")
            && tz.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-+".contains(&b));
        let zoneinfo = std::path::Path::new("/usr/share/zoneinfo");
        let known = tz == "UTC" || tz == "Local" || !zoneinfo.is_dir() || zoneinfo.join(tz).is_file();
        if !well_formed || !known {
            causes.push(Cause::invalid("spec.timeZone", tz, "unknown time zone"));
        }
    }
    one_of(spec, "concurrencyPolicy", "spec", &["Allow", "Forbid", "Replace"], causes);
    for f in ["startingDeadlineSeconds", "successfulJobsHistoryLimit", "failedJobsHistoryLimit"] {
        non_negative(spec, f, "spec", causes);
    }
    let job_spec = spec.pointer("/jobTemplate/spec").unwrap_or(&Value::Null);
    job(job_spec, "spec.jobTemplate.spec", causes);
    pod_spec(
        job_spec.pointer("/template/spec").unwrap_or(&Value::Null),
        "spec.jobTemplate.spec.template.spec",
        Some(&["OnFailure", "Never"]),
        causes,
    );
}

// ------------------------------------------------------------------------- networking

fn service(spec: &Value, causes: &mut Vec<Cause>) {
    let ty = s(spec, "type").unwrap_or("ClusterIP");
    one_of(spec, "sessionAffinity", "spec", &["ClientIP", "None"], causes);
    if s(spec, "externalTrafficPolicy").is_some_and(|p| !p.is_empty()) && !matches!(ty, "NodePort" | "LoadBalancer") {
        causes.push(Cause::invalid(
            "spec.externalTrafficPolicy",
            s(spec, "externalTrafficPolicy").unwrap_or_default(),
            "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
        ));
    }
    one_of(spec, "externalTrafficPolicy", "spec", &["Cluster", "Local"], causes);
    one_of(spec, "internalTrafficPolicy", "spec", &["Cluster", "Local"], causes);
    port_names(
        spec,
        "spec",
        is_dns_label,
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
        causes,
    );
    for (i, p) in arr(spec, "ports") {
        match p.get("targetPort") {
            // 0 means "same as port" (defaulting fills it in when absent).
            Some(Value::Number(n)) if !n.as_i64().is_some_and(|n| n == 0 || (1..=65535).contains(&n)) => {
                causes.push(Cause::invalid(
                    format!("spec.ports[{i}].targetPort"),
                    n,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            Some(Value::String(n)) if !is_iana_svc_name(n) => {
                causes.push(Cause::invalid(
                    format!("spec.ports[{i}].targetPort"),
                    n,
                    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
                ));
            }
            _ => {}
        }
        optional_port(p, "nodePort", &format!("spec.ports[{i}]"), causes);
    }
    if let Some(Value::Object(sel)) = spec.get("selector") {
        for k in sel.keys() {
            if !is_qualified_name(k) {
                causes.push(Cause::invalid("spec.selector", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
        }
    }
}

fn endpoint_slice(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let ty = s(obj, "addressType").unwrap_or_default();
    if ty.is_empty() {
        causes.push(Cause::required("addressType"));
    } else {
        one_of(obj, "addressType", "", &["FQDN", "IPv4", "IPv6"], causes);
    }
    if let Some(old) = old
        && s(old, "addressType") != s(obj, "addressType")
    {
        causes.push(Cause::immutable("addressType"));
    }
    for (i, ep) in arr(obj, "endpoints") {
        let addrs: Vec<&str> = arr(ep, "addresses").filter_map(|(_, a)| a.as_str()).collect();
        if addrs.is_empty() || addrs.len() > 100 {
            causes.push(Cause::invalid(
                format!("endpoints[{i}].addresses"),
                addrs.len(),
                "must contain at least 1 and at most 100 addresses",
            ));
        }
        for (j, a) in addrs.iter().enumerate() {
            let ok = match ty {
                "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                "IPv6" => a.parse::<std::net::Ipv6Addr>().is_ok(),
                "FQDN" => crate::objects::is_dns_subdomain(a),
                _ => true,
            };
            if !ok {
                causes.push(Cause::invalid(
                    format!("endpoints[{i}].addresses[{j}]"),
                    a,
                    format!("must be a valid {ty} address"),
                ));
            }
        }
    }
    for (i, p) in arr(obj, "ports") {
        one_of(p, "protocol", &format!("ports[{i}]"), &["SCTP", "TCP", "UDP"], causes);
        if let Some(n) = p.get("port").and_then(Value::as_i64)
            && !(1..=65535).contains(&n)
        {
            causes.push(Cause::invalid(format!("ports[{i}].port"), n, "must be between 1 and 65535, inclusive"));
        }
    }
}

fn node(spec: &Value, causes: &mut Vec<Cause>) {
    for key in ["podCIDR"] {
        if let Some(c) = s(spec, key)
            && !c.is_empty()
            && c.parse::<ipnet::IpNet>().is_err()
        {
            causes.push(Cause::invalid(
                format!("spec.{key}"),
                c,
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            ));
        }
    }
    for (i, c) in arr(spec, "podCIDRs") {
        let c = c.as_str().unwrap_or_default();
        if c.parse::<ipnet::IpNet>().is_err() {
            causes.push(Cause::invalid(
                format!("spec.podCIDRs[{i}]"),
                c,
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            ));
        }
    }
    for (i, t) in arr(spec, "taints") {
        let key = s(t, "key").unwrap_or_default();
        if !is_qualified_name(key) {
            causes.push(Cause::invalid(format!("spec.taints[{i}].key"), key, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        match s(t, "effect") {
            None | Some("") => causes.push(Cause::required(format!("spec.taints[{i}].effect"))),
            Some(e) if !["NoExecute", "NoSchedule", "PreferNoSchedule"].contains(&e) => {
                causes.push(Cause::unsupported(
                    format!("spec.taints[{i}].effect"),
                    e,
                    &["NoExecute", "NoSchedule", "PreferNoSchedule"],
                ));
            }
            _ => {}
        }
    }
}

fn event(obj: &Value, causes: &mut Vec<Cause>) {
    let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
    if let Some(ins) = obj.pointer("/involvedObject/namespace").and_then(Value::as_str)
        && !ins.is_empty()
        && ins != ns
    {
        causes.push(Cause::invalid("involvedObject.namespace", ins, "does not match event.namespace"));
    }
    one_of(obj, "type", "", &["Normal", "Warning"], causes);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;
    use crate::resources::find;

    fn fields(kind_plural: (&str, &str), obj: Value, old: Option<Value>) -> Vec<String> {
        let res = find(kind_plural.0, "v1", kind_plural.1).unwrap();
        let mut causes = Vec::new();
        validate_kind(res, &obj, old.as_ref(), &mut causes);
        causes.into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn quantities_compare_across_suffixes() {
        assert_eq!(quantity_value("500m"), Some(0.5));
        assert_eq!(quantity_value("1Gi"), Some(1073741824.0));
        assert_eq!(quantity_value("1e3"), Some(1000.0));
        assert_eq!(quantity_value("2.5k"), Some(2500.0));
        assert_eq!(quantity_value("1Zi"), None);
        assert_eq!(quantity_value(""), None);
    }

    #[test]
    fn pod_spec_rules_name_their_fields() {
        let pod = json!({"spec": {
            "volumes": [{"name": "data", "emptyDir": {}}, {"name": "none"}],
            "containers": [{
                "name": "a", "image": "i", "imagePullPolicy": "Sometimes",
                "env": [{"name": "A=B", "value": "x"}, {"name": "OK", "value": "v", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 81, "name": "http"}, {"containerPort": 82, "name": "Not_OK"}],
                "volumeMounts": [{"name": "data", "mountPath": "/d"}, {"name": "missing", "mountPath": "/d"}],
                "resources": {"requests": {"cpu": "2", "memory": "64Mi"}, "limits": {"cpu": "1500m", "memory": "1Gi"}},
                "livenessProbe": {"exec": {"command": ["true"]}, "httpGet": {"port": 80}, "successThreshold": 2},
                "readinessProbe": {"periodSeconds": 5},
                "restartPolicy": "Always",
            }],
            "dnsPolicy": "None",
            "activeDeadlineSeconds": 0,
        }});
        let got = fields(("", "pods"), pod, None);
        let want = [
            "spec.volumes[1]: Required value",
            "spec.containers[0].imagePullPolicy: Unsupported value: \"Sometimes\"",
            "spec.containers[0].env[0].name: Invalid value: \"A=B\"",
            "spec.containers[0].env[1].valueFrom: Invalid value",
            "spec.containers[0].ports[1].name: Duplicate value: \"http\"",
            "spec.containers[0].ports[2].name: Invalid value: \"Not_OK\"",
            "spec.containers[0].volumeMounts[1].name: Not found: \"missing\"",
            "spec.containers[0].volumeMounts[1].mountPath: Invalid value: \"/d\": must be unique",
            "spec.containers[0].resources.requests: Invalid value: \"2\": must be less than or equal to cpu limit of 1500m",
            "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers",
            "spec.containers[0].livenessProbe: Forbidden: may not specify more than 1 handler type",
            "spec.containers[0].livenessProbe.successThreshold: Invalid value: \"2\": must be 1",
            "spec.containers[0].readinessProbe: Required value",
            "spec.dnsConfig: Required value",
            "spec.activeDeadlineSeconds: Invalid value: \"0\": must be greater than 0",
        ];
        for w in want {
            assert!(got.iter().any(|g| g.starts_with(w)), "missing {w:?} in {got:#?}");
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
        // A sidecar (init container with restartPolicy Always) may have probes.
        let ok = json!({"spec": {"initContainers": [{"name": "s", "image": "i", "restartPolicy": "Always",
            "readinessProbe": {"tcpSocket": {"port": 8080}}}], "containers": [{"name": "a", "image": "i"}]}});
        assert!(fields(("", "pods"), ok, None).is_empty());
    }

    #[test]
    fn workloads_enforce_restart_policy_strategy_and_immutable_fields() {
        let d = json!({"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "i"}]}},
            "strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}},
            "progressDeadlineSeconds": 5, "minReadySeconds": 10}});
        let got = fields(("apps", "deployments"), d, None);
        assert!(
            got.iter().any(|g| g.starts_with(
                "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\""
            )),
            "{got:?}"
        );
        assert!(got.iter().any(|g| g.starts_with("spec.strategy.rollingUpdate: Forbidden")), "{got:?}");
        assert!(got.iter().any(|g| g.contains("may not be 0 when `maxSurge` is 0")), "{got:?}");
        assert!(got.iter().any(|g| g.starts_with("spec.progressDeadlineSeconds")), "{got:?}");

        let sts = |svc: &str, replicas: i64| {
            json!({"spec": {"serviceName": svc, "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "a", "image": "i"}]}}}})
        };
        assert!(fields(("apps", "statefulsets"), sts("a", 3), Some(sts("a", 1))).is_empty());
        let got = fields(("apps", "statefulsets"), sts("b", 1), Some(sts("a", 1)));
        assert!(got[0].starts_with("spec: Forbidden: updates to statefulset spec"), "{got:?}");

        let job = |image: &str, completions: i64| {
            json!({"spec": {"completions": completions,
            "template": {"metadata": {"labels": {"x": image}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": image}]}}}})
        };
        assert!(fields(("batch", "jobs"), job("i", 1), Some(job("i", 1))).is_empty());
        let got = fields(("batch", "jobs"), job("j", 2), Some(job("i", 1)));
        assert_eq!(got, ["spec.completions: field is immutable", "spec.template: field is immutable"]);
        let indexed = json!({"spec": {"completionMode": "Indexed", "template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "a", "image": "i"}]}}}});
        let got = fields(("batch", "jobs"), indexed, None);
        assert!(got.iter().any(|g| g.starts_with("spec.template.spec.restartPolicy: Unsupported value")), "{got:?}");
        assert!(got.iter().any(|g| g == "spec.completions: Required value"), "{got:?}");
    }

    #[test]
    fn cron_schedules_parse_like_the_standard_parser() {
        for ok in [
            "*/5 * * * *",
            "0 0 * * 0",
            "15,45 9-17 * JAN-jun mon-fri",
            "@hourly",
            "@every 1h",
            "0 0 1 */2 ?",
            "5/15 * * * *",
        ] {
            assert!(cron_schedule(ok).is_ok(), "{ok}: {:?}", cron_schedule(ok));
        }
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 7",
            "*/0 * * * *",
            "5-1 * * * *",
            "@sometimes",
            "TZ=UTC 0 * * * *",
            "a b c d e",
        ] {
            assert!(cron_schedule(bad).is_err(), "{bad} must fail");
        }
        let cj = json!({"spec": {"schedule": "61 * * * *", "timeZone": "Mars/Olympus", "concurrencyPolicy": "Sometimes",
            "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "i"}]}}}}}});
        let got = fields(("batch", "cronjobs"), cj, None);
        assert!(
            got.iter().any(|g| g.starts_with("spec.schedule: Invalid value: \"61 * * * *\": unparseable schedule")),
            "{got:?}"
        );
        assert!(got.iter().any(|g| g.starts_with("spec.concurrencyPolicy: Unsupported value")), "{got:?}");
        // Jobs default to restartPolicy Always in the template, which a Job may not use.
        assert!(got.iter().any(|g| g.starts_with("spec.jobTemplate.spec.template.spec.restartPolicy")), "{got:?}");
        if std::path::Path::new("/usr/share/zoneinfo").is_dir() {
            assert!(got.iter().any(|g| g.starts_with("spec.timeZone")), "{got:?}");
        }
    }

    #[test]
    fn services_slices_nodes_leases_and_events() {
        let svc = json!({"spec": {"type": "ClusterIP", "externalTrafficPolicy": "Local", "sessionAffinity": "Sticky",
            "ports": [{"name": "web", "port": 80, "targetPort": 70000}, {"name": "web", "port": 81, "targetPort": "Bad_Name"}]}});
        let got = fields(("", "services"), svc, None);
        for w in [
            "spec.sessionAffinity",
            "spec.externalTrafficPolicy",
            "spec.ports[0].targetPort",
            "spec.ports[1].name: Duplicate",
            "spec.ports[1].targetPort",
        ] {
            assert!(got.iter().any(|g| g.starts_with(w)), "missing {w} in {got:?}");
        }
        let es = |ty: &str, addr: &str| json!({"addressType": ty, "endpoints": [{"addresses": [addr]}], "ports": [{"port": 70000}]});
        let got = fields(("discovery.k8s.io", "endpointslices"), es("IPv4", "fe80::1"), Some(es("IPv6", "fe80::1")));
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got[0].starts_with("addressType: field is immutable")
                || got.iter().any(|g| g.starts_with("addressType: field is immutable"))
        );
        assert!(got.iter().any(|g| g.starts_with("endpoints[0].addresses[0]: Invalid value: \"fe80::1\"")), "{got:?}");
        let node = json!({"spec": {"podCIDR": "10.0.0.0/33", "taints": [{"key": "k", "effect": "Sometimes"}, {"key": "-bad-"}]}});
        assert_eq!(fields(("", "nodes"), node, None).len(), 4);
        let lease = json!({"spec": {"leaseDurationSeconds": 0}});
        assert_eq!(fields(("coordination.k8s.io", "leases"), lease, None).len(), 1);
        let ev = json!({"metadata": {"namespace": "a"}, "involvedObject": {"namespace": "b"}, "type": "Info"});
        let got = fields(("", "events"), ev, None);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("involvedObject.namespace: Invalid value: \"b\": does not match event.namespace"));
    }
}
