"""Ray 2.60's autoscaler decision, timed standalone: its
ResourceDemandScheduler.get_nodes_to_launch on the cluster of `rayforge
autoscaler-benchmark` (1,000 nodes of four types, half idle, one in fifty
launching; queued tasks of 20 shapes; 16 requested 1-GPU bundles). Ray's
demand vector lists each queued task (its monitor caps it at 1,000
entries), so it is timed with 1,000 and with 10,000 tasks. Placement groups
are left out (they are protobuf records here).

Usage: python ray_autoscaler_decision.py [ROUNDS]
"""
import statistics
import sys
import time

from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
from ray.autoscaler._private.resource_demand_scheduler import ResourceDemandScheduler
from ray.autoscaler.tags import NODE_KIND_WORKER, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

TYPES = [
    ("cpu4", {"CPU": 4, "memory": 16e9}),
    ("cpu16", {"CPU": 16, "memory": 64e9}),
    ("gpu1", {"CPU": 8, "GPU": 1, "memory": 32e9}),
    ("gpu8", {"CPU": 64, "GPU": 8, "memory": 512e9}),
]
NODES = 1000


class Provider:
    """The two calls the scheduler makes of a provider."""

    def __init__(self, kinds):
        self.kinds = kinds

    def node_tags(self, node_id):
        return {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: self.kinds[node_id]}

    def internal_ip(self, node_id):
        return node_id


def scenario(tasks):
    kinds, unused, maxres, nodes, launching = {}, {}, {}, [], {}
    for i in range(NODES):
        name, total = TYPES[i % len(TYPES)]
        nid = f"10.0.{i // 250}.{i % 250}"
        if i % 50 == 0:
            launching[name] = launching.get(name, 0) + 1
            continue
        kinds[nid] = name
        nodes.append(nid)
        maxres[nid] = dict(total)
        unused[nid] = dict(total) if i % 2 == 0 else {k: v / 2 for k, v in total.items()}
    shapes = []
    for k in range(20):
        r = {"CPU": 1.0 + k % 4, "memory": 1e9 * (1 + k % 3)}
        if k % 5 == 0:
            r["GPU"] = 1.0
        shapes.append(r)
    demands = [dict(shapes[i % 20]) for i in range(tasks)]
    types = {name: {"resources": dict(r), "node_config": {}, "min_workers": 0, "max_workers": NODES} for name, r in TYPES}
    types["head"] = {"resources": {}, "node_config": {}, "max_workers": 0}
    sched = ResourceDemandScheduler(Provider(kinds), types, 2 * NODES, "head", 1.0)
    return sched, nodes, launching, demands, unused, maxres


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for tasks in (1000, 10000):
        sched, nodes, launching, demands, unused, maxres = scenario(tasks)
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            to_launch, _ = sched.get_nodes_to_launch(
                nodes, launching, demands, unused, [], maxres, [{"GPU": 1}] * 16,
                NodeAvailabilitySummary(node_availabilities={}),
            )
            times.append(time.perf_counter() - t)
        print(f"ray decision: {NODES} nodes, {tasks} queued tasks of 20 shapes: median {statistics.median(times) * 1e3:.1f} ms, "
              f"best {min(times) * 1e3:.1f} ms over {rounds} rounds; launch {sum(to_launch.values())} nodes", flush=True)


if __name__ == "__main__":
    main()
