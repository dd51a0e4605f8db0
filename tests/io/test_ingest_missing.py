"""``ingest(allow_missing=True)``: NaN, Parquet nulls and empty CSV fields kept as NaN.

Both CSV engines read the same NaN; infinity is still refused; without the flag the refusal
names ``allow_missing``, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from emdist.io.ingest import ingest
from emdist.io.readers import IngestError

CSV = "a,b,c\n1,2,3\n4,,6\n7,NA,nan\n10,11,12\n"
EXPECTED_NAN = np.array(
    [[False, False, False], [False, True, False], [False, True, True], [False, False, False]]
)


@pytest.mark.parametrize("engine", ["numpy", "pyarrow"])
def test_csv_missing_fields_are_nan_with_allow_missing(engine: str, tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text(CSV)
    result = ingest(tmp_path / "x.csv", tmp_path / "x.zarr", csv_engine=engine, allow_missing=True)  # type: ignore[arg-type]
    data = zarr.open_array(str(result.path), mode="r")
    values = data[:]
    assert np.array_equal(np.isnan(values), EXPECTED_NAN)
    assert values[3].tolist() == [10.0, 11.0, 12.0]
    assert data.attrs["provenance"]["allow_missing"] is True
    with pytest.raises(IngestError, match=r"column 'b' .*allow_missing=True") as err:
        ingest(tmp_path / "x.csv", tmp_path / "y.zarr", csv_engine=engine)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    assert not (tmp_path / "y.zarr").exists()


def test_parquet_nulls_and_npy_nan_are_kept_and_infinity_refused(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"a": [1.0, None, 3.0], "b": [4.0, 5.0, float("nan")]})
    pq.write_table(table, tmp_path / "x.parquet")
    with pytest.raises(IngestError, match=r"missing value \(null\).*allow_missing=True"):
        ingest(tmp_path / "x.parquet", tmp_path / "p0.zarr")
    kept = ingest(tmp_path / "x.parquet", tmp_path / "p.zarr", allow_missing=True)
    values = zarr.open_array(str(kept.path), mode="r")[:]
    assert np.array_equal(np.isnan(values), [[False, False], [True, False], [False, True]])
    X = np.array([[1.0, np.nan], [2.0, 3.0], [np.inf, 1.0]])
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(IngestError, match=r"data row index 2, column 0: non-finite value inf"):
        ingest(tmp_path / "x.npy", tmp_path / "n.zarr", allow_missing=True)
    assert not (tmp_path / "n.zarr").exists()
    np.save(tmp_path / "ok.npy", X[:2])
    out = ingest(tmp_path / "ok.npy", tmp_path / "ok.zarr", allow_missing=True)
    assert np.array_equal(np.isnan(zarr.open_array(str(out.path), mode="r")[:]), np.isnan(X[:2]))
