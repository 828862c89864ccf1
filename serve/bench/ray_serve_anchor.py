"""Ray Serve 2.60 anchor (replicas take num_cpus=0: on 2 cores Ray would not schedule 4 one-CPU replicas)

Ray Serve 2.60 anchor: the three cases the serve issue compares against.

Usage: python ray_serve_anchor.py {noop|noop2|batched|pipeline}
(noop2: the no-op deployment with 2 replicas; added beside the shared anchor's three cases)
Then load it from another process, e.g.: wrk -t2 -c32 -d15s --latency http://127.0.0.1:8000/
"""
import sys, time
import ray
from ray import serve


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class Noop:
    async def __call__(self, request):
        return "ok"


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class Batched:
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def handle(self, xs):
        return [x * 2 for x in xs]

    async def __call__(self, request):
        return str(await self.handle(1))


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class Stage:
    async def __call__(self, x: int) -> int:
        return x + 1


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class Pipeline:
    def __init__(self, a, b, c):
        self.a, self.b, self.c = a, b, c

    async def __call__(self, request):
        x = await self.a.remote(0)
        x = await self.b.remote(x)
        x = await self.c.remote(x)
        return str(x)


if __name__ == "__main__":
    case = sys.argv[1]
    ray.init(include_dashboard=False)
    app = {
        "noop": lambda: Noop.bind(),
        "noop2": lambda: Noop.options(num_replicas=2).bind(),
        "batched": lambda: Batched.bind(),
        "pipeline": lambda: Pipeline.bind(Stage.bind(), Stage.bind(), Stage.bind()),
    }[case]()
    serve.run(app, route_prefix="/")
    print("READY", flush=True)
    while True:
        time.sleep(3600)
