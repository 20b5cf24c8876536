//! The Service strategy: it owns the ClusterIP and NodePort allocators (as upstream's Service
//! REST storage owns its IP and port allocators), takes addresses and ports on create and update,
//! keeps an allocated clusterIP the client left empty, and returns everything when a Service goes.

use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};

use super::alloc::Allocator;
use super::{Allocation, Reservation, Strategy};
use crate::error::{ApiError, Cause};
use crate::registry::{invalid, meta_str};
use crate::resources::{self, ResourceDef};

/// ClusterIPs from the Service CIDR, NodePorts from 30000–32767.
#[derive(Debug)]
pub struct ServiceStrategy {
    alloc: Mutex<Allocator>,
}

impl ServiceStrategy {
    pub fn new(cidr: ipnet::Ipv4Net) -> Self {
        ServiceStrategy { alloc: Mutex::new(Allocator::new(cidr, (30000, 32767))) }
    }

    fn lock(&self) -> MutexGuard<'_, Allocator> {
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first address of the range: the `kubernetes` Service's.
    pub fn first_ip(&self) -> Ipv4Addr {
        self.lock().first_ip()
    }

    /// Marks a stored Service's address and ports taken (the allocators are rebuilt at start-up).
    pub fn recover(&self, obj: &Value) {
        let mut a = self.lock();
        if let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|s| s.parse().ok()) {
            let _ = a.claim_ip(ip);
        }
        for p in obj.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
            if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
                let _ = a.claim_port(np as u16);
            }
        }
    }
}

impl Strategy for ServiceStrategy {
    fn prepare_for_update(&self, old: &Value, new: &mut Value) {
        // Keep the allocated clusterIP(s) when the client left them empty.
        for f in ["clusterIP", "clusterIPs"] {
            let empty = new.pointer(&format!("/spec/{f}")).is_none_or(|v| v.as_str() == Some("") || v.is_null());
            if empty && let (Some(v), Some(spec)) = (old.pointer(&format!("/spec/{f}")).cloned(), new.get_mut("spec")) {
                spec[f] = v;
            }
        }
    }

    fn allocate(&self, obj: &mut Value, old: Option<&Value>) -> Result<Reservation, ApiError> {
        let name = meta_str(obj, "name").unwrap_or_default().to_string();
        let svc = resources::find("", "v1", "services").ok_or(ApiError::NoRoute)?;
        let mut taken = Vec::new();
        let mut a = self.lock();
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
        Ok(Reservation(taken))
    }

    fn release(&self, reserved: &Reservation) {
        let mut a = self.lock();
        for t in &reserved.0 {
            match t {
                Allocation::Ip(ip) => a.release_ip(*ip),
                Allocation::Port(p) => a.release_port(*p),
            }
        }
    }

    /// Releases the node ports an update dropped.
    fn after_update(&self, old: &Value, new: &Value) {
        let ports = |v: &Value| -> Vec<u16> {
            v.pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_u64).map(|n| n as u16))
                .collect()
        };
        let keep = ports(new);
        let mut a = self.lock();
        for p in ports(old) {
            if !keep.contains(&p) {
                a.release_port(p);
            }
        }
    }

    fn after_delete(&self, _res: &ResourceDef, obj: &Value) {
        let mut a = self.lock();
        if let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|s| s.parse().ok()) {
            a.release_ip(ip);
        }
        for p in obj.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
            if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
                a.release_port(np as u16);
            }
        }
    }
}
