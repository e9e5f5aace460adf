"""Conversations with a tiny real SmolVLM (random weights): context kept, image encoded once, export.

Answers from random weights are meaningless; these tests prove the machinery: every turn is sent with
the earlier ones, the cache reuse gives the very answer a fresh encoding gives, a conversation too long
for the model is refused, and a corrected conversation exports as data `astrovlm finetune` reads.
"""

import json

import numpy as np
import pytest

from glue_astrovlm import AstroVLMError, Conversation, load_model, write_llava_json
from glue_astrovlm.conversations import read_questions
from glue_astrovlm.datasets import load_llava_json
from glue_astrovlm.models.conversing import context_length


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(3)
    array = rng.normal(size=(48, 48))
    array[20:28, 10:38] += 5.0
    return array


def _vision_calls(vlm):
    """A counter of the vision tower's forward passes (a real forward hook on the real module)."""
    calls = []
    tower = next(
        module
        for name, module in vlm.model.named_modules()
        if name.endswith(("vision_model", "vision_tower"))
    )
    handle = tower.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


def test_follow_ups_are_sent_with_the_earlier_turns(tiny_smolvlm, picture):
    conversation = Conversation(picture, title="jet")
    first = conversation.ask(tiny_smolvlm, "Is there a jet?", max_new_tokens=6)
    second = conversation.ask(tiny_smolvlm, "Which side is brighter?", max_new_tokens=6)
    assert (first.turn, second.turn) == (1, 2)
    assert [turn.question for turn in conversation.turns] == ["Is there a jet?", "Which side is brighter?"]
    messages = conversation.messages("And the core?")
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"][0] == {"type": "image"}
    assert messages[1]["content"][0]["text"] == first.answer
    text = tiny_smolvlm.processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.count("Is there a jet?") == 1 and "Which side is brighter?" in text
    row = second.to_row()
    assert row["turn"] == 2 and row["question"] == "Which side is brighter?"


@pytest.fixture(scope="module", params=["smolvlm", "llava"])
def family(request, tiny_smolvlm, tiny_llava_dir):
    if request.param == "smolvlm":
        return tiny_smolvlm
    return load_model(tiny_llava_dir, dtype="float32")


def test_image_is_encoded_once_and_the_cache_gives_the_fresh_answer(family, picture):
    tiny_smolvlm = family
    calls, handle = _vision_calls(tiny_smolvlm)
    try:
        conversation = Conversation(picture)
        questions = ["Is there a jet?", "Which side is brighter?", "Is it extended?"]
        answers = [conversation.ask(tiny_smolvlm, q, max_new_tokens=5).answer for q in questions]
        assert len(calls) == 1, "the vision tower ran more than once in one conversation"
        assert conversation.backend_state["reused_tokens"] > 0
        # the same conversation without any cache, each turn encoded from scratch: the same answers
        fresh = Conversation(picture)
        for question, answer in zip(questions, answers):
            fresh.backend_state.clear()
            assert fresh.ask(tiny_smolvlm, question, max_new_tokens=5).answer == answer
        assert len(calls) == 1 + len(questions)
    finally:
        handle.remove()


def test_a_corrected_answer_is_what_later_turns_see(tiny_smolvlm, picture):
    conversation = Conversation(picture)
    conversation.ask(tiny_smolvlm, "Is there a jet?", max_new_tokens=4)
    conversation.correct(1, "Yes, a one-sided jet to the north.")
    follow_up = conversation.ask(tiny_smolvlm, "Which side is brighter?", max_new_tokens=4)
    assert conversation.messages()[1]["content"][0]["text"] == "Yes, a one-sided jet to the north."
    fresh = Conversation(picture)
    fresh.ask(tiny_smolvlm, "Is there a jet?", max_new_tokens=4)
    fresh.correct(1, "Yes, a one-sided jet to the north.")
    fresh.backend_state.clear()
    assert fresh.ask(tiny_smolvlm, "Which side is brighter?", max_new_tokens=4).answer == follow_up.answer
    with pytest.raises(AstroVLMError, match="no turn 5"):
        conversation.correct(5, "x")


def test_turns_are_numbered_from_1_everywhere(tiny_smolvlm, picture):
    conversation = Conversation(picture)
    first = conversation.ask(tiny_smolvlm, "Is there a jet?", max_new_tokens=3)
    second = conversation.ask(tiny_smolvlm, "Which side is brighter?", max_new_tokens=3)
    conversation.correct(first.turn, "Yes.")
    assert conversation.turns[0].corrected == "Yes." and conversation.turns[1].corrected is None
    conversation.correct(second.turn, "The north.")
    assert conversation.turns[1].corrected == "The north."
    for wrong in (0, 3, -1):
        with pytest.raises(AstroVLMError, match="turns are numbered 1 to 2"):
            conversation.correct(wrong, "x")


def test_a_conversation_longer_than_the_context_is_refused(tmp_path, picture):
    from glue_astrovlm.testing import build_smolvlm

    vlm = load_model(build_smolvlm(tmp_path / "short", max_position_embeddings=160), dtype="float32")
    assert context_length(vlm) == 160
    conversation = Conversation(picture)
    with pytest.raises(AstroVLMError, match=r"the 160 tokens .* Nothing was cut"):
        for _ in range(20):
            conversation.ask(vlm, "Describe the brightest source and its surroundings.", max_new_tokens=8)
    assert 0 < len(conversation.turns) < 20  # the refused turn is not recorded; the earlier ones are kept


def test_export_of_a_corrected_conversation_reads_back_as_training_data(tiny_smolvlm, picture, tmp_path):
    conversation = Conversation(picture)
    conversation.ask(tiny_smolvlm, "Is there a jet?", max_new_tokens=4)
    conversation.ask(tiny_smolvlm, "Which side is brighter?", max_new_tokens=4)
    conversation.correct(2, "The northern side.")
    path = write_llava_json([conversation, Conversation(picture)], tmp_path / "train.json")
    entries = json.loads(path.read_text())
    assert len(entries) == 1  # a conversation without turns has nothing to learn from
    assert entries[0]["conversations"][0]["value"] == "<image>\nIs there a jet?"
    dataset = load_llava_json(path)
    assert dataset.kind == "conversation" and len(dataset) == 1
    assert dataset.items[0].conversation[-1] == ("assistant", "The northern side.")
    with pytest.raises(AstroVLMError, match="exists"):
        write_llava_json([conversation], path)


def test_saved_conversation_comes_back_with_its_corrections(tiny_smolvlm, picture):
    conversation = Conversation(picture, title="subset 1")
    result = conversation.ask(tiny_smolvlm, "Is there a jet?", max_new_tokens=4)
    conversation.correct(result.turn, "No.")
    data = json.loads(json.dumps(conversation.to_dict()))
    restored = Conversation.from_dict(data)
    assert restored.id == conversation.id and restored.title == "subset 1"
    assert restored.turns[0].final_answer == "No." and restored.turns[0].answer == result.answer
    assert restored.turns[0].result.model == result.model and restored.turns[0].result.turn == 1
    assert np.array_equal(np.asarray(restored.images[0].image), np.asarray(conversation.images[0].image))
    follow_up = restored.ask(tiny_smolvlm, "Which side?", max_new_tokens=3)
    assert follow_up.turn == 2


def test_questions_file(tmp_path):
    path = tmp_path / "questions.txt"
    path.write_text("# about the jet\nIs there a jet?\n\nWhich side is brighter?\n")
    assert read_questions(path) == ["Is there a jet?", "Which side is brighter?"]
    path.write_text("# nothing\n")
    with pytest.raises(AstroVLMError, match="one question a line"):
        read_questions(path)


def test_a_remote_conversation_sends_the_earlier_turns(served, picture):
    from glue_astrovlm.models.remote import RemoteVLM

    with RemoteVLM(served["url"], timeout=60) as remote:
        conversation = Conversation(picture)
        first = conversation.ask(remote, "Is there a jet?", max_new_tokens=5)
        second = conversation.ask(remote, "Which side is brighter?", max_new_tokens=5)
    assert (first.turn, second.turn) == (1, 2) and second.model == remote.name
    # the server read the earlier turns: its prompt grew by the first answer and the new question
    assert second.image_tokens > first.image_tokens
    assert [m["role"] for m in conversation.messages()] == ["user", "assistant", "user", "assistant"]


def test_several_cutouts_one_conversation_each_and_cancel_keeps_finished_ones(tiny_smolvlm, picture):
    import threading

    from glue_astrovlm import OperationCancelled
    from glue_astrovlm.conversations import converse_each

    results = converse_each(
        tiny_smolvlm, [picture, picture[::-1]], ["Is there a jet?", "Which side?"], max_new_tokens=3
    )
    assert [r.turn for r in results] == [1, 2, 1, 2]
    cancel = threading.Event()

    def progress(done, total):
        cancel.set()  # after the first conversation

    with pytest.raises(OperationCancelled) as stopped:
        converse_each(
            tiny_smolvlm,
            [picture, picture[::-1]],
            ["Is there a jet?", "Which side?"],
            max_new_tokens=3,
            progress=progress,
            cancel=cancel,
        )
    assert [r.turn for r in stopped.value.results] == [1, 2]


def test_only_the_most_recent_conversations_keep_a_cache(tiny_smolvlm, picture):
    from glue_astrovlm.models.conversing import MAX_CACHED_CONVERSATIONS

    conversations = [Conversation(picture) for _ in range(MAX_CACHED_CONVERSATIONS + 1)]
    for conversation in conversations:
        conversation.ask(tiny_smolvlm, "Is there a jet?", max_new_tokens=2)
    assert "local" not in conversations[0].backend_state
    assert all("local" in c.backend_state for c in conversations[1:])
    again = conversations[0].ask(tiny_smolvlm, "Which side?", max_new_tokens=2)  # encoded again, answered
    assert again.turn == 2 and conversations[0].backend_state["reused_tokens"] == 0


def test_a_turn_over_the_context_says_which_and_only_helpful_advice(tmp_path, picture, caplog):
    from glue_astrovlm.models.conversing import ContextTooLong
    from glue_astrovlm.testing import build_smolvlm

    vlm = load_model(build_smolvlm(tmp_path / "short", max_position_embeddings=160), dtype="float32")
    conversation = Conversation(picture)
    with pytest.raises(ContextTooLong) as refused:  # the prompt fits, the prompt and the answer do not
        conversation.ask(vlm, "Is there a jet?", max_new_tokens=150)
    assert refused.value.turn == 1 and not refused.value.prompt_alone
    assert "max_new_tokens" in str(refused.value)
    with pytest.raises(ContextTooLong) as refused:  # the prompt alone is over: no "shorter answer"
        for _ in range(40):
            conversation.ask(vlm, "Describe the brightest source and its surroundings.", max_new_tokens=1)
    assert refused.value.prompt_alone and refused.value.turn == len(conversation.turns) + 1
    assert "max_new_tokens" not in str(refused.value) and "before any answer" in str(refused.value)
    assert "Token indices sequence length" not in caplog.text
