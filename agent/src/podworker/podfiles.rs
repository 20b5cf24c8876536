//! The files the agent manages inside every pod: `/etc/hosts`, `/etc/resolv.conf`,
//! `/etc/hostname` (bind-mounted read-only from `<run dir>/pods/<uid>/`). Rendering is pure and
//! unit-tested; [`write`] is the only effect.

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use std::path::Path;

/// The rendered files of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFiles {
    pub hosts: String,
    pub resolv_conf: String,
    pub hostname: String,
}

/// Renders the pod's files for pod IP `ip` (may be empty) and the node's resolv.conf text.
pub fn render(pod: &Pod, ip: &str, node_resolv_conf: &str) -> PodFiles {
    let spec = pod.spec.clone().unwrap_or_default();
    let hostname = spec.hostname.clone().or_else(|| pod.metadata.name.clone()).unwrap_or_default();
    let hostname: String = hostname.chars().take(63).collect();
    let fqdn = spec.subdomain.as_ref().map(|sd| {
        format!("{hostname}.{sd}.{}.svc.cluster.local", pod.metadata.namespace.as_deref().unwrap_or("default"))
    });
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file (keelson).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if !ip.is_empty() {
        match &fqdn {
            Some(f) => hosts.push_str(&format!("{ip}\t{f}\t{hostname}\n")),
            None => hosts.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    for ha in spec.host_aliases.iter().flatten() {
        if let Some(hn) = &ha.hostnames {
            hosts.push_str(&format!("\n# Entries added by HostAliases.\n{}\t{}\n", ha.ip, hn.join("\t")));
        }
    }
    PodFiles { hosts, resolv_conf: resolv_conf(&spec, node_resolv_conf), hostname: format!("{hostname}\n") }
}

/// Writes `files` into `dir` as `hosts`, `resolv.conf` and `hostname`.
pub fn write(dir: &Path, files: &PodFiles) -> std::io::Result<()> {
    for (name, content) in [("hosts", &files.hosts), ("resolv.conf", &files.resolv_conf), ("hostname", &files.hostname)]
    {
        std::fs::write(dir.join(name), content)?;
    }
    Ok(())
}

/// resolv.conf for a pod: dnsPolicy None → dnsConfig only; Default (and, until the agent runs
/// cluster DNS, ClusterFirst — kubelet's own fallback when no cluster DNS is configured) → the
/// node's resolv.conf merged with dnsConfig.
pub fn resolv_conf(spec: &PodSpec, node: &str) -> String {
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let (mut ns, mut search, mut opts): (Vec<String>, Vec<String>, Vec<String>) = (vec![], vec![], vec![]);
    if policy != "None" {
        for l in node.lines() {
            let mut f = l.split_whitespace();
            match f.next() {
                Some("nameserver") => ns.extend(f.map(String::from)),
                Some("search") => search = f.map(String::from).collect(),
                Some("options") => opts.extend(f.map(String::from)),
                _ => {}
            }
        }
    }
    if let Some(dc) = &spec.dns_config {
        for n in dc.nameservers.iter().flatten() {
            if !ns.contains(n) {
                ns.push(n.clone());
            }
        }
        for s in dc.searches.iter().flatten() {
            if !search.contains(s) {
                search.push(s.clone());
            }
        }
        for o in dc.options.iter().flatten() {
            let v = match &o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            opts.retain(|x| x.split(':').next() != v.split(':').next());
            opts.push(v);
        }
    }
    ns.truncate(3);
    search.truncate(32);
    let mut out = String::new();
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    for n in ns {
        out.push_str(&format!("nameserver {n}\n"));
    }
    if !opts.is_empty() {
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn resolv_conf_policies() {
        let node = "nameserver 1.1.1.1\nsearch example.com\noptions ndots:1\n";
        let mut spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [],
            "dnsPolicy": "Default",
            "dnsConfig": {"nameservers": ["9.9.9.9"], "searches": ["a.b"], "options": [{"name": "ndots", "value": "3"}]}
        }))
        .unwrap();
        assert_eq!(
            resolv_conf(&spec, node),
            "search example.com a.b\nnameserver 1.1.1.1\nnameserver 9.9.9.9\noptions ndots:3\n"
        );
        spec.dns_policy = Some("None".into());
        assert_eq!(resolv_conf(&spec, node), "search a.b\nnameserver 9.9.9.9\noptions ndots:3\n");
    }

    #[test]
    fn hosts_name_the_pod_and_its_aliases() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"containers": [], "hostname": "h", "subdomain": "sd",
                     "hostAliases": [{"ip": "1.2.3.4", "hostnames": ["a", "b"]}]}
        }))
        .unwrap();
        let f = render(&pod, "10.0.0.5", "");
        assert!(f.hosts.contains("10.0.0.5\th.sd.ns.svc.cluster.local\th\n"), "{}", f.hosts);
        assert!(f.hosts.ends_with("# Entries added by HostAliases.\n1.2.3.4\ta\tb\n"), "{}", f.hosts);
        assert_eq!(f.hostname, "h\n");
        assert!(!render(&pod, "", "").hosts.contains("\th\n"));
    }
}
