"""Distributed training and distributed k-means on 2 gloo processes over loopback (issue 8).

One launch runs every scenario: this file, started as a script, is one rank (``MASTER_ADDR`` /
``MASTER_PORT`` / ``RANK`` / ``WORLD_SIZE``); each rank saves its results and the tests compare
them with one process on the concatenated data, here. float64 throughout, so the tolerances are
those of a different summation order.
"""
import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch import nn

import rbfkern.nn as rnn
import rbfkern.kmeans as kmeans_mod
from rbfkern.kmeans import SEED_ROWS, init_centers, kmeans

WORLD = 2
DT = torch.float64
TOL = {"rtol": 1e-12, "atol": 1e-12}  # float64, only the reduction order differs
STEPS, BATCH, LAM, LR = 3, 4, 0.1, 0.05  # DDP: steps of SGD, rows per rank and step


# ---------------------------------------------------------------------------------------------
# Data and models (the same on every rank and in the single-process reference)
# ---------------------------------------------------------------------------------------------

class Net(nn.Module):
    """GaussDerivConv2d (learned sigmas) -> BcosConv2d -> pool -> RBFClassifier, returning (logits, r2)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            rnn.GaussDerivConv2d(1, 4, order=2, sigmas=(1.0, 1.6), learn_sigma=True, dtype=DT),
            rnn.BcosConv2d(4, 6, 3, padding=1, max_out=2, dtype=DT),
            nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = rnn.RBFClassifier(24, 6, 3, metric="diag", sigma=0.5, dtype=DT)

    def forward(self, x):
        return self.head(self.features(x), return_r2=True)


def _images():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(STEPS, WORLD * BATCH, 1, 8, 8, generator=g, dtype=DT)
    y = torch.randint(3, (STEPS, WORLD * BATCH), generator=g)
    return x, y


def _train(model, batches):
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for x, y in batches:
        opt.zero_grad()
        logits, r2 = model(x)
        rnn.RBFClassifier.loss(logits, y, r2, lam=LAM).backward()
        opt.step()
    return model


def _init_head(net, xs, **kw):
    """The RBF centres by k-means of the (untrained) features of every image (this rank's)."""
    with torch.no_grad():
        init_centers(net.head, net.features(xs.reshape(-1, *xs.shape[2:])), seed=0, **kw)
    return net


def _blobs(n=120, d=5, k=6):
    g = torch.Generator().manual_seed(2)
    means = torch.randn(k, d, generator=g, dtype=DT) * 4
    return means[torch.randint(k, (n,), generator=g)] + torch.randn(n, d, generator=g, dtype=DT)


SPLIT = 70  # uneven shards: rank 0 holds rows [0, 70), rank 1 rows [70, 120)


def _shard(x, rank, split=SPLIT):
    return x[:split] if rank == 0 else x[split:]


def _init_with_far_centre(x, k=6):
    """k rows of x as initial centres, one moved far away: its cluster empties in the first step."""
    c = x[torch.arange(0, 6 * k, 6)].clone()
    c[2] += 1e3
    return c


def _diag_metric(d=5):
    return torch.linspace(0.5, 2.0, d, dtype=DT)


def _clf_with_metric():
    clf = rnn.RBFClassifier(5, 6, 3, metric="diag", dtype=DT)
    clf.rbf.set_diag(torch.rand(6, 5, generator=torch.Generator().manual_seed(3), dtype=DT) + 0.5)
    return clf


def _stream(x, rank):
    """Rank 0 three batches, rank 1 two; the step-i union is batch i of both."""
    shard = _shard(x, rank, 72)
    return list(shard.split(24))


# ---------------------------------------------------------------------------------------------
# What each rank runs (a dict of results per scenario)
# ---------------------------------------------------------------------------------------------

def _scenarios(rank):
    out = {}
    xs, ys = _images()
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    net = _init_head(Net(), xs[:, rows], distributed=True)
    out["train_init"] = net.head.rbf.centers.detach().clone()
    ddp = nn.parallel.DistributedDataParallel(net)
    _train(ddp, [(xs[s, rows], ys[s, rows]) for s in range(STEPS)])
    out["train"] = {k: v.detach().clone() for k, v in ddp.module.state_dict().items()}

    x = _blobs()
    res = kmeans(_shard(x, rank), 6, init=_init_with_far_centre(x), distributed=True)
    out["lloyd"] = res._asdict()
    sub = dist.new_group([0, 1])
    res = kmeans(_shard(x, rank), 6, seed=3, n_init=2, diag=_diag_metric(), distributed=True, process_group=sub)
    out["kmeanspp"] = res._asdict()
    res = kmeans(_shard(x, rank, 120), 4, init="random", seed=1, distributed=True)  # rank 1: no rows
    out["empty_rank"] = res._asdict()
    kmeans_mod.SEED_ROWS = 64  # the union (120 rows) is over max(64, 16 k): seeding on a sample of 96
    out["sampled_seeds"] = kmeans(_shard(x, rank), 6, seed=0, max_iter=0, distributed=True).centers
    out["sampled"] = kmeans(_shard(x, rank), 6, seed=0, distributed=True)._asdict()
    kmeans_mod.SEED_ROWS = SEED_ROWS
    clf = _clf_with_metric()
    out["init_centers"] = (init_centers(clf, _shard(x, rank), seed=1, distributed=True), clf.rbf.centers.detach())
    out["minibatch"] = kmeans(_shard(x, rank), 6, seed=0, batch_size=16, distributed=True)._asdict()
    out["stream"] = kmeans(_stream(x, rank), 6, init=_init_with_far_centre(x), max_iter=5, distributed=True)._asdict()

    errors = []  # a malformed shard on rank 1 must raise on both ranks (not hang rank 0)
    for bad in (x[:, :4], x[:, 0]):
        try:
            kmeans(_shard(x, rank) if rank == 0 else bad, 6, distributed=True)
        except ValueError as e:
            errors.append(str(e))
    try:
        init_centers(clf, _shard(x, rank) if rank == 0 else x[:, :4], distributed=True)
    except ValueError as e:
        errors.append(str(e))
    try:
        kmeans(_shard(x, rank), 6, init=x[:6] if rank == 0 else x[:5], distributed=True)
    except ValueError as e:
        errors.append(str(e))
    out["errors"] = errors
    out["after_errors"] = kmeans(_shard(x, rank), 6, init=x[:6], distributed=True).centers  # still in step
    return out


def _rank_main(out_dir):
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    try:
        torch.save(_scenarios(rank), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out_dir):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", WORLD_SIZE=str(WORLD), GLOO_SOCKET_IFNAME="lo",
               OMP_NUM_THREADS="1", MASTER_PORT=str(_free_port()))
    procs = [subprocess.Popen([sys.executable, __file__, str(out_dir)], env=dict(env, RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(WORLD)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            logs.append(p.communicate()[0] + "\n[timed out]")
    return [p.returncode for p in procs], logs


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    codes, logs = _launch(out)
    if any(codes) and ("EADDRINUSE" in "".join(logs) or "address already in use" in "".join(logs).lower()):
        codes, logs = _launch(out)  # the free port was taken in between: once more on another
    assert not any(codes), "\n".join(f"--- rank {r} (exit {c}):\n{log[-4000:]}" for r, (c, log) in enumerate(zip(codes, logs)))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _bitwise_same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_bitwise_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_bitwise_same(u, v) for u, v in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

def test_ddp_training_equals_single_process_on_the_concatenated_batch(ranks):
    """Distributed init_centers on each rank's features, then DDP steps == the same on all images."""
    xs, ys = _images()
    union = torch.cat([xs[:, r * BATCH:(r + 1) * BATCH] for r in range(WORLD)])  # the shards in rank order
    start = _init_head(Net(), union).state_dict()
    single = _train(_init_head(Net(), union), [(xs[s], ys[s]) for s in range(STEPS)]).state_dict()
    torch.testing.assert_close(ranks[0]["train_init"], start["head.rbf.centers"], **TOL)
    assert not torch.equal(start["head.rbf.centers"], Net().state_dict()["head.rbf.centers"])
    assert _bitwise_same(ranks[0]["train"], ranks[1]["train"])  # DDP keeps the replicas identical
    assert "features.0.sigma" in single  # the learned Gaussian-derivative scales are trained too
    for name, want in single.items():
        got = ranks[0]["train"][name]
        assert not torch.equal(want, start[name]), f"{name} did not change in training"
        torch.testing.assert_close(got, want, **TOL, msg=lambda m: f"{name}: {m}")


def _check_kmeans(res, want, shard_rows):
    torch.testing.assert_close(res["centers"], want.centers, **TOL)
    assert torch.equal(res["labels"], want.labels[shard_rows])
    assert res["n_iter"] == want.n_iter
    assert abs(res["inertia"] - want.inertia) <= 1e-12 * want.inertia


@pytest.mark.parametrize("case", ["train_init", "lloyd", "kmeanspp", "empty_rank", "sampled_seeds",
                                  "sampled", "minibatch", "stream", "init_centers"])
def test_all_ranks_agree_bitwise(ranks, case):
    """Centres, inertia and iteration count (labels are each rank's own rows)."""
    a, b = ({k: v for k, v in r[case].items() if k != "labels"} if isinstance(r[case], dict) else r[case]
            for r in ranks)
    assert _bitwise_same(a, b)


def test_distributed_lloyd_equals_kmeans_on_the_union(ranks):
    x = _blobs()
    want = kmeans(x, 6, init=_init_with_far_centre(x))
    assert want.n_iter > 1
    for r in range(WORLD):
        _check_kmeans(ranks[r]["lloyd"], want, slice(0, SPLIT) if r == 0 else slice(SPLIT, None))


def test_distributed_kmeanspp_seeding_equals_single_process(ranks):
    """Seeding on the gathered union (it is small) with the same seed, in a learned diagonal metric."""
    x = _blobs()
    want = kmeans(x, 6, seed=3, n_init=2, diag=_diag_metric())
    for r in range(WORLD):
        _check_kmeans(ranks[r]["kmeanspp"], want, slice(0, SPLIT) if r == 0 else slice(SPLIT, None))


def test_rank_without_rows(ranks):
    x = _blobs()
    want = kmeans(x, 4, init="random", seed=1)
    _check_kmeans(ranks[0]["empty_rank"], want, slice(None))
    assert ranks[1]["empty_rank"]["labels"].shape == (0,)


def test_seeding_on_a_sample_of_a_large_union(ranks):
    """Above the sample size, k-means++ runs on a gathered sample: seeds are distinct data rows and
    Lloyd from them reaches a clustering as good as one process on all rows (up to 10 %)."""
    x = _blobs()
    seeds = ranks[0]["sampled_seeds"]
    hits = (seeds[:, None, :] == x[None]).all(-1)  # (k, N): which rows each seed is
    assert bool(hits.any(1).all()) and len({int(h.nonzero()[0]) for h in hits}) == 6
    assert not torch.equal(seeds, kmeans(x, 6, seed=0, max_iter=0).centers)  # the sample was used
    assert ranks[0]["sampled"]["inertia"] <= 1.1 * kmeans(x, 6, seed=0).inertia


def test_distributed_init_centers_sets_the_union_centres(ranks):
    x = _blobs()
    clf = _clf_with_metric()
    inertia = init_centers(clf, x, seed=1)
    for r in range(WORLD):
        got_inertia, got = ranks[r]["init_centers"]
        torch.testing.assert_close(got, clf.rbf.centers.detach(), **TOL)
        assert abs(got_inertia - inertia) <= 1e-12 * inertia


def test_distributed_minibatch_quality(ranks):
    x = _blobs()
    lloyd = kmeans(x, 6, seed=0)
    assert ranks[0]["minibatch"]["inertia"] <= 1.1 * lloyd.inertia


def test_distributed_stream_step_is_the_union_of_one_batch_per_rank(ranks):
    """Rank 0 streams 3 batches, rank 1 two: equal to one process streaming the step-wise unions."""
    x = _blobs()
    b0, b1 = _stream(x, 0), _stream(x, 1)
    unions = [torch.cat([b0[i], b1[i]]) if i < len(b1) else b0[i] for i in range(len(b0))]
    assert len(b0) != len(b1)
    want = kmeans(unions, 6, init=_init_with_far_centre(x), max_iter=5)
    got = ranks[0]["stream"]
    torch.testing.assert_close(got["centers"], want.centers, **TOL)
    assert got["n_iter"] == want.n_iter
    assert abs(got["inertia"] - want.inertia) <= 1e-12 * want.inertia


def test_bad_shard_raises_on_every_rank(ranks):
    for r in range(WORLD):
        errs = ranks[r]["errors"]
        assert len(errs) == 4 and all("embeddings" in e for e in errs[:3]), errs
    assert "columns" in ranks[0]["errors"][0] and "[5, 4]" in ranks[0]["errors"][0]
    assert "(120,)" in ranks[1]["errors"][1] and "another rank" in ranks[0]["errors"][1]
    assert "init must have shape (6, 5), got (5, 5)" in ranks[1]["errors"][3]
    assert "another rank" in ranks[0]["errors"][3]
    assert _bitwise_same(ranks[0]["after_errors"], ranks[1]["after_errors"])


if __name__ == "__main__":  # one rank of the launch above
    _rank_main(sys.argv[1])
