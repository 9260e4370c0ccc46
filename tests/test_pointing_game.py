"""The grid pointing game (bcos-networks.md, Sec. 4): grids, per-cell shares, the score on a
synthetic grid whose answer is known by construction, and the choice of the grid images."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rbfkern import explain
from rbfkern.nn import AddInverse, BcosConv2d


def test_image_grid_layout():
    imgs = torch.arange(4, dtype=torch.float64)[:, None, None, None].expand(4, 2, 3, 5)  # cell k is all k
    g = explain.image_grid(imgs)
    assert g.shape == (2, 6, 10)
    assert torch.equal(g[:, :3, :5], imgs[0]) and torch.equal(g[:, :3, 5:], imgs[1])
    assert torch.equal(g[:, 3:, :5], imgs[2]) and torch.equal(g[:, 3:, 5:], imgs[3])
    batch = explain.image_grid(torch.stack([imgs, imgs + 10]))
    assert batch.shape == (2, 2, 6, 10) and torch.equal(batch[1], g + 10)
    nine = torch.randn(9, 1, 2, 2)
    assert torch.equal(explain.image_grid(nine)[0, 2:4, 4:6], nine[5, 0])  # row 1, column 2


def test_grid_shares_by_hand():
    m = torch.zeros(4, 4, dtype=torch.float64)
    m[0, 0], m[1, 3], m[3, 0], m[2, 2] = 2.0, 1.0, 1.0, -5.0  # cells 0, 1, 2; a negative in cell 3
    assert torch.allclose(explain.grid_shares(m, 2), torch.tensor([0.5, 0.25, 0.25, 0.0], dtype=torch.float64))
    assert torch.equal(explain.grid_shares(torch.zeros(3, 4, 4), 2), torch.zeros(3, 4))  # nothing positive
    assert torch.equal(explain.grid_shares(-torch.ones(4, 4), 2), torch.zeros(4))


def test_grid_shares_smoothing_is_a_zero_padded_box_filter():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(3, 6, 6, generator=g, dtype=torch.float64)
    box = torch.ones(1, 1, 3, 3, dtype=torch.float64) / 9
    sm = F.conv2d(m[:, None], box, padding=1)[:, 0].clamp(min=0)
    cells = sm.reshape(3, 2, 3, 2, 3).sum((2, 4)).reshape(3, 4)
    assert torch.allclose(explain.grid_shares(m, 2, smooth=3), cells / cells.sum(1, keepdim=True))


class _Linear(nn.Module):
    """logit_c = <W_c, x> (no bias): the contributions of eq. (15) are exactly W_c * x."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x.flatten(1) @ self.w.flatten(1).T


def _synthetic(beta: float, gamma: float):
    """Four 4x4 images of classes 0..3: class c lights pixel p_c, every image lights the corner z.
    W_c = +1 at p_c and +beta at z in every cell, -gamma at the other classes' pixels. In the grid,
    class c's positive contribution is 1 + beta in its own cell and beta in each other cell, so the
    score is (1 + beta) / (1 + 4 beta); the negative -gamma terms must not count."""
    p = [(1, 1), (1, 2), (2, 1), (2, 2)]
    imgs = torch.zeros(4, 1, 4, 4, dtype=torch.float64)
    for c, (i, j) in enumerate(p):
        imgs[c, 0, i, j] = 1.0
    imgs[:, 0, 0, 0] = 1.0
    cell = torch.zeros(4, 4, 4, dtype=torch.float64)
    for c, (i, j) in enumerate(p):
        cell[c, 0, 0] = beta
        cell[c, i, j] = 1.0
        for o, (a, b) in enumerate(p):
            if o != c:
                cell[c, a, b] = -gamma
    w = cell.repeat(1, 2, 2)[:, None]  # (K, 1, 8, 8): the same pattern in every cell
    return imgs, _Linear(w)


@pytest.mark.parametrize("beta,gamma", [(0.0, 0.0), (0.5, 0.0), (0.5, 3.0), (2.0, 1.0)])
def test_pointing_game_known_answer(beta, gamma):
    imgs, model = _synthetic(beta, gamma)
    order = torch.tensor([[2, 0, 3, 1], [0, 1, 2, 3]])  # two grids with the classes in different cells
    scores = explain.grid_pointing_game(model, imgs[order], order)
    assert scores.shape == (2, 4)
    want = (1 + beta) / (1 + 4 * beta)
    assert torch.allclose(scores, torch.full((2, 4), want, dtype=torch.float64))
    # a wrong target (a class whose image is not in that cell) scores the beta share only
    wrong = explain.grid_pointing_game(model, imgs[order[:1]], order[:1, [1, 0, 2, 3]])
    assert torch.allclose(wrong[0, :2], torch.full((2,), beta / (1 + 4 * beta), dtype=torch.float64))


def _bcos_net(classes=4):
    torch.manual_seed(0)
    return nn.Sequential(BcosConv2d(2, 4, 3, padding=1, max_out=2), BcosConv2d(4, classes, 3, padding=1, max_out=2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten()).double()


def test_pointing_game_on_a_bcos_model_matches_its_contribution_maps():
    net = _bcos_net()
    t = torch.tensor([[3, 1, 0, 2], [0, 1, 2, 3]])
    imgs = AddInverse()(torch.rand(8, 1, 5, 5, dtype=torch.float64)).reshape(2, 4, 2, 5, 5)
    scores = explain.grid_pointing_game(net, imgs, t)
    for b in range(2):
        grid = explain.image_grid(imgs[b])
        for k in range(4):
            cmap = explain.contributions(net, grid[None], int(t[b, k]))[0].clamp(min=0)
            cells = cmap.reshape(2, 5, 2, 5).sum((1, 3)).flatten()
            assert torch.allclose(scores[b, k], cells[k] / cells.sum())
    # one group without the batch dimension
    assert torch.allclose(explain.grid_pointing_game(net, imgs[1], t[1]), scores[1:])


def test_pointing_game_runs_each_grid_forward_once():
    """One forward pass of the grids (not of each grid G x G times) and one backward per cell."""
    net = _bcos_net()
    seen = []
    net.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    imgs = AddInverse()(torch.rand(8, 1, 5, 5, dtype=torch.float64)).reshape(2, 4, 2, 5, 5)
    explain.grid_pointing_game(net, imgs, torch.tensor([[3, 1, 0, 2], [0, 1, 2, 3]]))
    assert seen == [2]


@pytest.mark.parametrize("targets,match", [
    ([[2, 0, 1, 0]], "different classes"), ([[0, 1, 2, 4]], r"in \[0, 4\)"), ([[0, 1, 2]], "targets"),
    ([[0.0, 1.0, 2.0, 3.0]], "targets"),
])
def test_pointing_game_bad_targets(targets, match):
    imgs = AddInverse()(torch.rand(4, 1, 5, 5, dtype=torch.float64))[None]
    with pytest.raises(ValueError, match=match):
        explain.grid_pointing_game(_bcos_net(), imgs, torch.tensor(targets))


def test_pointing_game_groups():
    # 12 candidates, 4 classes; candidate 5 is misclassified and must never be used.
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    logits = torch.full((12, 4), -1.0)
    conf = torch.tensor([1.0, 3.0, 2.0, 5.0, 4.0, 9.0, 1.0, 2.0, 3.0, 2.0, 1.0, 3.0])
    logits[torch.arange(12), y] = conf
    logits[5, 0] = 10.0  # predicted 0, label 1
    idx = explain.pointing_game_groups(logits, y, cells=4, seed=0)
    assert idx.shape == (2, 4)  # class 1 has two correct images: two groups of four classes
    assert 5 not in idx.flatten().tolist()
    for row in idx:
        assert sorted(y[row].tolist()) == [0, 1, 2, 3]
    # per class, the more confident image comes first
    first = {int(y[i]): int(i) for i in idx[0]}
    assert first == {0: 1, 1: 3, 2: 8, 3: 11}
    assert explain.pointing_game_groups(logits, y, cells=4, num_groups=1).shape == (1, 4)
    assert explain.pointing_game_groups(logits, y, cells=9).shape == (0, 9)  # not enough classes


@pytest.mark.parametrize("call,match", [
    (lambda: explain.image_grid(torch.zeros(3, 1, 2, 2)), "square"),
    (lambda: explain.image_grid(torch.zeros(4, 2, 2)), "images must be"),
    (lambda: explain.grid_shares(torch.zeros(5, 5), 2), "divisible"),
    (lambda: explain.grid_shares(torch.zeros(4, 4), 2, smooth=2), "smooth"),
    (lambda: explain.grid_shares(torch.zeros(4, 4), 0), "grid"),
    (lambda: explain.pointing_game_groups(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long)), "labels"),
    (lambda: explain.pointing_game_groups(torch.zeros(3), torch.zeros(3, dtype=torch.long)), "logits"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
