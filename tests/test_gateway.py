"""The local gateway: answer checks, shared folders, submission file, scoring and timing projection."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from inference import gateway
from inference.gateway import GatewayError, check_answer, run_gateway, summarize_timing
from inference.labels import ID_COLUMN, LABELS
from inference.metric import competition_score

N_SERIES = 12
MODALITIES = ("CTA", "MRA")


def _frame(values) -> pl.DataFrame:
    return pl.DataFrame([list(map(float, values))], schema={name: pl.Float64 for name in LABELS}, orient="row")


@pytest.fixture()
def test_set(tmp_path: Path) -> dict:
    """A test csv, fake series folders (the gateway never decodes them) and labels with both classes per label."""
    rng = np.random.default_rng(0)
    ids = [f"1.2.826.0.{i}" for i in range(N_SERIES)]
    series_dir = tmp_path / "input" / "series"
    for i, uid in enumerate(ids):
        folder = series_dir / uid
        folder.mkdir(parents=True)
        for k in range(i % 3 + 1):
            (folder / f"{k}.dcm").write_bytes(b"DICM" + bytes([k]))
        (folder / "notes.txt").write_text("not a dcm")
    pl.DataFrame({ID_COLUMN: ids}).write_csv(tmp_path / "input" / "test.csv")
    truth = np.zeros((N_SERIES, len(LABELS)), dtype=np.int64)
    for j in range(len(LABELS)):
        truth[rng.permutation(N_SERIES)[: 2 + j % 3], j] = 1  # at least 2 positives, the rest negatives
    for m in range(len(MODALITIES)):  # each modality half has both classes in every label
        rows = slice(m * N_SERIES // 2, (m + 1) * N_SERIES // 2)
        truth[rows][0, :], truth[rows][1, :] = 1, 0
    labels = pl.DataFrame({ID_COLUMN: ids, "Modality": [MODALITIES[i * 2 // N_SERIES] for i in range(N_SERIES)],
                           **{name: truth[:, j] for j, name in enumerate(LABELS)}})
    labels.write_csv(tmp_path / "input" / "labels.csv")
    preds = {uid: rng.uniform(0.0, 1.0, len(LABELS)) for uid in ids}
    return {"root": tmp_path, "ids": ids, "series_dir": series_dir, "test_csv": tmp_path / "input" / "test.csv",
            "labels_csv": tmp_path / "input" / "labels.csv", "labels": labels, "preds": preds,
            "share": tmp_path / "shared", "out": tmp_path / "work"}


def _run(ts: dict, predict, **kwargs):
    kwargs.setdefault("progress", False)
    return run_gateway(predict, test_csv=ts["test_csv"], series_dir=ts["series_dir"], share_dir=ts["share"],
                       out_dir=ts["out"], **kwargs)


def test_serves_symlinked_series_and_writes_submission(test_set):
    seen = []

    def predict(path: str) -> pl.DataFrame:
        folder = Path(path)
        uid = folder.name
        expected = test_set["share"].absolute() / (test_set["series_dir"] / uid).absolute().relative_to("/")
        assert folder == expected
        files = sorted(folder.iterdir())
        assert [f.name for f in files] == sorted(p.name for p in (test_set["series_dir"] / uid).glob("*.dcm"))
        assert all(f.is_symlink() and f.resolve().parent == (test_set["series_dir"] / uid).resolve() for f in files)
        seen.append(uid)
        return _frame(test_set["preds"][uid])

    result = _run(test_set, predict, seed=3)
    assert sorted(seen) == sorted(test_set["ids"]) and len(seen) == N_SERIES
    assert seen != test_set["ids"]  # a shuffled order
    sub = pl.read_parquet(test_set["out"] / "submission.parquet")
    assert sub.columns == [ID_COLUMN, *LABELS]
    assert sub[ID_COLUMN].to_list() == seen
    for row in sub.iter_rows(named=True):
        np.testing.assert_allclose([row[n] for n in LABELS], test_set["preds"][row[ID_COLUMN]])
    # every shared series folder is gone, including the parents the gateway created
    assert not any(p.is_file() or p.is_symlink() for p in test_set["share"].rglob("*"))
    assert not any(test_set["share"].iterdir())
    assert result.slices == {uid: i % 3 + 1 for i, uid in enumerate(test_set["ids"])}
    assert (test_set["out"] / gateway.SUMMARY_NAME).is_file()


def test_order_is_seeded(test_set):
    def order(seed):
        seen = []
        _run(test_set, lambda p: seen.append(Path(p).name) or _frame(test_set["preds"][Path(p).name]), seed=seed)
        return seen

    assert order(1) == order(1)
    assert order(1) != order(2)


def test_folder_removed_by_predict_is_fine(test_set):
    import shutil

    def predict(path: str) -> pl.DataFrame:
        shutil.rmtree(path)
        return _frame(test_set["preds"][Path(path).name])

    result = _run(test_set, predict)
    assert result.submission.height == N_SERIES


@pytest.mark.parametrize("kind, message", [
    ("two_rows", "returned 2 rows"),
    ("nan", "non-finite"),
    ("missing_column", "missing ['Basilar Tip']"),
    ("raises", "raised ValueError: broken model"),
    ("none", "returned None"),
    ("out_of_range", "outside [0, 1]"),
    ("wrong_order", "another order"),
    ("string_column", "non-numeric"),
    ("list", "must return a polars or pandas DataFrame"),
])
def test_bad_answer_stops_the_run(test_set, kind, message):
    calls = []

    def predict(path: str):
        calls.append(path)
        good = _frame(test_set["preds"][Path(path).name])
        if len(calls) < 3:
            return good
        if kind == "two_rows":
            return pl.concat([good, good])
        if kind == "nan":
            return good.with_columns(pl.lit(math.nan).alias(LABELS[4]))
        if kind == "missing_column":
            return good.drop("Basilar Tip")
        if kind == "raises":
            raise ValueError("broken model")
        if kind == "none":
            return None
        if kind == "out_of_range":
            return good.with_columns(pl.lit(1.5).alias(LABELS[0]))
        if kind == "wrong_order":
            return good.select(list(reversed(LABELS)))
        if kind == "string_column":
            return good.with_columns(pl.lit("0.5").alias(LABELS[2]))
        return [0.5] * len(LABELS)

    with pytest.raises(GatewayError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")) as exc:
        _run(test_set, predict)
    assert "predict(" in str(exc.value) and Path(calls[-1]).name in str(exc.value)
    assert len(calls) == 3  # the run stopped at the first bad answer
    assert not (test_set["out"] / "submission.parquet").exists()
    assert not any(p.is_symlink() for p in test_set["share"].rglob("*"))


def test_polars_series_and_pandas_like_answers():
    with pytest.raises(GatewayError, match="returned columns"):
        check_answer(pl.Series("Aneurysm Present", [0.5]), "s1")
    values = check_answer(_frame(np.linspace(0, 1, len(LABELS))), "s1")
    np.testing.assert_allclose(values, np.linspace(0, 1, len(LABELS)))
    integers = pl.DataFrame([[0] * len(LABELS)], schema={n: pl.Int64 for n in LABELS}, orient="row")
    assert check_answer(integers, "s1").tolist() == [0.0] * len(LABELS)


def test_call_and_startup_limits(test_set):
    with pytest.raises(GatewayError, match="limit per call"):
        _run(test_set, lambda p: _frame(test_set["preds"][Path(p).name]), call_limit_s=0.0)
    with pytest.raises(GatewayError, match="startup took"):
        _run(test_set, lambda p: _frame(test_set["preds"][Path(p).name]), startup_limit_s=0.0)
    assert not any(p.is_symlink() for p in test_set["share"].rglob("*"))


def test_bad_test_csv(tmp_path):
    pl.DataFrame({ID_COLUMN: ["a", "b", "a"]}).write_csv(tmp_path / "dup.csv")
    with pytest.raises(GatewayError, match="repeats series ids"):
        gateway.read_test_ids(tmp_path / "dup.csv")
    pl.DataFrame({"id": ["a"]}).write_csv(tmp_path / "col.csv")
    with pytest.raises(GatewayError, match="no 'SeriesInstanceUID' column"):
        gateway.read_test_ids(tmp_path / "col.csv")


def test_score_matches_metric_module(test_set):
    result = _run(test_set, lambda p: _frame(test_set["preds"][Path(p).name]), labels_csv=test_set["labels_csv"])
    ids = test_set["ids"]
    labels = test_set["labels"]
    y_true = labels.select(LABELS).to_numpy()
    y_pred = np.stack([test_set["preds"][uid] for uid in ids])
    expected = competition_score(y_true, y_pred)
    assert result.score.score == pytest.approx(expected.score, abs=1e-12)
    assert result.score.per_label == pytest.approx(expected.per_label, abs=1e-12)
    modalities = labels["Modality"].to_numpy()
    for modality in MODALITIES:
        rows = modalities == modality
        assert result.modality_scores[modality] == pytest.approx(
            competition_score(y_true[rows], y_pred[rows]).score, abs=1e-12)
    summary = pl.read_parquet(result.submission_path)
    assert summary.height == N_SERIES


def test_timing_projection_warns_over_limit():
    fast = summarize_timing([1.0, 2.0, 3.0, 10.0], [10, 20, 30, 40], startup_s=5.0)
    assert fast.p50_s == pytest.approx(2.5) and fast.max_s == 10.0
    assert fast.slices_per_s == pytest.approx(100 / 16)
    assert fast.projected_total_s == pytest.approx(5.0 + 2500 * 4.0)
    assert not fast.over_limit
    slow = summarize_timing([20.0, 20.0], [100, 100], startup_s=0.0)
    assert slow.projected_total_s == pytest.approx(50000.0) and slow.over_limit
    assert "OVER THE LIMIT" in " ".join(slow.lines())


def test_report_png(test_set, tmp_path):
    pytest.importorskip("matplotlib")
    result = _run(test_set, lambda p: _frame(test_set["preds"][Path(p).name]), labels_csv=test_set["labels_csv"])
    path = gateway.write_report(result, tmp_path / "report.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_process_start_time_is_before_now():
    import time

    start = gateway.process_start_time()
    assert start <= time.time() and time.time() - start < 3600 * 24 * 30


def test_slices_come_from_the_predictors_report(test_set):
    class Reporting:
        def __init__(self) -> None:
            self.last_report = None

        def predict(self, path: str) -> pl.DataFrame:
            self.last_report = type("Report", (), {"slices": 100 + len(Path(path).name)})()
            return _frame(test_set["preds"][Path(path).name])

    owner = Reporting()
    result = _run(test_set, owner.predict)
    assert result.slices == {uid: 100 + len(uid) for uid in test_set["ids"]}
    assert result.timing.slices == sum(100 + len(uid) for uid in test_set["ids"])


def test_modality_with_a_one_class_label_reports_present_auc(test_set):
    labels = test_set["labels"].with_columns(
        pl.when(pl.col("Modality") == "MRA").then(0).otherwise(pl.col(LABELS[0])).alias(LABELS[0]))
    # keep the overall label defined: one CTA positive at least
    assert labels[LABELS[0]].sum() > 0
    submission = pl.DataFrame({ID_COLUMN: test_set["ids"],
                               **{n: [float(test_set["preds"][u][j]) for u in test_set["ids"]]
                                  for j, n in enumerate(LABELS)}})
    report, per_modality = gateway.score_submission(submission, labels)
    assert isinstance(per_modality["CTA"], float)
    assert per_modality["MRA"].startswith("Aneurysm Present AUC") and LABELS[0] in per_modality["MRA"]
    assert 0.0 <= report.score <= 1.0


def test_pandas_like_frames_are_checked_like_polars_ones():
    """pandas is not a dependency: a minimal stand-in with pandas' module name exercises that branch."""

    class DataFrame:
        __module__ = "pandas.core.frame"

        def __init__(self, columns, values, dtype=np.float64) -> None:
            self.columns = list(columns)
            self._values = np.asarray(values, dtype=dtype).reshape(-1, len(self.columns))
            self.dtypes = [self._values.dtype] * len(self.columns)

        def __len__(self) -> int:
            return self._values.shape[0]

        def to_numpy(self) -> np.ndarray:
            return self._values

    good = DataFrame(LABELS, np.full(len(LABELS), 0.25))
    assert check_answer(good, "s").tolist() == [0.25] * len(LABELS)
    with pytest.raises(GatewayError, match="2 rows"):
        check_answer(DataFrame(LABELS, np.full(2 * len(LABELS), 0.25)), "s")
    with pytest.raises(GatewayError, match="non-numeric"):
        check_answer(DataFrame(LABELS, np.full(len(LABELS), "x"), dtype=object), "s")
