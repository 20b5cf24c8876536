//! Object decoding, defaulting and validation as the server runs them: the pure rules are
//! [`keelson_apimachinery::objects`] (re-exported here); this module adds what needs api-shim's
//! own parts — protobuf bodies (transport, [`crate::proto`]) and RBAC rule checks, which use the
//! authorizer's rule parser ([`crate::rbac`]).

pub use keelson_apimachinery::objects::*;
use serde_json::Value;

use crate::error::ApiError;
use crate::resources::ResourceDef;

/// Parses a body per its Content-Type: protobuf here, JSON and YAML in the pure crate.
pub fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if mime == "application/vnd.kubernetes.protobuf" {
        return crate::proto::decode(body).map_err(|e| match e {
            crate::proto::ProtoError::Unsupported(_) => ApiError::UnsupportedMediaType { accepted: e.to_string() },
            other => ApiError::bad_request(format!("error decoding protobuf body: {other}")),
        });
    }
    keelson_apimachinery::objects::decode_body(content_type, body)
}

/// Create-time defaults for `res`, RBAC subjects included.
pub fn apply_defaults(res: &ResourceDef, obj: &mut Value) {
    keelson_apimachinery::objects::apply_defaults(res, obj);
    if matches!(res.kind, "RoleBinding" | "ClusterRoleBinding") {
        crate::rbac::apply_defaults(obj);
    }
}

/// Validates an object for create (or update, when `old` is given), RBAC rules included.
pub fn validate(res: &ResourceDef, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    keelson_apimachinery::objects::validate_with(res, obj, old, |causes| {
        if matches!(res.kind, "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding") {
            crate::rbac::validate(res, obj, old, causes);
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn protobuf_is_decoded_here_and_json_by_the_pure_crate() {
        assert_eq!(decode_body("application/vnd.kubernetes.protobuf", b"x").unwrap_err().code(), 400);
        assert_eq!(decode_body("application/json", br#"{"a":1}"#).unwrap(), json!({"a": 1}));
        assert_eq!(decode_body("application/cbor", b"x").unwrap_err().code(), 415);
    }

    #[test]
    fn rbac_rules_are_validated_and_subjects_defaulted() {
        let rb = crate::resources::find("rbac.authorization.k8s.io", "v1", "rolebindings").unwrap();
        let mut obj = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "system:x", "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            "subjects": [{"kind": "User", "name": "u"}]});
        apply_defaults(rb, &mut obj);
        assert_eq!(obj["subjects"][0]["apiGroup"], "rbac.authorization.k8s.io");
        validate(rb, &obj, None).unwrap();
        obj["roleRef"]["kind"] = json!("Pod");
        let ApiError::Invalid { causes, .. } = validate(rb, &obj, None).unwrap_err() else { panic!("not Invalid") };
        assert_eq!(causes[0].field, "roleRef.kind");
    }
}
