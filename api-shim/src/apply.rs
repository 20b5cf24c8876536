//! Server-side apply against the store: the read, create and compare-and-swap update around
//! [`keelson_apimachinery::apply::ApplyPlan`], which holds every decision (conflicts, ownership,
//! merge). Re-exports the rest of the pure module so `crate::apply::record_update` keeps working.

pub use keelson_apimachinery::apply::*;
use serde_json::Value;

use crate::api::{Api, WriteOpts};
use crate::error::ApiError;
use crate::resources::ResourceDef;

/// Applies `config` as `opts.field_manager`; returns (object, warnings, created).
#[allow(clippy::too_many_arguments)]
pub async fn server_side_apply(
    api: &std::sync::Arc<Api>,
    res: &'static ResourceDef,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    config: Value,
    opts: &WriteOpts,
    force: bool,
) -> Result<(Value, Vec<String>, bool), ApiError> {
    let plan = ApplyPlan::new(res, name, &config, opts.field_validation, &opts.field_manager)?;
    match api.get(res, ns, name).await {
        Err(ApiError::NotFound { .. }) if sub.is_none() => {
            let (out, w) = api.create(res, ns, plan.created(), opts).await?;
            let mut all = plan.warnings;
            all.extend(w);
            return Ok((out, all, true));
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let (out, w) = api.update_with(res, ns, name, sub, opts, |cur| Ok((plan.merge(cur, sub, force)?, None))).await?;
    let mut all = plan.warnings;
    all.extend(w);
    Ok((out, all, false))
}
