//! Fuzz harnesses for keelson-apimachinery (the rules api-shim runs on every request body),
//! shared by the targets in `fuzz_targets/`.
//!
//! Each harness takes raw fuzzer bytes, drives the functions the server calls on a request body
//! (decode, schema check, defaults, validation, the three patch types, server-side apply field
//! sets, selectors) and panics — a libFuzzer crash — on a panic inside keelson-apimachinery or on a broken
//! invariant. The invariants are properties the server relies on, not restatements of the code:
//! the stored object is a fixpoint of the schema check, defaulting is idempotent, merge patches
//! are idempotent, an empty JSON patch is the identity, FieldsV1 round-trips, and results stay
//! within the size the input allows.
//!
//! Input formats (chosen so the committed seeds are readable files):
//! - `decode_object`: `<content type>\n<body>`.
//! - `apply_patch`: `<current object JSON>\n%%%\n<patch document, JSON or YAML>`.
//! - `selectors`: `<labelSelector>\n<fieldSelector>\n<object JSON>`.

use keelson_apimachinery::apply::fuzzing as fields;
use keelson_apimachinery::error::ApiError;
use keelson_apimachinery::objects::{self, FieldValidation};
use keelson_apimachinery::patch;
use keelson_apimachinery::resources::{RESOURCES, ResourceDef};
use keelson_apimachinery::selectors::{FieldSelector, LabelSelector, Requirement, labels_of};
use serde_json::{Value, json};

const MODES: [FieldValidation; 3] = [FieldValidation::Strict, FieldValidation::Warn, FieldValidation::Ignore];

/// Separates the current object from the patch in `apply_patch` inputs.
pub const PATCH_MARKER: &[u8] = b"\n%%%\n";

/// Field paths checked per input in the apply field-set invariants (keeps each run fast).
const MAX_PATHS_CHECKED: usize = 64;

/// Nesting depth of a JSON value (scalars 0, `[]`/`{}` 1). Iterative: inputs may be deep.
pub fn depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            Value::Object(m) => {
                max = max.max(d + 1);
                stack.extend(m.values().map(|c| (c, d + 1)));
            }
            _ => max = max.max(d),
        }
    }
    max
}

/// Serialized size of a JSON value in bytes.
pub fn json_len(v: &Value) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX)
}

fn assert_client_error(e: &ApiError, what: &str) {
    let code = e.code();
    assert!((400..500).contains(&code), "{what}: server error {code} for bad input: {e}");
}

/// Mirrors the server's apiVersion/kind handling: fills them when missing, skips (false) when the
/// object is not of `res`'s type (the server answers 400 before any schema check).
fn fill_type(res: &ResourceDef, obj: &mut Value) -> bool {
    let Value::Object(m) = obj else { return false };
    for (field, want) in [("apiVersion", res.api_version()), ("kind", res.kind.to_string())] {
        match m.get(field).and_then(Value::as_str) {
            None | Some("") => {
                m.insert(field.to_string(), Value::String(want));
            }
            Some(have) if have == want => {}
            Some(_) => return false,
        }
    }
    true
}

/// A stored object must survive a strict re-check unchanged: nothing unknown, nothing rewritten.
fn assert_schema_fixpoint(res: &ResourceDef, obj: &Value, what: &str) {
    match objects::check_schema(res.kind, obj.clone(), FieldValidation::Strict) {
        Ok((again, warnings)) => {
            assert!(warnings.is_empty(), "{} {what}: strict re-check warns {warnings:?}", res.kind);
            assert_eq!(&again, obj, "{} {what}: strict re-check changed the object", res.kind);
        }
        Err(e) => panic!("{} {what}: strict re-check rejects it: {e}\n{obj}", res.kind),
    }
}

/// Splits off the first line (the content type / header), capped so a header cannot be huge.
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().take(256).position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[], data),
    }
}

/// `decode_object`: body decoding, then the create/update pipeline for every served kind.
pub fn decode_object(data: &[u8]) {
    let (ct, body) = split_line(data);
    let content_type = String::from_utf8_lossy(ct);
    let decoded = match objects::decode_body(&content_type, body) {
        Ok(v) => v,
        Err(e) => return assert_client_error(&e, "decode_body"),
    };
    for res in RESOURCES {
        let mut obj = decoded.clone();
        if fill_type(res, &mut obj) {
            object_pipeline(res, obj);
        }
    }
}

/// What `Api::create` / `Api::update_with` do with a decoded object of kind `res`.
fn object_pipeline(res: &ResourceDef, obj: Value) {
    let [strict, warn, ignore] = MODES.map(|fv| objects::check_schema(res.kind, obj.clone(), fv));
    // The modes differ only in what they do about unknown fields.
    match (&warn, &ignore) {
        (Ok((w_out, _)), Ok((i_out, i_warnings))) => {
            assert_eq!(w_out, i_out, "{}: Warn and Ignore prune differently", res.kind);
            assert!(i_warnings.is_empty(), "{}: Ignore warned {i_warnings:?}", res.kind);
        }
        (Err(w), Err(i)) => {
            assert_client_error(w, "check_schema(Warn)");
            assert_client_error(i, "check_schema(Ignore)");
        }
        (w, i) => panic!("{}: Warn and Ignore disagree: {:?} vs {:?}", res.kind, w.is_ok(), i.is_ok()),
    }
    match (&strict, &warn) {
        (Ok((s_out, s_warnings)), Ok((w_out, w_warnings))) => {
            assert!(s_warnings.is_empty() && w_warnings.is_empty(), "{}: Strict accepted unknown fields", res.kind);
            assert_eq!(s_out, w_out, "{}: Strict and Warn prune differently", res.kind);
        }
        (Err(e), Ok((_, w_warnings))) => {
            assert_client_error(e, "check_schema(Strict)");
            assert!(!w_warnings.is_empty(), "{}: Strict rejects what Warn accepts silently: {e}", res.kind);
        }
        (Err(e), Err(_)) => assert_client_error(e, "check_schema(Strict)"),
        (Ok(_), Err(e)) => panic!("{}: Strict accepts what Warn rejects: {e}", res.kind),
    }
    let Ok((checked, _)) = ignore else { return };
    // No unknown field survives, whatever the mode: the pruned object re-checks strictly as is.
    assert_schema_fixpoint(res, &checked, "check_schema output");

    let mut defaulted = checked.clone();
    objects::apply_defaults(res, &mut defaulted);
    let mut twice = defaulted.clone();
    objects::apply_defaults(res, &mut twice);
    assert_eq!(twice, defaulted, "{}: apply_defaults is not idempotent", res.kind);

    let created = objects::validate(res, &defaulted, None);
    match &created {
        // This is what gets stored: a later GET + strict PUT must see the same object.
        Ok(()) => assert_schema_fixpoint(res, &defaulted, "stored (defaulted, valid) object"),
        Err(e) => assert_client_error(e, "validate(create)"),
    }
    // Writing an object back unchanged never violates an update rule (immutability etc.).
    match objects::validate(res, &defaulted, Some(&defaulted)) {
        Ok(()) => {}
        Err(e) => {
            assert_client_error(&e, "validate(update)");
            assert!(created.is_err(), "{}: a no-op update fails although create passes: {e}", res.kind);
        }
    }
    // An update against a different old object (the object before defaulting): only bad-input
    // errors are allowed.
    if let Err(e) = objects::validate(res, &defaulted, Some(&checked)) {
        assert_client_error(&e, "validate(update from undefaulted)");
    }
    let _ = objects::pod_qos(&defaulted);
}

/// `apply_patch`: JSON patch, merge patch, strategic merge patch and server-side apply field sets.
pub fn apply_patch(data: &[u8]) {
    let (doc_bytes, patch_bytes) = match data.windows(PATCH_MARKER.len()).position(|w| w == PATCH_MARKER) {
        Some(i) => (&data[..i], &data[i + PATCH_MARKER.len()..]),
        None => (&b"{}"[..], data),
    };
    // The current object comes from storage (JSON); the patch as a client sends it.
    let Ok(doc) = objects::decode_body("application/json", doc_bytes) else { return };
    let patch_doc = match objects::decode_body("application/json-patch+json", patch_bytes) {
        Ok(p) => p,
        Err(_) => match objects::decode_body("application/apply-patch+yaml", patch_bytes) {
            Ok(p) => p,
            Err(e) => return assert_client_error(&e, "decode_body(patch)"),
        },
    };
    let input_len = json_len(&doc) + json_len(&patch_doc);
    let input_depth = depth(&doc).max(depth(&patch_doc));
    let mut results = Vec::new();

    // JSON patch: the empty patch is the identity; results stay within a bounded size.
    assert_eq!(patch::json_patch(&doc, &json!([])).as_ref(), Ok(&doc), "empty JSON patch changed the document");
    if let Ok(out) = patch::json_patch(&doc, &patch_doc) {
        let only_tests = patch_doc.as_array().is_some_and(|ops| ops.iter().all(|op| op["op"] == "test"));
        if only_tests {
            assert_eq!(out, doc, "a JSON patch of only test operations changed the document");
        }
        let len = json_len(&out);
        assert!(
            len <= input_len + objects::MAX_BODY,
            "JSON patch grew a {input_len}-byte input to {len} bytes (copy amplification)"
        );
        assert!(depth(&out) <= input_depth.max(100), "JSON patch nested the document past the bound");
        results.push(out);
    }

    // Merge patch (the server only accepts an object): idempotent, never deeper than its inputs.
    if patch_doc.is_object() {
        let once = patch::merge_patch(&doc, &patch_doc);
        let again = patch::merge_patch(&once, &patch_doc);
        assert_eq!(once, again, "merge patch is not idempotent");
        assert!(depth(&once) <= input_depth, "merge patch result is deeper than its inputs");
        if doc.is_object() {
            assert_eq!(patch::merge_patch(&doc, &json!({})), doc, "empty merge patch changed the document");
        }
        results.push(once);
    }

    // Strategic merge patch: {} is the identity; without lists or directives it is a merge patch.
    if doc.is_object() {
        assert_eq!(patch::strategic_merge(&doc, &json!({})).as_ref(), Ok(&doc), "empty strategic patch changed doc");
    }
    match patch::strategic_merge(&doc, &patch_doc) {
        Ok(out) => {
            assert!(out.is_object(), "strategic merge returned a non-object");
            assert!(depth(&out) <= input_depth.max(1), "strategic merge result is deeper than its inputs");
            if doc.is_object() && plain_merge(&patch_doc) {
                assert_eq!(out, patch::merge_patch(&doc, &patch_doc), "plain strategic patch differs from merge patch");
            }
            results.push(out);
        }
        Err(_) => assert!(!patch_doc.is_object() || has_lists_or_directives(&patch_doc), "plain patch rejected"),
    }

    // What the server does next with a patched object: schema check and managedFields bookkeeping.
    let res = RESOURCES.iter().find(|r| doc.get("kind").and_then(Value::as_str) == Some(r.kind));
    if let Some(res) = res {
        let old = objects::check_schema(res.kind, doc.clone(), FieldValidation::Ignore).ok().map(|(o, _)| o);
        for out in results {
            let mut new = out;
            if !fill_type(res, &mut new) {
                continue;
            }
            let Ok((mut new, _)) = objects::check_schema(res.kind, new, FieldValidation::Ignore) else { continue };
            keelson_apimachinery::apply::record_update(old.as_ref(), &mut new, "fuzz", &res.api_version(), None);
            // Only an object that validates is stored; its managedFields must name real fields.
            if objects::validate(res, &new, old.as_ref()).is_err() {
                continue;
            }
            let entries = new.pointer("/metadata/managedFields").and_then(Value::as_array).cloned();
            for e in entries.unwrap_or_default() {
                for p in fields::from_fields_v1(&e["fieldsV1"]).iter().take(MAX_PATHS_CHECKED) {
                    assert!(
                        p.value_in(&new).is_some(),
                        "managedFields names {} which is not in the object",
                        p.render()
                    );
                }
            }
        }
    }

    // Server-side apply: the patch as an apply configuration (as far as the server accepts it:
    // duplicate keyed items are a 400), and as a client-sent FieldsV1 tree.
    // Floats are left out: no served field is a float, and serde_json's default float parsing is
    // not an exact round trip, so a float merge key would not survive FieldsV1 text anyway.
    if patch_doc.is_object() && !has_float(&patch_doc) && fields::duplicate_key(&patch_doc).is_none() {
        field_sets(&patch_doc);
    }
    // A FieldsV1 tree from a client (any JSON): parsing then rendering is a projection.
    let rendered = fields::to_fields_v1(&fields::from_fields_v1(&patch_doc));
    let again = fields::to_fields_v1(&fields::from_fields_v1(&rendered));
    assert_eq!(again, rendered, "FieldsV1 render(parse(·)) is not idempotent");
}

/// Owned fields of an apply configuration: FieldsV1 round-trips, every path resolves in the
/// configuration, and removing a path removes it.
fn field_sets(config: &Value) {
    let owned: Vec<_> = fields::owned_paths(config).into_iter().filter(|p| !p.is_root()).collect();
    let back = fields::from_fields_v1(&fields::to_fields_v1(&owned));
    for p in &owned {
        assert!(back.contains(p), "FieldsV1 lost owned path {}", p.render());
    }
    for p in &back {
        assert!(owned.contains(p), "FieldsV1 invented path {}", p.render());
    }
    for p in owned.iter().take(MAX_PATHS_CHECKED) {
        assert!(p.value_in(config).is_some(), "owned path {} does not resolve in its configuration", p.render());
        let mut removed = config.clone();
        p.remove_from(&mut removed);
        assert!(p.value_in(&removed).is_none(), "removing {} left it in place", p.render());
    }
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}

/// True when a strategic patch has no lists and no `$` directives anywhere.
fn plain_merge(v: &Value) -> bool {
    !has_lists_or_directives(v)
}

fn has_lists_or_directives(v: &Value) -> bool {
    match v {
        Value::Array(_) => true,
        Value::Object(m) => m.iter().any(|(k, c)| k.starts_with('$') || has_lists_or_directives(c)),
        _ => false,
    }
}

/// `selectors`: label and field selector parsing and matching.
pub fn selectors(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let label = parts.next().unwrap_or_default();
    let field = parts.next().unwrap_or_default();
    let obj: Value = parts.next().and_then(|s| serde_json::from_str(s).ok()).unwrap_or(Value::Null);
    let labels = labels_of(&obj);

    if let Ok(sel) = LabelSelector::parse(label) {
        let matched = sel.matches(&labels);
        if sel.is_empty() {
            assert!(matched, "an empty label selector must match everything");
        }
        // Labels built from the equality requirements satisfy a selector made only of them.
        let mut wanted = std::collections::BTreeMap::new();
        let mut only_eq = true;
        for r in &sel.0 {
            match r {
                Requirement::Eq(k, v) => {
                    only_eq &= wanted.insert(k.clone(), v.clone()).is_none_or(|old| &old == v);
                }
                _ => only_eq = false,
            }
        }
        if only_eq {
            assert!(sel.matches(&wanted), "label selector {label:?} does not match its own equalities {wanted:?}");
        }
    }
    if let Some(sel) = obj.get("selector")
        && let Ok(s) = LabelSelector::from_object(sel)
    {
        let _ = s.matches(&labels);
    }
    for res in RESOURCES {
        if let Ok(fs) = FieldSelector::parse(field, res.kind) {
            let matched = fs.matches(&obj);
            if fs.is_empty() {
                assert!(matched, "an empty field selector must match everything");
            }
        }
    }
}
