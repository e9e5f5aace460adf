"""Conversations from glue's terminal object on a real DataCollection: follow-ups, a new conversation,
corrections, and the conversations saved with a glue session and restored."""

import json

import pytest

pytest.importorskip("glue")
pytest.importorskip("glue_astronomy")

from glue_astrovlm.datasets import load_llava_json  # noqa: E402
from glue_astrovlm.glue_bridge import writeback  # noqa: E402
from glue_astrovlm.glue_bridge.scripting import GlueVLM  # noqa: E402
from glue_astrovlm.session import VLMSession  # noqa: E402

from .glue_helpers import box as _box  # noqa: E402


@pytest.fixture()
def vlm(horsehead, tiny_smolvlm_dir):
    dc, _ = horsehead
    return GlueVLM(dc, VLMSession(str(tiny_smolvlm_dir), dtype="float32"))


def test_follow_ups_continue_and_new_starts_again(horsehead, vlm, tmp_path):
    dc, image = horsehead
    _box(dc, image)
    first = vlm.converse("Is there a dark nebula?", "my box", max_new_tokens=4)
    second = vlm.converse("Which side is brighter?", "my box", max_new_tokens=4)
    assert (first.turn, second.turn) == (1, 2)
    (conversation,) = vlm.conversations
    assert conversation.title == f"{image.label} / my box" and len(conversation) == 2
    vlm.correct(f"{image.label} / my box", 1, "Yes, the Horsehead.")
    again = vlm.converse("Is there a dark nebula?", "my box", new=True, max_new_tokens=4)
    assert again.turn == 1 and len(vlm.conversations) == 2 and vlm.conversations[0].closed
    table = writeback.results_data_table(dc[writeback.RESULTS_LABEL])
    assert list(table["turn"]) == [1, 2, 1]
    path = vlm.export_conversations(tmp_path / "train.json")
    data = load_llava_json(path)
    assert len(data) == 2 and data.items[0].conversation[1] == ("assistant", "Yes, the Horsehead.")


def test_conversations_survive_a_glue_session_save(horsehead, vlm, tiny_smolvlm_dir):
    from glue.core.state import GlueSerializer, GlueUnSerializer

    dc, image = horsehead
    _box(dc, image)
    vlm.converse("Is there a dark nebula?", "my box", max_new_tokens=4)
    vlm.correct(f"{image.label} / my box", 1, "Yes.")
    vlm.classify("my box", labels=["star", "nebula"])  # another task rewrites the results dataset
    text = GlueSerializer(dc).dumps()
    restored_dc = GlueUnSerializer.loads(text).object("__main__")
    restored = GlueVLM(restored_dc, VLMSession(str(tiny_smolvlm_dir), dtype="float32"))
    (conversation,) = restored.conversations
    assert (
        conversation.turns[0].final_answer == "Yes."
        and conversation.turns[0].question == "Is there a dark nebula?"
    )
    follow_up = restored.converse("And the edge?", "my box", max_new_tokens=3)
    assert follow_up.turn == 2
    assert (
        json.loads(restored_dc[writeback.RESULTS_LABEL].meta[writeback.CONVERSATIONS_KEY])[0]["turns"][1][
            "question"
        ]
        == "And the edge?"
    )
