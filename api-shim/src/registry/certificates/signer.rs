//! Signing approved client CSRs with the cluster CA (upstream's `csrsigning` controller for the
//! `kube-apiserver-client` and `kube-apiserver-client-kubelet` signers).
//!
//! The certificate keeps the request's subject and public key, takes its key usages from
//! `spec.usages`, and lives `--cluster-signing-duration` (or the shorter
//! `spec.expirationSeconds`), backdated five minutes for clock skew as upstream does (a tenth of
//! the life for short ones), and never past the CA's own expiry.

use std::time::Duration;

use rcgen::{CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::Value;

use super::{APISERVER_CLIENT, KUBELET_CLIENT, parse_request, usages};

/// Why a CSR was not signed (it gets a `Failed` condition with this message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("{0}")]
    Invalid(String),
    #[error("signing: {0}")]
    Rcgen(String),
}

/// The cluster CA as a signer.
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
    ca_not_after: time::OffsetDateTime,
    duration: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("duration", &self.duration).finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer from the CA certificate and key (PEM) issuing certificates for `duration`.
    pub fn new(ca_pem: &str, ca_key_pem: &str, duration: Duration) -> Result<Signer, SignError> {
        let key = KeyPair::from_pem(ca_key_pem).map_err(|e| SignError::Rcgen(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(ca_pem, key).map_err(|e| SignError::Rcgen(e.to_string()))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
            .map_err(|e| SignError::Invalid(format!("CA certificate: {e}")))?;
        let ca = pem.parse_x509().map_err(|e| SignError::Invalid(format!("CA certificate: {e}")))?;
        let ca_not_after = ca.validity().not_after.to_datetime();
        Ok(Signer { issuer, ca_not_after, duration })
    }

    /// Signs `csr` at `now`; returns the certificate PEM.
    pub fn sign(&self, csr: &Value, now: time::OffsetDateTime) -> Result<String, SignError> {
        let signer = csr.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or_default();
        let subject = parse_request(csr).map_err(SignError::Invalid)?;
        let usages = usages(csr);
        match signer {
            KUBELET_CLIENT => super::approver::check_node_client(&subject, &usages).map_err(SignError::Invalid)?,
            APISERVER_CLIENT => {
                if !usages.contains(&"client auth") || usages.iter().any(|u| u.contains("server auth")) {
                    return Err(SignError::Invalid("usages must include client auth and not server auth".into()));
                }
            }
            other => return Err(SignError::Invalid(format!("signer {other:?} is not served by this signer"))),
        }
        let mut req = CertificateSigningRequestParams::from_pem(&subject.pem)
            .map_err(|e| SignError::Invalid(format!("certificate request: {e}")))?;
        let mut life = self.duration;
        if let Some(s) = csr.pointer("/spec/expirationSeconds").and_then(Value::as_u64) {
            life = life.min(Duration::from_secs(s));
        }
        let p = &mut req.params;
        p.subject_alt_names.clear();
        p.is_ca = IsCa::ExplicitNoCa;
        // Backdated for clock skew: five minutes as upstream, but at most a tenth of the life, so
        // that a short-lived certificate's 70–90 % rotation point is still ahead of its issue.
        let backdate = time::Duration::minutes(5).min(time::Duration::seconds_f64(life.as_secs_f64() / 10.0));
        p.not_before = now - backdate;
        p.not_after =
            (now + time::Duration::try_from(life).map_err(|e| SignError::Rcgen(e.to_string()))?).min(self.ca_not_after);
        p.key_usages = usages
            .iter()
            .filter_map(|u| match *u {
                "digital signature" => Some(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => Some(KeyUsagePurpose::KeyEncipherment),
                "content commitment" => Some(KeyUsagePurpose::ContentCommitment),
                "key agreement" => Some(KeyUsagePurpose::KeyAgreement),
                "data encipherment" => Some(KeyUsagePurpose::DataEncipherment),
                _ => None,
            })
            .collect();
        p.extended_key_usages = usages
            .iter()
            .filter_map(|u| (*u == "client auth").then_some(ExtendedKeyUsagePurpose::ClientAuth))
            .collect();
        p.use_authority_key_identifier_extension = true;
        let serial: [u8; 16] = rand::random();
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = req.signed_by(&self.issuer).map_err(|e| SignError::Rcgen(e.to_string()))?;
        Ok(cert.pem())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::csr;
    use super::*;

    #[test]
    fn signs_node_client_requests_for_the_configured_duration() {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let signer = Signer::new(&ca.pem(), &ca_key.serialize_pem(), Duration::from_secs(3600)).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let mut c = csr("system:node:a", &["system:nodes"], KUBELET_CLIENT, &["digital signature", "client auth"]);
        let pem = signer.sign(&c, now).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string();
        assert_eq!(cn, "system:node:a");
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(life, 3600 + 300);
        assert!(cert.extended_key_usage().unwrap().unwrap().value.client_auth);
        // expirationSeconds shortens; a non-node subject on the kubelet signer fails.
        c["spec"]["expirationSeconds"] = serde_json::json!(600);
        let (_, pem) = x509_parser::pem::parse_x509_pem(signer.sign(&c, now).unwrap().as_bytes()).unwrap();
        let v = pem.parse_x509().unwrap().validity().clone();
        assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 660);
        let bad = csr("alice", &["system:nodes"], KUBELET_CLIENT, &["client auth"]);
        assert!(matches!(signer.sign(&bad, now), Err(SignError::Invalid(_))));
        let serving = csr("system:node:a", &["system:nodes"], "kubernetes.io/kubelet-serving", &["server auth"]);
        assert!(matches!(signer.sign(&serving, now), Err(SignError::Invalid(_))));
    }
}
