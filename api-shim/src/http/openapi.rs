//! OpenAPI v3: `/openapi/v3` (the index) and one document per served group-version.
//!
//! Clients read these documents for three things, and each shapes what is published here:
//! - kubectl decides whether to send `fieldValidation` (server-side validation for its default
//!   `--validate=strict`) by looking for that parameter on the kind's PATCH operation, found via
//!   `x-kubernetes-group-version-kind`.
//! - `kubectl explain` walks the component schemas from the kind's schema (the one carrying
//!   `x-kubernetes-group-version-kind`), following `$ref`/`allOf` and printing descriptions.
//! - kubectl's client-side apply computes strategic merge patches from the schemas'
//!   `x-kubernetes-patch-strategy` / `x-kubernetes-patch-merge-key`. A list schema without them is
//!   treated as atomic (replaced whole), so they are derived from the same table the server's
//!   strategic merge uses ([`crate::patch::list_strategy`]): client and server agree on every list.
//!
//! Schemas come from the k8s-openapi types through schemars (the same types the schema check
//! decodes into, see [`crate::kinds`]), so what is published is what is enforced. The catalogue
//! is static, so documents are built once, lazily, and served from memory with a content hash
//! in their URL (clients cache them by it).

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};
use sha2::Digest;

use crate::http::discovery::SERVER_MINOR;
use crate::kinds::{self, KindVisitor};
use crate::patch::{ListStrategy, list_strategy};
use crate::resources::{RESOURCES, ResourceDef};

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

/// One rendered group-version document.
pub struct Document {
    /// `api/v1` or `apis/<group>/<version>`.
    pub path: String,
    pub json: Vec<u8>,
    /// Upper-case hex content hash, used in the index URL and as the ETag.
    pub hash: String,
}

/// All documents plus the rendered index.
pub struct Documents {
    pub docs: Vec<Document>,
    pub index: Value,
}

impl Documents {
    pub fn get(&self, path: &str) -> Option<&Document> {
        let path = path.trim_matches('/');
        self.docs.iter().find(|d| d.path == path)
    }
}

/// The documents, built on first use.
pub fn documents() -> &'static Documents {
    static DOCS: OnceLock<Documents> = OnceLock::new();
    DOCS.get_or_init(build_all)
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

fn build_all() -> Documents {
    let mut gvs: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !gvs.contains(&(r.group, r.version)) {
            gvs.push((r.group, r.version));
        }
    }
    let mut docs = Vec::new();
    let mut paths = Map::new();
    for (group, version) in gvs {
        let doc = group_version(group, version);
        let json = serde_json::to_vec(&doc).unwrap_or_default();
        let hash = hex::encode_upper(&sha2::Sha256::digest(&json)[..32]);
        let path = gv_path(group, version);
        paths.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}));
        docs.push(Document { path, json, hash });
    }
    Documents { docs, index: json!({"paths": paths}) }
}

/// Registers a kind's schema (and everything it references); yields its schema name.
struct Register<'a>(&'a mut SchemaGenerator);

impl KindVisitor for Register<'_> {
    type Output = String;
    fn visit<T>(self) -> String
    where
        T: serde::Serialize + serde::de::DeserializeOwned + schemars::JsonSchema,
    {
        self.0.subschema_for::<T>();
        T::schema_name().into_owned()
    }
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!([{"group": group, "version": version, "kind": kind}])
}

/// `apps` → `Apps`, `discovery.k8s.io` → `Discovery`, `rbac.authorization.k8s.io` →
/// `RbacAuthorization`, core → `Core` (upstream's operationId style).
fn group_camel(group: &str) -> String {
    if group.is_empty() {
        return "Core".into();
    }
    group
        .trim_end_matches(".k8s.io")
        .split('.')
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
        })
        .collect()
}

fn param(name: &str, location: &str, description: &str) -> Value {
    let mut p = json!({"name": name, "in": location, "description": description, "schema": {"type": "string", "uniqueItems": true}});
    if location == "path" {
        p["required"] = json!(true);
    }
    p
}

fn write_params() -> Vec<Value> {
    vec![
        param(
            "dryRun",
            "query",
            "When present, indicates that modifications should not be persisted. Valid value: All.",
        ),
        param("fieldManager", "query", "A name associated with the actor or entity that is making these changes."),
        param(
            "fieldValidation",
            "query",
            "How the server treats unknown or duplicate fields in the request: Ignore, Warn (default) or Strict.",
        ),
    ]
}

fn list_params() -> Vec<Value> {
    [
        ("allowWatchBookmarks", "Request watch events with type BOOKMARK."),
        ("continue", "The continue token of a previous paginated list."),
        ("fieldSelector", "Restrict the returned objects by their fields."),
        ("labelSelector", "Restrict the returned objects by their labels."),
        ("limit", "Maximum number of objects to return in one page."),
        ("resourceVersion", "Resource version semantics for list and watch."),
        ("resourceVersionMatch", "How resourceVersion applies to list calls."),
        ("sendInitialEvents", "Start a watch with synthetic ADDED events for the current state."),
        ("timeoutSeconds", "Timeout for the list/watch call."),
        ("watch", "Watch for changes and return them as a stream of events."),
    ]
    .iter()
    .map(|(n, d)| param(n, "query", d))
    .collect()
}

fn json_content(schema: Value) -> Value {
    json!({
        "application/json": {"schema": schema},
        "application/yaml": {"schema": schema},
    })
}

/// One operation object.
struct Op<'a> {
    id: String,
    action: &'a str,
    gvk: &'a Value,
    params: Vec<Value>,
    body: Option<Value>,
    response: Value,
    codes: &'a [&'a str],
}

impl Op<'_> {
    fn render(self, tag: &str) -> Value {
        let mut responses = Map::new();
        for code in self.codes {
            responses
                .insert((*code).into(), json!({"description": "OK", "content": json_content(self.response.clone())}));
        }
        responses.insert("401".into(), json!({"description": "Unauthorized"}));
        let mut op = json!({
            "tags": [tag],
            "operationId": self.id,
            "parameters": self.params,
            "responses": responses,
            "x-kubernetes-action": self.action,
            "x-kubernetes-group-version-kind": self.gvk[0],
        });
        if let Some(b) = self.body {
            op["requestBody"] = json!({"required": true, "content": b});
        }
        op
    }
}

fn patch_body() -> Value {
    let s = schema_ref(&format!("{META}.Patch"));
    json!({
        "application/apply-patch+yaml": {"schema": s},
        "application/json-patch+json": {"schema": s},
        "application/merge-patch+json": {"schema": s},
        "application/strategic-merge-patch+json": {"schema": s},
    })
}

/// Operations of one resource (collection, item, and its status/scale subresources).
fn resource_paths(r: &ResourceDef, kind_schema: &str, paths: &mut Map<String, Value>) {
    let tag = format!("{}_{}", group_camel(r.group).to_lowercase(), r.version);
    let this_gvk = gvk(r.group, r.version, r.kind);
    let gc = group_camel(r.group);
    let v = {
        let mut c = r.version.chars();
        c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
    };
    let scope = if r.namespaced { "Namespaced" } else { "" };
    let id = |verb: &str, suffix: &str| format!("{verb}{gc}{v}{scope}{}{suffix}", r.kind);
    let base = format!("/{}", gv_path(r.group, r.version));
    let coll = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let item = format!("{coll}/{{name}}");
    let obj = schema_ref(kind_schema);
    let list = schema_ref(&format!("{kind_schema}List"));
    let status = schema_ref(&format!("{META}.Status"));
    let mut scope_params = vec![param("pretty", "query", "Pretty-print the output.")];
    if r.namespaced {
        scope_params.push(param("namespace", "path", "object name and auth scope, such as for teams and projects"));
    }
    let mut item_params = scope_params.clone();
    item_params.insert(0, param("name", "path", &format!("name of the {}", r.kind)));

    let list_op = |id: String| {
        Op {
            id,
            action: "list",
            gvk: &this_gvk,
            params: list_params(),
            body: None,
            response: list.clone(),
            codes: &["200"],
        }
        .render(&tag)
    };
    let mut coll_ops = json!({"parameters": scope_params});
    coll_ops["get"] = list_op(id("list", ""));
    coll_ops["post"] = Op {
        id: id("create", ""),
        action: "post",
        gvk: &this_gvk,
        params: write_params(),
        body: Some(json_content(obj.clone())),
        response: obj.clone(),
        codes: &["200", "201", "202"],
    }
    .render(&tag);
    let mut dc_params = list_params();
    dc_params.extend([
        param("gracePeriodSeconds", "query", "Seconds before the object should be deleted."),
        param("propagationPolicy", "query", "Orphan, Background or Foreground."),
        param("dryRun", "query", "When present, indicates that modifications should not be persisted."),
    ]);
    coll_ops["delete"] = Op {
        id: format!("delete{gc}{v}Collection{scope}{}", r.kind),
        action: "deletecollection",
        gvk: &this_gvk,
        params: dc_params,
        body: None,
        response: status.clone(),
        codes: &["200"],
    }
    .render(&tag);
    paths.insert(coll, coll_ops);

    if r.namespaced {
        let all = format!("{base}/{}", r.plural);
        paths.insert(all, json!({"get": list_op(format!("list{gc}{v}{}ForAllNamespaces", r.kind))}));
    }

    let item_ops = |suffix: &str, action_gvk: &Value, schema: &Value, delete: bool| {
        let mut ops = json!({"parameters": item_params.clone()});
        ops["get"] = Op {
            id: id("read", suffix),
            action: "get",
            gvk: action_gvk,
            params: vec![],
            body: None,
            response: schema.clone(),
            codes: &["200"],
        }
        .render(&tag);
        ops["put"] = Op {
            id: id("replace", suffix),
            action: "put",
            gvk: action_gvk,
            params: write_params(),
            body: Some(json_content(schema.clone())),
            response: schema.clone(),
            codes: &["200", "201"],
        }
        .render(&tag);
        let mut patch_params = write_params();
        patch_params.push(param("force", "query", "Force apply requests: take ownership of conflicting fields."));
        ops["patch"] = Op {
            id: id("patch", suffix),
            action: "patch",
            gvk: action_gvk,
            params: patch_params,
            body: Some(patch_body()),
            response: schema.clone(),
            codes: &["200", "201"],
        }
        .render(&tag);
        if delete {
            ops["delete"] = Op {
                id: id("delete", suffix),
                action: "delete",
                gvk: action_gvk,
                params: vec![
                    param("dryRun", "query", "When present, indicates that modifications should not be persisted."),
                    param("gracePeriodSeconds", "query", "Seconds before the object should be deleted."),
                    param("propagationPolicy", "query", "Orphan, Background or Foreground."),
                ],
                body: Some(json_content(schema_ref(&format!("{META}.DeleteOptions")))),
                response: status.clone(),
                codes: &["200", "202"],
            }
            .render(&tag);
        }
        ops
    };
    paths.insert(item.clone(), item_ops("", &this_gvk, &obj, true));
    if r.has_sub("status") {
        paths.insert(format!("{item}/status"), item_ops("Status", &this_gvk, &obj, false));
    }
    if r.has_sub("scale") {
        let scale_gvk = gvk("autoscaling", "v1", "Scale");
        paths.insert(
            format!("{item}/scale"),
            item_ops("Scale", &scale_gvk, &schema_ref("io.k8s.api.autoscaling.v1.Scale"), false),
        );
    }
}

/// `PodList`-style schema for a kind.
fn list_schema(r: &ResourceDef, kind_schema: &str) -> Value {
    json!({
        "description": format!("{}List is a list of {}.", r.kind, r.kind),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
            "items": {"type": "array", "description": format!("List of {}.", r.plural), "items": {"allOf": [schema_ref(kind_schema)], "default": {}}},
            "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
            "metadata": {"allOf": [schema_ref(&format!("{META}.ListMeta"))], "default": {}, "description": "Standard list metadata."},
        },
        "x-kubernetes-group-version-kind": gvk(r.group, r.version, &format!("{}List", r.kind)),
    })
}

/// The name a property schema points at (`$ref`, or `allOf: [{$ref}]` when it has siblings).
fn ref_target(schema: &Value) -> Option<String> {
    let r = schema.get("$ref").or_else(|| {
        schema.get("allOf").and_then(Value::as_array).and_then(|a| a.first()).and_then(|s| s.get("$ref"))
    })?;
    r.as_str()?.strip_prefix("#/components/schemas/").map(str::to_string)
}

/// Adds the strategic-merge extensions on list properties reachable from `name` at `path`.
fn annotate_lists(defs: &mut Map<String, Value>, name: &str, path: &mut Vec<String>, seen: &mut HashSet<String>) {
    if !seen.insert(name.to_string()) || path.len() > 32 {
        return;
    }
    let props: Vec<(String, Value)> = match defs.get(name).and_then(|d| d.get("properties")).and_then(Value::as_object)
    {
        Some(p) => p.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        None => return,
    };
    for (prop, schema) in props {
        path.push(prop.clone());
        if schema.get("type").and_then(Value::as_str) == Some("array") {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let ext = match list_strategy(&p) {
                ListStrategy::MergeKey(key) => {
                    Some(json!({"x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": key}))
                }
                ListStrategy::MergePrimitives => Some(json!({"x-kubernetes-patch-strategy": "merge"})),
                ListStrategy::Replace => None,
            };
            if let Some(Value::Object(ext)) = ext
                && let Some(Value::Object(target)) =
                    defs.get_mut(name).and_then(|d| d.get_mut("properties")).and_then(|p| p.get_mut(&prop))
            {
                target.extend(ext);
            }
            if let Some(item) = schema.get("items").and_then(ref_target) {
                annotate_lists(defs, &item, path, seen);
            }
        } else if let Some(target) = ref_target(&schema) {
            annotate_lists(defs, &target, path, seen);
        }
        path.pop();
    }
}

/// The document of one group-version.
pub fn group_version(group: &str, version: &str) -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let served: Vec<&ResourceDef> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    let mut kind_schemas = BTreeMap::new();
    for r in &served {
        if let Some(name) = kinds::visit(r.kind, Register(&mut generator)) {
            kind_schemas.insert(r.kind, name);
        }
    }
    for extra in ["DeleteOptions", "Status", "ListMeta"] {
        kinds::visit(extra, Register(&mut generator));
    }
    if served.iter().any(|r| r.has_sub("scale")) {
        kinds::visit("Scale", Register(&mut generator));
    }
    let mut defs = generator.take_definitions(true);
    let mut paths = Map::new();
    for r in &served {
        let Some(name) = kind_schemas.get(r.kind) else { continue };
        if let Some(Value::Object(d)) = defs.get_mut(name.as_str()) {
            d.insert("x-kubernetes-group-version-kind".into(), gvk(r.group, r.version, r.kind));
        }
        defs.insert(format!("{name}List"), list_schema(r, name));
        resource_paths(r, name, &mut paths);
        annotate_lists(&mut defs, name, &mut Vec::new(), &mut HashSet::new());
    }
    if let Some(Value::Object(d)) = defs.get_mut("io.k8s.api.autoscaling.v1.Scale") {
        d.insert("x-kubernetes-group-version-kind".into(), gvk("autoscaling", "v1", "Scale"));
    }
    for (kind, schema) in [("DeleteOptions", "DeleteOptions"), ("Status", "Status")] {
        if let Some(Value::Object(d)) = defs.get_mut(&format!("{META}.{schema}")) {
            d.insert("x-kubernetes-group-version-kind".into(), gvk("", "v1", kind));
        }
    }
    defs.insert(
        format!("{META}.Patch"),
        json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.", "type": "object"}),
    );
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{SERVER_MINOR}.0")},
        "paths": paths,
        "components": {"schemas": defs},
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::resources::GROUPS;

    fn doc(group: &str) -> Value {
        let path = gv_path(group, "v1");
        serde_json::from_slice(&documents().get(&path).unwrap().json).unwrap()
    }

    fn resolve<'a>(doc: &'a Value, name: &str) -> &'a Value {
        &doc["components"]["schemas"][name]
    }

    #[test]
    fn every_kind_has_a_schema_with_its_gvk_and_field_validation_on_patch() {
        for g in GROUPS {
            let d = doc(g);
            for r in RESOURCES.iter().filter(|r| r.group == *g) {
                let kind_schema = d["components"]["schemas"]
                    .as_object()
                    .unwrap()
                    .values()
                    .find(|s| s["x-kubernetes-group-version-kind"][0]["kind"] == r.kind)
                    .unwrap_or_else(|| panic!("no schema for {}", r.kind));
                assert!(kind_schema["properties"]["metadata"].is_object(), "{}", r.kind);
                let patch_has_fv = d["paths"].as_object().unwrap().values().any(|p| {
                    p.get("patch").is_some_and(|op| {
                        op["x-kubernetes-group-version-kind"]["kind"] == r.kind
                            && op["parameters"].as_array().unwrap().iter().any(|x| x["name"] == "fieldValidation")
                    })
                });
                assert!(patch_has_fv, "{}", r.kind);
            }
        }
    }

    #[test]
    fn every_reference_resolves() {
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|c| refs(c, out));
                }
                Value::Array(a) => a.iter().for_each(|c| refs(c, out)),
                _ => {}
            }
        }
        for g in GROUPS {
            let d = doc(g);
            let mut all = Vec::new();
            refs(&d, &mut all);
            assert!(all.len() > 10, "{g}");
            for r in all {
                let name = r.strip_prefix("#/components/schemas/").unwrap();
                assert!(resolve(&d, name).is_object(), "{g}: dangling {r}");
            }
        }
    }

    #[test]
    fn list_patch_metadata_matches_the_servers_strategic_merge() {
        let core = doc("");
        let spec = &resolve(&core, "io.k8s.api.core.v1.PodSpec")["properties"];
        assert_eq!(spec["containers"]["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(spec["containers"]["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(spec["volumes"]["x-kubernetes-patch-merge-key"], "name");
        let container = &resolve(&core, "io.k8s.api.core.v1.Container")["properties"];
        assert_eq!(container["env"]["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(container["ports"]["x-kubernetes-patch-merge-key"], "containerPort");
        assert_eq!(container["volumeMounts"]["x-kubernetes-patch-merge-key"], "mountPath");
        assert!(container["args"].get("x-kubernetes-patch-strategy").is_none(), "args are atomic");
        let svc = &resolve(&core, "io.k8s.api.core.v1.ServiceSpec")["properties"];
        assert_eq!(svc["ports"]["x-kubernetes-patch-merge-key"], "port");
        let meta = &resolve(&core, &format!("{META}.ObjectMeta"))["properties"];
        assert_eq!(meta["finalizers"]["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(meta["ownerReferences"]["x-kubernetes-patch-merge-key"], "uid");
        let apps = doc("apps");
        let dep = &resolve(&apps, "io.k8s.api.apps.v1.DeploymentStatus")["properties"];
        assert_eq!(dep["conditions"]["x-kubernetes-patch-merge-key"], "type");
    }

    #[test]
    fn index_points_at_every_document_by_hash() {
        let docs = documents();
        let paths = docs.index["paths"].as_object().unwrap();
        assert_eq!(paths.len(), GROUPS.len());
        for d in &docs.docs {
            let url = paths[&d.path]["serverRelativeURL"].as_str().unwrap();
            assert_eq!(url, format!("/openapi/v3/{}?hash={}", d.path, d.hash));
        }
        assert!(docs.get("/apis/apps/v1/").is_some());
        assert!(docs.get("apis/nope/v1").is_none());
        assert_eq!(group_camel("discovery.k8s.io"), "Discovery");
        assert_eq!(group_camel("rbac.authorization.k8s.io"), "RbacAuthorization");
    }
}
