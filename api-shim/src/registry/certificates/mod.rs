//! `certificates.k8s.io/v1` CertificateSigningRequests: the strategy (validation, the requester
//! recorded from the authenticated user, an immutable spec, the `approval` subresource that
//! changes only conditions), and the in-process approver and signer.
//!
//! The approver and signer run inside the API server ([`controller`]) rather than in the
//! controllers crate because the signer needs the cluster CA's private key, which only the
//! server's data directory holds (upstream's kube-controller-manager gets it by a flag); and the
//! approver's SubjectAccessReview is answered by the same in-process RBAC cache.

pub mod approver;
pub mod controller;
pub mod signer;

use serde_json::{Value, json};

use super::strategy::Strategy;
use crate::error::{ApiError, Cause};
use crate::objects;
use crate::registry::rbac::authz::UserInfo;
use crate::resources::ResourceDef;

pub const GROUP: &str = "certificates.k8s.io";
/// Client certificates for kubelets (`system:node:<name>`, `system:nodes`).
pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Client certificates for anything else authenticating to the API server.
pub const APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
/// The `kubernetes.io/` signers upstream defines (only the first two are signed here).
pub const KNOWN_SIGNERS: &[&str] =
    &[KUBELET_CLIENT, APISERVER_CLIENT, "kubernetes.io/kubelet-serving", "kubernetes.io/legacy-unknown"];
/// Key usages a CSR may ask for (upstream's `KeyUsage` values).
pub const USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

/// The parsed subject of a CSR's `spec.request` (base64 of a PEM `CERTIFICATE REQUEST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub common_name: String,
    pub organizations: Vec<String>,
    /// Whether the request carries any subject alternative name.
    pub has_sans: bool,
    /// The PEM text of the request.
    pub pem: String,
}

/// Decodes and parses `spec.request`, checking the request's signature.
pub fn parse_request(csr: &Value) -> Result<Subject, String> {
    use base64::Engine;
    use x509_parser::prelude::FromDer;
    let b64 = csr.pointer("/spec/request").and_then(Value::as_str).ok_or("spec.request is required")?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("not base64: {e}"))?;
    let pem_text = String::from_utf8(raw).map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST")?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("could not parse the certificate request: {e}"))?;
    req.verify_signature().map_err(|_| "the certificate request's signature is invalid".to_string())?;
    let subject = &req.certification_request_info.subject;
    let common_name = subject.iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or_default().to_string();
    let organizations = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    let has_sans = req.requested_extensions().into_iter().flatten().any(|e| {
        matches!(e, x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) if !s.general_names.is_empty())
    });
    Ok(Subject { common_name, organizations, has_sans, pem: pem_text })
}

/// `spec.usages` as strings.
pub fn usages(csr: &Value) -> Vec<&str> {
    csr.pointer("/spec/usages").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect()
}

/// Whether the CSR has a condition of `ty` (`Approved`, `Denied`, `Failed`).
pub fn has_condition(csr: &Value, ty: &str) -> bool {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c.get("type").and_then(Value::as_str) == Some(ty)))
}

/// Records who asked (upstream sets these from the authenticated user, whatever was sent).
pub fn set_requester(csr: &mut Value, user: &UserInfo) {
    if !csr.get("spec").is_some_and(Value::is_object) {
        csr["spec"] = json!({});
    }
    csr["spec"]["username"] = json!(user.name);
    csr["spec"]["groups"] = json!(user.groups);
    if let Some(Value::Object(spec)) = csr.get_mut("spec") {
        spec.remove("uid");
        spec.remove("extra");
    }
}

fn validate_spec(csr: &Value, causes: &mut Vec<Cause>) {
    if let Err(e) = parse_request(csr) {
        causes.push(Cause::invalid("spec.request", "", e));
    }
    let signer = csr.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or_default();
    if signer.is_empty() {
        causes.push(Cause::required("spec.signerName"));
    } else if !signer.contains('/') {
        causes.push(Cause::invalid(
            "spec.signerName",
            signer,
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        ));
    } else if signer.starts_with("kubernetes.io/") && !KNOWN_SIGNERS.contains(&signer) {
        causes.push(Cause::unsupported("spec.signerName", signer, KNOWN_SIGNERS));
    }
    let u = usages(csr);
    if u.is_empty() {
        causes.push(Cause::required("spec.usages"));
    }
    for (i, usage) in u.iter().enumerate() {
        if !USAGES.contains(usage) {
            causes.push(Cause::unsupported(format!("spec.usages[{i}]"), usage, USAGES));
        }
    }
    if let Some(s) = csr.pointer("/spec/expirationSeconds").and_then(Value::as_i64)
        && s < 600
    {
        causes.push(Cause::invalid(
            "spec.expirationSeconds",
            s,
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
}

fn validate_conditions(csr: &Value, causes: &mut Vec<Cause>) {
    if has_condition(csr, "Approved") && has_condition(csr, "Denied") {
        causes.push(Cause::invalid("status.conditions", "", "Approved and Denied conditions are mutually exclusive"));
    }
    for (i, c) in csr.pointer("/status/conditions").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let ty = c.get("type").and_then(Value::as_str).unwrap_or_default();
        if ty.is_empty() {
            causes.push(Cause::required(format!("status.conditions[{i}].type")));
        }
        if c.get("status").and_then(Value::as_str).unwrap_or("True") != "True" && matches!(ty, "Approved" | "Denied") {
            causes.push(Cause::unsupported(format!("status.conditions[{i}].status"), "", &["True"]));
        }
    }
}

/// The CSR strategy.
#[derive(Debug, Default)]
pub struct CsrStrategy;

impl Strategy for CsrStrategy {
    fn prepare_for_create(&self, obj: &mut Value) {
        if let Value::Object(m) = obj {
            m.insert("status".into(), json!({}));
        }
    }

    /// The spec never changes after create (upstream drops spec changes on update).
    fn prepare_for_update(&self, old: &Value, new: &mut Value) {
        if let Some(spec) = old.get("spec") {
            new["spec"] = spec.clone();
        }
    }

    fn validate(&self, res: &ResourceDef, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        objects::validate_with(res, obj, old, |causes| {
            if old.is_none() {
                validate_spec(obj, causes);
            }
            validate_conditions(obj, causes);
            if let Some(old) = old
                && old.pointer("/status/certificate").is_some_and(|c| c.as_str().is_some_and(|s| !s.is_empty()))
                && old.pointer("/status/certificate") != obj.pointer("/status/certificate")
            {
                causes.push(Cause::invalid(
                    "status.certificate",
                    "",
                    "updates may not modify existing certificate content",
                ));
            }
        })
    }
}

/// The `approval` subresource: `new` is `old` with only the conditions of `sent`.
pub fn approval_update(old: &Value, sent: &Value) -> Value {
    let mut n = old.clone();
    let conditions = sent.pointer("/status/conditions").cloned().unwrap_or(json!([]));
    if !n.get("status").is_some_and(Value::is_object) {
        n["status"] = json!({});
    }
    n["status"]["conditions"] = conditions;
    n
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use base64::Engine;

    /// A CSR object for `cn`/`orgs` signed by a fresh key.
    pub(crate) fn csr(cn: &str, orgs: &[&str], signer: &str, usages: &[&str]) -> Value {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name.push(rcgen::DnType::OrganizationName, *o);
        }
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
               "metadata": {"name": "c"},
               "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem), "signerName": signer, "usages": usages}})
    }

    fn res() -> &'static ResourceDef {
        crate::resources::find(GROUP, "v1", "certificatesigningrequests").unwrap()
    }

    #[test]
    fn requests_are_parsed_and_validated() {
        let c = csr("system:node:a", &["system:nodes"], KUBELET_CLIENT, &["digital signature", "client auth"]);
        let s = parse_request(&c).unwrap();
        assert_eq!(
            (s.common_name.as_str(), s.organizations.as_slice()),
            ("system:node:a", &["system:nodes".to_string()][..])
        );
        CsrStrategy.validate(res(), &c, None).unwrap();
        let mut bad = c.clone();
        bad["spec"]["request"] = json!(
            base64::engine::general_purpose::STANDARD
                .encode("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
        );
        bad["spec"]["signerName"] = json!("kubernetes.io/nope");
        bad["spec"]["usages"] = json!(["client auth", "flying"]);
        bad["spec"]["expirationSeconds"] = json!(60);
        let ApiError::Invalid { causes, .. } = CsrStrategy.validate(res(), &bad, None).unwrap_err() else { panic!() };
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["spec.request", "spec.signerName", "spec.usages[1]", "spec.expirationSeconds"]);
    }

    #[test]
    fn requester_spec_and_approval_are_server_owned() {
        let mut c = csr("x", &[], APISERVER_CLIENT, &["client auth"]);
        c["spec"]["username"] = json!("admin");
        set_requester(
            &mut c,
            &UserInfo { name: "system:bootstrap:abcdef".into(), groups: vec!["system:bootstrappers".into()] },
        );
        assert_eq!(c["spec"]["username"], "system:bootstrap:abcdef");
        let mut changed = c.clone();
        changed["spec"]["signerName"] = json!("example.com/x");
        CsrStrategy.prepare_for_update(&c, &mut changed);
        assert_eq!(changed["spec"], c["spec"]);
        let approved = approval_update(
            &c,
            &json!({"spec": {"username": "evil"}, "status": {"conditions": [{"type": "Approved", "status": "True"}], "certificate": "eA=="}}),
        );
        assert_eq!(approved["spec"], c["spec"]);
        assert!(approved["status"].get("certificate").is_none());
        assert!(has_condition(&approved, "Approved"));
        let mut both = approved.clone();
        both["status"]["conditions"].as_array_mut().unwrap().push(json!({"type": "Denied", "status": "True"}));
        assert_eq!(CsrStrategy.validate(res(), &both, Some(&c)).unwrap_err().code(), 422);
    }
}
