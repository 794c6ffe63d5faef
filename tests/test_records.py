"""Records: every DATA.md format, every rejection reason, strict mode, and the streaming file reader."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from corrupt_corpus import PARSE_TIME, build_corrupt_corpus, nl_refer_record, write_frame_folder

from swim.data import cache
from swim.data.cache import AnnotationFileError, iter_raw_records
from swim.data.records import REJECTION_REASONS, detect_format, parse_record
from swim.data.schema import Record, RecordError, Rejection

RLE = {"size": [4, 6], "counts": "0:0"}
POLYGON = [[1.0, 1.0, 5.0, 1.0, 5.0, 3.0]]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 16)
    (tmp_path / "still.jpg").write_bytes(b"\xff\xd8\xff")
    (tmp_path / "frames").mkdir()
    return tmp_path


def nl_refer() -> dict[str, Any]:
    return {
        "video": "clip.mp4",
        "index": "videorefer_detailed_caption/000123",
        "conversations": [
            {"from": "human", "value": "<video>\nDescribe the <ins>dog</ins> in detail."},
            {"from": "gpt", "value": "The <ins>dog</ins> trots along the beach."},
        ],
        "annotation": [
            {"4": {"segmentation": RLE}, "27": {"segmentation": {"size": [4, 6], "counts": [24]}}}
        ],
    }


def llava() -> dict[str, Any]:
    return {
        "id": "v_Ab12Cd34_1",
        "video": "clip.mp4",
        "data_source": "LLaVA-Video-178K",
        "conversations": [
            {"from": "human", "value": "<video>\nWhat is the person doing?"},
            {"from": "gpt", "value": "Carrying a box."},
        ],
    }


def bench_q(nl: bool = False) -> dict[str, Any]:
    return {
        "id": 0,
        "video": "frames",
        "Question": "What is the <ins>pilot</ins> not wearing?"
        if nl
        else "What is <object3><region> not wearing?",
        "type": "Basic Questions",
        "options": ["(A) A helmet", "(B) A hat"],
        "Answer": "(A) A helmet",
        "frame_idx": "57",
        "annotation": [{"0": {"segmentation": RLE}, "3": {"segmentation": POLYGON}}],
    }


def bench_d() -> dict[str, Any]:
    return {
        "id": 7,
        "video": "clip.mp4",
        "caption": "The cub lies against the other lion.",
        "frame_idx": 36,
        "annotation": [{"2": {"segmentation": RLE}}],
    }


def parse(raw: Any, root: Path, **kwargs: Any) -> Record | Rejection:
    return parse_record(raw, file="ann.json", index=5, video_root=root, **kwargs)


def test_detect_format() -> None:
    assert detect_format(nl_refer()) == "nl_refer"
    assert detect_format(llava()) == "llava_video"
    assert detect_format(bench_q()) == "bench_q"
    assert detect_format(bench_d()) == "bench_d"
    assert detect_format({"video": "x.mp4"}) is None
    assert detect_format([1, 2]) is None


def test_nl_refer_record(root: Path) -> None:
    raw = nl_refer()
    record = parse(raw, root, source="d1", supervise=False)
    assert isinstance(record, Record)
    assert record.format == "nl_refer" and record.source == "d1" and record.supervise is False
    assert record.id == "videorefer_detailed_caption/000123"
    assert record.video == str(root / "clip.mp4") and record.image is None
    assert [t.role for t in record.turns] == ["user", "assistant"]
    assert record.turns[0].text == "Describe the <ins>dog</ins> in detail."
    assert record.turns[0].visual_offset == 0 and record.turns[1].visual_offset is None
    assert record.annotation == [{4: RLE, 27: {"size": [4, 6], "counts": [24]}}]
    assert record.extra == {"index": "videorefer_detailed_caption/000123"}
    assert raw == nl_refer(), "parsing must not modify the raw record"


def test_llava_video_and_image_records(root: Path) -> None:
    record = parse(llava(), root)
    assert isinstance(record, Record) and record.format == "llava_video"
    assert record.id == "v_Ab12Cd34_1" and record.annotation == []
    assert record.extra == {"data_source": "LLaVA-Video-178K"}
    image = {k: v for k, v in llava().items() if k not in ("id", "video")}
    image["image"] = str(root / "still.jpg")
    image["conversations"][0]["value"] = "Look: <image> what is it?"
    record = parse(image, root)
    assert isinstance(record, Record)
    assert record.id == "ann.json:5" and record.video is None and record.image == str(root / "still.jpg")
    assert record.turns[0].text == "Look:  what is it?" and record.turns[0].visual_offset == 6


def test_multi_turn_roles_and_default_visual_offset(root: Path) -> None:
    raw = llava()
    raw["conversations"] = [
        {"from": "user", "value": "Hi"},
        {"from": "assistant", "value": "Hello"},
        {"from": "Human", "value": "<image>\nAnd now?"},
        {"from": "GPT", "value": "Done."},
    ]
    record = parse(raw, root)
    assert isinstance(record, Record)
    assert [t.role for t in record.turns] == ["user", "assistant", "user", "assistant"]
    assert [t.visual_offset for t in record.turns] == [None, None, 0, None]
    assert record.turns[2].text == "And now?"
    raw["conversations"][2]["value"] = "And now?"
    record = parse(raw, root)
    assert isinstance(record, Record)
    assert [t.visual_offset for t in record.turns] == [0, None, None, None]


@pytest.mark.parametrize("nl", [False, True])
def test_bench_q_record(root: Path, nl: bool) -> None:
    record = parse(bench_q(nl), root)
    assert isinstance(record, Record) and record.format == "bench_q" and record.id == "0"
    question = bench_q(nl)["Question"]
    assert record.video == str(root / "frames")
    assert record.turns[0].text == question + "\n(A) A helmet\n(B) A hat"
    assert record.turns[1].text == "(A) A helmet"
    assert record.extra == {
        "question": question,
        "options": ["(A) A helmet", "(B) A hat"],
        "answer": "(A) A helmet",
        "type": "Basic Questions",
        "frame_idx": 57,
    }
    assert record.annotation == [{0: RLE, 3: POLYGON}]


def test_bench_d_record_forms(root: Path) -> None:
    record = parse(bench_d(), root)
    assert isinstance(record, Record) and record.format == "bench_d"
    assert record.turns[0].text == "Please give a detailed description of the <object0><region> in the video."
    assert record.turns[1].text == "The cub lies against the other lion."
    assert (
        record.extra["caption"] == "The cub lies against the other lion." and record.extra["frame_idx"] == 36
    )
    named = {**bench_d(), "object": "lion cub"}
    record = parse(named, root)
    assert isinstance(record, Record)
    assert (
        record.turns[0].text == "Please give a detailed description of the <ins>lion cub</ins> in the video."
    )
    assert record.extra["object"] == "lion cub"
    tagged = {**bench_d(), "object": "<ins>lion</ins> cub"}
    record = parse(tagged, root)
    assert isinstance(record, Record)
    assert (
        record.turns[0].text == "Please give a detailed description of the <ins>lion</ins> cub in the video."
    )
    asked = {**bench_d(), "question": "Describe the <ins>cub</ins>."}
    record = parse(asked, root)
    assert isinstance(record, Record) and record.turns[0].text == "Describe the <ins>cub</ins>."


def test_explicit_format_and_unchecked_files(root: Path) -> None:
    raw = {**nl_refer(), "video": "not_there.mp4"}
    record = parse(raw, root, format="nl_refer", check_files=False)
    assert isinstance(record, Record) and record.video == str(root / "not_there.mp4")
    rejection = parse(llava() | {"conversations": None}, root, format="bench_d")
    assert isinstance(rejection, Rejection) and (rejection.field, rejection.reason) == (
        "caption",
        "missing_field",
    )
    with pytest.raises(ValueError, match="format='videos'"):
        parse(nl_refer(), root, format="videos")


def _set(raw: dict, path: tuple, value: Any) -> dict:
    raw = copy.deepcopy(raw)
    target = raw
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    elif isinstance(target, list) and path[-1] == len(target):
        target.append(value)
    else:
        target[path[-1]] = value
    return raw


_DELETE = object()
_CONV = ("conversations",)
_ANN = ("annotation",)

# (base record, path to change, new value, expected field, expected reason)
REJECTIONS = [
    (nl_refer, (), None, "<record>", "not_an_object"),
    (nl_refer, ("conversations",), _DELETE, "<record>", "unknown_format"),
    (nl_refer, ("video",), _DELETE, "video", "missing_field"),
    (nl_refer, ("video",), 3, "video", "wrong_type"),
    (nl_refer, ("video",), "gone.mp4", "video", "missing_video"),
    (llava, ("image",), "gone.jpg", "image", "missing_image"),
    (nl_refer, _CONV, [], "conversations", "empty_conversation"),
    (nl_refer, _CONV, "hello", "conversations", "wrong_type"),
    (nl_refer, (*_CONV, 0), "hello", "conversations[0]", "wrong_type"),
    (nl_refer, (*_CONV, 1, "value"), _DELETE, "conversations[1].value", "missing_field"),
    (nl_refer, (*_CONV, 1, "value"), ["x"], "conversations[1].value", "wrong_type"),
    (nl_refer, (*_CONV, 1, "from"), "system", "conversations[1].from", "bad_role"),
    (nl_refer, (*_CONV, 1, "from"), "human", "conversations", "no_assistant_turn"),
    (nl_refer, (*_CONV, 0, "from"), "gpt", "conversations[0].from", "not_alternating"),
    (nl_refer, (*_CONV, 2), {"from": "human", "value": "More?"}, "conversations[2]", "not_alternating"),
    (nl_refer, (*_CONV, 1, "value"), "<video> here", "conversations[1].value", "bad_placeholder"),
    (nl_refer, (*_CONV, 0, "value"), "<video><image>x", "conversations[0].value", "bad_placeholder"),
    (nl_refer, (*_CONV, 0, "value"), "the <ins>dog", "conversations[0].value", "bad_tags"),
    (nl_refer, (*_CONV, 1, "value"), "a <ins>b <ins>c</ins></ins>", "conversations[1].value", "bad_tags"),
    (nl_refer, (*_CONV, 1, "value"), "a dog</ins>", "conversations[1].value", "bad_tags"),
    (nl_refer, (*_CONV, 1, "value"), "a <ins> </ins> dog", "conversations[1].value", "bad_tags"),
    (nl_refer, (*_CONV, 0, "value"), "<ins><video></ins>dog", "conversations[0].value", "bad_tags"),
    (nl_refer, (*_CONV, 1, "value"), "a dog<ins>!?</ins>", "conversations[1].value", "tag_without_word"),
    (nl_refer, _ANN, {"4": RLE}, "annotation", "bad_annotation"),
    (nl_refer, (*_ANN, 0), [RLE], "annotation[0]", "bad_annotation"),
    (nl_refer, (*_ANN, 0, "4"), RLE, 'annotation[0]["4"]', "bad_annotation"),
    (nl_refer, (*_ANN, 0, "4", "segmentation"), "x", 'annotation[0]["4"].segmentation', "bad_annotation"),
    (nl_refer, (*_ANN, 0, "-1"), {"segmentation": RLE}, 'annotation[0]["-1"]', "bad_frame_key"),
    (nl_refer, (*_ANN, 0, "a"), {"segmentation": RLE}, 'annotation[0]["a"]', "bad_frame_key"),
    (
        nl_refer,
        (*_ANN, 0, "4", "segmentation", "size"),
        [4],
        'annotation[0]["4"].segmentation.size',
        "bad_rle",
    ),
    (
        nl_refer,
        (*_ANN, 0, "4", "segmentation", "size"),
        [4.0, 6],
        'annotation[0]["4"].segmentation.size',
        "bad_rle",
    ),
    (
        nl_refer,
        (*_ANN, 0, "4", "segmentation", "counts"),
        "",
        'annotation[0]["4"].segmentation.counts',
        "bad_rle",
    ),
    (
        nl_refer,
        (*_ANN, 0, "4", "segmentation", "counts"),
        [3, 4],
        'annotation[0]["4"].segmentation.counts',
        "bad_rle",
    ),
    (
        nl_refer,
        (*_ANN, 0, "4", "segmentation", "counts"),
        [-1, 25],
        'annotation[0]["4"].segmentation.counts',
        "bad_rle",
    ),
    (
        nl_refer,
        (*_ANN, 0, "4", "segmentation", "counts"),
        None,
        'annotation[0]["4"].segmentation.counts',
        "bad_rle",
    ),
    (nl_refer, (*_ANN, 0, "4", "segmentation"), [], 'annotation[0]["4"].segmentation', "bad_polygon"),
    (
        nl_refer,
        (*_ANN, 0, "4", "segmentation"),
        [[1, 2, 3, 4]],
        'annotation[0]["4"].segmentation[0]',
        "bad_polygon",
    ),
    (
        nl_refer,
        (*_ANN, 0, "4", "segmentation"),
        [[1, 2, 3, 4, 5]],
        'annotation[0]["4"].segmentation[0]',
        "bad_polygon",
    ),
    (
        nl_refer,
        (*_ANN, 0, "4", "segmentation"),
        [[1, 2, 3, 4, 5, "6"]],
        'annotation[0]["4"].segmentation[0]',
        "bad_polygon",
    ),
    (bench_q, ("frame_idx",), "-3", "frame_idx", "bad_frame_idx"),
    (bench_q, ("options",), "(A) x", "options", "wrong_type"),
    (bench_q, ("Answer",), _DELETE, "Answer", "missing_field"),
    (bench_d, ("caption",), 12, "caption", "wrong_type"),
    (bench_d, ("video",), "gone.mp4", "video", "missing_video"),
]


@pytest.mark.parametrize(("base", "path", "value", "field", "reason"), REJECTIONS)
def test_rejections(root: Path, base: Any, path: tuple, value: Any, field: str, reason: str) -> None:
    raw = value if path == () else _set(base(), path, value)
    rejection = parse(raw, root)
    assert isinstance(rejection, Rejection), rejection
    assert (rejection.field, rejection.reason) == (field, reason), rejection
    assert rejection.file == "ann.json" and rejection.index == 5 and rejection.detail
    assert reason in REJECTION_REASONS
    with pytest.raises(RecordError) as error:
        parse(raw, root, strict=True)
    assert str(error.value) == f"ann.json: record 5: field {field}: {reason}: {rejection.detail}"
    assert error.value.rejection == rejection


def test_polygons_and_uncompressed_counts_are_kept_as_in_the_file(root: Path) -> None:
    raw = _set(nl_refer(), (*_ANN, 0, "9"), {"segmentation": [[0, 0, 3, 0, 3, 2.5], [1, 1, 2, 1, 2, 2]]})
    record = parse(raw, root)
    assert isinstance(record, Record)
    assert record.annotation[0][9] == [[0, 0, 3, 0, 3, 2.5], [1, 1, 2, 1, 2, 2]]
    assert record.annotation[0][27] == {"size": [4, 6], "counts": [24]}


def test_invalid_utf8_names_the_field(tmp_path: Path) -> None:
    write_frame_folder(tmp_path / "frames", __import__("numpy").zeros((1, 2, 2, 3), dtype="uint8"))
    good = json.dumps(bench_q()).encode()
    bad = good.replace(b"(B) A hat", b"(B) A h\xe9t")
    (tmp_path / "a.json").write_bytes(b"[" + good + b"," + bad + b"]")
    results = [
        parse_record(raw, file="a.json", index=i, video_root=tmp_path)
        for i, raw in iter_raw_records(tmp_path / "a.json")
    ]
    assert isinstance(results[0], Record)
    assert isinstance(results[1], Rejection)
    assert (results[1].index, results[1].field, results[1].reason) == (1, "options[1]", "invalid_utf8")
    assert "\\xe9" in results[1].detail


def test_corrupt_corpus_parse_time_reasons(tmp_path: Path) -> None:
    path, expected = build_corrupt_corpus(tmp_path)
    assert set(expected.values()) - PARSE_TIME, "the corpus must also hold load-time failures"
    for index, raw in iter_raw_records(path):
        result = parse_record(raw, file=str(path), index=index, video_root=path.parent)
        if expected.get(index) in PARSE_TIME:
            assert isinstance(result, Rejection) and result.reason == expected[index], (index, result)
        else:
            assert isinstance(result, Record), (index, result)


def test_stream_reader_handles_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "_CHUNK_CHARS", 7)
    records = [{"n": i, "text": "é€😀" * i, "num": 10**i} for i in range(30)] + [12345678, "tail"]
    path = tmp_path / "big.json"
    path.write_text("  [\n" + ",\n ".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]  \n")
    assert list(iter_raw_records(path)) == list(enumerate(records))
    (tmp_path / "empty.json").write_text("[ ]")
    assert list(iter_raw_records(tmp_path / "empty.json")) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"a": 1}, {"a": 2,}]', "record 1: invalid JSON"),
        ('[{"a": 1} {"a": 2}]', "record 1: expected ',' or ']' after record 0"),
        ('[{"a": 1},', "record 1: invalid JSON"),
        ('[{"a": 1}', "expected ',' or ']' after record 0, found 'end of file'"),
        ('"records"', "expected a JSON array or JSON Lines"),
    ],
)
def test_broken_json_array_names_file_and_record(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(AnnotationFileError, match=message) as error:
        list(iter_raw_records(path))
    assert str(path) in str(error.value)


def test_jsonl_reader_keeps_line_numbers_and_flags_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": \n{"b": "\xff"}\n')
    items = list(iter_raw_records(path))
    assert items[0] == (0, {"a": 1})
    assert items[1][0] == 2 and isinstance(items[1][1], cache._Unparsable) and "line 3" in items[1][1].detail
    assert items[2][0] == 3 and items[2][1] == {"b": "\udcff"}


def test_fixture_helper_builds_valid_record(root: Path) -> None:
    record = parse(nl_refer_record("clip.mp4", "Describe the <ins>red square</ins>.", "It moves."), root)
    assert isinstance(record, Record) and sorted(record.annotation[0]) == [0, 3, 6]
