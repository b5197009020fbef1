"""Labels CSV parsing: both layouts give the same targets; bad files give clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pool.config import Level1Error
from pool.labels import BLANK, read_labels

LABELS = [
    ("a/1.mp4", "leopard"),
    ("a/2.mp4", "blank"),
    ("b/3.mp4", "duiker;leopard"),
    ("b/4.mp4", "chimpanzee"),
    ("c/5.mp4", "blank"),
]
EXPECTED_CLASSES = ["chimpanzee", "duiker", "leopard", BLANK]
EXPECTED = np.array(
    [
        [0, 0, 1, 0],
        [0, 0, 0, 1],
        [0, 1, 1, 0],
        [1, 0, 0, 0],
        [0, 0, 0, 1],
    ],
    dtype=np.float32,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def label_csv(tmp_path: Path) -> Path:
    rows = "".join(f"{f},{lab},site{i % 2}\n" for i, (f, lab) in enumerate(LABELS))
    return write(tmp_path / "labels.csv", "filepath,label,site\n" + rows)


def test_label_column_layout(tmp_path: Path) -> None:
    table = read_labels(label_csv(tmp_path))
    assert table.classes == EXPECTED_CLASSES
    np.testing.assert_array_equal(table.targets, EXPECTED)
    assert table.filepaths == [f for f, _ in LABELS]
    assert table.groups is None


def test_onehot_layouts_parse_to_the_same_targets(tmp_path: Path) -> None:
    # submission layout, columns in another order, with an explicit blank column
    with_blank = "filepath,leopard,blank,duiker,chimpanzee\n" + "".join(
        f"{f},{r[2]:.0f},{r[3]:.0f},{r[1]:.0f},{r[0]:.0f}\n"
        for (f, _), r in zip(LABELS, EXPECTED, strict=True)
    )
    # without a blank column: a row without any species is blank; floats are accepted
    no_blank = "filepath,chimpanzee,duiker,leopard\n" + "".join(
        f"{f},{r[0]:.1f},{r[1]:.1f},{r[2]:.1f}\n"
        for (f, _), r in zip(LABELS, EXPECTED, strict=True)
    )
    for text in (with_blank, no_blank):
        table = read_labels(write(tmp_path / "onehot.csv", text))
        assert table.classes == EXPECTED_CLASSES
        np.testing.assert_array_equal(table.targets, EXPECTED)


def test_group_column_is_read_and_excluded_from_classes(tmp_path: Path) -> None:
    text = "filepath,site,chimpanzee,leopard\nx.mp4,s1,1,0\ny.mp4,s2,0,0\n"
    table = read_labels(write(tmp_path / "g.csv", text), group_column="site")
    assert table.groups == ["s1", "s2"]
    assert table.classes == ["chimpanzee", "leopard", BLANK]
    np.testing.assert_array_equal(table.targets, [[1, 0, 0], [0, 0, 1]])
    assert read_labels(label_csv(tmp_path), group_column="site").groups == [
        "site0",
        "site1",
        "site0",
        "site1",
        "site0",
    ]


def test_whitespace_is_ignored(tmp_path: Path) -> None:
    text = "filepath , label\n a/1.mp4 , leopard ; duiker \n"
    table = read_labels(write(tmp_path / "w.csv", text))
    assert table.filepaths == ["a/1.mp4"]
    assert table.classes == ["duiker", "leopard", BLANK]
    np.testing.assert_array_equal(table.targets, [[1, 1, 0]])


@pytest.mark.parametrize(
    ("text", "group", "message"),
    [
        ("path,label\na.mp4,hog\n", None, "no 'filepath' column"),
        ("filepath,label\n", None, "has no rows"),
        ("filepath,label\na.mp4,hog\nb.mp4,\n", None, "empty label"),
        ("filepath,label\na.mp4,hog;;duiker\n", None, "empty label"),
        ("filepath,label\na.mp4,blank;hog\n", None, "'blank' combined with a species"),
        ("filepath,label\na.mp4,hog\na.mp4,duiker\n", None, "listed twice"),
        ("filepath,label\n,hog\n", None, "empty filepath"),
        ("filepath,hog,site\na.mp4,1,s1\n", None, "--group-column"),
        ("filepath,hog,duiker\na.mp4,1,2\n", None, "not 0/1"),
        ("filepath,hog,blank\na.mp4,1,1\n", None, "'blank' = 1 with a species"),
        ("filepath,hog,blank\na.mp4,0,0\n", None, "no class is 1"),
        ("filepath\na.mp4\n", None, "only a 'filepath' column"),
        ("filepath,label\na.mp4,hog\n", "site", "no group column 'site'"),
        ("filepath,label,site\na.mp4,hog,\n", "site", "empty 'site'"),
    ],
)
def test_bad_labels_give_clear_errors(
    tmp_path: Path, text: str, group: str | None, message: str
) -> None:
    with pytest.raises(Level1Error, match=message) as info:
        read_labels(write(tmp_path / "bad.csv", text), group_column=group)
    assert "bad.csv" in str(info.value)


def test_error_names_the_csv_line(tmp_path: Path) -> None:
    text = "filepath,label\na.mp4,hog\nb.mp4,hog\nc.mp4,\n"
    with pytest.raises(Level1Error, match=r"line 4 \('c.mp4'\)"):
        read_labels(write(tmp_path / "l.csv", text))


def test_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(Level1Error, match="cannot read labels"):
        read_labels(tmp_path / "nope.csv")
    with pytest.raises(Level1Error, match="is empty"):
        read_labels(write(tmp_path / "empty.csv", ""))
