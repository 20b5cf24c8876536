//! The in-process approver and signer loop: list, then watch CSRs; every listed or changed CSR
//! is synced (approve if a node client request passes its access check, then sign if approved).
//! The watch ends every [`RESYNC`] and the loop lists again, so a CSR whose write failed (a
//! conflict, the store briefly unavailable) is retried without any event; nothing is dropped.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tracing::Instrument;

use super::signer::Signer;
use super::{GROUP, approval_update, approver, has_condition};
use crate::error::ApiError;
use crate::objects::FieldValidation;
use crate::registry::rbac::Authorizer;
use crate::registry::{Api, ListOpts, WatchOpts, WriteOpts};
use crate::resources::{self, ResourceDef};

/// How often every CSR is looked at again without an event.
const RESYNC: Duration = Duration::from_secs(30);

/// The approver and signer.
pub struct CsrController {
    api: Arc<Api>,
    authz: Arc<Authorizer>,
    signer: Signer,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl CsrController {
    pub fn new(api: Arc<Api>, authz: Arc<Authorizer>, signer: Signer) -> Arc<Self> {
        Arc::new(CsrController { api, authz, signer })
    }

    fn res() -> Option<&'static ResourceDef> {
        resources::find(GROUP, "v1", "certificatesigningrequests")
    }

    /// Runs forever in the background.
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move { me.run().await });
    }

    async fn run(&self) {
        let Some(res) = Self::res() else { return };
        let mut backoff = Duration::from_millis(200);
        loop {
            let rv = match self.api.list(res, None, &ListOpts::default()).await {
                Ok((items, rv, _)) => {
                    for csr in &items {
                        self.sync_logged(csr).await;
                    }
                    backoff = Duration::from_millis(200);
                    rv
                }
                Err(e) => {
                    tracing::warn!(error = %e, "csr controller: list failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let opts = WatchOpts {
                list: ListOpts { resource_version: Some(rv.to_string()), ..Default::default() },
                timeout: Some(RESYNC),
                ..Default::default()
            };
            match self.api.watch(res, None, opts).await {
                Ok(mut rx) => {
                    while let Some(ev) = rx.recv().await {
                        match ev.kind {
                            "ADDED" | "MODIFIED" => self.sync_logged(&ev.object).await,
                            "ERROR" => break,
                            _ => {}
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "csr controller: watch failed");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    async fn sync_logged(&self, csr: &Value) {
        let name = csr.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let span = tracing::info_span!("csr_sync", csr = %name);
        if let Err(e) = self.sync(csr, &name).instrument(span).await {
            // The next resync (or event) tries again.
            tracing::warn!(csr = %name, error = %e, "csr sync failed");
        }
    }

    /// Approves then signs one CSR; a no-op for CSRs already decided and issued.
    pub async fn sync(&self, csr: &Value, name: &str) -> Result<(), ApiError> {
        let Some(res) = Self::res() else { return Ok(()) };
        let opts = WriteOpts { field_validation: FieldValidation::Ignore, ..Default::default() };
        let checks = approver::checks(csr);
        if !checks.is_empty() {
            if let Some(a) = checks.iter().find(|a| self.authz.authorize(a).allowed) {
                tracing::info!(user = a.user, subresource = a.subresource, "approving node client CSR");
                let cond = approver::approved_condition(&now_rfc3339());
                let (csr, _) = self
                    .api
                    .update_with(res, None, name, Some("approval"), &opts, |cur| {
                        if has_condition(cur, "Approved") || has_condition(cur, "Denied") {
                            return Ok((cur.clone(), None));
                        }
                        let mut sent = cur.clone();
                        let mut conds = cur.pointer("/status/conditions").cloned().unwrap_or(json!([]));
                        if let Value::Array(c) = &mut conds {
                            c.push(cond.clone());
                        }
                        sent["status"]["conditions"] = conds;
                        Ok((approval_update(cur, &sent), None))
                    })
                    .await?;
                return self.sign_if_approved(res, &csr, name, &opts).await;
            }
            tracing::debug!("not approved: no access check passed");
        }
        self.sign_if_approved(res, csr, name, &opts).await
    }

    async fn sign_if_approved(
        &self,
        res: &'static ResourceDef,
        csr: &Value,
        name: &str,
        opts: &WriteOpts,
    ) -> Result<(), ApiError> {
        let signer_name = csr.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or_default();
        let issued = csr.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
        if !has_condition(csr, "Approved")
            || has_condition(csr, "Failed")
            || issued
            || ![super::KUBELET_CLIENT, super::APISERVER_CLIENT].contains(&signer_name)
        {
            return Ok(());
        }
        let result = self.signer.sign(csr, time::OffsetDateTime::now_utc());
        let now = now_rfc3339();
        self.api
            .update_with(res, None, name, Some("status"), opts, |cur| {
                let mut n = cur.clone();
                if !n.get("status").is_some_and(Value::is_object) {
                    n["status"] = json!({});
                }
                match &result {
                    Ok(pem) => {
                        use base64::Engine;
                        n["status"]["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode(pem));
                    }
                    Err(e) => {
                        let mut conds = cur.pointer("/status/conditions").cloned().unwrap_or(json!([]));
                        if let Value::Array(c) = &mut conds {
                            c.push(json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure",
                                          "message": e.to_string(), "lastUpdateTime": now, "lastTransitionTime": now}));
                        }
                        n["status"]["conditions"] = conds;
                    }
                }
                Ok((n, None))
            })
            .await?;
        match result {
            Ok(_) => tracing::info!("signed"),
            Err(e) => tracing::info!(error = %e, "signing failed"),
        }
        Ok(())
    }
}
