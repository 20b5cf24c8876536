//! The pure parts of TLS bootstrapping: the CA pin check, the node's key and CSR, the kubeconfig
//! text, certificate validity and when to rotate. No I/O, so all of it is unit-tested.

use base64::Engine;
use sha2::Digest;

/// What can be wrong with the material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PkiError {
    #[error("cluster-info: {0}")]
    ClusterInfo(String),
    #[error("the cluster CA's public key hash {got} matches none of the pinned hashes {want:?}")]
    CaMismatch { got: String, want: Vec<String> },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("key or request: {0}")]
    Rcgen(String),
}

/// kubeadm's CA hash: `sha256:<hex>` over the DER SubjectPublicKeyInfo.
pub fn ca_hash(ca_pem: &str) -> Result<String, PkiError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).map_err(|e| PkiError::Certificate(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| PkiError::Certificate(e.to_string()))?;
    Ok(format!("sha256:{}", hex::encode(sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw))))
}

/// The CA PEM from a `cluster-info` kubeconfig, accepted only if its hash is one of `pins`
/// (compared case-insensitively, with or without the `sha256:` prefix).
pub fn pinned_ca(cluster_info_kubeconfig: &str, pins: &[String]) -> Result<String, PkiError> {
    let kc: serde_yaml::Value =
        serde_yaml::from_str(cluster_info_kubeconfig).map_err(|e| PkiError::ClusterInfo(e.to_string()))?;
    let b64 = kc
        .get("clusters")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("cluster"))
        .and_then(|c| c.get("certificate-authority-data"))
        .and_then(serde_yaml::Value::as_str)
        .ok_or_else(|| PkiError::ClusterInfo("no certificate-authority-data".into()))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| PkiError::ClusterInfo(format!("certificate-authority-data: {e}")))?;
    let ca = String::from_utf8(raw).map_err(|_| PkiError::ClusterInfo("CA is not PEM text".into()))?;
    let got = ca_hash(&ca)?;
    let norm = |h: &str| {
        let h = h.trim().to_ascii_lowercase();
        h.strip_prefix("sha256:").map(str::to_string).unwrap_or(h)
    };
    if pins.is_empty() || !pins.iter().any(|p| norm(p) == norm(&got)) {
        return Err(PkiError::CaMismatch { got, want: pins.to_vec() });
    }
    Ok(ca)
}

/// A fresh ECDSA P-256 key and a CSR for `CN=system:node:<node>, O=system:nodes` (PEMs).
pub fn node_key_and_request(node: &str) -> Result<(String, String), PkiError> {
    let rc = |e: rcgen::Error| PkiError::Rcgen(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc)?;
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rc)?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    p.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
    let csr = p.serialize_request(&key).map_err(rc)?.pem().map_err(rc)?;
    Ok((key.serialize_pem(), csr))
}

/// A certificate's validity window, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// The validity of the first certificate in `pem`.
    pub fn of(pem: &str) -> Result<Validity, PkiError> {
        let (_, p) =
            x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| PkiError::Certificate(e.to_string()))?;
        let cert = p.parse_x509().map_err(|e| PkiError::Certificate(e.to_string()))?;
        Ok(Validity {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// When to ask for a new certificate: at 70–90 % of the lifetime (`jitter` in 0..1 picks
    /// the point), as kubelet's certificate manager does, so that many nodes do not renew at once.
    pub fn rotation_deadline(&self, jitter: f64) -> i64 {
        let life = (self.not_after - self.not_before).max(0) as f64;
        self.not_before + (life * (0.7 + 0.2 * jitter.clamp(0.0, 1.0))).round() as i64
    }
}

/// The node's kubeconfig with everything embedded (one file, replaced atomically, so a reader
/// never sees a certificate without its key).
pub fn kubeconfig(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str, node: &str) -> String {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: default-cluster\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: default-context\n  context:\n    cluster: default-cluster\n    user: default-auth\n    namespace: default\ncurrent-context: default-context\nusers:\n- name: default-auth\n  user:\n    # system:node:{node}\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b(ca_pem),
        b(cert_pem),
        b(key_pem)
    )
}

/// A kubeconfig that authenticates with a bearer token.
pub fn token_kubeconfig(server: &str, ca_pem: &str, token: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {b}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: {token}\n"
    )
}

/// The client certificate PEM embedded in a kubeconfig written by [`kubeconfig`].
pub fn embedded_cert(kubeconfig_text: &str) -> Option<String> {
    let kc: serde_yaml::Value = serde_yaml::from_str(kubeconfig_text).ok()?;
    let b64 = kc.get("users")?.get(0)?.get("user")?.get("client-certificate-data")?.as_str()?;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ca() -> (String, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (p.self_signed(&key).unwrap().pem(), key)
    }

    fn cluster_info(ca: &str) -> String {
        let b = base64::engine::general_purpose::STANDARD.encode(ca);
        format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {b}\n    server: https://x:6443\n  name: \"\"\nkind: Config\n"
        )
    }

    #[test]
    fn the_ca_is_trusted_only_with_a_matching_pin() {
        let (ca_pem, _) = ca();
        let hash = ca_hash(&ca_pem).unwrap();
        assert_eq!(pinned_ca(&cluster_info(&ca_pem), std::slice::from_ref(&hash)).unwrap(), ca_pem);
        let upper = hash.trim_start_matches("sha256:").to_ascii_uppercase();
        assert!(pinned_ca(&cluster_info(&ca_pem), &[upper]).is_ok());
        let (other, _) = ca();
        let err = pinned_ca(&cluster_info(&other), &[hash]).unwrap_err();
        assert!(matches!(err, PkiError::CaMismatch { .. }), "{err}");
        assert!(matches!(pinned_ca(&cluster_info(&ca_pem), &[]), Err(PkiError::CaMismatch { .. })), "no pin, no trust");
        assert!(matches!(pinned_ca("kind: Config\n", &["x".into()]), Err(PkiError::ClusterInfo(_))));
    }

    #[test]
    fn requests_name_the_node_and_kubeconfigs_embed_the_pair() {
        let (key, csr) = node_key_and_request("n1").unwrap();
        assert!(key.contains("PRIVATE KEY") && csr.contains("CERTIFICATE REQUEST"));
        let (_, pem) = x509_parser::pem::parse_x509_pem(csr.as_bytes()).unwrap();
        use x509_parser::prelude::FromDer;
        let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents).unwrap();
        let subject = req.certification_request_info.subject.to_string();
        assert_eq!(subject, "CN=system:node:n1, O=system:nodes");
        let (ca_pem, _) = ca();
        let kc = kubeconfig("https://h:1", &ca_pem, &ca_pem, &key, "n1");
        assert_eq!(embedded_cert(&kc).unwrap(), ca_pem);
        kube::config::Kubeconfig::from_yaml(&kc).unwrap();
        kube::config::Kubeconfig::from_yaml(&token_kubeconfig("https://h:1", &ca_pem, "a.b")).unwrap();
    }

    #[test]
    fn rotation_falls_between_seventy_and_ninety_percent() {
        let v = Validity { not_before: 1000, not_after: 2000 };
        assert_eq!(v.rotation_deadline(0.0), 1700);
        assert_eq!(v.rotation_deadline(1.0), 1900);
        assert_eq!(v.rotation_deadline(7.0), 1900);
        let (ca_pem, _) = ca();
        let v = Validity::of(&ca_pem).unwrap();
        assert!(v.not_after > v.not_before);
        assert!(Validity::of("junk").is_err());
    }
}
