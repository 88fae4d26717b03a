"""The chart through Helm's own engine (helm-python-sdk): lint, render for
several values files, validate every object against the Kubernetes schemas
(kubernetes-validate) and every alert and dashboard query as PromQL
(promql-parser), check the facts that matter, and have the real regcache
binary accept the configuration the chart renders.

    PYTHONPATH=/opt/regcache-test-deps/chart-tools python3 helm/tests/test_chart.py

REGCACHE_BIN names the binary (default: debug/regcache in CARGO_TARGET_DIR,
else in target/).
"""

import json
import os
import subprocess
import tempfile
import unittest

import helm_python
import kubernetes_validate
import promql_parser
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "helm", "regcache")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.environ.get("REGCACHE_BIN", os.path.join(TARGET, "debug", "regcache"))
KUBE_VERSION = "1.30"

S3 = {
    "storage": {
        "kind": "s3",
        "s3": {
            "bucket": "regcache-cache",
            "endpoint": "http://minio.storage:9000",
            "forcePathStyle": True,
            "existingSecret": "regcache-s3",
        },
    }
}

FIVE = {
    "replicaCount": 5,
    "networkPolicy": {"enabled": True, "clientFrom": [{"namespaceSelector": {}}]},
    "persistence": {"size": "200Gi", "storageClassName": "fast"},
    "upstreams": [
        {
            "upstream": "quay.io",
            "remoteURL": "https://quay.io",
            "tagTTL": "5m",
            "proxy": {"httpsProxy": "http://proxy.internal:3128"},
        },
        {"upstream": "registry.corp:5000", "remoteURL": "http://registry.corp:5000", "secretReferenceName": "corp-robot"},
    ],
    "builtinUpstreams": False,
    "defaultUpstream": "quay.io",
    "nodeConfig": {"enabled": True, "mirror": "http://10.0.0.10:30500", "upstreams": ["quay.io", "registry.corp:5000"]},
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}},
}


def render(values, name="regcache", namespace="cache"):
    """The rendered objects, by kind (a list each)."""
    chart = helm_python.Chart.load(CHART)
    out = chart.render(values, name=name, namespace=namespace)
    objects = {}
    for path, text in out.items():
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.setdefault(doc["kind"], []).append(doc)
    return objects


def one(objects, kind, name=None):
    found = [o for o in objects[kind] if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} objects"
    return found[0]


def config_of(objects, name="regcache"):
    return one(objects, "ConfigMap", name)["data"]["regcache.toml"]


def container(objects):
    return one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]


class Chart(unittest.TestCase):
    def test_lints_clean(self):
        for values in ({}, S3, FIVE):
            result = helm_python.lint(CHART, values, strict=True)
            self.assertEqual(result["errors"], [], result)

    def test_every_object_is_valid_kubernetes(self):
        for values in ({}, S3, FIVE):
            for kind, objects in render(values).items():
                for obj in objects:
                    if kind in ("ServiceMonitor", "PrometheusRule"):
                        # A CRD (prometheus-operator): no schema here.
                        self.assertEqual(obj["apiVersion"], "monitoring.coreos.com/v1")
                        continue
                    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)

    def test_the_binary_accepts_every_rendered_config(self):
        for values in ({}, S3, FIVE):
            with tempfile.TemporaryDirectory() as mounted:
                # What the pod mounts under /etc/regcache: the config, and
                # each upstream Secret's keys as files.
                for n, upstream in enumerate(values.get("upstreams", [])):
                    if "secretReferenceName" in upstream:
                        os.makedirs(f"{mounted}/upstreams/{n}")
                        for key in ("username", "password"):
                            with open(f"{mounted}/upstreams/{n}/{key}", "w") as f:
                                f.write(f"robot-{key}\n")
                config = os.path.join(mounted, "regcache.toml")
                with open(config, "w") as f:
                    f.write(config_of(render(values)).replace("/etc/regcache/", mounted + "/"))
                check = subprocess.run(
                    [BIN, "config", "check", config, "--node-id", "1"], capture_output=True, text=True
                )
                self.assertEqual(check.returncode, 0, check.stderr)
                self.assertNotIn("robot-password", check.stdout)

    def test_peers_are_the_members_stable_names(self):
        for replicas in (1, 3, 5):
            objects = render({"replicaCount": replicas}, name="edge", namespace="mirrors")
            sts = one(objects, "StatefulSet")
            self.assertEqual(sts["spec"]["replicas"], replicas)
            self.assertEqual(sts["spec"]["serviceName"], "edge-regcache-peers")
            self.assertEqual(sts["spec"]["podManagementPolicy"], "Parallel")
            peers = [
                f'"{i + 1}=edge-regcache-{i}.edge-regcache-peers.mirrors.svc.cluster.local:5001"'
                for i in range(replicas)
            ]
            self.assertIn(f"peers = [{','.join(peers)}]", config_of(objects, "edge-regcache"))
            self.assertIn("--node-id-from-hostname", container(objects)["args"])
            headless = one(objects, "Service", "edge-regcache-peers")
            self.assertEqual(headless["spec"]["clusterIP"], "None")
            self.assertTrue(headless["spec"]["publishNotReadyAddresses"])

    def test_s3_credentials_come_from_the_secret_and_are_never_inlined(self):
        objects = render(S3)
        self.assertNotIn("Secret", objects)
        env = {e["name"]: e for e in container(objects)["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            self.assertEqual(env[key]["valueFrom"]["secretKeyRef"], {"name": "regcache-s3", "key": key})
        config = config_of(objects)
        self.assertIn('bucket = "regcache-cache"', config)
        self.assertNotIn("AWS_", config)

    def test_upstream_credentials_are_mounted_from_their_secret_and_never_inlined(self):
        objects = render(FIVE)
        self.assertNotIn("Secret", objects)
        pod = one(objects, "StatefulSet")["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "upstream-1")
        self.assertEqual(volume["secret"]["secretName"], "corp-robot")
        self.assertEqual({i["key"] for i in volume["secret"]["items"]}, {"username", "password"})
        mount = next(m for m in container(objects)["volumeMounts"] if m["name"] == "upstream-1")
        self.assertEqual(mount["mountPath"], "/etc/regcache/upstreams/1")
        self.assertTrue(mount["readOnly"])
        config = config_of(objects)
        self.assertIn('username_file = "/etc/regcache/upstreams/1/username"', config)
        self.assertIn('password_file = "/etc/regcache/upstreams/1/password"', config)

    def test_the_node_daemonset_writes_containerd_hosts_files(self):
        daemonset = one(render(FIVE), "DaemonSet")
        pod = daemonset["spec"]["template"]["spec"]
        init = pod["initContainers"][0]
        self.assertEqual(pod["volumes"][0]["hostPath"]["path"], "/etc/containerd/certs.d")
        with tempfile.TemporaryDirectory() as node:
            # Run the rendered command as the kubelet would, the hostPath at `node`.
            args = [a.replace("/host/certs.d", node) for a in init["args"]]
            run = subprocess.run([BIN, *args], capture_output=True, text=True)
            self.assertEqual(run.returncode, 0, run.stderr)
            for registry in ("quay.io", "registry.corp:5000"):
                with open(os.path.join(node, registry, "hosts.toml")) as f:
                    self.assertIn('[host."http://10.0.0.10:30500"]', f.read())
        # The members' Services and disruption budget never select its pods.
        node_labels = daemonset["spec"]["template"]["metadata"]["labels"]
        objects = render(FIVE)
        for selector in (
            *(s["spec"]["selector"] for s in objects["Service"]),
            one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        ):
            self.assertFalse(selector.items() <= node_labels.items(), selector)
        with self.assertRaises(helm_python.HelmError) as caught:
            render({"nodeConfig": {"enabled": True}})
        self.assertIn("nodeConfig.mirror", str(caught.exception))

    def test_alerts_link_runbooks_and_the_dashboard_is_shipped(self):
        objects = render(FIVE)
        rules = one(objects, "PrometheusRule")["spec"]["groups"][0]["rules"]
        with open(os.path.join(ROOT, "docs", "operations.md")) as f:
            headings = {line[4:].strip().lower() for line in f if line.startswith("### ")}
        for rule in rules:
            anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
            self.assertIn(anchor, headings, f"{rule['alert']}: no runbook heading in docs/operations.md")
            self.assertIn(rule["labels"]["severity"], ("critical", "warning", "info"))
        for rule in rules:
            promql_parser.parse(rule["expr"])
        dashboard = one(objects, "ConfigMap", "regcache-dashboard")
        self.assertEqual(dashboard["metadata"]["labels"]["grafana_dashboard"], "1")
        panels = json.loads(dashboard["data"]["regcache.json"])["panels"]
        self.assertIn("Hit ratio", [p["title"] for p in panels[:3]], "the dashboard leads with what the cache saves")
        for panel in panels:
            for target in panel.get("targets", []):
                # Grafana fills in $__rate_interval; any range parses alike.
                promql_parser.parse(target["expr"].replace("$__rate_interval", "5m"))

    def test_probes_disruption_budget_and_security_context(self):
        objects = render(FIVE)
        c = container(objects)
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")
        startup = c["startupProbe"]
        self.assertGreaterEqual(startup["periodSeconds"] * startup["failureThreshold"], 300)
        pdb = one(objects, "PodDisruptionBudget")
        # Losing maxUnavailable members must leave a majority of 5.
        self.assertLessEqual(pdb["spec"]["maxUnavailable"], (5 - 1) // 2)
        sc = c["securityContext"]
        self.assertTrue(sc["readOnlyRootFilesystem"])
        self.assertFalse(sc["allowPrivilegeEscalation"])
        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
        pod = one(objects, "StatefulSet")["spec"]["template"]["spec"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertGreaterEqual(pod["terminationGracePeriodSeconds"], 35)
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        self.assertEqual(mounts, {"/var/lib/regcache", "/etc/regcache/regcache.toml", "/etc/regcache/upstreams/1"})

    def test_the_cluster_port_is_admitted_from_members_only(self):
        policy = one(render(FIVE), "NetworkPolicy")
        cluster_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "cluster")
        self.assertEqual(
            cluster_rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"], "regcache"
        )

    def test_disk_bytes_leave_headroom_on_the_volume(self):
        self.assertIn('disk_bytes = "43520MiB"', config_of(render({})))  # 85% of 50Gi
        self.assertIn('disk_bytes = "174080MiB"', config_of(render(FIVE)))  # of 200Gi
        set_explicitly = render({"cache": {"diskBytes": "10GiB"}})
        self.assertIn('disk_bytes = "10GiB"', config_of(set_explicitly))

    def test_resources_follow_the_memory_tier_unless_set(self):
        derived = container(render({"cache": {"memoryBytes": "1GiB"}}))["resources"]
        self.assertEqual(derived["requests"]["memory"], "1216Mi")
        self.assertEqual(derived["limits"]["memory"], "2432Mi")
        self.assertEqual(container(render({}))["resources"]["requests"]["memory"], "320Mi")
        given = {"requests": {"cpu": "1", "memory": "2Gi"}}
        self.assertEqual(container(render({"resources": given}))["resources"], given)

    def test_upstreams_render_as_the_binary_names_them(self):
        config = config_of(render(FIVE))
        self.assertIn(
            '[[upstream]]\nname = "quay.io"\nremote_url = "https://quay.io"\ntag_ttl = "5m"\n'
            'https_proxy = "http://proxy.internal:3128"',
            config,
        )
        self.assertIn('name = "registry.corp:5000"\nremote_url = "http://registry.corp:5000"', config)
        self.assertIn("builtin_upstreams = false", config)

    def test_a_wrong_value_fails_with_its_path(self):
        cases = [
            ({"replicaCount": "three"}, "/replicaCount"),
            ({"storage": {"kind": "nfs"}}, "/storage/kind"),
            ({"upstreams": [{"upstream": "quay.io", "remoteURL": "https://user:pw@quay.io"}]}, "/upstreams/0/remoteURL"),
            ({"cache": {"tagTTL": "soon"}}, "/cache/tagTTL"),
            ({"persistance": {"size": "1Gi"}}, "persistance"),
        ]
        for values, path in cases:
            with self.assertRaises(helm_python.HelmError) as caught:
                render(values)
            self.assertIn(path, str(caught.exception))

    def test_the_readme_lists_the_values_as_they_are(self):
        check = subprocess.run(
            ["python3", os.path.join(ROOT, "helm", "gen-readme.py"), "--check"], capture_output=True
        )
        self.assertEqual(check.returncode, 0, "helm/regcache/README.md is stale: run helm/gen-readme.py")

    def test_an_upstream_without_url_fails_when_nothing_is_built_in(self):
        values = {"builtinUpstreams": False, "defaultUpstream": "quay.io", "upstreams": [{"upstream": "quay.io"}]}
        with self.assertRaises(helm_python.HelmError) as caught:
            render(values)
        self.assertIn("upstreams[0].remoteURL: required", str(caught.exception))

    def test_tls_fails_with_a_message_until_regcache_serves_it(self):
        for tls in ({"secretName": "regcache-tls"}, {"certManager": {"issuerRef": {"name": "letsencrypt"}}}):
            with self.assertRaises(helm_python.HelmError) as caught:
                render({"tls": tls})
            self.assertIn("does not serve TLS", str(caught.exception))


if __name__ == "__main__":
    unittest.main(verbosity=2)
