//! The one table from a served kind name to its k8s-openapi Rust type.
//!
//! Schema checking (serde round trip) and the OpenAPI v3 documents (schemars) both need "the
//! type for kind X". Keeping that mapping in one place means a kind added to the catalogue gets
//! its schema check and its published schema together, and they can never disagree.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Something to do with the Rust type of a kind.
pub trait KindVisitor {
    type Output;
    fn visit<T>(self) -> Self::Output
    where
        T: Serialize + DeserializeOwned + schemars::JsonSchema;
}

/// Runs `visitor` with the type of `kind`; `None` for a kind without a type here.
pub fn visit<V: KindVisitor>(kind: &str, visitor: V) -> Option<V::Output> {
    use k8s_openapi::api::{apps, autoscaling, batch, coordination, core, discovery};
    use k8s_openapi::apimachinery::pkg::apis::meta;
    Some(match kind {
        "Namespace" => visitor.visit::<core::v1::Namespace>(),
        "Pod" => visitor.visit::<core::v1::Pod>(),
        "Service" => visitor.visit::<core::v1::Service>(),
        "Endpoints" => visitor.visit::<core::v1::Endpoints>(),
        "ConfigMap" => visitor.visit::<core::v1::ConfigMap>(),
        "Secret" => visitor.visit::<core::v1::Secret>(),
        "Node" => visitor.visit::<core::v1::Node>(),
        "Event" => visitor.visit::<core::v1::Event>(),
        "ServiceAccount" => visitor.visit::<core::v1::ServiceAccount>(),
        "ReplicationController" => visitor.visit::<core::v1::ReplicationController>(),
        "Deployment" => visitor.visit::<apps::v1::Deployment>(),
        "ReplicaSet" => visitor.visit::<apps::v1::ReplicaSet>(),
        "DaemonSet" => visitor.visit::<apps::v1::DaemonSet>(),
        "StatefulSet" => visitor.visit::<apps::v1::StatefulSet>(),
        "Job" => visitor.visit::<batch::v1::Job>(),
        "CronJob" => visitor.visit::<batch::v1::CronJob>(),
        "EndpointSlice" => visitor.visit::<discovery::v1::EndpointSlice>(),
        "Lease" => visitor.visit::<coordination::v1::Lease>(),
        "Role" => visitor.visit::<k8s_openapi::api::rbac::v1::Role>(),
        "ClusterRole" => visitor.visit::<k8s_openapi::api::rbac::v1::ClusterRole>(),
        "RoleBinding" => visitor.visit::<k8s_openapi::api::rbac::v1::RoleBinding>(),
        "ClusterRoleBinding" => visitor.visit::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(),
        "SelfSubjectAccessReview" => visitor.visit::<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview>(),
        "SelfSubjectRulesReview" => visitor.visit::<k8s_openapi::api::authorization::v1::SelfSubjectRulesReview>(),
        "SubjectAccessReview" => visitor.visit::<k8s_openapi::api::authorization::v1::SubjectAccessReview>(),
        "SelfSubjectReview" => visitor.visit::<k8s_openapi::api::authentication::v1::SelfSubjectReview>(),
        "CertificateSigningRequest" => visitor.visit::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>(),
        "Binding" => visitor.visit::<core::v1::Binding>(),
        "Scale" => visitor.visit::<autoscaling::v1::Scale>(),
        "DeleteOptions" => visitor.visit::<meta::v1::DeleteOptions>(),
        "Status" => visitor.visit::<meta::v1::Status>(),
        "ListMeta" => visitor.visit::<meta::v1::ListMeta>(),
        _ => return None,
    })
}
