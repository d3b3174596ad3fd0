"""Read a task's split into `Example` dicts, from local files or from the hub.

Both readers normalise a source row to the hub's schema (field names, `idx`,
label id; nested local objects flattened by `spec.flatten`) and hand it to
`spec.build`, so the two paths give the same model rows. Local layout:
data_dir/glue/<Folder>/*.tsv and data_dir/superglue/<Folder>/*.jsonl, as the
official archives unpack (diagnostics: `spec.files`).

GLUE TSVs are read like the GLUE loaders read them: tab-split with no quote
handling (fields may start with `"`), UTF-8 with an optional BOM (MRPC), CR
stripped. Every problem is a one-line DataError naming `path:line`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import charset_normalizer

from aotpt import hub
from aotpt.errors import AotptError, DataError, choices
from aotpt.tasks.spec import Example, TaskSpec

# split -> file name, per benchmark
FILES = {
    "glue": {
        "train": "train.tsv",
        "validation": "dev.tsv",
        "validation_matched": "dev_matched.tsv",
        "validation_mismatched": "dev_mismatched.tsv",
        "test": "test.tsv",
        "test_matched": "test_matched.tsv",
        "test_mismatched": "test_mismatched.tsv",
    },
    "superglue": {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"},
}
HUB_HINT = "use local files: data_dir=/path/to/folder with glue/ and superglue/ (see README)"


def _short(value: Any) -> str:
    """repr() cut to keep an error message on one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_split(spec: TaskSpec, split: str) -> None:
    if split not in spec.splits:
        raise choices(f"split of task {spec.name}", split, spec.splits)


def local_path(spec: TaskSpec, data_dir: str | Path, split: str) -> Path:
    """The file holding `split` of `spec` under `data_dir`."""
    _check_split(spec, split)
    name = dict(spec.files).get(split) or FILES[spec.benchmark][split]
    return Path(data_dir) / spec.benchmark / spec.folder / name


def read_bytes(path: Path) -> bytes:
    """A data file's bytes, refused in one line unless they are UTF-8 (what the official files are)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        best = charset_normalizer.from_bytes(data[:1_000_000]).best()
        found = f"it looks like {best.encoding}" if best else "its encoding is unknown"
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); {found}: convert it to UTF-8, "
            f"e.g. iconv -f {best.encoding if best else '<encoding>'} -t utf-8"
        ) from None
    return data


def _read_text(path: Path) -> io.StringIO:
    """The file as text (UTF-8, optional BOM), checked in one line; newlines kept as written for csv."""
    return io.StringIO(read_bytes(path).decode("utf-8-sig"), newline="")


def _tsv_rows(path: Path, headerless: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, column -> value) per data row; checks every row's column count."""
    with _read_text(path) as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = list(headerless) or [name.rstrip("\r") for name in next(reader, [])]
        for row in reader:
            if not row:
                continue  # blank line
            if len(row) != len(header):
                raise DataError(
                    f"{path}:{reader.line_num}: {len(row)} tab-separated columns, expected {len(header)} "
                    f"({', '.join(header)})"
                )
            row[-1] = row[-1].rstrip("\r")
            yield reader.line_num, dict(zip(header, row, strict=True))


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line."""
    with _read_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line_no}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row


def _local_label(spec: TaskSpec, raw: Any, where: str) -> int | float:
    """The label id (or float score) of a raw label value from a local file."""
    if spec.is_regression:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise DataError(f"{where}: field 'label': score {_short(raw)} is not a number") from None
    for label_id, accepted in enumerate(spec.raw_labels):
        # type check too: JSON `true` must not match a label written 1, nor "1" match 1
        if type(raw) is type(accepted) and raw == accepted:
            return label_id
    accepted = ", ".join(repr(v) for v in spec.raw_labels)
    raise DataError(f"{where}: field 'label': unknown label {_short(raw)} for task {spec.name}; accepted: {accepted}")


def _hub_label(spec: TaskSpec, raw: Any, where: str) -> int | float:
    if spec.is_regression:
        return float(raw)
    if not isinstance(raw, int) or not 0 <= raw < spec.num_labels:
        raise DataError(f"{where}: field 'label': label id {_short(raw)} outside 0..{spec.num_labels - 1}")
    return raw


def _missing_field(spec: TaskSpec, row: dict[str, Any], where: str, err: KeyError) -> DataError:
    present = ", ".join(str(k) for k in row)
    return DataError(f"{where}: missing field {err.args[0]!r} for task {spec.name}; row has: {present}")


def _examples(spec: TaskSpec, row: dict[str, Any], where: str, out: list[Example]) -> None:
    """Run the task's builder on one hub row and append its model rows to `out`.

    Rows of grouped tasks that several rows share (COPA, MultiRC, ReCoRD) are
    numbered by their position in the split, which makes `idx` unique.
    """
    try:
        rows = spec.rows(row)
    except KeyError as err:
        raise _missing_field(spec, row, where, err) from None
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    for example in rows:
        if spec.grouping in ("choice", "question"):
            example["idx"] = len(out)
        out.append(example)


def _source_rows(spec: TaskSpec, obj: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The hub rows of one local object (several for MultiRC passages and ReCoRD queries)."""
    if spec.flatten is None:
        return [obj]
    try:
        return list(spec.flatten(obj))
    except KeyError as err:
        raise _missing_field(spec, obj, where, err) from None


def _local_idx(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: field 'idx': {_short(value)} is not an integer") from None


def read_local(spec: TaskSpec, data_dir: str | Path, split: str) -> list[Example]:
    """All examples of `split`, read from the official file under `data_dir`."""
    path = local_path(spec, data_dir, split)
    if not path.is_file():
        raise DataError(
            f"{path}: file not found (task {spec.name}, split {split}); "
            f"data_dir must hold {spec.benchmark}/{spec.folder}/{path.name}"
        )
    labelled = split not in spec.test_splits
    if spec.benchmark == "glue":
        rows = _tsv_rows(path, spec.headerless if labelled else ())
    else:
        rows = _jsonl_rows(path)
    rename = dict(spec.local_rename)
    examples: list[Example] = []
    for row_no, (line_no, raw) in enumerate(rows):
        where = f"{path}:{line_no}"
        for source in _source_rows(spec, {rename.get(key, key): value for key, value in raw.items()}, where):
            row = dict(source)
            idx = row.get("idx", row_no)
            row["idx"] = idx if isinstance(idx, dict) else _local_idx(idx, where)  # MultiRC/ReCoRD: id dicts
            if not labelled:
                row["label"] = None
            elif spec.has_label_field:
                if row.get("label") is None:
                    raise DataError(f"{where}: missing field 'label' for task {spec.name} split {split}")
                row["label"] = _local_label(spec, row["label"], where)
            _examples(spec, row, where, examples)
    if not examples:
        raise DataError(f"{path}: no examples (task {spec.name}, split {split})")
    return examples


def read_hub(spec: TaskSpec, split: str) -> list[Example]:
    """All examples of `split` from the Hugging Face hub (or its cache; `aotpt.hub` fails fast offline)."""
    import datasets

    _check_split(spec, split)
    repo, config = spec.hub
    hub_split = dict(spec.hub_splits).get(split, split)
    name = f"{repo} ({config}, split {hub_split})"
    offline = hub.offline()
    try:
        hub.probe(repo, "dataset")
        table = datasets.load_dataset(repo, config, split=hub_split)
    except Exception as err:  # network, offline mode, missing cache: all end in the same advice
        reason = (str(err).splitlines() or [""])[0][:120]
        cache = (
            "HF_HUB_OFFLINE is set and the hub cache lacks it"
            if offline
            else "or set HF_HUB_OFFLINE=1 to use the hub cache"
        )
        raise AotptError(
            f"could not download the dataset {name} from the Hugging Face hub ({type(err).__name__}: {reason}); "
            f"{HUB_HINT}; {cache}"
        ) from err
    labelled = split not in spec.test_splits
    examples: list[Example] = []
    for row_no, row in enumerate(table):
        where = f"{name}:{row_no}"
        row = dict(row)
        row.setdefault("idx", row_no)
        if not labelled:
            row["label"] = None
        elif spec.has_label_field:
            row["label"] = _hub_label(spec, row.get("label"), where)
        _examples(spec, row, where, examples)
    if not examples:
        raise DataError(f"{name}: no examples")
    return examples
