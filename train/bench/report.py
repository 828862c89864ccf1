"""Prints train/bench/compare's results as a table with ratios.

  python report.py target/train-bench/results.jsonl

Epoch time is the mean over epochs after the first (the first includes
warm-up) when there are several, else the only one. A ratio above 1 means
rayforge is faster.
"""
import json
import sys
from collections import defaultdict


def main(path):
    epochs = defaultdict(list)
    acc = {}
    startup = {}
    bw = defaultdict(dict)
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        impl = r.get("impl")
        if "epoch_s" in r:
            epochs[impl].append(r["epoch_s"])
            acc[impl] = r.get("accuracy")
        if "startup_s" in r:
            startup[impl] = r["startup_s"]
        if "gbps" in r:
            bw[impl][int(r["mb"])] = r["gbps"]

    def epoch_time(impl):
        t = epochs.get(impl)
        if not t:
            return None
        return sum(t[1:]) / len(t[1:]) if len(t) > 1 else t[0]

    print("\nTime per epoch (s), final accuracy, start-up to the first step (s)")
    print(f"{'':24}{'epoch s':>10}{'accuracy':>10}{'start-up s':>12}")
    for impl in ["tch-single", "rayforge-train-1", "torch-single", "rayforge-train", "ddp-gloo", "ray-train"]:
        t = epoch_time(impl)
        if t is None:
            continue
        s = startup.get(impl)
        print(f"{impl:24}{t:10.3f}{acc.get(impl) or 0:10.4f}{s if s is not None else float('nan'):12.2f}")

    def ratio(slow, fast):
        a, b = epoch_time(slow), epoch_time(fast)
        return f"{a / b:.2f}x" if a and b else "n/a"

    one, single = epoch_time("rayforge-train-1"), epoch_time("tch-single")
    if one and single:
        print(f"\noverhead of one rayforge-train worker over a plain tch loop: {100 * (one / single - 1):+.1f}%")
    print(f"2 workers, epoch time: DDP gloo / rayforge-train = {ratio('ddp-gloo', 'rayforge-train')}, "
          f"Ray Train / rayforge-train = {ratio('ray-train', 'rayforge-train')}")
    if startup.get("rayforge-train") and startup.get("ray-train"):
        print(f"start-up: Ray Train / rayforge-train = {startup['ray-train'] / startup['rayforge-train']:.1f}x")
    if bw:
        print("\nAll-reduce between two processes, GB/s (buffer bytes / time)")
        print(f"{'MB':>6}{'rayforge':>10}{'gloo':>10}{'ratio':>8}")
        for mb in sorted(set(bw.get("rayforge", {})) | set(bw.get("gloo", {}))):
            a, b = bw.get("rayforge", {}).get(mb), bw.get("gloo", {}).get(mb)
            r = f"{a / b:.2f}x" if a and b else "n/a"
            print(f"{mb:>6}{a or 0:10.3f}{b or 0:10.3f}{r:>8}")


if __name__ == "__main__":
    main(sys.argv[1])
