"""Ray 2.60's side of core/bench/compare-ray-autoscaler: an AutoscalingCluster
(Ray's fake multi-node provider; its autoscaler looks every second, as
rayforge's does) with a head of 0 CPUs and one 1-CPU node type. Each round
submits one 1-CPU task and measures the time from submission to the task
running on a node launched for it, then from the task's end to the node's
removal (the idle timeout is 3 s of that), as `rayforge autoscaler-benchmark
--scaling` does.

Usage: python ray_autoscaler_bench.py ROUNDS
"""
import statistics
import sys
import time

import ray
from ray.cluster_utils import AutoscalingCluster

IDLE_S = 3.0


class Cluster(AutoscalingCluster):
    # Ray 2.60's wheel lacks the example.yaml this class starts from: the
    # same settings, written out.
    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        types = dict(worker_node_types)
        types["ray.head.default"] = {"resources": head_resources, "node_config": {}, "max_workers": 0}
        cfg = {
            "cluster_name": "fake_multinode",
            "max_workers": 1,
            "provider": {
                "type": "fake_multinode",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": types,
            "head_node_type": "ray.head.default",
            "auth": {},
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": IDLE_S / 60.0,
            "docker": {},
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
        }
        cfg.update(config_kwargs)
        return cfg


@ray.remote(num_cpus=1)
def started_at():
    return time.time()


def workers_alive():
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    cluster = Cluster(
        head_resources={"CPU": 0},
        worker_node_types={"cpu1": {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1}},
    )
    cluster.start()
    ray.init("auto")
    up, down = [], []
    try:
        for r in range(rounds):
            t0 = time.time()
            started = ray.get(started_at.remote())
            done = time.time()
            first = started - t0
            deadline = time.time() + 300
            while workers_alive() > 0:
                if time.time() > deadline:
                    raise RuntimeError("the idle node was not removed within 300 s")
                time.sleep(0.02)
            removal = time.time() - done
            print(f"round {r + 1}: first task on a new node {first:.2f} s; idle to removal {removal:.2f} s "
                  f"(idle timeout {IDLE_S} s)", flush=True)
            up.append(first)
            down.append(removal)
        print(f"median over {rounds} rounds: pending demand to the first task running on a new node "
              f"{statistics.median(up):.2f} s; idle to removal {statistics.median(down):.2f} s (idle timeout {IDLE_S} s)")
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
