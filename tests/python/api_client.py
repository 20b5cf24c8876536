"""Drives keelson-apiserver with the official Kubernetes Python client.

Usage: python3 api_client.py <kubeconfig> <namespace>
Exits non-zero (with a traceback) on the first failed expectation; prints "PYTHON-CLIENT-OK" at the end.
"""
import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def main():
    kubeconfig, ns = sys.argv[1], sys.argv[2]
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))

    # Watch in the background from the namespace's current state.
    events = []
    start_rv = core.list_namespaced_config_map(ns).metadata.resource_version
    done = threading.Event()

    def watcher():
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_config_map, ns, resource_version=start_rv, timeout_seconds=20):
            # The root-CA publisher adds kube-root-ca.crt to every new namespace, as upstream's
            # does; this flow is about the test's own ConfigMap.
            if ev["object"].metadata.name == "kube-root-ca.crt":
                continue
            events.append((ev["type"], ev["object"].metadata.name))
            if ev["type"] == "DELETED":
                w.stop()
        done.set()

    t = threading.Thread(target=watcher, daemon=True)
    t.start()

    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-cm", labels={"app": "py"}), data={"k": "v1"})
    created = core.create_namespaced_config_map(ns, cm)
    assert created.metadata.uid, "uid must be set"
    assert int(created.metadata.resource_version) > int(start_rv)

    try:
        core.create_namespaced_config_map(ns, cm)
        raise AssertionError("duplicate create must fail")
    except ApiException as e:
        assert e.status == 409, e.status

    listed = core.list_namespaced_config_map(ns, label_selector="app=py")
    assert [i.metadata.name for i in listed.items] == ["py-cm"], listed.items

    patched = core.patch_namespaced_config_map("py-cm", ns, {"data": {"k": "v2"}})
    assert patched.data["k"] == "v2", patched.data

    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="py-dep"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={"app": "py"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "py"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox:1")]),
            ),
        ),
    )
    apps.create_namespaced_deployment(ns, dep)
    # Strategic merge patch (the client's default for dict bodies) keyed by container name.
    p = {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}}
    d = apps.patch_namespaced_deployment("py-dep", ns, p)
    assert d.spec.template.spec.containers[0].image == "busybox:2"
    assert d.metadata.generation == 2, d.metadata.generation
    scale = apps.patch_namespaced_deployment_scale("py-dep", ns, {"spec": {"replicas": 3}})
    assert scale.spec.replicas == 3

    try:
        bad = client.V1Deployment(
            metadata=client.V1ObjectMeta(name="bad"),
            spec=client.V1DeploymentSpec(
                selector=client.V1LabelSelector(match_labels={"app": "x"}),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels={"app": "y"}),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="i")]),
                ),
            ),
        )
        apps.create_namespaced_deployment(ns, bad)
        raise AssertionError("selector mismatch must be rejected")
    except ApiException as e:
        assert e.status == 422, e.status
        assert "spec.template.metadata.labels" in e.body, e.body

    core.delete_namespaced_config_map("py-cm", ns)
    assert done.wait(15), "watch did not see the delete"
    assert events == [("ADDED", "py-cm"), ("MODIFIED", "py-cm"), ("DELETED", "py-cm")], events

    apps.delete_namespaced_deployment("py-dep", ns)
    print("PYTHON-CLIENT-OK")


if __name__ == "__main__":
    main()
