//! What differs per kind.

mod alloc;

use std::net::Ipv4Addr;

use serde_json::{Value, json};

pub use self::alloc::Allocator;
use super::{Allocation, Api, invalid, meta_str};
use crate::error::{ApiError, Cause};
use crate::resources::{self, ResourceDef};

impl Api {
    // ------------------------------------------------------------------ services

    /// Allocates ClusterIP/NodePorts for a new or changed Service; returns what was newly taken.
    pub(in crate::registry) fn allocate_service(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<Vec<Allocation>, ApiError> {
        let name = meta_str(obj, "name").unwrap_or_default().to_string();
        let svc = resources::find("", "v1", "services").ok_or(ApiError::NoRoute)?;
        let mut taken = Vec::new();
        let mut a = self.alloc();
        let ty = obj.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
        let fail = |taken: &mut Vec<Allocation>, a: &mut Allocator, cause: Cause| {
            for t in taken.drain(..) {
                match t {
                    Allocation::Ip(ip) => a.release_ip(ip),
                    Allocation::Port(p) => a.release_port(p),
                }
            }
            invalid(svc, &name, vec![cause])
        };
        if old.is_none() && ty != "ExternalName" {
            let requested = obj.pointer("/spec/clusterIP").and_then(Value::as_str).unwrap_or_default().to_string();
            let ip = if requested == "None" {
                None
            } else if requested.is_empty() {
                match a.allocate_ip() {
                    Ok(ip) => Some(ip),
                    Err(e) => return Err(fail(&mut taken, &mut a, Cause::invalid("spec.clusterIPs", "", e))),
                }
            } else {
                let ip: Ipv4Addr = requested.parse().map_err(|_| {
                    invalid(
                        svc,
                        &name,
                        vec![Cause::invalid("spec.clusterIPs[0]", &requested, "must be a valid IPv4 address")],
                    )
                })?;
                if let Err(e) = a.claim_ip(ip) {
                    return Err(fail(&mut taken, &mut a, Cause::invalid("spec.clusterIPs", &requested, e)));
                }
                Some(ip)
            };
            if let Some(ip) = ip {
                taken.push(Allocation::Ip(ip));
                obj["spec"]["clusterIP"] = json!(ip.to_string());
                obj["spec"]["clusterIPs"] = json!([ip.to_string()]);
            } else {
                obj["spec"]["clusterIPs"] = json!(["None"]);
            }
        }
        let old_ports: Vec<u16> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("nodePort").and_then(Value::as_u64).map(|n| n as u16))
            .collect();
        let wants_node_ports = ty == "NodePort" || ty == "LoadBalancer";
        if let Some(Value::Array(ports)) = obj.pointer_mut("/spec/ports") {
            for (i, p) in ports.iter_mut().enumerate() {
                let np = p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) as u16;
                if !wants_node_ports {
                    if let Value::Object(m) = p {
                        m.remove("nodePort");
                    }
                    continue;
                }
                if np == 0 {
                    match a.allocate_port() {
                        Ok(port) => {
                            taken.push(Allocation::Port(port));
                            p["nodePort"] = json!(port);
                        }
                        Err(e) => {
                            return Err(fail(
                                &mut taken,
                                &mut a,
                                Cause::invalid(format!("spec.ports[{i}].nodePort"), 0, e),
                            ));
                        }
                    }
                } else if !old_ports.contains(&np) {
                    if let Err(e) = a.claim_port(np) {
                        return Err(fail(
                            &mut taken,
                            &mut a,
                            Cause::invalid(format!("spec.ports[{i}].nodePort"), np, e),
                        ));
                    }
                    taken.push(Allocation::Port(np));
                }
            }
        }
        Ok(taken)
    }

    pub(in crate::registry) fn release(&self, allocs: &[Allocation]) {
        let mut a = self.alloc();
        for t in allocs {
            match t {
                Allocation::Ip(ip) => a.release_ip(*ip),
                Allocation::Port(p) => a.release_port(*p),
            }
        }
    }

    /// Releases node ports an update dropped.
    pub(in crate::registry) fn release_removed(&self, old: &Value, new: &Value) {
        let ports = |v: &Value| -> Vec<u16> {
            v.pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_u64).map(|n| n as u16))
                .collect()
        };
        if old.get("kind").and_then(Value::as_str) != Some("Service") {
            return;
        }
        let keep = ports(new);
        let mut a = self.alloc();
        for p in ports(old) {
            if !keep.contains(&p) {
                a.release_port(p);
            }
        }
    }

    pub(in crate::registry) fn after_delete(&self, res: &ResourceDef, obj: &Value) {
        if res.kind == "Service" {
            let mut a = self.alloc();
            if let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|s| s.parse().ok()) {
                a.release_ip(ip);
            }
            for p in obj.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
                if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
                    a.release_port(np as u16);
                }
            }
        }
        if res.kind == "Pod" {
            let key = res.key(meta_str(obj, "namespace"), meta_str(obj, "name").unwrap_or_default());
            self.graceful.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        }
    }
}
