"""One epoch of 60,000 x 784 rows on 784-256-128-10 (relu, relu, softmax; SGD with
momentum, float32) at global batch 128 and 512, three ways:

    2 ranks x 1 thread   fusenn.distributed.fit under mpirun -n 2 (shared memory;
                         also over TCP on loopback: --mca btl tcp,self)
    1 process x 2 threads, 1 process x 1 thread   model.fit

    python benchmarks/distributed_epoch.py [--rounds 5] [--rows 60000] [--batch 128 512]

Each variant is a fresh process (mpirun's for the ranks) that maps the same .npy
of X, trains one short warm-up epoch and then times one epoch; the variants run
interleaved, round after round, and the table gives medians and ranges over
the rounds. The 2-rank runs also report each rank's split of a step (chunk
gradients, communication including waiting for the other rank, adding
gradients, the update) and the gradient arena's ping-pong time alone (the
transfer cost without waiting). The last line is a JSON object of every
measurement. A worker (--worker) is one such process.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

SIZES = (784, 256, 128, 10)


def make_model(dtype="float32"):
    import fusenn
    model = fusenn.Sequential([fusenn.Dense(SIZES[1], "relu"), fusenn.Dense(SIZES[2], "relu"),
                               fusenn.Dense(SIZES[3], "softmax")], input_dim=SIZES[0],
                              dtype=dtype, seed=0)
    model.compile("cross_entropy", fusenn.SGD(lr=0.01, momentum=0.9))
    return model


def pingpong(comm, g, repeats=30):
    """Seconds to send the gradient arena to the other rank and back, best of
    `repeats` (rank 0 measures; 2 ranks)."""
    best = float("inf")
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        if comm.rank == 0:
            comm.Send(g, dest=1)
            comm.Recv(g, source=1)
        else:
            comm.Recv(g, source=0)
            comm.Send(g, dest=0)
        best = min(best, time.perf_counter() - t0)
    return best


def worker(args):
    import fusenn
    import fusenn.distributed as dist
    X = np.load(args.x, mmap_mode="r")
    y = np.load(args.y)
    model = make_model()
    warm = slice(0, min(len(X), 4 * args.batch))
    if args.worker == "dist":
        dist.fit(model, X[warm], y[warm], batch_size=args.batch, verbose=0)
        dist.barrier()
        t0 = time.perf_counter()
        dist.fit(model, X, y, batch_size=args.batch, verbose=0)
        dist.barrier()
        seconds = time.perf_counter() - t0
        split = dist._Group().allgather(dist.stats())
        comm = dist._comm()
        plan = model._plan
        transfer = pingpong(comm, plan.grads) if dist.size() == 2 else None
        if dist.rank() == 0:
            print(json.dumps({"seconds": seconds, "ranks": split, "pingpong": transfer,
                              "arena_bytes": plan.grads.nbytes}))
    else:
        with fusenn.threads(args.threads):
            model.fit(X[warm], y[warm], batch_size=args.batch, verbose=0)
            t0 = time.perf_counter()
            model.fit(X, y, batch_size=args.batch, verbose=0)
            seconds = time.perf_counter() - t0
        print(json.dumps({"seconds": seconds}))


VARIANTS = {
    "2 ranks x 1 thread": ["mpirun", "-n", "2", "--bind-to", "none"],
    "2 ranks x 1 thread, TCP loopback": ["mpirun", "-n", "2", "--bind-to", "none", "--mca", "btl",
                                         "tcp,self", "--mca", "btl_tcp_if_include", "lo"],
    "1 process x 2 threads": 2,
    "1 process x 1 thread": 1,
}


def run_variant(name, batch, paths):
    spec = VARIANTS[name]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    me = [sys.executable, os.path.abspath(__file__), "--x", paths[0], "--y", paths[1],
          "--batch", str(batch)]
    if isinstance(spec, list):
        env["OMP_NUM_THREADS"] = "1"
        command = [*spec, *me, "--worker", "dist"]
    else:
        command = [*me, "--worker", "single", "--threads", str(spec)]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(values, scale=1.0, digits=3):
    values = sorted(v * scale for v in values)
    return f"{statistics.median(values):.{digits}f} ({values[0]:.{digits}f}-{values[-1]:.{digits}f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--worker", choices=["dist", "single"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--x")
    parser.add_argument("--y")
    args = parser.parse_args()
    if args.worker:
        args.batch = args.batch[0]
        return worker(args)
    if shutil.which("mpirun") is None:
        args.variants = [v for v in args.variants if not isinstance(VARIANTS[v], list)]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = (os.path.join(tmp, "X.npy"), os.path.join(tmp, "y.npy"))
        np.save(paths[0], rng.random((args.rows, SIZES[0]), dtype=np.float32))
        np.save(paths[1], rng.integers(0, SIZES[-1], args.rows))
        results = {(b, v): [] for b in args.batch for v in args.variants}
        for r in range(args.rounds):
            for batch in args.batch:
                for name in args.variants:
                    results[batch, name].append(run_variant(name, batch, paths))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"epoch of {args.rows} x {SIZES[0]} rows, {'-'.join(map(str, SIZES))}, float32, "
          f"median (range) of {args.rounds} interleaved rounds")
    print(f"{'batch':>5}  {'variant':<34} {'epoch s':>22}")
    for (batch, name), runs in results.items():
        print(f"{batch:>5}  {name:<34} {summary([run['seconds'] for run in runs]):>22}")
    for (batch, name), runs in results.items():
        if "ranks" not in runs[0]:
            continue
        steps = runs[0]["ranks"][0]["steps"]
        print(f"\nbatch {batch}, {name}: per step (ms), {steps} steps, arena "
              f"{runs[0]['arena_bytes'] / 1e6:.2f} MB")
        for rank in range(len(runs[0]["ranks"])):
            parts = {k: [run["ranks"][rank][k] / steps for run in runs]
                     for k in ("compute", "communicate", "add", "update")}
            total = [sum(p[i] for p in parts.values()) for i in range(len(runs))]
            share = [(parts["communicate"][i] + parts["add"][i]) / total[i]
                     for i in range(len(runs))]
            print(f"  rank {rank}: " + ", ".join(f"{k} {summary(v, 1e3)}" for k, v in parts.items())
                  + f"; communicate + add {summary(share, 100, 1)}% of the step")
        if runs[0]["pingpong"] is not None:
            print(f"  arena there and back alone: {summary([r['pingpong'] for r in runs], 1e3)} ms")
    print(json.dumps({f"{b}|{v}": runs for (b, v), runs in results.items()}))


if __name__ == "__main__":
    main()
