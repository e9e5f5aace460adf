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
