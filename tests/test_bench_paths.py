"""`convdiff bench-paths` end to end on tiny registry models: every table row, the ratios, nothing written to docs/.
No timing assertions (benchmarks are scripts, docs/architecture.md)."""

import pytest

from convdiff.apps.benchmarks import paths
from convdiff.apps.benchmarks.instruments import Timing

TINY = ["--models", "dic-tiny", "dico-tiny", "dit-tiny", "--rounds", "1", "--sampling-rounds", "1", "--batch", "2",
        "--latent-size", "8", "--sampling-steps", "2", "--no-write"]
CONV = ("dic-tiny", "dico-tiny")


@pytest.fixture(autouse=True)
def docs_elsewhere(tmp_path, monkeypatch):
    """The default --output, moved out of docs/ so that a run which wrongly wrote would leave docs/ alone."""
    monkeypatch.setattr(paths, "DOC_PATH", tmp_path / "benchmarks.md")


def quiet(*args, **kwargs):
    pass


def check_run(argv, path_set):
    report, section = paths.run(argv, log=quiet)
    assert not paths.DOC_PATH.exists()  # --no-write: nothing appended to the default output, docs/benchmarks.md

    forward = [r for r in report.rows if r.kind == "forward"]
    expected = {(m, p) for m in (*CONV, "dit-tiny") for p in path_set if p != "nchw" or m in CONV}
    assert {(r.model, r.path) for r in forward} == expected
    assert all(r.flops_per_image > 0 and r.gflops > 0 and r.images_per_second > 0 for r in forward)
    train = {(r.model, r.path) for r in report.rows if r.kind == "train"}
    assert train == {(m, p) for m in (*CONV, "dit-tiny") for p in path_set if p in paths.TRAIN_PATHS}
    sampled = {(r.model, r.path, r.kind) for r in report.rows if r.kind in ("latent", paths.TINY_VAE)}
    assert sampled == {(m, p, k) for m in (*CONV, "dit-tiny") for p in path_set if p in paths.SAMPLING_PATHS
                       for k in ("latent", paths.TINY_VAE)}

    rows = {(r[0], r[1].split(" ")[0]): r for r in paths.ratio_rows(report, paths.parse_args(argv).groups)}
    for conv in CONV:
        a, b = report.find("forward", conv, "default"), report.find("forward", "dit-tiny", "default")
        assert rows[f"{conv} / dit-tiny", "default"][2] == f"{a.images_per_second / b.images_per_second:.2f}x"
        assert rows[f"{conv} / dit-tiny", "best"][6] != "-"  # the training-step ratio beside the forward one
        assert (f"{conv} GFLOP/s / fp32 matmul", "best") in rows
        assert f"| {conv} / dit-tiny | default |" in section and f"| models | {conv} | default | 2 |" in section
    for heading in ("### Forward", "### Ratios vs targets", "### Training step", "### Sampling", "- Machine:",
                    "- Command: `", "fp32 matmul rate", "Other processes used"):
        assert heading in section
    return report, section


def test_tiny_models_every_row_ratio_and_profile_without_writing(monkeypatch):
    monkeypatch.setattr(paths, "measure_matmul_peak", lambda precision: 100.0)  # the real probe takes seconds
    report, section = check_run([*TINY, "--paths", "default", "nchw", "--profile"], ("default", "nchw"))
    assert report.matmul == (100.0, 100.0)
    assert len(report.profiles) == 3 and section.count("### Profile:") == 3


@pytest.mark.slow
def test_tiny_models_compiled_path():
    report, _ = check_run([*TINY, "--paths", "default", "compiled"], ("default", "compiled"))
    assert report.matmul[0] > 0 and report.find("forward", "dico-tiny", "compiled").first_s > 0


def test_ratios_against_the_targets_say_met_or_short():
    report = paths.Report(matmul=(100.0, 90.0), conv={"dico-s": True, "dit-s-2": False})

    def row(model, path, seconds, kind="forward"):
        return paths.Row("S", model, kind, path, 8, Timing([seconds]), 0.0, flops_per_image=int(5e9))

    report.rows = [row("dico-s", "default", 1.0), row("dico-s", "compiled", 0.5), row("dit-s-2", "default", 1.5),
                   row("dit-s-2", "compiled", 1.0)]
    rows = {(r[0], r[1]): r for r in paths.ratio_rows(report, [paths.Group("S", ("dico-s", "dit-s-2"))])}
    assert rows["dico-s / dit-s-2", "default"][2:6] == ["1.50x", ">= 1.37x", "yes", "-"]
    assert rows["dico-s / dit-s-2", "best (compiled / compiled)"][2:6] == ["2.00x", ">= 1.60x", "yes", "-"]
    # 8 img/s x 5 GFLOP = 40 GFLOP/s of the higher matmul rate, 100: 40%, 20 points short of 60%
    assert rows["dico-s GFLOP/s / fp32 matmul", "default"][2:6] == ["40%", ">= 60%", "no", "20 points short (-33%)"]


def test_unknown_model_gets_the_registry_message(capsys):
    with pytest.raises(SystemExit):
        paths.parse_args(["--models", "dico-tinyy", "dit-tiny"])
    assert "Unknown model 'dico-tinyy'" in capsys.readouterr().err


def test_one_resident_alternation_frees_each_model_before_building_the_next():
    live, order = set(), []

    class Step:
        def __init__(self, key):
            self.key = key
            live.add(key)
            assert len(live) == 1, f"{sorted(live)} in memory together"

        def __call__(self):
            order.append(self.key)

        def __del__(self):
            live.discard(self.key)

    timings, first = paths.alternate_one_resident({k: (lambda k=k: Step(k)) for k in "ab"}, rounds=2, warmup=2,
                                                  log=quiet)
    assert [len(timings[k].seconds) for k in "ab"] == [2, 2] and set(first) == {"a", "b"}
    assert order == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3  # 2 warm-up calls + 1 timed, round robin


def test_large_group_trains_one_model_at_a_time_on_the_default_path(monkeypatch):
    monkeypatch.setattr(paths.Group, "large", property(lambda self: True))
    resident = []
    monkeypatch.setattr(paths, "alternate_one_resident",
                        lambda factories, *a, **k: resident.append(sorted(factories)) or
                        paths.alternate({key: make() for key, make in factories.items()}, 1, 1, quiet))
    report, _ = paths.run([*TINY, "--paths", "default", "nchw", "--train-xl"], log=quiet)
    assert resident == [[(m, "default") for m in sorted((*CONV, "dit-tiny"))]]
    assert {(r.model, r.path) for r in report.rows if r.kind == "train"} == {(m, "default") for m in (*CONV, "dit-tiny")}


def test_onednn_path_turns_the_gemm_route_off_for_its_calls_and_is_never_best(monkeypatch):
    from convdiff.apps.benchmarks.model_paths import build, on_path
    from convdiff.nn import fast_conv

    model = build("dico-tiny", "default", sample_size=8)
    seen = []
    monkeypatch.setattr(type(model), "forward", lambda self, *a, **k: seen.append(fast_conv.MAX_MATMUL_ROWS))
    on_path(model, "onednn")()
    on_path(model, "default")()
    assert seen == [0, 1024] and fast_conv.MAX_MATMUL_ROWS == 1024
    monkeypatch.undo()

    monkeypatch.setattr(paths, "measure_matmul_peak", lambda precision: 100.0)
    report, _ = paths.run([*TINY, "--paths", "default", "onednn", "--skip-train", "--skip-sampling"], log=quiet)
    forward = {(r.model, r.path) for r in report.rows if r.kind == "forward"}
    assert forward == {*((m, p) for m in CONV for p in ("default", "onednn")), ("dit-tiny", "default")}
    assert all(report.best("forward", m).path == "default" for m in CONV)


def test_aten_norm_path_turns_the_native_norm_off_for_its_calls_forward_and_training(monkeypatch):
    from convdiff.apps.benchmarks.model_paths import build, on_path
    from convdiff.nn import norm_modulate

    model = build("dico-tiny", "default", sample_size=8)
    available = norm_modulate.native_available()
    seen = []
    monkeypatch.setattr(type(model), "forward", lambda self, *a, **k: seen.append(norm_modulate.native_available()))
    on_path(model, "aten-norm")()
    on_path(model, "default")()
    assert seen == [False, available] and norm_modulate.native_available() == available
    monkeypatch.undo()

    monkeypatch.setattr(paths, "measure_matmul_peak", lambda precision: 100.0)
    report, _ = paths.run([*TINY, "--paths", "default", "aten-norm", "--skip-sampling"], log=quiet)
    for kind in ("forward", "train"):
        rows = {(r.model, r.path) for r in report.rows if r.kind == kind}
        assert rows == {*((m, p) for m in CONV for p in ("default", "aten-norm")), ("dit-tiny", "default")}
    assert all(report.best("forward", m).path == "default" for m in CONV)
