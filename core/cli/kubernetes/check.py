"""Checks the Kubernetes manifests offline (run by scripts/test.sh):

1. `kubectl kustomize` renders them;
2. `kubernetes-validate --strict` accepts every resource, and rejects a copy
   with an unknown field slipped in (so the check can fail);
3. the head's and the worker's container arguments start real daemons: each
   is run here with `rayforge` (the pod IP and the token filled in, ports and
   paths moved to free ones on loopback), the worker joins the head, and both
   answer their readiness and liveness probes on the probes' ports.

  python3 core/cli/kubernetes/check.py --rayforge target/debug/rayforge \\
      --validate target/k8s-venv/bin/kubernetes-validate
"""
import argparse
import base64
import copy
import json
import os
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

# The containers' arguments, run for real on loopback.
by_kind = {d["kind"]: d for d in docs}
head_c = by_kind["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
worker_c = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


ports = {n: free_port() for n in ["6379", "6380", "8265", "8080", "w8080"]}
token = os.urandom(16).hex()


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


env = dict(os.environ, RAYFORGE_TOKEN=token, RAYFORGE_CLUSTER_FILE=os.path.join(tmp, "cluster.json"))
env.pop("RAYFORGE_ADDRESS", None)
procs = []
try:
    head_args = localize(head_c["args"])
    procs.append(subprocess.Popen([a.rayforge] + head_args, env=env, stdout=subprocess.PIPE, text=True))
    wait_ready(ports["8265"], "head (dashboard port)")
    wait_ready(ports["8080"], "head (metrics port)")
    worker_args = localize(worker_c["args"], worker=True)
    procs.append(subprocess.Popen([a.rayforge] + worker_args, env=env, stdout=subprocess.PIPE, text=True))
    wait_ready(ports["w8080"], "worker")
    for port in [ports["8265"], ports["w8080"]]:
        if probe(port, "/healthz") != 200:
            fail(f"/healthz on {port}")
        if probe(port, "/metrics") != 401:
            fail(f"/metrics on {port} answered without the token")
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
finally:
    for pr in procs:
        pr.terminate()
    for pr in procs:
        try:
            pr.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pr.kill()
print("kubernetes manifests: OK")
