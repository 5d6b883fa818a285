"""The kit's stand-in for Kaggle's server and gateway refuses what the real one refuses, and serves as it does."""
from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from inference.gateway import GatewayError, LocalInferenceServer, check_answer
from inference.labels import ID_COLUMN, LABELS

N_SERIES = 6


def _frame(values) -> pl.DataFrame:
    return pl.DataFrame([list(map(float, values))], schema={name: pl.Float64 for name in LABELS}, orient="row")


@pytest.fixture()
def test_set(tmp_path: Path) -> dict:
    """A test csv and fake series folders (the gateway never decodes them)."""
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
    preds = {uid: rng.uniform(0.0, 1.0, len(LABELS)) for uid in ids}
    return {"root": tmp_path, "ids": ids, "series_dir": series_dir, "test_csv": tmp_path / "input" / "test.csv",
            "preds": preds, "share": tmp_path / "shared", "out": tmp_path / "work"}


def _run(ts: dict, predict, **kwargs):
    kwargs.setdefault("seed", 3)
    kwargs.setdefault("out_dir", ts["out"])
    share = kwargs.pop("file_share_dir", str(ts["share"]))
    return LocalInferenceServer(predict).run_local_gateway((str(ts["test_csv"]), str(ts["series_dir"])),
                                                          share, **kwargs)


def test_serves_symlinked_series_from_a_server_thread_and_writes_the_submission(test_set):
    seen, threads = [], set()

    def predict(path: str) -> pl.DataFrame:
        assert isinstance(path, str)
        folder = Path(path)
        uid = folder.name
        assert folder == test_set["share"] / (test_set["series_dir"] / uid).relative_to("/")
        files = sorted(folder.iterdir())
        assert [f.name for f in files] == sorted(p.name for p in (test_set["series_dir"] / uid).glob("*.dcm"))
        assert all(f.is_symlink() and f.resolve().parent == (test_set["series_dir"] / uid).resolve() for f in files)
        threads.add(threading.current_thread())
        seen.append(uid)
        return _frame(test_set["preds"][uid])

    run = _run(test_set, predict)
    assert sorted(seen) == sorted(test_set["ids"]) and seen == run.order
    assert seen != test_set["ids"]  # a shuffled order
    assert threading.main_thread() not in threads and len(threads) == 1  # one server worker thread, never main
    sub = pl.read_parquet(test_set["out"] / "submission.parquet")
    assert sub.columns == [ID_COLUMN, *LABELS] and sub[ID_COLUMN].to_list() == seen
    for row in sub.iter_rows(named=True):
        np.testing.assert_allclose([row[n] for n in LABELS], test_set["preds"][row[ID_COLUMN]])
    assert all(p.is_symlink() for p in test_set["share"].rglob("*.dcm"))  # the gateway never deletes what it shared
    assert set(run.durations_s) == set(test_set["ids"]) and run.first_answer_at >= run.started_at


class _CallableObject:
    def __call__(self, path: str) -> pl.DataFrame:
        return _frame(np.full(len(LABELS), 0.5))


def _named(path: str) -> pl.DataFrame:
    return _frame(np.full(len(LABELS), 0.5))


def test_endpoints_are_registered_by_name_as_kaggle_does(test_set):
    with pytest.raises(AttributeError):  # no __name__: Kaggle's server dies in its constructor the same way
        LocalInferenceServer(_CallableObject())
    with pytest.raises(AttributeError):
        LocalInferenceServer(functools.partial(_named))
    with pytest.raises(ValueError, match="must be named"):
        LocalInferenceServer(lambda path: _named(path))
    with pytest.raises(ValueError, match="at least one endpoint"):
        LocalInferenceServer()
    with pytest.raises(ValueError, match="must be functions"):
        LocalInferenceServer("predict")
    server = LocalInferenceServer(_named)  # constructs fine, then fails at the first call
    with pytest.raises(GatewayError, match="did not register a listener for predict"):
        server.run_local_gateway((str(test_set["test_csv"]), str(test_set["series_dir"])), str(test_set["share"]))


def test_the_kernels_endpoint_is_a_plain_function_named_predict():
    from inference import kernel

    assert kernel.predict.__name__ == "predict" and callable(kernel.predict)
    assert type(kernel.predict).__name__ == "function"  # not an object, a partial or a bound method
    assert set(LocalInferenceServer(kernel.predict).listeners) == {"predict"}


def test_off_kaggle_the_share_folder_is_required_and_must_start_empty(test_set, tmp_path):
    assert not Path("/kaggle").exists()
    with pytest.raises(GatewayError, match="file_share_dir is required"):
        _run(test_set, _named_predict(test_set), file_share_dir=None)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "left-over").write_text("x")
    with pytest.raises(GatewayError, match="must be an empty directory"):
        _run(test_set, _named_predict(test_set), file_share_dir=str(busy))
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(GatewayError, match="must be a directory"):
        _run(test_set, _named_predict(test_set), file_share_dir=str(tmp_path / "a-file"))


def _named_predict(test_set):
    def predict(path: str) -> pl.DataFrame:
        return _frame(test_set["preds"][Path(path).name])

    return predict


def test_each_call_after_the_first_has_a_deadline(test_set):
    calls = []

    def predict(path: str) -> pl.DataFrame:
        calls.append(path)
        if len(calls) == 1:
            time.sleep(0.6)  # the first call is not limited (Kaggle's client only waits for the connection)
        elif len(calls) == 3:
            time.sleep(2.0)
        return _frame(test_set["preds"][Path(path).name])

    with pytest.raises(GatewayError, match="GRPC_DEADLINE_EXCEEDED"):
        _run(test_set, predict, call_limit_s=0.5)
    assert len(calls) == 3


@pytest.mark.parametrize("answer, match", [
    (None, "No prediction received"),
    ([0.5] * 14, "Invalid prediction data type"),
    (np.full(14, 0.5), "Invalid prediction data type"),
    (pl.concat([_frame(np.full(14, 0.5))] * 2), "expected 1 rows but received 2"),
])
def test_answers_kaggle_refuses_fail_the_run(test_set, answer, match):
    def predict(path: str):
        return answer

    with pytest.raises(GatewayError, match=match):
        _run(test_set, predict, strict=False)
    assert not (test_set["out"] / "submission.parquet").exists()


@pytest.mark.parametrize("answer, match", [
    (0.5, "a 1-row DataFrame"),
    (_frame(np.full(14, 0.5)).select(LABELS[::-1]), "another order"),
    (_frame(np.full(14, 0.5)).drop(LABELS[3]), "missing"),
    (_frame(np.r_[np.full(13, 0.5), np.nan]), "non-finite"),
    (_frame(np.r_[np.full(13, 0.5), 1.5]), "outside"),
])
def test_strict_mode_also_refuses_answers_that_could_not_be_scored(test_set, answer, match):
    def predict(path: str):
        return answer

    with pytest.raises(GatewayError, match=match):
        _run(test_set, predict)
    if isinstance(answer, float):  # Kaggle itself accepts a scalar: without strict the run goes through
        run = _run(test_set, predict, strict=False, out_dir=test_set["root"] / "lenient",
                   file_share_dir=str(test_set["root"] / "share2"))  # the failed run's links are still shared
        assert pl.read_parquet(run.submission_path).height == N_SERIES


def test_an_exception_in_predict_fails_the_whole_run(test_set):
    def predict(path: str):
        raise RuntimeError("boom")

    with pytest.raises(GatewayError, match="SERVER_RAISED_EXCEPTION"):
        _run(test_set, predict)


def test_a_relative_series_folder_gives_predict_the_path_kaggle_would(test_set, monkeypatch):
    """Kaggle links files at their absolute path but builds predict's path from the folder as given."""
    monkeypatch.chdir(test_set["root"])
    received = []

    def predict(path: str) -> pl.DataFrame:
        received.append(path)
        return _frame(np.full(len(LABELS), 0.5))

    LocalInferenceServer(predict).run_local_gateway(("input/test.csv", "input/series"), str(test_set["share"]),
                                                    seed=0, out_dir=test_set["out"])
    assert all(not Path(p).is_dir() for p in received)  # what a kernel passing relative data_paths would get


def test_pandas_like_frames_are_checked_like_polars_ones():
    """pandas is not a dependency: a minimal stand-in with pandas' module name exercises that branch."""

    class DataFrame:
        __module__ = "pandas.core.frame"

        def __init__(self, columns, values, dtype=np.float64) -> None:
            self.columns = list(columns)
            self._values = np.asarray(values, dtype=dtype).reshape(-1, len(self.columns))

        def __len__(self) -> int:
            return self._values.shape[0]

        def to_numpy(self) -> np.ndarray:
            return self._values

    good = DataFrame(LABELS, np.full(len(LABELS), 0.25))
    assert check_answer(good, "s").tolist() == [0.25] * len(LABELS)
    with pytest.raises(GatewayError, match="non-numeric"):
        check_answer(DataFrame(LABELS, np.full(len(LABELS), "x"), dtype=object), "s")
