"""A conversation in the glue panel's Ask tab: follow-ups continue it, "New conversation" starts again,
an answer is corrected, the conversations are exported for fine-tuning and come back with a saved
glue session. A real offscreen GlueApplication, real FITS and a tiny real model."""

import json

from glue_astrovlm.datasets import load_llava_json
from glue_astrovlm.qt import vlm_for

from .test_glue_panel import _box, _load, _panel, _wait


def _ask(qtbot, panel, question):
    panel.question_edit.setText(question)
    panel.run()
    _wait(qtbot, panel)
    assert "color: #b00020" not in panel.message.styleSheet(), panel.message.text()


def test_a_conversation_in_the_ask_tab(qtbot, glue_app, fits_dir, tiny_smolvlm_dir, tmp_path):
    from glue_qt.app import GlueApplication

    image = _load(glue_app, fits_dir / "HorseHead.fits")
    group = _box(glue_app, image)
    panel = _panel(glue_app, tiny_smolvlm_dir)
    panel.select_subset(group)
    panel.set_task("ask")
    _ask(qtbot, panel, "Is there a dark nebula?")
    _ask(qtbot, panel, "Which side is brighter?")
    vlm = vlm_for(glue_app)
    (conversation,) = vlm.conversations
    assert [t.question for t in conversation.turns] == ["Is there a dark nebula?", "Which side is brighter?"]
    assert [r.turn for r in vlm.results] == [1, 2]
    shown = panel.history.toPlainText()
    assert shown.index("Is there a dark nebula?") < shown.index("Which side is brighter?")
    assert "2 turn(s)" in panel.conversation_label.text()

    panel.correct_answer("The western side.")
    assert (
        conversation.turns[1].final_answer == "The western side."
        and "corrected" in panel.history.toPlainText()
    )
    panel.new_conversation()
    assert panel.history.toPlainText() == "" and conversation.closed
    _ask(qtbot, panel, "What is this?")
    assert len(vlm.conversations) == 2 and vlm.results[-1].turn == 1

    panel.export_conversations(str(tmp_path / "dialogues.json"))
    data = load_llava_json(tmp_path / "dialogues.json")
    assert len(data) == 2 and data.items[0].conversation[-1] == ("assistant", "The western side.")

    session_file = tmp_path / "talk.glu"
    glue_app.save_session(str(session_file))
    restored = GlueApplication.restore_session(str(session_file))
    try:
        restored_vlm = vlm_for(restored)
        assert [len(c) for c in restored_vlm.conversations] == [2, 1]
        assert restored_vlm.conversations[0].turns[1].final_answer == "The western side."
        assert (
            json.loads(json.dumps(restored_vlm.conversations[1].to_dict()))["turns"][0]["question"]
            == "What is this?"
        )
    finally:
        restored.close()
