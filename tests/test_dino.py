"""DINO loss, centre, schedules, EMA teacher, last-layer freeze, RankMe, KoLeo."""
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sewer_hf.models.dino import DINOLoss, cancel_last_layer_gradients, koleo_loss, rankme
from sewer_hf.models.vit import DINOHead, MultiCropWrapper
from sewer_hf.train.optim import cosine_schedule, ema_update, param_groups


def hand_loss(student, teacher, center, n_crops, n_global, t_temp, s_temp=0.1, skip_same=True):
    """Sample by sample, pair by pair, straight from the DINO paper."""
    B = teacher.shape[0] // n_global
    total, terms = 0.0, 0
    for iq in range(n_global):
        for v in range(n_crops):
            if v == iq and skip_same:
                continue
            pair = 0.0
            for b in range(B):
                q = torch.softmax((teacher[iq * B + b] - center[0]) / t_temp, dim=0)
                logp = torch.log_softmax(student[v * B + b] / s_temp, dim=0)
                pair += -(q * logp).sum().item()
            total += pair / B
            terms += 1
    return total / terms


def test_loss_matches_hand_loop_and_skips_same_view_pairs():
    torch.manual_seed(0)
    B, K, n_crops = 3, 16, 4
    student, teacher = torch.randn(n_crops * B, K), torch.randn(2 * B, K)
    loss_fn = DINOLoss(K, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=5, n_epochs=10)
    loss_fn.center.copy_(torch.randn(1, K) * 0.1)
    center = loss_fn.center.clone()
    loss = loss_fn(student, teacher, epoch=2).item()
    expected = hand_loss(student, teacher, center, n_crops, 2, loss_fn.teacher_temp_at(2))
    assert loss == pytest.approx(expected, rel=1e-5)
    # The same-view pairs do matter: counting them gives another value.
    with_same = hand_loss(student, teacher, center, n_crops, 2, loss_fn.teacher_temp_at(2), skip_same=False)
    assert abs(with_same - loss) > 1e-3


def test_two_global_views_only_uses_cross_pairs():
    torch.manual_seed(1)
    B, K = 4, 8
    student, teacher = torch.randn(2 * B, K), torch.randn(2 * B, K)
    loss_fn = DINOLoss(K, warmup_teacher_temp_epochs=0, n_epochs=5)
    assert loss_fn(student, teacher, 0).item() == pytest.approx(hand_loss(student, teacher, torch.zeros(1, K), 2, 2, 0.07), rel=1e-5)


def test_uniform_outputs_give_ln_k_and_max_entropy():
    K = 128
    loss_fn = DINOLoss(K, n_epochs=5)
    loss = loss_fn(torch.zeros(4 * 2, K), torch.zeros(2 * 2, K), 0)
    assert loss.item() == pytest.approx(math.log(K), rel=1e-6)
    assert loss_fn.last_teacher_entropy.item() == pytest.approx(math.log(K), rel=1e-6)
    assert loss_fn.last_kl.item() == pytest.approx(0.0, abs=1e-5)


def test_center_is_ema_of_batch_mean():
    torch.manual_seed(2)
    K = 8
    loss_fn = DINOLoss(K, center_momentum=0.9, n_epochs=5)
    assert isinstance(loss_fn.center, torch.Tensor) and "center" in dict(loss_fn.named_buffers())
    t1, t2 = torch.randn(6, K), torch.randn(6, K)
    loss_fn(torch.randn(6, K), t1, 0)
    assert torch.allclose(loss_fn.center, 0.1 * t1.mean(0, keepdim=True), atol=1e-6)
    loss_fn.update_center(t2)
    assert torch.allclose(loss_fn.center, 0.9 * 0.1 * t1.mean(0, keepdim=True) + 0.1 * t2.mean(0, keepdim=True), atol=1e-6)
    before = loss_fn.center.clone()
    loss_fn(torch.randn(6, K), t1, 0, center_update=False)
    assert torch.equal(before, loss_fn.center)


def test_teacher_temperature_schedule_per_epoch():
    loss_fn = DINOLoss(4, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30, n_epochs=35)
    assert loss_fn.teacher_temp_at(0) == pytest.approx(0.04)
    assert loss_fn.teacher_temp_at(15) == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert loss_fn.teacher_temp_at(29) == pytest.approx(0.07)
    assert loss_fn.teacher_temp_at(34) == pytest.approx(0.07)
    assert loss_fn.teacher_temp_at(500) == pytest.approx(0.07)
    # Warm-up longer than the run: the schedule is cut, later epochs keep the last value.
    short = DINOLoss(4, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30, n_epochs=3)
    assert short.teacher_temp_at(2) == pytest.approx(0.04 + 0.03 * 2 / 29)
    assert short.teacher_temp_at(10) == short.teacher_temp_at(2)


def official_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    # Verbatim from facebookresearch/dino utils.py (Apache-2.0).
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def test_cosine_schedule_matches_official():
    args = dict(base_value=5e-5, final_value=1e-6, epochs=35, niter_per_epoch=7, warmup_epochs=10, start_warmup_value=3e-5)
    ours = cosine_schedule(**args)
    ref = official_cosine_scheduler(5e-5, 1e-6, 35, 7, 10, 3e-5)
    assert ours.shape == (35 * 7,)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-15)
    assert ours[0] == pytest.approx(3e-5) and ours[69] == pytest.approx(5e-5) and ours[70] == pytest.approx(5e-5)
    assert ours[-1] == pytest.approx(1e-6, rel=1e-2)
    momentum = cosine_schedule(0.996, 1.0, 3, 5)
    np.testing.assert_allclose(momentum, official_cosine_scheduler(0.996, 1.0, 3, 5))


def test_cosine_schedule_shorter_than_warmup():
    sched = cosine_schedule(1.0, 0.0, epochs=2, niter_per_epoch=3, warmup_epochs=4, start_warmup_value=0.0)
    np.testing.assert_allclose(sched, np.linspace(0.0, 1.0, 12)[:6])


def test_param_groups_no_decay_on_bias_and_norms():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2, bias=False))
    model[2].weight.requires_grad_(False)
    decay, no_decay = param_groups(model)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay


def test_ema_update_math_by_name_and_unwraps():
    torch.manual_seed(3)
    student = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    teacher = nn.Sequential(nn.Linear(4, 4), nn.Identity(), nn.Linear(4, 2))
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, nn.DataParallel(student), 0.9)
    for name, s in student.state_dict().items():
        assert torch.allclose(teacher.state_dict()[name], 0.9 * t0[name] + 0.1 * s, atol=1e-7)
    with pytest.raises(ValueError, match="counterpart"):
        ema_update(nn.Linear(4, 5), nn.Linear(4, 4), 0.9)


def test_ema_init_share_is_what_the_teacher_keeps_of_its_init():
    from sewer_hf.train.dino_monitor import untrained_teacher_warning
    from sewer_hf.train.optim import cosine_schedule, ema_init_share

    momenta = cosine_schedule(0.996, 0.999, 1, 96)  # the quickstart's DINO stage: one epoch of 96 steps
    teacher, student = nn.Linear(3, 3), nn.Linear(3, 3)
    with torch.no_grad():
        for p in teacher.parameters():
            p.fill_(1.0)
        for p in student.parameters():
            p.zero_()  # whatever the student does, the init's share is what stays of the ones
    for m in momenta:
        ema_update(teacher, student, float(m))
    share = ema_init_share(momenta)
    assert torch.allclose(teacher.weight, torch.full((3, 3), share), atol=1e-5)
    assert 0.75 < share < 0.8  # momentum rising 0.996 -> 0.999: 79 % of the teacher is still its init
    assert "79 % its random init after 96 EMA updates" in untrained_teacher_warning(share, momenta)
    long_run = cosine_schedule(0.996, 1.0, 30, 64)  # the label-efficiency cpu budget
    assert ema_init_share(long_run) < 0.05 and untrained_teacher_warning(ema_init_share(long_run), long_run) is None


def test_cancel_last_layer_gradients():
    model = MultiCropWrapper(nn.Linear(6, 8), DINOHead(8, out_dim=10, hidden_dim=8, bottleneck_dim=4, norm_last_layer=False))

    def grads_after(epoch):
        model.zero_grad()
        model(torch.randn(3, 6)).pow(2).sum().backward()
        cancel_last_layer_gradients(model, epoch, freeze_last_layer_epochs=1)
        return {n: p.grad is not None for n, p in model.named_parameters()}

    frozen = grads_after(0)
    assert [n for n, has in frozen.items() if not has] == [n for n in frozen if "last_layer" in n]
    assert len([n for n in frozen if "last_layer" in n]) == 2  # g and v
    assert all(grads_after(1).values())


def test_rankme():
    assert rankme(torch.eye(64)[:, :32]) == pytest.approx(32, rel=1e-4)
    assert rankme(torch.randn(200, 1) @ torch.randn(1, 32)) == pytest.approx(1.0, abs=1e-3)
    r = rankme(torch.randn(500, 16))
    assert 12 < r < 16
    # No centring: a constant offset adds a direction.
    assert rankme(torch.randn(200, 1) @ torch.randn(1, 32) + 5.0) > 1.5


def _center_worker(rank, world, port, outputs, result_path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        loss_fn = DINOLoss(outputs.shape[-1], n_epochs=2)
        for step in range(outputs.shape[0]):
            loss_fn.update_center(outputs[step, rank])
        # ema_update must accept a DDP-wrapped student.
        student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
        ddp_student = nn.parallel.DistributedDataParallel(student)  # broadcasts rank 0's weights
        expected_weight = 0.5 * teacher.weight.detach() + 0.5 * student.weight.detach()
        ema_update(teacher, ddp_student, 0.5)
        ema_ok = torch.allclose(teacher.weight, expected_weight, atol=1e-7)
        torch.save({"center": loss_fn.center, "ema_ok": ema_ok}, f"{result_path}.{rank}")
    finally:
        dist.destroy_process_group()


def nearest_distances(x):
    """Independent route: all pairwise distances of the normalised rows, the smallest off the diagonal."""
    n = torch.nn.functional.normalize(x, dim=-1)
    return (torch.cdist(n, n) + 10 * torch.eye(len(x))).min(dim=1).values


def test_koleo_is_minus_the_mean_log_nearest_neighbour_distance_on_the_sphere():
    torch.manual_seed(0)
    x = 3 * torch.randn(16, 8)
    assert koleo_loss(x).item() == pytest.approx(-torch.log(nearest_distances(x) + 1e-8).mean().item(), rel=1e-5)
    assert koleo_loss(5 * x).item() == pytest.approx(koleo_loss(x).item(), rel=1e-5)  # scale-free
    spread = torch.eye(8)  # orthonormal rows: every nearest neighbour at sqrt(2)
    assert koleo_loss(spread).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)
    bunched = torch.ones(8, 8) + 0.01 * torch.randn(8, 8)
    assert koleo_loss(bunched).item() > koleo_loss(spread).item() + 3
    with pytest.raises(ValueError, match="at least 2 rows"):
        koleo_loss(torch.randn(1, 8))


def test_koleo_gradient_spreads_a_bunched_batch():
    torch.manual_seed(1)
    bunched = torch.ones(8, 16) + 0.05 * torch.randn(8, 16)
    x = bunched.clone().requires_grad_(True)
    koleo_loss(x).backward()
    stepped = bunched - 0.01 * x.grad / x.grad.norm()
    before, after = nearest_distances(bunched), nearest_distances(stepped)
    assert after.min() > before.min() and after.mean() > before.mean()


def test_center_all_reduce_two_processes(tmp_path, free_port):
    torch.manual_seed(4)
    steps, world, B, K = 2, 2, 3, 5
    outputs = torch.randn(steps, world, B, K)
    mp.spawn(_center_worker, args=(world, free_port, outputs, str(tmp_path / "c")), nprocs=world, join=True)
    expected = torch.zeros(1, K)
    for step in range(steps):
        expected = 0.9 * expected + 0.1 * outputs[step].reshape(-1, K).mean(0, keepdim=True)
    results = [torch.load(tmp_path / f"c.{r}") for r in range(world)]
    assert all(r["ema_ok"] for r in results)
    centers = [r["center"] for r in results]
    assert torch.equal(centers[0], centers[1])
    assert torch.allclose(centers[0], expected, atol=1e-6)
