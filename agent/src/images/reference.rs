//! Image names as a pod writes them, and the pull policy that applies to them.

use oci_client::Reference;

/// Kubernetes `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The container's policy, or upstream's default when unset (the API server defaults it for
    /// API pods; static pods from manifests may come without one): `:latest` or no tag at all
    /// (and no digest) → Always, anything else → IfNotPresent. An unknown value is treated as
    /// the default, as validation would have rejected it before it reached a node.
    pub fn for_container(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            Some("Never") => PullPolicy::Never,
            _ => {
                if tag_of(image).is_none_or(|t| t == "latest") && !image.contains('@') {
                    PullPolicy::Always
                } else {
                    PullPolicy::IfNotPresent
                }
            }
        }
    }
}

/// The tag written in `image`, if any (`host:5000/a/b:1.0@sha256:…` → `1.0`).
fn tag_of(image: &str) -> Option<&str> {
    let name = image.split('@').next().unwrap_or(image);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split_once(':').map(|(_, t)| t)
}

/// Why an image name cannot be used (kubelet's `InvalidImageName`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid image name {image:?}: {reason}")]
pub struct InvalidImageName {
    pub image: String,
    pub reason: String,
}

/// Parses a pod's image name with Docker's defaults (registry `docker.io`, `library/` for
/// single-component names, tag `latest`).
pub fn parse(image: &str) -> Result<Reference, InvalidImageName> {
    if image.is_empty() {
        return Err(InvalidImageName { image: image.into(), reason: "empty".into() });
    }
    image.parse::<Reference>().map_err(|e| InvalidImageName { image: image.into(), reason: e.to_string() })
}

/// The fully qualified name an image is recorded under in the runtime: `busybox` →
/// `docker.io/library/busybox:latest`, `keelson.local/pause:latest` unchanged. Two spellings of
/// one image therefore share one record (and one pull).
pub fn normalize(image: &str) -> Result<String, InvalidImageName> {
    Ok(parse(image)?.whole())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn docker_defaults() {
        assert_eq!(normalize("busybox").unwrap(), "docker.io/library/busybox:latest");
        assert_eq!(normalize("nginx:1.27").unwrap(), "docker.io/library/nginx:1.27");
        assert_eq!(normalize("bitnami/redis:7").unwrap(), "docker.io/bitnami/redis:7");
        assert_eq!(normalize("keelson.local/pause:latest").unwrap(), "keelson.local/pause:latest");
        assert_eq!(normalize("127.0.0.1:5000/busybox:1.0").unwrap(), "127.0.0.1:5000/busybox:1.0");
        let d = "sha256:0123456789012345678901234567890123456789012345678901234567890123";
        assert_eq!(normalize(&format!("busybox@{d}")).unwrap(), format!("docker.io/library/busybox@{d}"));
    }

    #[test]
    fn bad_names_are_rejected() {
        for bad in ["", "a b", "busybox@sha256:short", "host:5000/x:", "x@y"] {
            assert!(normalize(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn policy_defaults_follow_upstream() {
        use PullPolicy::*;
        assert_eq!(PullPolicy::for_container(None, "busybox"), Always);
        assert_eq!(PullPolicy::for_container(None, "busybox:latest"), Always);
        assert_eq!(PullPolicy::for_container(None, "host:5000/busybox"), Always);
        assert_eq!(PullPolicy::for_container(None, "busybox:1.36"), IfNotPresent);
        assert_eq!(PullPolicy::for_container(None, "host:5000/busybox:1.36"), IfNotPresent);
        assert_eq!(PullPolicy::for_container(None, "busybox@sha256:abc"), IfNotPresent);
        assert_eq!(PullPolicy::for_container(Some(""), "busybox:1"), IfNotPresent);
        assert_eq!(PullPolicy::for_container(Some("Never"), "busybox"), Never);
        assert_eq!(PullPolicy::for_container(Some("IfNotPresent"), "busybox"), IfNotPresent);
        assert_eq!(PullPolicy::for_container(Some("Always"), "busybox:1"), Always);
    }
}
