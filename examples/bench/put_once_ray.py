"""Ray's side of the put_once example (the usage guide's program): 10 tasks
reading a 5000x5000 float64 array, passed by value and then put once.

    target/ray-venv/bin/python examples/bench/put_once_ray.py
    ./target/release/put_once      # rayforge's side, same machine
"""
import time

import numpy as np
import ray

ray.init(num_cpus=2, include_dashboard=False)


@ray.remote
def column_sum(matrix, cols, col):
    return float(matrix.reshape(-1)[col::cols].sum())


matrix = np.ones((5000, 5000))
for _ in range(3):
    start = time.time()
    ray.get([column_sum.remote(matrix, 5000, i) for i in range(10)])
    by_value = time.time() - start
    start = time.time()
    stored = ray.put(matrix)
    ray.get([column_sum.remote(stored, 5000, i) for i in range(10)])
    by_ref = time.time() - start
    del stored
    print(f"ray: by value {by_value:.3f} s, put once {by_ref:.3f} s")
