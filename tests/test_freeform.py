"""Free-form evaluation: text metrics on hand-made references, the judge's parsing and reliability, and
whole runs with tiny random-weight models as candidate and judge (local and `transformers serve`).

Scores from random weights are meaningless; these tests prove that every question is counted, the
metrics are right where the answer is known, and the judge's verdicts are read or refused clearly.
"""

import json

import numpy as np
import pytest
from astropy.table import Table

from glue_astrovlm import AstroVLMError, load_model
from glue_astrovlm.datasets import load_dataset
from glue_astrovlm.freeform import evaluate_freeform
from glue_astrovlm.judging import (
    Judge,
    JudgeOutsideRubric,
    Verdict,
    agreement,
    parse_verdict,
    rubric_hash,
    rubric_prompt,
    same_model,
)
from glue_astrovlm.text_metrics import text_scores


@pytest.fixture(scope="session")
def conversations(shared_data, tmp_path_factory):
    """LLaVA JSON about two real FIRST images: a two-turn conversation and a one-turn caption-like one."""
    folder = tmp_path_factory.mktemp("conversations")
    images = sorted((shared_data / "first_radio_galaxies" / "train" / "FRII").glob("*.png"))[:2]
    entries = [
        {
            "id": "a",
            "image": str(images[0]),
            "conversations": [
                {"from": "human", "value": "<image>\nWhat class is this source?"},
                {"from": "gpt", "value": "FRII"},
                {"from": "human", "value": "Describe its lobes."},
                {"from": "gpt", "value": "Two edge-brightened lobes on opposite sides of a faint core."},
            ],
        },
        {
            "id": "b",
            "image": str(images[1]),
            "conversations": [
                {"from": "human", "value": "<image>\nIs there a core?"},
                {"from": "gpt", "value": "yes"},
            ],
        },
    ]
    path = folder / "chat.json"
    path.write_text(json.dumps(entries))
    return path


# ----------------------------------------------------------------------------- metrics on known answers
def test_metrics_on_hand_made_references(tiny_encoder):
    answers = ["The FRII.", "FRI", "the jet points north", "the jet points north", ""]
    references = [
        "an FRII",
        "FRII",
        "a jet points to the north",
        "the jet points north",
        "two lobes and a faint core",
    ]
    scores = text_scores(answers, references, embedding_model=str(tiny_encoder))
    # short references: exact match after normalisation (articles, case, punctuation); no n-gram scores
    assert list(scores["exact_match"][:2]) == [1.0, 0.0]
    assert np.isnan(scores["chrf"][:2]).all() and np.isnan(scores["embedding"][:2]).all()
    # long references: ROUGE-L of "jet points north" (LCS 3) over 4 and 6 words: P 0.75, R 0.5, F 0.6
    assert scores["rouge_l"][2] == pytest.approx(0.6)
    assert scores["rouge_l"][3] == pytest.approx(1.0) and scores["chrf"][3] == pytest.approx(1.0)
    assert scores["bleu"][3] == pytest.approx(1.0) and scores["embedding"][3] == pytest.approx(1.0, abs=1e-5)
    assert scores["chrf"][2] < 1.0 and scores["embedding"][2] < 1.0
    assert scores["chrf"][4] == 0.0 and scores["embedding"][4] == 0.0  # no answer scores nothing
    assert np.isnan(scores["exact_match"][2:]).all()
    with pytest.raises(AstroVLMError, match="every reference needs one answer"):
        text_scores(["a"], ["a", "b"])


# ----------------------------------------------------------------------------- the judge's rubric
@pytest.mark.parametrize(
    "text, verdict",
    [
        ("Correct", "correct"),
        ("correct.", "correct"),
        ("Verdict: **Partially correct** - vaguer", "partially correct"),
        ("partial", "partially correct"),
        ("Wrong: it contradicts", "wrong"),
        ("Incorrect", "wrong"),
    ],
)
def test_written_verdicts_are_read(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize("text", ["", "The answer is fine", "4/5", "Diff Fresh Fresh"])
def test_a_verdict_outside_the_rubric_fails_clearly(text):
    with pytest.raises(JudgeOutsideRubric, match="outside the rubric .correct, partially correct, wrong."):
        parse_verdict(text, judge="The judge J")


def test_rubric_orders_and_hash():
    first = rubric_prompt("Q?", "REF", "ANS")
    swapped = rubric_prompt("Q?", "REF", "ANS", "answer first")
    assert first.index("REF") < first.index("ANS") and swapped.index("ANS") < swapped.index("REF")
    assert rubric_hash("score") != rubric_hash("generate") and len(rubric_hash()) == 12


def test_agreement_counts_repeats_and_swaps():
    def v(item, order, repeat, verdict):
        return Verdict(item, 1, "s", order, repeat, verdict, 0.0, None, "h")

    verdicts = [
        v("a", "reference first", 0, "correct"),
        v("a", "reference first", 1, "correct"),
        v("a", "answer first", 0, "wrong"),
        v("b", "reference first", 0, "wrong"),
        v("b", "reference first", 1, "correct"),
        v("b", "answer first", 0, "wrong"),
    ]
    assert agreement(verdicts) == {"repeat": 0.5, "swap": 0.5, "n": 2}
    scored = agreement([x for x in verdicts if x.repeat == 0])  # method score: no repeats
    assert np.isnan(scored["repeat"]) and scored["swap"] == 0.5 and scored["n"] == 2


def test_same_model_is_recognised(tmp_path):
    assert same_model(str(tmp_path), str(tmp_path) + "/")
    assert same_model("m @ http://127.0.0.1:8000/v1", "m")
    assert not same_model("a", "b")


# ----------------------------------------------------------------------------- whole runs
def test_every_question_is_answered_scored_and_judged(
    tiny_smolvlm, tiny_llava_dir, conversations, tiny_encoder, tmp_path
):
    judge = Judge(load_model(tiny_llava_dir, dtype="float32"))
    report = evaluate_freeform(
        tiny_smolvlm,
        load_dataset(conversations),
        judge=judge,
        embedding_model=str(tiny_encoder),
        max_new_tokens=6,
        n_boot=200,
    )
    (system,) = report.systems
    assert [(c["item"], c["turn"]) for c in system.cases] == [("a", 1), ("a", 2), ("b", 1)]
    assert len(system.verdicts) == 3 * 2 and {v.verdict for v in system.verdicts} <= {
        "correct",
        "partially correct",
        "wrong",
    }
    summary = system.summary(200)
    assert summary["exact_match"]["n"] == 2 and summary["chrf"]["n"] == 1 and summary["judge"]["n"] == 3
    low, high = summary["judge"]["ci95"]
    assert low <= summary["judge"]["mean"] <= high
    assert report.same_model_judge() == []
    written = report.write(tmp_path / "out", format="md")
    assert {p.name for p in written} == {
        "report.md",
        "metrics.json",
        "per_question.ecsv",
        "judge_verdicts.jsonl",
    }
    lines = [
        json.loads(line) for line in (tmp_path / "out" / "judge_verdicts.jsonl").read_text().splitlines()
    ]
    assert len(lines) == 6 and {line["prompt_hash"] for line in lines} == {judge.prompt_hash}
    assert all(set(line["raw"]) == {"correct", "partially correct", "wrong"} for line in lines)
    assert len(Table.read(tmp_path / "out" / "per_question.ecsv")) == 3
    text = (tmp_path / "out" / "report.md").read_text()
    assert f"Judge: {judge.name}" in text and "Reliability over 3 answers" in text and "WARNING" not in text
    # scoring is deterministic: no "asked twice" check (trivially 100%), only the swapped order
    assert {v.repeat for v in system.verdicts} == {0} and "same verdict when asked twice" not in text
    assert "It was not asked twice" in text and "other order in" in text
    with pytest.raises(AstroVLMError, match="already holds"):
        report.write(tmp_path / "out", format="md")


def test_a_judge_that_is_the_candidate_is_flagged(tiny_smolvlm, conversations, tmp_path):
    report = evaluate_freeform(
        tiny_smolvlm,
        load_dataset(conversations),
        judge=Judge(tiny_smolvlm),
        max_new_tokens=3,
        limit=1,
        n_boot=50,
    )
    assert report.same_model_judge() == [report.systems[0].name]
    report.write(tmp_path, format="html")
    assert "WARNING: the judge is the same model as the candidate" in (tmp_path / "report.html").read_text()


def test_a_generating_judge_outside_the_rubric_fails_clearly(tiny_smolvlm, tiny_llava_dir, conversations):
    judge = Judge(load_model(tiny_llava_dir, dtype="float32"), method="generate")
    with pytest.raises(JudgeOutsideRubric, match=r"about a turn 1, which is outside the rubric"):
        evaluate_freeform(tiny_smolvlm, load_dataset(conversations), judge=judge, max_new_tokens=3, n_boot=50)


def test_a_served_model_judges(served, tiny_smolvlm, conversations):
    from glue_astrovlm.models.remote import RemoteVLM

    with RemoteVLM(served["url"], timeout=60) as remote:
        report = evaluate_freeform(
            tiny_smolvlm, load_dataset(conversations), judge=Judge(remote), max_new_tokens=3, n_boot=50
        )
        assert len(report.systems[0].verdicts) == 6 and report.judge.name == remote.name
        # the served model is the same architecture, built anew: not the candidate's folder
        assert report.same_model_judge() == []
        with pytest.raises(JudgeOutsideRubric, match="outside the rubric"):
            Judge(remote, method="generate").judge(report.systems[0].cases[0]["image"], "Q?", "FRII", "FRI")


def test_classification_data_is_not_free_form(tiny_smolvlm, first_subset):
    with pytest.raises(AstroVLMError, match="needs conversation or caption data"):
        evaluate_freeform(tiny_smolvlm, load_dataset(first_subset("train", 1)))


def test_caption_data_is_graded_against_each_caption(tiny_smolvlm, shared_data, tmp_path):
    images = sorted((shared_data / "first_radio_galaxies" / "train" / "FRI").glob("*.png"))[:2]
    lines = [
        {"image": str(path), "caption": f"A radio galaxy with two lobes, number {i}."}
        for i, path in enumerate(images)
    ]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    data = load_dataset(tmp_path / "captions.jsonl")
    assert data.kind == "caption"
    report = evaluate_freeform(tiny_smolvlm, data, max_new_tokens=4, n_boot=50)
    (system,) = report.systems
    assert [c["reference"] for c in system.cases] == [line["caption"] for line in lines]
    assert all(c["question"].startswith("Describe this astronomical image") for c in system.cases)
    assert system.summary(50)["chrf"]["n"] == 2 and system.summary(50)["exact_match"]["n"] == 0


def test_an_embedding_model_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AstroVLMError, match="no safetensors weights"):
        text_scores(["a long answer here"], ["a long reference text"], embedding_model=str(tmp_path))


def test_uncorrected_exported_answers_are_counted_and_can_be_left_out(
    tiny_smolvlm, fits_dir, tmp_path, caplog
):
    """An export marks each answer corrected or not; eval warns and reports how many references are the
    model's own uncorrected answers; only_corrected=True leaves them out."""
    from glue_astrovlm import Conversation, cutout_at, open_image, write_llava_json

    conversation = Conversation(cutout_at(open_image(fits_dir / "HorseHead.fits"), (200, 300), 64))
    conversation.ask(tiny_smolvlm, "Is there a dark nebula?", max_new_tokens=3)
    conversation.ask(tiny_smolvlm, "Describe its edge.", max_new_tokens=3)
    conversation.correct(2, "A bright rim along the western edge.")
    path = write_llava_json([conversation], tmp_path / "all" / "train.json")
    turns = json.loads(path.read_text())[0]["conversations"]
    flags = [t.get("corrected") for t in turns if t["from"] == "gpt"]
    assert flags == [False, True]
    dataset = load_dataset(path)
    assert dataset.items[0].corrected == (False, True)
    with caplog.at_level("WARNING", logger="glue_astrovlm"):
        report = evaluate_freeform(tiny_smolvlm, dataset, max_new_tokens=3, n_boot=20)
    assert "1 of 2 references are a model's own answers that nobody corrected" in caplog.text
    assert report.uncorrected_references == 1 and report.to_dict()["uncorrected_references"] == 1
    report.write(tmp_path / "out")
    assert "WARNING: 1 of the 2 references" in (tmp_path / "out" / "report.md").read_text()
    only = write_llava_json([conversation], tmp_path / "only" / "train.json", only_corrected=True)
    (entry,) = json.loads(only.read_text())
    assert [t["value"] for t in entry["conversations"]] == [
        "<image>\nDescribe its edge.", "A bright rim along the western edge."]
    again = evaluate_freeform(tiny_smolvlm, load_dataset(only), max_new_tokens=3, n_boot=20)
    assert again.uncorrected_references == 0
    with pytest.raises(AstroVLMError, match="No conversation has a corrected turn to export"):
        write_llava_json([Conversation(np.ones((8, 8)))], tmp_path / "none.json", only_corrected=True)


def test_a_judge_in_a_copy_of_the_candidates_folder_is_the_same_model(
    tiny_smolvlm, tiny_smolvlm_dir, tiny_llava_dir, conversations, tmp_path
):
    import shutil

    copy = shutil.copytree(tiny_smolvlm_dir, tmp_path / "copy")
    assert same_model(str(tiny_smolvlm_dir), str(copy))
    assert not same_model(str(tiny_smolvlm_dir), str(tiny_llava_dir))
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # other weights, same size and header: another model
    weights.write_bytes(bytes(data))
    assert not same_model(str(tiny_smolvlm_dir), str(copy))
    twin = shutil.copytree(tiny_smolvlm_dir, tmp_path / "twin")
    report = evaluate_freeform(tiny_smolvlm, load_dataset(conversations), judge=Judge(load_model(twin)),
                               max_new_tokens=2, limit=1, n_boot=20)
    assert report.same_model_judge() == [report.systems[0].name]
