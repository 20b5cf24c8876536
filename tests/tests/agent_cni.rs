//! The agent's pod netns module and CNI runtime against the real kernel and Debian's reference
//! CNI plugins (bridge + host-local + portmap). The whole "node" lives in a test netns: the
//! runtime runs the plugins there (`plugin_netns`), host-local keeps its state in a temp dir, so
//! the host's network, /etc/cni and /var/lib/cni are never touched.

use std::path::Path;
use std::time::Duration;

use keelson_agent::cni::{Attachment, AttachmentKey, CniConfig, CniRuntime, PortMapping};
use keelson_agent::netns;
use keelson_tests::agent_infra::{ChildGuard, RunDir, ns_inode, nsenter, nsenter_output, reference_plugin_dir};
use keelson_tests::{Netns, require_root, unique_name, wait_for};

#[test]
fn pod_netns_create_enter_list_remove() {
    require_root();
    let run = RunDir::new().expect("run dir");
    let own_before = ns_inode(Path::new("/proc/thread-self/ns/net")).expect("own netns");

    let path = netns::create(run.path(), "pod-a").expect("create");
    assert_eq!(path, run.path().join("netns/pod-a"));
    assert!(netns::is_netns_mount(&path));
    let ino = ns_inode(&path).expect("netns inode");
    assert_ne!(ino, own_before, "a new namespace");
    assert_eq!(netns::create(run.path(), "pod-a").expect("create again"), path, "idempotent");
    assert_eq!(ns_inode(&path).expect("inode"), ino, "the same namespace is kept");
    assert_eq!(ns_inode(Path::new("/proc/thread-self/ns/net")).expect("own"), own_before, "caller not moved");

    // run_in: the closure sees the pod namespace; the caller's thread stays where it was.
    let inside =
        netns::run_in(&path, || ns_inode(Path::new("/proc/thread-self/ns/net")).expect("inside")).expect("run_in");
    assert_eq!(inside, ino);
    assert_eq!(ns_inode(Path::new("/proc/thread-self/ns/net")).expect("own"), own_before);

    // spawn_in: loopback is up and it is the only interface.
    let out = netns::spawn_in(
        &path,
        std::process::Command::new("ip").args(["-o", "link", "show"]).stdout(std::process::Stdio::piped()),
    )
    .expect("spawn ip")
    .wait_with_output()
    .expect("ip output");
    let links = String::from_utf8_lossy(&out.stdout);
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "loopback up: {links}");

    let other = netns::create(run.path(), "pod-b").expect("create b");
    assert_eq!(netns::list(run.path()).expect("list"), vec![path.clone(), other.clone()]);
    assert!(netns::create(run.path(), "../escape").is_err());

    netns::remove(&path).expect("remove");
    assert!(!path.exists());
    netns::remove(&path).expect("remove again is ok");
    assert!(netns::run_in(&path, || ()).is_err(), "gone namespace cannot be entered");
    assert_eq!(netns::list(run.path()).expect("list"), vec![other]);
}

/// A "node": a netns with forwarding on, a client netns on a veth (192.168.231.0/24), a conf dir
/// with bridge + host-local + portmap, and the CNI runtime running plugins in the node netns.
struct Node {
    node: Netns,
    client: Netns,
    tmp: tempfile::TempDir,
    network: String,
    bridge: String,
    rt: CniRuntime,
}

const SUBNET: &str = "10.244.7";
const NODE_IP: &str = "192.168.231.1";

impl Node {
    fn new() -> Self {
        let node = Netns::new("nd").expect("node netns");
        let client = Netns::new("cl").expect("client netns");
        node.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]).expect("forwarding");
        let (vn, vc) = (unique_name("vn"), unique_name("vc"));
        node.exec_ok(&["ip", "link", "add", &vn, "type", "veth", "peer", "name", &vc, "netns", client.name()])
            .expect("veth");
        node.exec_ok(&["ip", "addr", "add", &format!("{NODE_IP}/24"), "dev", &vn]).expect("node ip");
        node.exec_ok(&["ip", "link", "set", &vn, "up"]).expect("up");
        client.exec_ok(&["ip", "addr", "add", "192.168.231.2/24", "dev", &vc]).expect("client ip");
        client.exec_ok(&["ip", "link", "set", &vc, "up"]).expect("up");

        let tmp = tempfile::Builder::new().prefix("kt-cni-").tempdir().expect("tempdir");
        let network = unique_name("net");
        let bridge = unique_name("br");
        let conf_dir = tmp.path().join("net.d");
        std::fs::create_dir(&conf_dir).expect("conf dir");
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [
                {
                    "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true, "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": tmp.path().join("ipam"),
                        "ranges": [[{"subnet": format!("{SUBNET}.0/24")}]],
                        "routes": [{"dst": "0.0.0.0/0"}]
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
            ]
        });
        std::fs::write(conf_dir.join("10-test.conflist"), conflist.to_string()).expect("conflist");
        let rt = CniRuntime::new(CniConfig {
            conf_dir,
            bin_dirs: vec![reference_plugin_dir()],
            cache_dir: tmp.path().join("cache"),
            plugin_netns: Some(node.path()),
            exec_timeout: Duration::from_secs(30),
        });
        Node { node, client, tmp, network, bridge, rt }
    }

    fn ipam_files(&self) -> Vec<String> {
        let dir = self.tmp.path().join("ipam").join(&self.network);
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .map(|it| it.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.retain(|n| n.parse::<std::net::IpAddr>().is_ok());
        v.sort();
        v
    }

    fn attachment(&self, cid: &str, ns: &Path, ports: Vec<PortMapping>) -> Attachment {
        Attachment {
            container_id: cid.to_string(),
            netns: Some(ns.to_path_buf()),
            ifname: "eth0".into(),
            pod_name: format!("pod-{cid}"),
            pod_namespace: "default".into(),
            pod_uid: format!("uid-{cid}"),
            port_mappings: ports,
            capability_args: Default::default(),
        }
    }
}

/// An HTTP GET with `busybox nc` inside `ns` (busybox's wget crashes in this build); returns the
/// response body when the status is 200.
fn http_get(ns: &Path, host: &str, port: u16) -> Option<String> {
    use std::io::Write;
    let mut child = nsenter(ns, &["busybox", "nc", "-w", "2", host, &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_plugins_add_check_del_gc_and_portmap() {
    require_root();
    let node = Node::new();
    let run = RunDir::new().expect("run dir");
    let ns_a = netns::create(run.path(), "pa").expect("pod a netns");
    let ns_b = netns::create(run.path(), "pb").expect("pod b netns");
    let cid_a = unique_name("ca");
    let cid_b = unique_name("cb");
    let web = PortMapping { host_port: 18080, container_port: 8080, protocol: "TCP".into(), host_ip: None };
    let att_a = node.attachment(&cid_a, &ns_a, vec![web]);
    let att_b = node.attachment(&cid_b, &ns_b, vec![]);

    let res_a = node.rt.add(&att_a).await.expect("ADD a");
    let res_b = node.rt.add(&att_b).await.expect("ADD b");
    let ip_a = res_a.pod_ips().first().copied().expect("pod a ip").to_string();
    let ip_b = res_b.pod_ips().first().copied().expect("pod b ip").to_string();
    assert!(ip_a.starts_with(SUBNET) && ip_b.starts_with(SUBNET) && ip_a != ip_b, "{ip_a} {ip_b}");
    assert_eq!(node.ipam_files(), {
        let mut v = vec![ip_a.clone(), ip_b.clone()];
        v.sort();
        v
    });
    let (ok, addr) = nsenter_output(&ns_a, &["ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(ok && addr.contains(&format!("{ip_a}/24")), "eth0 in pod a: {addr}");
    // The plugins ran in the node netns: its bridge exists there, not on the host.
    node.node.exec_ok(&["ip", "link", "show", &node.bridge]).expect("bridge in node netns");
    assert!(
        !std::process::Command::new("ip").args(["link", "show", &node.bridge]).output().expect("ip").status.success(),
        "bridge must not exist in the host netns"
    );

    // Pod to pod: ping and TCP (busybox httpd in pod a, an HTTP GET from pod b).
    let (ok, out) = nsenter_output(&ns_b, &["busybox", "ping", "-c", "1", "-W", "2", &ip_a]);
    assert!(ok, "ping a from b: {out}");
    let www = node.tmp.path().join("www");
    std::fs::create_dir(&www).expect("www");
    std::fs::write(www.join("index.html"), "hello-from-a\n").expect("index");
    let www_s = www.display().to_string();
    let server = ChildGuard::spawn(&mut nsenter(&ns_a, &["busybox", "httpd", "-f", "-p", "8080", "-h", &www_s]))
        .expect("httpd in pod a");
    let got = wait_for(Duration::from_secs(5), || http_get(&ns_b, &ip_a, 8080));
    assert_eq!(got.as_deref(), Some("hello-from-a"), "TCP from pod b to pod a");

    // CHECK of pod b runs the whole chain (portmap has no mappings to verify for it). Pod a's
    // CHECK runs into portmap 1.1.1's known bug (containernetworking/plugins#819: CHECK looks
    // for an ip6tables chain that an IPv4-only ADD never creates); anything else is a failure.
    node.rt.check(&att_b).await.expect("CHECK b");
    match node.rt.check(&att_a).await {
        Ok(()) => {}
        Err(keelson_agent::cni::CniError::Plugin { plugin, command: "CHECK", error })
            if plugin == "portmap" && error.msg.contains("ipv6") => {}
        Err(e) => panic!("CHECK a: {e}"),
    }

    // hostPort: from another netns to the node IP, and from the node itself.
    let got = wait_for(Duration::from_secs(5), || http_get(&node.client.path(), NODE_IP, 18080));
    assert_eq!(got.as_deref(), Some("hello-from-a"), "hostPort from the client netns");
    let got = wait_for(Duration::from_secs(5), || http_get(&node.node.path(), NODE_IP, 18080));
    assert_eq!(got.as_deref(), Some("hello-from-a"), "hostPort from the node netns");

    // GC: an attachment the caller does not list as valid is deleted and its IP released.
    let ns_c = netns::create(run.path(), "pc").expect("pod c netns");
    let cid_c = unique_name("cc");
    let res_c = node.rt.add(&node.attachment(&cid_c, &ns_c, vec![])).await.expect("ADD c");
    let ip_c = res_c.pod_ips()[0].to_string();
    assert!(node.ipam_files().contains(&ip_c));
    let report = node.rt.gc_report(&[att_a.key(), att_b.key()]).await.expect("GC");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.deleted, vec![AttachmentKey { container_id: cid_c.clone(), ifname: "eth0".into() }]);
    assert!(!node.ipam_files().contains(&ip_c), "GC released pod c's IP");
    let (_, links_c) = nsenter_output(&ns_c, &["ip", "-o", "link", "show"]);
    assert!(!links_c.contains("eth0"), "pod c's interface removed: {links_c}");
    assert_eq!(node.rt.cached_attachments().expect("cache").len(), 2);

    // DEL a twice (idempotent).
    drop(server);
    node.rt.del(&att_a).await.expect("DEL a");
    node.rt.del(&att_a).await.expect("DEL a again");
    let (_, links_a) = nsenter_output(&ns_a, &["ip", "-o", "link", "show"]);
    assert!(!links_a.contains("eth0"), "pod a's interface removed: {links_a}");
    assert!(http_get(&node.client.path(), NODE_IP, 18080).is_none(), "hostPort gone with the pod");

    // CHECK notices a broken attachment: pod b lost its address.
    let (ok, out) = nsenter_output(&ns_b, &["ip", "addr", "flush", "dev", "eth0"]);
    assert!(ok, "flush: {out}");
    assert!(node.rt.check(&att_b).await.is_err(), "CHECK must fail once eth0 has no address");

    // DEL b after its netns is gone.
    netns::remove(&ns_b).expect("remove pod b netns");
    node.rt.del(&att_b).await.expect("DEL b without netns");
    node.rt.del(&att_b).await.expect("DEL b again");

    assert!(node.ipam_files().is_empty(), "host-local IP files left: {:?}", node.ipam_files());
    assert!(node.rt.cached_attachments().expect("cache").is_empty());
    let veths = wait_for(Duration::from_secs(5), || {
        let out = node.node.exec_ok(&["ip", "-o", "link", "show", "master", &node.bridge]).unwrap_or_default();
        out.trim().is_empty().then_some(())
    });
    assert!(veths.is_some(), "pod veths left on the node bridge");
}

#[tokio::test]
async fn del_without_any_config_or_cache_reports_no_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(tmp.path().join("net.d")).expect("conf dir");
    let rt = CniRuntime::new(CniConfig {
        conf_dir: tmp.path().join("net.d"),
        bin_dirs: vec![reference_plugin_dir()],
        cache_dir: tmp.path().join("cache"),
        plugin_netns: None,
        exec_timeout: Duration::from_secs(5),
    });
    let a = Attachment { container_id: "c".into(), netns: None, ifname: "eth0".into(), ..Default::default() };
    assert!(matches!(rt.del(&a).await, Err(keelson_agent::cni::CniError::NoConfig { .. })));
}
