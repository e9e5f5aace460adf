"""``astrovlm ask IMAGE Q1 Q2 ...``: one conversation about each cutout, every turn a row of the table."""

from astropy.table import Table

from glue_astrovlm.cli import main


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_several_questions_are_one_conversation_per_cutout(capsys, fits_dir, tiny_smolvlm_dir, tmp_path):
    questions = tmp_path / "questions.txt"
    questions.write_text("# follow-ups\nIs it extended?\n")
    status, out, err = run(
        capsys,
        "ask",
        fits_dir / "HorseHead.fits",
        "Is there a nebula?",
        "Which side is darker?",
        "--questions",
        questions,
        "--pixel",
        "200",
        "300",
        "--size",
        "64",
        "--model",
        tiny_smolvlm_dir,
        "--dtype",
        "float32",
        "--max-new-tokens",
        "4",
        "--out",
        tmp_path / "talk",
    )
    assert status == 0, err
    table = Table.read(tmp_path / "talk.ecsv")
    assert list(table["turn"]) == [1, 2, 3]
    assert list(table["question"]) == ["Is there a nebula?", "Which side is darker?", "Is it extended?"]
    assert len(set(table["bbox"])) == 1 and set(table["task"]) == {"ask"}
    assert out.count("\tturn ") == 3


def test_ask_without_a_question_says_how(capsys, fits_dir, tiny_smolvlm_dir):
    status, _, err = run(capsys, "ask", fits_dir / "HorseHead.fits", "--model", tiny_smolvlm_dir)
    assert status == 2 and "Give a question in quotes" in err and "--questions FILE" in err


def test_a_turn_over_the_context_keeps_the_answered_turns(capsys, fits_dir, tmp_path):
    """Turn N over the context: turns 1..N-1 are written (table marked partial), the message names turn N
    and the CLI options that help, and the tokenizer's own length warning does not leak."""
    from glue_astrovlm.outputs import PARTIAL_KEY
    from glue_astrovlm.testing import build_smolvlm

    model = build_smolvlm(tmp_path / "short", max_position_embeddings=160)
    questions = tmp_path / "long.txt"
    questions.write_text("\n".join(f"Question {i}: describe the brightest source and its surroundings."
                                   for i in range(1, 21)))
    status, out, err = run(capsys, "ask", fits_dir / "HorseHead.fits", "--questions", questions,
                           "--pixel", "200", "300", "--size", "64", "--model", model, "--dtype", "float32",
                           "--max-new-tokens", "4", "--out", tmp_path / "talk")
    assert status == 2
    table = Table.read(tmp_path / "talk.ecsv")
    answered = len(table)
    assert 0 < answered < 20 and list(table["turn"]) == list(range(1, answered + 1))
    assert table.meta[PARTIAL_KEY] == f"{answered} of 20"
    assert f"Turn {answered + 1} of 20" in err and "fewer or shorter questions" in err
    assert f"The {answered} turn(s) answered before it are kept" in err
    assert "new conversation" not in err and "--resume" not in err
    # here the prompt alone is over the context: a shorter answer would not help, and is not suggested
    assert "before any answer" not in err and "smaller --max-new-tokens" not in err
    assert "Token indices sequence length" not in err


def test_an_empty_answer_is_written_as_empty_text_and_counted(capsys, fits_dir, tiny_smolvlm_dir, tmp_path,
                                                            monkeypatch):
    from glue_astrovlm.models import conversing
    from glue_astrovlm.results import EMPTY_ANSWERS_KEY

    real = conversing.text_result
    turns = []

    def whitespace_on_turn_2(model_image, task, prompt, answer, *rest):  # the model wrote only whitespace
        turns.append(prompt)
        return real(model_image, task, prompt, " \n " if len(turns) == 2 else answer, *rest)

    monkeypatch.setattr(conversing, "text_result", whitespace_on_turn_2)
    status, out, err = run(capsys, "ask", fits_dir / "HorseHead.fits", "Is there a nebula?", "Which side?",
                           "--pixel", "200", "300", "--size", "64", "--model", tiny_smolvlm_dir, "--dtype",
                           "float32", "--max-new-tokens", "3", "--out", tmp_path / "talk")
    assert status == 0, err
    assert "1 of 2 answer(s) are empty" in err and 'written as ""' in err
    assert out.splitlines()[1].endswith('\t""')
    table = Table.read(tmp_path / "talk.ecsv", fill_values=[])
    assert table["answer"][1] == "" and table.meta[EMPTY_ANSWERS_KEY] == 1
