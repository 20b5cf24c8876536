//! TLS material and authentication.
//!
//! On first start the server creates, in its data directory:
//! `ca.crt`/`ca.key` (the cluster CA), `apiserver.crt`/`apiserver.key` (serving certificate for
//! localhost, 127.0.0.1, the advertised address and the `kubernetes` Service names/IP),
//! `admin.crt`/`admin.key` (a client certificate for `CN=admin, O=system:masters`), `tokens.csv`
//! (kube-apiserver's static token file format: `token,user,uid,"group1,group2"`) with a random
//! admin token, and two kubeconfigs: `admin.kubeconfig` (bearer token) and
//! `admin-cert.kubeconfig` (client certificate). Existing files are reused; the serving
//! certificate is re-issued when its host list changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;

pub use crate::registry::rbac::authz::UserInfo;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("generating {what}: {source}")]
    Rcgen { what: &'static str, source: rcgen::Error },
    #[error("tls config: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("pem in {path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("token file {path} line {line}: {message}")]
    TokenFile { path: PathBuf, line: usize, message: String },
}

/// Paths of everything the PKI bootstrap writes.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub admin_kubeconfig: PathBuf,
    pub admin_cert_kubeconfig: PathBuf,
    pub token_file: PathBuf,
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })
}

fn write_private(path: &Path, data: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let io = |source| TlsError::Io { path: path.to_path_buf(), source };
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(data.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn rc(what: &'static str) -> impl FnOnce(rcgen::Error) -> TlsError {
    move |source| TlsError::Rcgen { what, source }
}

fn leaf_params(
    cn: &str,
    org: Option<&str>,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(sans).map_err(rc("certificate params"))?;
    p.distinguished_name.push(DnType::CommonName, cn);
    if let Some(o) = org {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![usage];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

impl Pki {
    /// Creates missing material in `dir` and (re)writes the kubeconfigs for `server_url`.
    pub fn ensure(dir: &Path, hosts: &[String], server_url: &str) -> Result<Pki, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Io { path: dir.to_path_buf(), source })?;
        let pki = Pki {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("apiserver.crt"),
            server_key: dir.join("apiserver.key"),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            admin_cert_kubeconfig: dir.join("admin-cert.kubeconfig"),
            token_file: dir.join("tokens.csv"),
        };
        let ca_key_path = dir.join("ca.key");
        if !pki.ca_cert.exists() || !ca_key_path.exists() {
            let key = KeyPair::generate().map_err(rc("CA key"))?;
            let mut p = CertificateParams::new(Vec::<String>::new()).map_err(rc("CA params"))?;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, "keelson-ca");
            p.key_usages =
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
            p.not_before = rcgen::date_time_ymd(2024, 1, 1);
            p.not_after = rcgen::date_time_ymd(2124, 1, 1);
            let cert = p.self_signed(&key).map_err(rc("CA certificate"))?;
            write_private(&ca_key_path, &key.serialize_pem())?;
            write_private(&pki.ca_cert, &cert.pem())?;
        }
        let ca_pem = read(&pki.ca_cert)?;
        let ca_key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(rc("CA key (parse)"))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(rc("CA issuer"))?;

        let mut sans: Vec<String> = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ];
        for h in hosts {
            if !sans.contains(h) {
                sans.push(h.clone());
            }
        }
        let sans_path = dir.join("apiserver.sans");
        let current_sans = std::fs::read_to_string(&sans_path).unwrap_or_default();
        if !pki.server_cert.exists() || !pki.server_key.exists() || current_sans != sans.join(",") {
            let key = KeyPair::generate().map_err(rc("serving key"))?;
            let p = leaf_params("kube-apiserver", None, sans.clone(), ExtendedKeyUsagePurpose::ServerAuth)?;
            let cert = p.signed_by(&key, &issuer).map_err(rc("serving certificate"))?;
            write_private(&pki.server_key, &key.serialize_pem())?;
            write_private(&pki.server_cert, &cert.pem())?;
            write_private(&sans_path, &sans.join(","))?;
        }
        let admin_crt = dir.join("admin.crt");
        let admin_key = dir.join("admin.key");
        if !admin_crt.exists() || !admin_key.exists() {
            let key = KeyPair::generate().map_err(rc("admin key"))?;
            let p = leaf_params("admin", Some("system:masters"), Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
            let cert = p.signed_by(&key, &issuer).map_err(rc("admin certificate"))?;
            write_private(&admin_key, &key.serialize_pem())?;
            write_private(&admin_crt, &cert.pem())?;
        }
        if !pki.token_file.exists() {
            let token: String = {
                use rand::Rng;
                let bytes: [u8; 24] = rand::rng().random();
                hex::encode(bytes)
            };
            write_private(&pki.token_file, &format!("{token},admin,admin,\"system:masters\"\n"))?;
        }
        let tokens = load_tokens(&pki.token_file)?;
        let admin_token = tokens.iter().find(|(_, u)| u.name == "admin").map(|(t, _)| t.clone()).unwrap_or_default();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let cluster = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: keelson\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {}\ncontexts:\n- name: keelson\n  context:\n    cluster: keelson\n    user: admin\ncurrent-context: keelson\n",
            b64(&ca_pem)
        );
        write_private(
            &pki.admin_kubeconfig,
            &format!("{cluster}users:\n- name: admin\n  user:\n    token: {admin_token}\n"),
        )?;
        write_private(
            &pki.admin_cert_kubeconfig,
            &format!(
                "{cluster}users:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(&read(&admin_crt)?),
                b64(&read(&admin_key)?)
            ),
        )?;
        Ok(pki)
    }

    /// The rustls server configuration: our serving cert, optional client certs from our CA,
    /// ALPN h2 + http/1.1.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = CertificateDer::pem_file_iter(&self.server_cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Pem { path: self.server_cert.clone(), message: e.to_string() })?;
        let key = PrivateKeyDer::from_pem_file(&self.server_key)
            .map_err(|e| TlsError::Pem { path: self.server_key.clone(), message: e.to_string() })?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&self.ca_cert)
            .map_err(|e| TlsError::Pem { path: self.ca_cert.clone(), message: e.to_string() })?
        {
            let ca = ca.map_err(|e| TlsError::Pem { path: self.ca_cert.clone(), message: e.to_string() })?;
            roots.add(ca)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Parses a static token file: `token,user,uid[,"group1,group2"]` per line.
pub fn load_tokens(path: &Path) -> Result<HashMap<String, UserInfo>, TlsError> {
    let mut out = HashMap::new();
    for (i, line) in read(path)?.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err =
            |message: &str| TlsError::TokenFile { path: path.to_path_buf(), line: i + 1, message: message.into() };
        let mut parts = line.splitn(4, ',');
        let token = parts.next().filter(|t| !t.is_empty()).ok_or_else(|| err("missing token"))?;
        let user = parts.next().filter(|u| !u.is_empty()).ok_or_else(|| err("missing user"))?;
        let _uid = parts.next().ok_or_else(|| err("missing uid"))?;
        let groups = parts
            .next()
            .map(|g| g.trim_matches('"').split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
            .unwrap_or_default();
        out.insert(token.to_string(), UserInfo { name: user.to_string(), groups });
    }
    Ok(out)
}

/// The identity in a verified client certificate: CN is the user, O entries are groups.
pub fn user_from_cert(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some(UserInfo { name, groups })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bootstrap_is_idempotent_and_reissues_on_new_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::ensure(dir.path(), &[], "https://127.0.0.1:1").unwrap();
        let ca1 = std::fs::read(&pki.ca_cert).unwrap();
        let srv1 = std::fs::read(&pki.server_cert).unwrap();
        let tok1 = std::fs::read(&pki.token_file).unwrap();
        let pki = Pki::ensure(dir.path(), &[], "https://127.0.0.1:1").unwrap();
        assert_eq!(std::fs::read(&pki.server_cert).unwrap(), srv1);
        let pki = Pki::ensure(dir.path(), &["10.1.2.3".into()], "https://127.0.0.1:1").unwrap();
        assert_ne!(std::fs::read(&pki.server_cert).unwrap(), srv1);
        assert_eq!(std::fs::read(&pki.ca_cert).unwrap(), ca1);
        assert_eq!(std::fs::read(&pki.token_file).unwrap(), tok1);
        pki.server_config().unwrap();
        let admin = std::fs::read_to_string(dir.path().join("admin.crt")).unwrap();
        let der = CertificateDer::from_pem_slice(admin.as_bytes()).unwrap();
        assert_eq!(
            user_from_cert(&der).unwrap(),
            UserInfo { name: "admin".into(), groups: vec!["system:masters".into()] }
        );
        let tokens = load_tokens(&pki.token_file).unwrap();
        assert_eq!(tokens.values().next().unwrap().groups, vec!["system:masters".to_string()]);
    }
}
