//! Every case where the agent's and the API server's copies of Kubernetes semantics disagreed
//! before this crate existed, with upstream's answer (k8s.io/apimachinery `resource.ParseQuantity`
//! and `Quantity.String()`, kubernetes `pkg/apis/core/validation`, `ComputePodQOS`).
//! Old answers are in the comments: `agent:` was agent/src/quantity.rs and manifest.rs,
//! `server:` was api-shim's objects.rs/validation.rs.
#![allow(clippy::unwrap_used)]

use keelson_apimachinery::objects::{self, FieldValidation};
use keelson_apimachinery::qos::{ContainerResources, QosClass, qos_class};
use keelson_apimachinery::quantity;
use keelson_apimachinery::resources::find;
use serde_json::json;

/// (input, upstream's canonical form, or None when upstream's ParseQuantity fails).
const QUANTITIES: &[(&str, Option<&str>)] = &[
    // agent: zero; server: rejected. Upstream's scanner returns 0 for a lone sign or dot.
    ("-", Some("0")),
    ("+", Some("0")),
    (".", Some("0")),
    // agent: zero; server: rejected ("m" had no digits). Upstream: 0 with suffix m.
    ("m", Some("0")),
    // both parsed; server stored the string unchanged, upstream canonicalizes (and validation
    // then refuses the negative value, see below).
    ("-1", Some("-1")),
    ("-5Mi", Some("-5Mi")),
    // agent: saturated at i64::MAX on use; server: stored "1e400". Upstream keeps the decimal
    // value (the cap at 2^63-1 applies to binary SI only) and prints it canonically.
    ("1e400", Some("10e399")),
    ("8Ei", Some("9223372036854775807")),
    // server stored as written; upstream rounds up to whole nanos. (The task brief expected
    // 1m, after the Quantity doc comment "0.1m will rounded up to 1m"; the code rounds to 1n.)
    ("0.0001m", Some("100n")),
    ("0.1m", Some("100u")),
    (".5", Some("500m")),
    ("1.", Some("1")),
    ("1.5Gi", Some("1536Mi")),
    // server: float arithmetic; both rejected these, as upstream.
    ("1.2.3", None),
    ("1Q", None),
    ("1e", None),
    (" 1", None),
    ("", None),
];

#[test]
fn quantities_parse_and_canonicalize_like_upstream() {
    for (input, want) in QUANTITIES {
        let got = quantity::parse(input).map(|q| q.canonical()).ok();
        assert_eq!(got.as_deref(), *want, "{input:?}");
        assert_eq!(objects::is_quantity(input), want.is_some(), "{input:?}");
    }
}

#[test]
fn negative_quantities_are_refused_with_upstreams_message() {
    let pods = find("", "v1", "pods").unwrap();
    for (q, shown) in [("-1", "-1"), ("-5Mi", "-5Mi"), ("-0.5", "-500m")] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"memory": q}}}]}});
        let (stored, _) = objects::check_schema("Pod", pod, FieldValidation::Strict).unwrap();
        let err = objects::validate(pods, &stored, None).unwrap_err();
        assert_eq!(err.code(), 422, "{q}");
        let want = format!(
            "spec.containers[0].resources.limits[memory]: Invalid value: \"{shown}\": must be greater than or equal to 0"
        );
        assert!(err.to_string().contains(&want), "{q}: {err}");
    }
    // Zero in any spelling is not negative.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"memory": "-"}}}]}});
    let (stored, _) = objects::check_schema("Pod", pod, FieldValidation::Strict).unwrap();
    assert_eq!(stored["spec"]["containers"][0]["resources"]["limits"]["memory"], "0");
    objects::validate(pods, &stored, None).unwrap();
}

#[test]
fn names() {
    // DNS-1123 label (container names, namespaces): both copies agreed; pinned here.
    for (s, ok) in [("a", true), ("a-b", true), ("-a", false), ("a-", false), ("A", false), ("a.b", false)] {
        assert_eq!(objects::is_dns_label(s), ok, "{s:?}");
    }
    assert!(objects::is_dns_label(&"a".repeat(63)));
    assert!(!objects::is_dns_label(&"a".repeat(64)));
    // Subdomain (pod names): 253 characters, dot-separated labels.
    assert!(objects::is_dns_subdomain("a.b-c.d"));
    assert!(!objects::is_dns_subdomain("a..b"));
    assert!(!objects::is_dns_subdomain(&format!("{}.a", "a".repeat(253))));
    // Qualified names and label values (only the server checked labels).
    assert!(objects::is_qualified_name("example.com/Name_1"));
    assert!(!objects::is_qualified_name("example.com/"));
    assert!(!objects::is_qualified_name("_a"));
    assert!(objects::is_label_value(""));
    assert!(!objects::is_label_value("-a"));
}

fn c<'a>(requests: &[(&'a str, &'a str)], limits: &[(&'a str, &'a str)]) -> ContainerResources<'a> {
    ContainerResources { requests: requests.to_vec(), limits: limits.to_vec() }
}

#[test]
fn qos_edge_cases() {
    let full = [("cpu", "1"), ("memory", "1Gi")];
    // server: compared the strings, so "1" vs "1000m" was Burstable; agent and upstream: equal.
    assert_eq!(qos_class([c(&[("cpu", "1000m"), ("memory", "1Gi")], &full)]), QosClass::Guaranteed);
    // server: a zero request counted as "something requested"; upstream ignores zero amounts.
    assert_eq!(qos_class([c(&[("cpu", "0")], &[])]), QosClass::BestEffort);
    // Limits only: requests default to limits (upstream's defaulting).
    assert_eq!(qos_class([c(&[], &full)]), QosClass::Guaranteed);
    // server: init containers were ignored; upstream counts them.
    assert_eq!(qos_class([c(&[], &full), c(&[("cpu", "1")], &[])]), QosClass::Burstable);
    // Only cpu and memory count.
    assert_eq!(qos_class([c(&[("ephemeral-storage", "1Gi")], &[])]), QosClass::BestEffort);
    assert_eq!(qos_class([c(&[("cpu", "500m")], &full)]), QosClass::Burstable);
    // Through the server's JSON path too.
    let pod = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": "1000m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}]}});
    assert_eq!(objects::pod_qos(&pod), "Guaranteed");
}
