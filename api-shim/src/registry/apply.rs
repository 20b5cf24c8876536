//! Server-side apply against the store: the read, create and compare-and-swap update around
//! [`ApplyPlan`], which holds every decision (conflicts, ownership, merge) in the pure crate.

use std::sync::Arc;

use keelson_apimachinery::apply::ApplyPlan;
use serde_json::Value;

use super::{Api, WriteOpts};
use crate::error::ApiError;
use crate::resources::ResourceDef;

impl Api {
    /// Applies `config` as `opts.field_manager`; returns (object, warnings, created).
    #[allow(clippy::too_many_arguments)]
    pub async fn apply(
        self: &Arc<Self>,
        res: &'static ResourceDef,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        config: Value,
        opts: &WriteOpts,
        force: bool,
    ) -> Result<(Value, Vec<String>, bool), ApiError> {
        let plan = ApplyPlan::new(res, name, &config, opts.field_validation, &opts.field_manager)?;
        match self.get(res, ns, name).await {
            Err(ApiError::NotFound { .. }) if sub.is_none() => {
                let (out, w) = self.create(res, ns, plan.created(), opts).await?;
                let mut all = plan.warnings;
                all.extend(w);
                return Ok((out, all, true));
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let (out, w) =
            self.update_with(res, ns, name, sub, opts, |cur| Ok((plan.merge(cur, sub, force)?, None))).await?;
        let mut all = plan.warnings;
        all.extend(w);
        Ok((out, all, false))
    }
}
