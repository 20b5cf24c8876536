//! Bootstrap tokens (upstream's `bootstrap.kubernetes.io/token` Secrets in `kube-system`).
//!
//! A token `<id>.<secret>` (6 and 16 characters of `[a-z0-9]`) authenticates as
//! `system:bootstrap:<id>` in group `system:bootstrappers` (plus the Secret's
//! `auth-extra-groups`) while the Secret `bootstrap-token-<id>` exists, allows authentication
//! and has not passed its `expiration`. The check reads the Secret per request (through the
//! watch cache when etcd is the store): tokens are used a few times per node join, never on a
//! hot path, and a deleted or expired token stops working at once.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::registry::Api;
use crate::registry::rbac::authz::UserInfo;
use crate::resources;

/// The Secret type of bootstrap tokens.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// The group every bootstrap token user is in.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// The namespace of bootstrap token Secrets.
pub const NAMESPACE: &str = "kube-system";

/// A parsed bootstrap token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}.<redacted>)", self.id)
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

fn token_chars(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl Token {
    /// Parses `<id>.<secret>`; `None` for anything else (such a bearer token is not ours).
    pub fn parse(s: &str) -> Option<Token> {
        let (id, secret) = s.split_once('.')?;
        (token_chars(id, 6) && token_chars(secret, 16)).then(|| Token { id: id.into(), secret: secret.into() })
    }

    /// A fresh random token.
    pub fn generate() -> Token {
        use rand::Rng;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let mut pick =
            |n: usize| (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect::<String>();
        Token { id: pick(6), secret: pick(16) }
    }

    /// The name of the Secret holding this token.
    pub fn secret_name(&self) -> String {
        format!("bootstrap-token-{}", self.id)
    }

    /// The user this token authenticates as.
    pub fn user_name(&self) -> String {
        format!("system:bootstrap:{}", self.id)
    }

    /// The Secret `kubeadm token create` writes: usable for authentication and signing,
    /// expiring at `expires` (never when `None`).
    pub fn secret_object(&self, expires: Option<DateTime<Utc>>, description: &str) -> Value {
        let mut data = json!({
            "token-id": self.id,
            "token-secret": self.secret,
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "description": description,
        });
        if let Some(t) = expires {
            data["expiration"] = json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": self.secret_name(), "namespace": NAMESPACE},
            "type": SECRET_TYPE,
            "stringData": data,
        })
    }
}

/// Why a bootstrap token was refused (logged, never sent to the client: a 401 says nothing).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("secret has type {0:?}")]
    WrongType(String),
    #[error("token secret does not match")]
    Mismatch,
    #[error("token is not marked for authentication")]
    NotForAuthentication,
    #[error("token expired at {0}")]
    Expired(String),
    #[error("bad expiration {0:?}")]
    BadExpiration(String),
}

/// A field of the Secret: `data` (base64), or `stringData` if it was stored as written.
fn field(secret: &Value, key: &str) -> Option<String> {
    use base64::Engine;
    if let Some(v) = secret.pointer(&format!("/data/{key}")).and_then(Value::as_str) {
        let raw = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
        return String::from_utf8(raw).ok();
    }
    secret.pointer(&format!("/stringData/{key}")).and_then(Value::as_str).map(str::to_string)
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the Secret `secret` accepts `token` at `now`, and as whom.
pub fn user_from_secret(secret: &Value, token: &Token, now: DateTime<Utc>) -> Result<UserInfo, Refused> {
    let ty = secret.get("type").and_then(Value::as_str).unwrap_or_default();
    if ty != SECRET_TYPE {
        return Err(Refused::WrongType(ty.into()));
    }
    let (id, sec) = (field(secret, "token-id").unwrap_or_default(), field(secret, "token-secret").unwrap_or_default());
    if !same(&id, &token.id) || !same(&sec, &token.secret) {
        return Err(Refused::Mismatch);
    }
    if field(secret, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(Refused::NotForAuthentication);
    }
    if let Some(exp) = field(secret, "expiration") {
        let t = DateTime::parse_from_rfc3339(&exp).map_err(|_| Refused::BadExpiration(exp.clone()))?;
        if t.with_timezone(&Utc) <= now {
            return Err(Refused::Expired(exp));
        }
    }
    let mut groups = vec![BOOTSTRAPPERS.to_string()];
    for g in field(secret, "auth-extra-groups").unwrap_or_default().split(',').map(str::trim) {
        // Upstream accepts only groups under `system:bootstrappers:`; so do we.
        if g.starts_with("system:bootstrappers:") && !groups.iter().any(|x| x == g) {
            groups.push(g.to_string());
        }
    }
    Ok(UserInfo { name: token.user_name(), groups })
}

/// Authenticates a bearer token that has the bootstrap token shape; `None` if it is not one or
/// is refused.
pub async fn authenticate(api: &Api, bearer: &str) -> Option<UserInfo> {
    let token = Token::parse(bearer)?;
    let secrets = resources::find("", "v1", "secrets")?;
    let secret = match api.get(secrets, Some(NAMESPACE), &token.secret_name()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(token = token.id, error = %e, "bootstrap token: no secret");
            return None;
        }
    };
    match user_from_secret(&secret, &token, Utc::now()) {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::info!(token = token.id, reason = %e, "bootstrap token refused");
            None
        }
    }
}

/// kubeadm's `--discovery-token-ca-cert-hash`: `sha256:` and the hex SHA-256 of the CA
/// certificate's DER SubjectPublicKeyInfo.
pub fn ca_cert_hash(ca_pem: &str) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).ok()?;
    ca_cert_hash_der(&pem.contents)
}

/// [`ca_cert_hash`] of a DER certificate.
pub fn ca_cert_hash_der(der: &[u8]) -> Option<String> {
    use sha2::Digest;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(format!("sha256:{}", hex::encode(sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw))))
}

/// Parses a duration such as `24h`, `90m`, `30s`, `1h30m` or `0` (Go's `time.ParseDuration`
/// subset the token and signing flags need).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let i = rest.find(|c: char| !c.is_ascii_digit() && c != '.').ok_or(format!("missing unit in {s:?}"))?;
        let n: f64 = rest[..i].parse().map_err(|_| format!("bad duration {s:?}"))?;
        let unit_len = rest[i..].find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len() - i);
        let unit = &rest[i..i + unit_len];
        total += n * match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("unknown unit {unit:?} in {s:?} (ms, s, m, h)")),
        };
        rest = &rest[i + unit_len..];
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use base64::Engine;

    /// A Secret as the store holds it: `stringData` folded into base64 `data`.
    fn stored(obj: &Value) -> Value {
        let mut s = obj.clone();
        let data: serde_json::Map<String, Value> = obj["stringData"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), json!(base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap()))))
            .collect();
        s.as_object_mut().unwrap().remove("stringData");
        s["data"] = Value::Object(data);
        s
    }

    #[test]
    fn tokens_parse_only_in_their_shape() {
        let t = Token::generate();
        assert_eq!(Token::parse(&t.to_string()), Some(t.clone()));
        assert_eq!(format!("{t:?}"), format!("Token({}.<redacted>)", t.id));
        for bad in ["abcdef.0123456789abcdeF", "abcde.0123456789abcdef", "abcdef0123456789abcdef", "", "abcdef."] {
            assert_eq!(Token::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_secret_authenticates_until_it_expires() {
        let now = Utc::now();
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        let mut s = stored(&t.secret_object(Some(now + chrono::Duration::hours(1)), "test"));
        s["data"]["auth-extra-groups"] = json!(
            base64::engine::general_purpose::STANDARD
                .encode("system:bootstrappers:kubeadm:default-node-token,system:masters")
        );
        let u = user_from_secret(&s, &t, now).unwrap();
        assert_eq!(u.name, "system:bootstrap:abcdef");
        assert_eq!(u.groups, ["system:bootstrappers", "system:bootstrappers:kubeadm:default-node-token"]);
        assert!(matches!(user_from_secret(&s, &t, now + chrono::Duration::hours(2)), Err(Refused::Expired(_))));
        let wrong = Token::parse("abcdef.0123456789abcdee").unwrap();
        assert_eq!(user_from_secret(&s, &wrong, now), Err(Refused::Mismatch));
        let mut typed = s.clone();
        typed["type"] = json!("Opaque");
        assert!(matches!(user_from_secret(&typed, &t, now), Err(Refused::WrongType(_))));
        let mut no_auth = s.clone();
        no_auth["data"].as_object_mut().unwrap().remove("usage-bootstrap-authentication");
        assert_eq!(user_from_secret(&no_auth, &t, now), Err(Refused::NotForAuthentication));
        let forever = stored(&t.secret_object(None, "test"));
        assert!(user_from_secret(&forever, &t, now + chrono::Duration::days(10_000)).is_ok());
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("24h").unwrap().as_secs(), 86_400);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5_400);
        assert_eq!(parse_duration("0").unwrap().as_secs(), 0);
        assert_eq!(parse_duration("1500ms").unwrap().as_millis(), 1_500);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn ca_hash_is_over_the_public_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().self_signed(&key).unwrap();
        use sha2::Digest;
        let want = format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)))
        );
        assert_eq!(ca_cert_hash(&cert.pem()).unwrap(), want);
        assert_eq!(ca_cert_hash("not pem"), None);
    }
}
