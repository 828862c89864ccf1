"""Ray 2.60's side of `rayforge cluster-benchmark`: the same cases on a head
and three worker nodes started on this machine (ray.cluster_utils.Cluster,
one raylet per node), printing the same case names and writing
{"case name": value} to --json.

    python ray_cluster_bench.py [--tasks N] [--actors N] [--broadcast-mib N] [--json FILE]

Ray cannot run 100 raylets on a 2-core machine, so the control-plane case is
rayforge's only; many-actors runs fewer actors than rayforge's 1000 (each Ray
actor is a Python process of ~100 MB) and both report actors per second.
"""

import argparse
import json
import time

import numpy as np
import ray
from ray.cluster_utils import Cluster


@ray.remote
def where_am_i():
    return ray.get_runtime_context().get_node_id()


@ray.remote
def read_all(arr):
    return ray.get_runtime_context().get_node_id(), int(arr[::4096].sum()) + len(arr)


@ray.remote
class Pinger:
    def ping(self):
        return 0

    def node(self):
        return ray.get_runtime_context().get_node_id()


def record(results, name, value, unit, note):
    print(f"{name:<45} {value:>14.2f} {unit:<10} {note}", flush=True)
    results[name] = value


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=20000)
    p.add_argument("--actors", type=int, default=100)
    p.add_argument("--broadcast-mib", type=int, default=1024)
    p.add_argument("--json")
    a = p.parse_args()

    print("-- starting a head and three worker nodes", flush=True)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 3 << 30},
    )
    for i in range(3):
        cluster.add_node(
            num_cpus=2,
            resources={"worker_node": 1000, f"n{i}": 1},
            object_store_memory=(a.broadcast_mib + 512) << 20,
        )
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    results = {}
    ray.get([where_am_i.options(resources={"worker_node": 0.001}).remote() for _ in range(6)])

    print(f"-- many tasks (3 nodes): {a.tasks} tasks", flush=True)
    start = time.perf_counter()
    nodes = set()
    done = 0
    while done < a.tasks:
        n = min(10000, a.tasks - done)
        nodes.update(ray.get([where_am_i.options(resources={"worker_node": 0.001}).remote() for _ in range(n)]))
        done += n
    secs = time.perf_counter() - start
    record(results, "many tasks (3 nodes)", a.tasks / secs, "tasks/s", f"{a.tasks} tasks in {secs:.2f} s on {len(nodes)} nodes")

    print("-- cross-node actor calls sync", flush=True)
    x = Pinger.options(num_cpus=0, resources={"n0": 0.001}).remote()
    assert ray.get(x.node.remote()) != ray.get_runtime_context().get_node_id()
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        ray.get(x.ping.remote())
    secs = time.perf_counter() - start
    record(results, "cross-node actor calls sync", n / secs, "calls/s", f"{secs * 1e6 / n:.1f} us per round trip")
    ray.kill(x)

    print(f"-- object broadcast (3 nodes): {a.broadcast_mib} MiB", flush=True)
    nbytes = a.broadcast_mib << 20
    obj = ray.put(np.ones(nbytes, dtype=np.uint8))
    start = time.perf_counter()
    got = ray.get([read_all.options(resources={f"n{i}": 0.5}).remote(obj) for i in range(3)])
    secs = time.perf_counter() - start
    assert len({n for n, _ in got}) == 3
    record(results, "object broadcast (3 nodes)", 3 * nbytes / (1 << 30) / secs, "GiB/s", f"3 copies of {a.broadcast_mib} MiB in {secs:.2f} s")
    del obj

    print(f"-- many actors (3 nodes): {a.actors} actors", flush=True)
    start = time.perf_counter()
    actors = [Pinger.options(num_cpus=0, resources={f"n{i % 3}": 0.001}).remote() for i in range(a.actors)]
    ray.get([x.ping.remote() for x in actors])
    secs = time.perf_counter() - start
    record(results, "many actors (3 nodes)", a.actors / secs, "actors/s", f"{a.actors} actors created and called in {secs:.2f} s")
    for x in actors:
        ray.kill(x)
    del actors

    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
