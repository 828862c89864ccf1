"""Checks the Kubernetes manifests offline (run by scripts/test.sh):

1. `kubectl kustomize` renders them;
2. `kubernetes-validate --strict` accepts every resource, and rejects a copy
   with an unknown field slipped in (so the check can fail);
3. every pod runs non-root under the runtime's seccomp profile, without
   privilege escalation, capabilities or a service-account token, within
   ephemeral-storage limits that hold its disk volumes (a read-only root
   needs a volume at /tmp); NetworkPolicies select every pod and admit to
   it, from outside the cluster's pods, nothing but the head's 8265, and
   that only from the dashboard's users (pods labelled
   rayforge.io/dashboard-client=true), never from any source, while the
   cluster's own pods reach each other on every TCP port. Copies with one
   of these broken must be caught (so the check can fail);
4. the TLS component (tls/) renders and validates over the manifests, keeps
   the pods as secure, and gives both daemons the Secret's certificate, key
   and authority, the name clients check, and HTTPS probes;
5. the head's and the worker's container arguments start real daemons: each
   is run here with `rayforge` (the pod IP and the token filled in, ports and
   paths moved to free ones on loopback, $TMPDIR a directory of its own), the
   worker joins the head, both answer their readiness and liveness probes on
   the probes' ports, and neither wrote in $HOME or its working directory
   (the pods' root filesystem is read-only).

  python3 core/cli/kubernetes/check.py --rayforge target/debug/rayforge \\
      --validate target/k8s-venv/bin/kubernetes-validate
"""
import argparse
import base64
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

p = argparse.ArgumentParser()
p.add_argument("--rayforge", default="target/debug/rayforge")
p.add_argument("--validate", default="kubernetes-validate")
p.add_argument("--kubectl", default="kubectl")
a = p.parse_args()
here = os.path.dirname(os.path.abspath(__file__))


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


# The manifests must not carry a token of their own (a placeholder shipped in
# git is a token every cluster shares): the Secret comes from token.env,
# which a user writes and git ignores. Rendered here from a copy with one.
source = open(os.path.join(here, "kustomization.yaml")).read()
for placeholder in ["replace-me", "changeme", "token="]:
    if placeholder in "\n".join(l for l in source.splitlines() if not l.lstrip().startswith("#")):
        fail(f"kustomization.yaml carries a token ({placeholder!r}): take it from token.env")
copy_dir = tempfile.mkdtemp(prefix="rayforge-k8s-src-")
for f in os.listdir(here):
    if f.endswith((".yaml", ".yml")):
        with open(os.path.join(here, f)) as src, open(os.path.join(copy_dir, f), "w") as dst:
            dst.write(src.read())
rendered_token = os.urandom(16).hex()
with open(os.path.join(copy_dir, "token.env"), "w") as f:
    f.write(f"token={rendered_token}\n")
rendered = subprocess.run([a.kubectl, "kustomize", copy_dir], capture_output=True, text=True)
if rendered.returncode != 0:
    fail(f"kubectl kustomize: {rendered.stderr}")
docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
print("rendered:", ", ".join(kinds))
for want in ["Namespace/rayforge", "Service/rayforge-head", "StatefulSet/rayforge-head", "Deployment/rayforge-worker"]:
    if want not in kinds:
        fail(f"{want} is missing from the rendered manifests")
if not any(k.startswith("Secret/rayforge-token") for k in kinds):
    fail("the token Secret is missing")
secret = next(d for d in docs if d["kind"] == "Secret")
if base64.b64decode(secret["data"]["token"]).decode() != rendered_token:
    fail("the token Secret does not hold token.env's token")

tmp = tempfile.mkdtemp(prefix="rayforge-k8s-")


def validate(documents, name):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        yaml.safe_dump_all(documents, f)
    return subprocess.run([a.validate, "--strict", "--quiet", path], capture_output=True, text=True)


r = validate(docs, "rendered.yaml")
if r.returncode != 0:
    fail(f"kubernetes-validate --strict refused the manifests:\n{r.stdout}{r.stderr}")
bad = copy.deepcopy(docs)
for d in bad:
    if d["kind"] == "StatefulSet":
        d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
if validate(bad, "bad.yaml").returncode == 0:
    fail("kubernetes-validate --strict accepted an unknown field: the check cannot fail")
print("kubernetes-validate --strict: every resource passes; a misspelt field is caught")

# Pod security and network policy.
CLUSTER_NAMES = {"rayforge-head", "rayforge-worker"}
NAME = "app.kubernetes.io/name"
# Ports pods other than the cluster's may reach, by the pod's name label:
# the head's dashboard and jobs API (behind the token), and only from its
# users, the pods with this label. Everything else is for the cluster's pods.
OPEN_PORTS = {"rayforge-head": {8265}, "rayforge-worker": set()}
DASHBOARD_CLIENT = "rayforge.io/dashboard-client"


def pod_templates(documents):
    """(kind/name, pod template) of every workload."""
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"])
            for d in documents if d["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "Job")]


def quantity(q):
    """Bytes in a Kubernetes quantity such as 9Gi or 500M."""
    q = str(q)
    for suffix, mult in [("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("Ti", 2**40),
                         ("k", 10**3), ("M", 10**6), ("G", 10**9), ("T", 10**12)]:
        if q.endswith(suffix):
            return float(q[:-len(suffix)]) * mult
    return float(q)


def pod_security_problems(documents):
    problems = []
    templates = pod_templates(documents)
    if not templates:
        problems.append("no pod templates")
    for what, tmpl in templates:
        spec = tmpl["spec"]
        pod_sc = spec.get("securityContext") or {}
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{what}: automountServiceAccountToken is not false (its jobs would get an API token)")
        containers = spec.get("containers", []) + spec.get("initContainers", [])
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        limits = 0.0
        for c in containers:
            where = f"{what} container {c['name']}"
            sc = c.get("securityContext") or {}
            if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                problems.append(f"{where}: runs as uid 0")
            seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile is {seccomp.get('type')}, not RuntimeDefault")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                problems.append(f"{where}: capabilities do not drop ALL")
            if caps.get("add"):
                problems.append(f"{where}: adds capabilities {caps['add']}")
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                if "ephemeral-storage" not in (res.get(kind) or {}):
                    problems.append(f"{where}: no ephemeral-storage {kind}")
            limits += quantity((res.get("limits") or {}).get("ephemeral-storage", 0))
            if sc.get("readOnlyRootFilesystem"):
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                if "/tmp" not in mounts:
                    problems.append(f"{where}: a read-only root without a volume at /tmp, where the daemons write")
        # The pod's disk volumes count against the sum of its containers'
        # ephemeral-storage limits: volumes that may outgrow it get the pod evicted.
        on_disk = [v for v in volumes.values() if "emptyDir" in v and (v["emptyDir"] or {}).get("medium") != "Memory"]
        for v in on_disk:
            if "sizeLimit" not in (v["emptyDir"] or {}):
                problems.append(f"{what}: emptyDir {v['name']} has no sizeLimit")
        total = sum(quantity((v["emptyDir"] or {}).get("sizeLimit", 0)) for v in on_disk)
        if total >= limits > 0:
            problems.append(f"{what}: its emptyDir volumes ({total:.0f} bytes) leave no room under its "
                            f"ephemeral-storage limits ({limits:.0f} bytes) for the containers' logs")
    return problems


def selects(selector, labels):
    """Whether a label selector selects these labels (an empty one: all)."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        k, op, vals = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and labels.get(k) in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def cluster_only(peer):
    """Whether a `from` peer admits only the cluster's own pods: a
    podSelector in the policy's namespace that pins the name label to ours."""
    if set(peer) != {"podSelector"}:
        return False
    sel = peer["podSelector"] or {}
    pinned = [{v} for k, v in (sel.get("matchLabels") or {}).items() if k == NAME]
    pinned += [set(e.get("values") or []) for e in sel.get("matchExpressions") or []
               if e["key"] == NAME and e["operator"] == "In"]
    return any(p <= CLUSTER_NAMES for p in pinned)


def dashboard_client_only(peer):
    """Whether a `from` peer admits only pods labelled as the dashboard's
    users (in this namespace or, with a namespaceSelector, in any)."""
    if "ipBlock" in peer or not peer.get("podSelector"):
        return False
    return (peer["podSelector"].get("matchLabels") or {}).get(DASHBOARD_CLIENT) == "true"


def port_numbers(rule_ports, named):
    """The TCP ports a rule admits: None for all of them."""
    if not rule_ports:
        return None
    out = set()
    for rp in rule_ports:
        if rp.get("protocol", "TCP") != "TCP":
            continue
        if "port" not in rp:
            return None
        port = named.get(rp["port"], rp["port"])
        if not isinstance(port, int):
            continue  # a name this pod does not serve matches nothing
        out |= set(range(port, rp.get("endPort", port) + 1))
    return out


def network_policy_problems(documents):
    problems = []
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    if not policies:
        return ["no NetworkPolicy: every pod admits anyone"]
    pods = {tmpl["metadata"]["labels"].get(NAME): tmpl for _, tmpl in pod_templates(documents)}
    for name in sorted(CLUSTER_NAMES):
        if name not in pods:
            problems.append(f"no pod template labelled {NAME}={name}")
            continue
        tmpl = pods[name]
        labels = tmpl["metadata"]["labels"]
        named = {p["name"]: p["containerPort"] for c in tmpl["spec"]["containers"] for p in c.get("ports", []) if "name" in p}
        mine = [pol for pol in policies
                if selects(pol["spec"].get("podSelector"), labels)
                and "Ingress" in pol["spec"].get("policyTypes", ["Ingress"])]
        if not mine:
            problems.append(f"no NetworkPolicy selects the {name} pods: they admit anyone")
            continue
        reached_by = set()
        for pol in mine:
            for rule in pol["spec"].get("ingress") or []:
                peers = rule.get("from") or []
                ports = port_numbers(rule.get("ports"), named)
                if peers and all(cluster_only(p) for p in peers):
                    if ports is None:
                        for p in peers:
                            reached_by |= {n for n in CLUSTER_NAMES if selects(p["podSelector"], {**labels, NAME: n})}
                    continue
                open_ports = OPEN_PORTS[name]
                if ports is None or not ports <= open_ports:
                    shown = "every port" if ports is None else sorted(ports - open_ports)
                    problems.append(f"NetworkPolicy/{pol['metadata']['name']} admits {shown} of the {name} pods "
                                    f"from outside the cluster's pods (only {sorted(open_ports)} may be)")
                elif not peers or not all(dashboard_client_only(p) for p in peers):
                    problems.append(f"NetworkPolicy/{pol['metadata']['name']} admits {sorted(ports)} of the {name} "
                                    f"pods from any source, not only pods labelled {DASHBOARD_CLIENT}=true")
        # Nodes dial each other's node service, worker processes and drivers
        # on ports chosen at run time: every TCP port between the cluster's pods.
        for n in sorted(CLUSTER_NAMES - reached_by):
            problems.append(f"the {name} pods do not admit the {n} pods on every TCP port "
                            f"(nodes, worker processes and drivers listen on ports chosen at run time)")
    return problems


problems = pod_security_problems(docs) + network_policy_problems(docs)
if problems:
    fail("the manifests are not hardened:\n  " + "\n  ".join(problems))


def broken(mutate):
    d = copy.deepcopy(docs)
    mutate({x["kind"] + "/" + x["metadata"]["name"]: x for x in d}, d)
    return d


def pod(kind):
    return lambda m: next(v for k, v in m.items() if k.startswith(kind + "/"))["spec"]["template"]["spec"]


def container(kind):
    return lambda m: pod(kind)(m)["containers"][0]


head_pod, worker_pod, head_ctr, worker_ctr = pod("StatefulSet"), pod("Deployment"), container("StatefulSet"), container("Deployment")
cluster_rule = lambda m: m["NetworkPolicy/rayforge-cluster"]["spec"]["ingress"][0]
mutations = {
    "runAsNonRoot removed": lambda m, d: worker_pod(m)["securityContext"].pop("runAsNonRoot"),
    "the seccomp profile removed": lambda m, d: head_pod(m)["securityContext"].pop("seccompProfile"),
    "privilege escalation allowed": lambda m, d: head_ctr(m)["securityContext"].update(allowPrivilegeEscalation=True),
    "capabilities kept": lambda m, d: worker_ctr(m)["securityContext"].pop("capabilities"),
    "the service-account token mounted": lambda m, d: head_pod(m).pop("automountServiceAccountToken"),
    "no ephemeral-storage limit": lambda m, d: worker_ctr(m)["resources"]["limits"].pop("ephemeral-storage"),
    "a read-only root without /tmp": lambda m, d: head_ctr(m).update(
        volumeMounts=[v for v in head_ctr(m)["volumeMounts"] if v["mountPath"] != "/tmp"]),
    "/tmp larger than the ephemeral-storage limit": lambda m, d: next(
        v for v in worker_pod(m)["volumes"] if v["name"] == "tmp")["emptyDir"].update(sizeLimit="100Gi"),
    "no NetworkPolicy": lambda m, d: [d.remove(x) for x in list(d) if x["kind"] == "NetworkPolicy"],
    "a policy selecting the head only": lambda m, d: m["NetworkPolicy/rayforge-cluster"]["spec"].update(
        podSelector={"matchLabels": {NAME: "rayforge-head"}}),
    "gRPC open to any source": lambda m, d: m["NetworkPolicy/rayforge-dashboard"]["spec"]["ingress"][0].pop("ports"),
    "the dashboard open to any source": lambda m, d: m["NetworkPolicy/rayforge-dashboard"]["spec"]["ingress"][0].pop("from"),
    "the dashboard open to a whole namespace": lambda m, d: m["NetworkPolicy/rayforge-dashboard"]["spec"]["ingress"][0][
        "from"][0].pop("podSelector"),
    "gRPC open to any namespace": lambda m, d: cluster_rule(m)["from"][0].update(namespaceSelector={}),
    "workers cut off from the head's run-time ports": lambda m, d: cluster_rule(m).update(
        ports=[{"protocol": "TCP", "port": 6379}, {"protocol": "TCP", "port": 6380}]),
}
for what, mutate in mutations.items():
    bad = broken(mutate)
    if not pod_security_problems(bad) + network_policy_problems(bad):
        fail(f"a copy with {what} passed the pod security and network policy checks: they cannot fail")
print(f"pod security and network policy: every pod passes; {len(mutations)} broken copies are caught")

# The TLS component (tls/): an overlay with it renders, validates, keeps the
# pods as secure, and gives both daemons the certificate, key and authority
# from the Secret, the name clients check, and HTTPS probes.
# kustomize takes only relative paths, and no overlay inside its base:
# base/ (the copy, with its token.env), tls/ and overlay/ side by side.
parent = tempfile.mkdtemp(prefix="rayforge-k8s-tls-")
shutil.copytree(copy_dir, os.path.join(parent, "base"))
shutil.copytree(os.path.join(here, "tls"), os.path.join(parent, "tls"))
overlay = os.path.join(parent, "overlay")
os.makedirs(overlay)
with open(os.path.join(overlay, "kustomization.yaml"), "w") as f:
    yaml.safe_dump({"resources": ["../base"], "components": ["../tls"]}, f)
r = subprocess.run([a.kubectl, "kustomize", overlay], capture_output=True, text=True)
if r.returncode != 0:
    fail(f"kubectl kustomize of the TLS overlay: {r.stderr}")
tls_docs = [d for d in yaml.safe_load_all(r.stdout) if d]
r = validate(tls_docs, "tls.yaml")
if r.returncode != 0:
    fail(f"kubernetes-validate --strict refused the TLS overlay:\n{r.stdout}{r.stderr}")
problems = pod_security_problems(tls_docs) + network_policy_problems(tls_docs)
if problems:
    fail("the TLS overlay: " + "; ".join(problems))
for d in tls_docs:
    if d["kind"] not in ("StatefulSet", "Deployment"):
        continue
    spec = d["spec"]["template"]["spec"]
    c = spec["containers"][0]
    args = c["args"]
    for flag in ["--tls-cert=/etc/rayforge/tls/tls.crt", "--tls-key=/etc/rayforge/tls/tls.key", "--tls-ca=/etc/rayforge/tls/ca.crt"]:
        if flag not in args:
            fail(f"{d['kind']} of the TLS overlay lacks {flag}")
    if not any(e["name"] == "RAYFORGE_TLS_SERVER_NAME" for e in c["env"]):
        fail(f"{d['kind']} of the TLS overlay does not name the certificate's host")
    for probe_name in ["readinessProbe", "livenessProbe"]:
        if c[probe_name]["httpGet"].get("scheme") != "HTTPS":
            fail(f"{d['kind']}'s {probe_name} speaks plain HTTP to a TLS port")
    vol = next((v for v in spec["volumes"] if v["name"] == "tls"), None)
    mount = next((m for m in c["volumeMounts"] if m["name"] == "tls"), None)
    if not vol or vol["secret"]["secretName"] != "rayforge-tls" or not mount or not mount.get("readOnly"):
        fail(f"{d['kind']} of the TLS overlay does not mount the Secret rayforge-tls read-only")
print("the TLS component: renders, validates, keeps the pods secure; certificate, key, authority and HTTPS probes in place")

# The containers' arguments, run for real on loopback.
by_kind = {d["kind"]: d for d in docs}
head_c = by_kind["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
worker_c = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]

# Every process on a node may read a container's arguments: tokens go in
# the environment (from the Secret), never on the command line.
for name, c in [("head", head_c), ("worker", worker_c)]:
    for x in c.get("args", []) + c.get("command", []):
        if "TOKEN" in x.upper() and ("$(" in x or x.startswith("--token")):
            fail(f"the {name}'s arguments carry a token ({x!r}): give it as RAYFORGE_TOKEN in the environment")
    names = {e["name"] for e in c.get("env", [])}
    for want in ["RAYFORGE_TOKEN", "RAYFORGE_VIEWER_TOKEN"]:
        if want not in names:
            fail(f"the {name} has no {want} in its environment")
print("tokens: in the containers' environment, none in their arguments")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


ports = {n: free_port() for n in ["6379", "6380", "8265", "8080", "w8080"]}
token = os.urandom(16).hex()
viewer = os.urandom(16).hex()


def localize(args, worker=False):
    out = []
    for x in args:
        x = x.replace("$(POD_IP)", "127.0.0.1").replace("$(RAYFORGE_TOKEN)", token)
        x = x.replace("/var/lib/rayforge", os.path.join(tmp, "state"))
        x = x.replace("rayforge-head:6379", f"127.0.0.1:{ports['6379']}")
        if x.startswith("--metrics-port="):
            x = f"--metrics-port={ports['w8080'] if worker else ports['8080']}"
        for flag, key in [("--port=", "6379"), ("--node-port=", "6380"), ("--jobs-port=", "8265")]:
            if x.startswith(flag):
                x = flag + str(ports[key])
        if x.startswith("--object-store-memory="):
            x = "--object-store-memory=268435456"
        out.append(x)
    return out


def probe(port, path, token_needed=False):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_ready(port, what):
    deadline = time.time() + 60
    while time.time() < deadline:
        if probe(port, "/readyz") == 200:
            return
        time.sleep(0.2)
    fail(f"the {what} never answered /readyz on port {port}")


# The pods' root filesystem is read-only: the daemons may write under
# $TMPDIR, /dev/shm and the state directory (volumes there), not in $HOME or
# their working directory.
home, cwd = os.path.join(tmp, "home"), os.path.join(tmp, "cwd")
for d in (home, cwd, os.path.join(tmp, "tmpdir")):
    os.makedirs(d)
env = dict(os.environ, RAYFORGE_TOKEN=token, RAYFORGE_VIEWER_TOKEN=viewer, RAYFORGE_CLUSTER_FILE=os.path.join(tmp, "cluster.json"),
           HOME=home, TMPDIR=os.path.join(tmp, "tmpdir"))
env.pop("RAYFORGE_ADDRESS", None)
rayforge = os.path.abspath(a.rayforge)
procs = []
try:
    head_args = localize(head_c["args"])
    procs.append(subprocess.Popen([rayforge] + head_args, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True))
    wait_ready(ports["8265"], "head (dashboard port)")
    wait_ready(ports["8080"], "head (metrics port)")
    worker_args = localize(worker_c["args"], worker=True)
    procs.append(subprocess.Popen([rayforge] + worker_args, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True))
    wait_ready(ports["w8080"], "worker")
    for port in [ports["8265"], ports["w8080"]]:
        if probe(port, "/healthz") != 200:
            fail(f"/healthz on {port}")
        if probe(port, "/metrics") != 401:
            fail(f"/metrics on {port} answered without the token")
        scrape = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                        headers={"Authorization": f"Bearer {viewer}"})
        with urllib.request.urlopen(scrape, timeout=10) as r:
            if r.status != 200:
                fail(f"/metrics on {port} refused the viewer token")
    req = urllib.request.Request(f"http://127.0.0.1:{ports['8265']}/api/v0/cluster",
                                 headers={"Authorization": f"Bearer {token}"})
    deadline = time.time() + 60
    while True:
        with urllib.request.urlopen(req, timeout=10) as r:
            c = json.load(r)
        alive = [n for n in c["nodes"] if n["alive"]]
        if len(alive) == 2:
            break
        if time.time() > deadline:
            fail(f"the worker did not join the head: {c['nodes']}")
        time.sleep(0.3)
    # Bound to 0.0.0.0 as in the pods, each node must advertise the "pod IP".
    addrs = sorted(n["address"].split(":")[0] for n in alive)
    if addrs != ["127.0.0.1", "127.0.0.1"]:
        fail(f"nodes advertise {addrs}, not the pod IP they were given")
    print(f"head and worker started from the manifests' arguments; both ready; the worker joined ({len(alive)} nodes)")
    for d, what in [(home, "$HOME"), (cwd, "their working directory")]:
        if os.listdir(d):
            fail(f"the daemons wrote {os.listdir(d)} in {what}: a read-only root filesystem refuses that")
finally:
    for pr in procs:
        pr.terminate()
    for pr in procs:
        try:
            pr.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pr.kill()
print("kubernetes manifests: OK")
