from reopold_agent.replay.turns import build_turns, message_text

from .fixtures import image_trajectory, tool_trajectory


def test_turns_pair_tool_calls_with_their_outputs():
    turns = build_turns(tool_trajectory(0), None)
    assert [(t.index, t.token_start, t.token_end, t.num_model_tokens) for t in turns] == [
        (0, 0, 3, 0), (1, 3, 9, 4), (2, 9, 12, 3)]
    assert [m["role"] for m in turns[1].messages] == ["assistant", "tool"]
    (call,) = turns[1].tool_calls
    assert (call.name, call.arguments, call.output) == ("python", {"code": "print(37*245)"}, "9065")
    assert turns[2].tool_calls == []


def test_images_resolve_against_the_run(synthetic_run):
    turns = build_turns(image_trajectory(1), synthetic_run)
    (image,) = turns[0].images
    assert image.path == synthetic_run / "images" / "x.png" and image.size == (8, 6)
    assert image.describe().startswith("[image 8x6: ")
    text = message_text(image_trajectory(1).messages[0])
    assert text == "[image 8x6: not stored]\nWhat colour?"


def test_malformed_calls_are_listed_with_their_error():
    traj = tool_trajectory(0, messages=[
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "oops</tool_call>"},
        {"role": "tool", "name": "invalid_tool_call", "content": "Error (stray_close_tag): ..."}])
    (call,) = build_turns(traj, None)[1].tool_calls
    assert call.arguments is None and call.error == "stray_close_tag"
    assert call.output.startswith("Error (stray_close_tag)")


def test_terminal_thumbnail_of_a_stored_image(synthetic_run):
    from reopold_agent.replay.tui_trajectory import THUMB_COLUMNS, image_text

    (image,) = build_turns(image_trajectory(1), synthetic_run)[0].images
    text = image_text(image)
    assert text.plain.startswith("[image 8x6: ") and text.plain.count("\u2580") >= THUMB_COLUMNS
    assert any("#c81e1e" in str(span.style) for span in text.spans)  # the image's red
    missing = image_text(type(image)(synthetic_run / "nope.png", (4, 4)))
    assert missing.plain == f"[image 4x4: {synthetic_run / 'nope.png'} (file missing)]\n"
